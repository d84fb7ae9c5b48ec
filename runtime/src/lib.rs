//! The Weft runtime: configuration → building blocks → transports.
//!
//! * [`config`]: flags, environment, component and configuration files,
//!   and the typed settings each layer takes;
//! * the building blocks live in their own crate, [`weft_blocks`]: one
//!   handler per API operation, which cannot reach back into this crate;
//! * [`api`]: transports (gRPC on TCP and a Unix socket, HTTP, shared memory);
//! * [`dubbo`]: the Dubbo registry proxy and Dubbo traffic through the mesh;
//! * [`mesh`]: runtime-to-runtime invocation (mTLS, name resolution, load
//!   balancing), and [`security`]: identities, certificates;
//! * [`Runtime`]: starts everything and shuts it down in order.

pub mod api;
pub mod coalesce;
pub mod config;
pub mod dubbo;
pub mod mesh;
pub mod security;
pub mod telemetry;

pub use weft_blocks::shutdown;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;

use weft_blocks::{Blocks, Shutdown};

use crate::api::common::TokenCheck;
use crate::config::resources;
use crate::config::RuntimeConfig;

/// Extended metadata key with the shared-memory transport's socket.
pub const SHM_SOCKET_METADATA: &str = "weft.shm.socket";
/// Extended metadata key with the Dubbo outbound listener (`--dubbo-port`).
pub const DUBBO_OUTBOUND_METADATA: &str = "weft.dubbo.outbound";
/// Extended metadata key with the Dubbo inbound listener /pub advertises.
pub const DUBBO_INBOUND_METADATA: &str = "weft.dubbo.inbound";

/// A started runtime: its bound addresses and its server tasks.
pub struct Runtime {
    pub blocks: Arc<Blocks>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub uds_path: Option<PathBuf>,
    /// The shared-memory transport's socket, unless `--no-shm`.
    pub shm_socket: Option<PathBuf>,
    /// The address other runtimes reach this one's mesh server at.
    pub mesh_addr: SocketAddr,
    config: RuntimeConfig,
    dubbo: Arc<dubbo::DubboProxy>,
    tracing: Option<telemetry::Tracing>,
    servers: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Runtime {
    /// Loads components and starts the servers. Fails, naming the file,
    /// component, field or flag at fault, when anything is misconfigured.
    pub async fn start(mut config: RuntimeConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create --data-dir {}", config.data_dir.display()))?;
        // The mesh identity first: bad certificates stop the start before
        // any component opens a connection.
        let tls = load_mesh_tls(&mut config)?;
        let specs = match &config.resources_path {
            Some(dir) => resources::load_dir(dir, &config.app_id).map_err(|e| anyhow!("{e}"))?,
            None => {
                tracing::info!(data_dir = %config.data_dir.display(), "no --resources-path: using embedded defaults");
                resources::embedded_defaults()
            }
        };
        let app_configuration = config.app_configuration()?;
        let tracing_settings = telemetry::tracing_settings(
            app_configuration.as_ref().and_then(|a| a.tracing.as_ref()),
            |k| std::env::var(k).ok(),
        )?;
        let (telemetry, tracing) = telemetry::telemetry(tracing_settings.as_ref(), &config.app_id)?;
        if tracing.is_none() {
            tracing::info!("tracing: off (no OTLP endpoint in --config or OTEL_EXPORTER_OTLP_*, sampling rate 0, or OTEL_SDK_DISABLED); trace context is still forwarded");
        }
        let blocks = Blocks::build(
            config.blocks_config(app_configuration.as_ref(), telemetry)?,
            specs,
            shutdown.clone(),
        )
        .await?;
        let tokens = TokenCheck::new(config.api_token.clone());
        config::resiliency::sample_cpu(
            blocks.resiliency.clone(),
            std::time::Duration::from_millis(250),
            shutdown.clone(),
        );
        if let Some(dir) = &config.resources_path {
            config::resiliency::watch(
                dir.clone(),
                config.app_id.clone(),
                blocks.resiliency.clone(),
                std::time::Duration::from_secs(1),
                shutdown.clone(),
            );
        }

        // The app's AppCallback service (the callback model), known to the
        // invoke block before any transport serves, so that an app that
        // has one is never handed a ServeInvocations stream.
        let app_channel = match (config.app_port, &config.app_socket) {
            (Some(port), _) => Some(Arc::new(api::app_channel::GrpcAppChannel::new(port))),
            (None, Some(path)) => Some(Arc::new(api::app_channel::GrpcAppChannel::unix(path))),
            (None, None) => None,
        };
        if let Some(channel) = &app_channel {
            blocks.invoke.set_app(channel.clone());
        }

        let grpc_listener = bind_tcp(&config, config.grpc_port, "--grpc-port").await?;
        let http_listener = bind_tcp(&config, config.http_port, "--http-port").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let uds_listener = match &config.uds {
            Some(path) => Some(bind_uds(path)?),
            None => None,
        };

        let routes =
            api::grpc::DaprApi::new(blocks.clone()).routes(tokens.clone(), config.max_body_size);
        let mut servers = Vec::new();

        let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener)
            .with_nodelay(Some(true))
            .map(|conn| conn.map(coalesce::Coalesce::new));
        servers.push((
            "grpc-tcp",
            tokio::spawn(api::serve::serve(
                routes.clone(),
                incoming,
                shutdown.clone(),
                |_| (),
            )),
        ));
        if let Some(l) = uds_listener {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l)
                .map(|conn| conn.map(coalesce::Coalesce::new));
            servers.push((
                "grpc-uds",
                tokio::spawn(api::serve::serve(
                    routes,
                    incoming,
                    shutdown.clone(),
                    |_| (),
                )),
            ));
        }
        // === shared-memory transport ===
        let shm_socket = match &config.shm {
            Some(settings) => {
                let (path, task) = api::shm::start(
                    settings,
                    &config.app_id,
                    tokens.clone(),
                    config.max_body_size,
                    blocks.clone(),
                    shutdown.clone(),
                )?;
                servers.push(("shm", task));
                // Apps that learn the runtime over gRPC find the fast path
                // here (GetMetadata's extended metadata).
                blocks
                    .metadata
                    .set_extended(SHM_SOCKET_METADATA, &path.display().to_string());
                Some(path)
            }
            None => None,
        };
        // The callback model: deliver subscriptions through the app's
        // AppCallback service once the API is served.
        if let Some(channel) = app_channel {
            blocks.pubsub.start_app_subscriptions(channel);
        }

        // === mesh ===
        let registration = weft_components::nameresolution::Registration::new(
            config.app_id.clone(),
            config.mesh_identity.namespace.clone(),
            uuid::Uuid::new_v4().to_string(),
            config.mesh.listen,
        );
        let mesh = mesh::start(
            &config.mesh,
            tls,
            blocks.name_resolver.clone(),
            registration,
            blocks.clone(),
            config.max_body_size,
            shutdown.clone(),
        )
        .await?;
        servers.push(("mesh", mesh.server));

        // === Dubbo proxy ===
        let dubbo = dubbo::start(
            &config.dubbo,
            &config.app_id,
            blocks.clone(),
            mesh.client.clone(),
            mesh.addr,
            config.mesh.call_timeout,
            config.max_body_size,
            shutdown.clone(),
        )
        .await?;
        servers.extend(dubbo.servers);
        if let Some(addr) = dubbo.outbound {
            blocks
                .metadata
                .set_extended(DUBBO_OUTBOUND_METADATA, &addr.to_string());
        }
        blocks
            .metadata
            .set_extended(DUBBO_INBOUND_METADATA, &dubbo.inbound.to_string());

        // === HTTP: health, metadata, metrics, the Dubbo registry proxy ===
        let router = api::http::router(blocks.clone(), tokens.clone(), config.max_body_size)
            .merge(dubbo::http::routes(dubbo.proxy.clone(), tokens));
        let http_shutdown = shutdown.clone();
        servers.push((
            "http",
            tokio::spawn(async move {
                axum::serve(http_listener, router)
                    .with_graceful_shutdown(async move { http_shutdown.wait().await })
                    .await
                    .context("HTTP server failed")
            }),
        ));

        tracing::info!(
            app_id = %config.app_id,
            grpc = %grpc_addr,
            http = %http_addr,
            uds = ?config.uds,
            mesh = %mesh.addr,
            version = weft_blocks::metadata::RUNTIME_VERSION,
            "weft is ready"
        );
        Ok(Self {
            blocks,
            grpc_addr,
            http_addr,
            uds_path: config.uds.clone(),
            shm_socket,
            mesh_addr: mesh.addr,
            config,
            dubbo: dubbo.proxy,
            tracing,
            servers,
        })
    }

    /// Waits for shutdown, lets in-flight calls finish within the grace
    /// period, then closes every component.
    pub async fn run_until_shutdown(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut failure = None;
        let mut servers = self.servers;
        // A server that fails on its own also stops the runtime.
        tokio::select! {
            _ = shutdown.wait() => {}
            (res, idx, _) = futures::future::select_all(servers.iter_mut().map(|(_, h)| h)) => {
                let name = servers[idx].0;
                servers.remove(idx);
                let err = match res {
                    // Servers return once shutdown starts: that is the normal path.
                    Ok(Ok(())) if shutdown.is_triggered() => None,
                    Ok(Ok(())) => Some(anyhow!("{name} server stopped unexpectedly")),
                    Ok(Err(e)) => Some(e.context(format!("{name} server"))),
                    Err(e) => Some(anyhow!("{name} server task failed: {e}")),
                };
                if let Some(err) = err {
                    tracing::error!(error = %format!("{err:#}"), "server failed");
                    failure = Some(err);
                    shutdown.trigger("server failure");
                }
            }
        }
        let grace = self.config.graceful_shutdown;
        let drain = futures::future::join_all(servers.into_iter().map(|(_, h)| h));
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "in-flight calls did not finish within the grace period"
            );
        }
        // Registrations go first: consumers stop picking this instance.
        self.dubbo.close().await;
        self.blocks.close().await;
        if let Some(t) = self.tracing {
            // The exporter's thread flushes (bounded) while this runtime
            // keeps driving the exporter's connection.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        if let Some(p) = &self.uds_path {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!("weft stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Loads the mesh certificate (or the development CA's), checks that it is
/// this app's identity, starts following its files, and records the
/// effective trust domain and namespace in `config`. `None` in the
/// plain-text development mode.
fn load_mesh_tls(
    config: &mut RuntimeConfig,
) -> anyhow::Result<Option<Arc<security::tls::MeshTls>>> {
    let source = config.mesh_identity.tls_source(&config.app_id)?;
    let Some(source) = source else {
        tracing::warn!(
            "--dev-insecure-plaintext-mesh: runtime-to-runtime traffic is PLAIN TEXT and \
             unauthenticated; callers' app ids are not verified and access policies protect \
             nothing. Development only"
        );
        return Ok(None);
    };
    let tls = security::tls::MeshTls::load(source).map_err(|e| anyhow!("{e}"))?;
    let id = tls.identity();
    if id.app_id != config.app_id {
        return Err(anyhow!(
            "--mtls-cert is a certificate for app '{}' ({id}), but this runtime is --app-id '{}'",
            id.app_id,
            config.app_id
        ));
    }
    config.mesh_identity.trust_domain = id.trust_domain.clone();
    config.mesh_identity.namespace = id.namespace.clone();
    tls.spawn_reloader(std::time::Duration::from_secs(1));
    Ok(Some(tls))
}

async fn bind_tcp(
    config: &RuntimeConfig,
    port: u16,
    flag: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(config.listen_address, port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({flag})"))
}

fn bind_uds(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        // A socket left by a runtime that crashed: remove it unless something answers.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(anyhow!(
                "cannot listen on --uds {}: another process is serving on it",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket --uds {}", path.display()))?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory for --uds {}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on --uds {}", path.display()))
}
