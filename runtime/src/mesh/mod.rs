//! The service mesh: runtime-to-runtime invocation over HTTP/2
//! (`weft.internal.v1.Mesh`), mutual TLS with SPIFFE identities, name
//! resolution, load balancing and ejection of failing instances.
//!
//! * [`server`]: accepts mTLS connections and hands calls, with the
//!   caller's verified identity, to the invocation block;
//! * [`client`]: resolves, balances and calls other runtimes;
//! * [`balancer`]: instance choice and ejection.

pub mod balancer;
pub mod client;
mod io;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use weft_components::nameresolution::{NameResolver, Registration};

use weft_blocks::{Blocks, Shutdown};

use crate::config::MeshSettings;
use crate::security::tls::MeshTls;

/// A started mesh.
pub struct MeshHandle {
    /// The address registered with name resolution.
    pub addr: SocketAddr,
    pub server: JoinHandle<anyhow::Result<()>>,
    /// The client other transports (the Dubbo proxy) call runtimes with.
    pub client: Arc<client::MeshClient>,
}

/// Starts the mesh server, registers this instance with name resolution and
/// connects the invocation block to the mesh client. `tls` is `None` only in
/// the plain-text development mode.
pub async fn start(
    settings: &MeshSettings,
    tls: Option<Arc<MeshTls>>,
    resolver: Arc<dyn NameResolver>,
    registration: Registration,
    blocks: Arc<Blocks>,
    max_body_size: usize,
    shutdown: Shutdown,
) -> anyhow::Result<MeshHandle> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--mesh-port)", settings.listen))?;
    let local = listener.local_addr()?;
    let host = match settings.advertise {
        Some(ip) => ip,
        None if local.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        None => local.ip(),
    };
    let addr = SocketAddr::new(host, local.port());

    let incoming = tokio_stream::wrappers::ReceiverStream::new(server::incoming(
        listener,
        tls.clone(),
        &blocks.telemetry.metrics,
        shutdown.clone(),
    ));
    let service = server::MeshService::new(blocks.clone(), max_body_size);
    let server = tokio::spawn(crate::api::serve::serve(
        tonic::service::Routes::new(service),
        incoming,
        shutdown.clone(),
        server::Inbound::peer,
    ));

    let client = client::MeshClient::new(
        resolver.clone(),
        tls,
        &registration.namespace,
        blocks.invoke.trust_domain(),
        settings.lb,
        max_body_size,
        blocks.telemetry.clone(),
    );
    let client = Arc::new(client);
    blocks.invoke.set_remote(client.clone());
    let registration = Registration {
        address: addr,
        ..registration
    };
    resolver
        .register(&registration)
        .await
        .map_err(|e| anyhow::anyhow!("name resolution: cannot register this instance: {e}"))?;
    tracing::info!(mesh = %addr, app_id = %registration.app_id, "mesh ready");
    Ok(MeshHandle {
        addr,
        server,
        client,
    })
}
