//! Runtime configuration: command-line flags (with `WEFT_*` and Dapr
//! environment fallbacks) and component resource files.

pub mod app_config;
mod error;
pub mod resiliency;
pub mod resources;
mod yaml;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use weft_blocks::invoke::access::AccessPolicy;
use weft_blocks::invoke::InvokeConfig;
use weft_blocks::metadata::AppConnection;
use weft_blocks::BlocksConfig;

pub use error::{ConfigError, InvalidValue};

/// Weft: an application runtime that gives an app state, configuration,
/// pub/sub and service invocation through the Dapr v1 API.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum Command {
    /// Run the runtime beside an application.
    Run(RunArgs),
    /// Manage a mesh certificate authority: create a root, issue runtime
    /// certificates.
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `weft ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root CA: DIR/ca.crt and DIR/ca.key (mode 0600).
    Init(CaInitArgs),
    /// Issue a runtime certificate: OUT/cert.pem, OUT/key.pem (mode 0600)
    /// and OUT/ca.pem (the trust bundle).
    Issue(CaIssueArgs),
}

/// Flags of `weft ca init`.
#[derive(Debug, Clone, Args)]
pub struct CaInitArgs {
    /// Directory to write the root into (created if needed).
    #[arg(long)]
    pub dir: PathBuf,

    /// Trust domain of the identities the root issues.
    #[arg(long, default_value = "public", value_parser = parse_trust_domain)]
    pub trust_domain: String,

    /// Validity of the root, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36_500))]
    pub days: u64,

    /// Replace an existing root (certificates it issued stop validating).
    #[arg(long)]
    pub force: bool,
}

/// Flags of `weft ca issue`.
#[derive(Debug, Clone, Args)]
pub struct CaIssueArgs {
    /// Directory of the root (from `weft ca init`); the trust domain is
    /// read from it.
    #[arg(long)]
    pub ca_dir: PathBuf,

    /// App id the certificate identifies (as `weft run --app-id`).
    #[arg(long, value_parser = parse_app_id)]
    pub app_id: String,

    /// Namespace of the app.
    #[arg(long, default_value = "default", value_parser = parse_namespace)]
    pub namespace: String,

    /// Lifetime of the certificate: a number with s, m, h or d.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Directory to write cert.pem, key.pem and ca.pem into.
    #[arg(long)]
    pub out: PathBuf,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `weft run`. Every flag has a `WEFT_*` environment fallback; the
/// ports also honour Dapr's `DAPR_GRPC_PORT` and `DAPR_HTTP_PORT`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The application's id: names the runtime, prefixes its state keys and
    /// will identify it to other runtimes.
    #[arg(long, env = "WEFT_APP_ID", value_parser = parse_app_id)]
    pub app_id: String,

    /// Directory of component files (Dapr's YAML shape). Without it the
    /// runtime starts on embedded defaults: `statestore` (SQLite) and
    /// `configstore` (a YAML file), both under --data-dir, and `pubsub`
    /// (an in-process broker).
    #[arg(long, env = "WEFT_RESOURCES_PATH", alias = "components-path")]
    pub resources_path: Option<PathBuf>,

    /// gRPC API port (Dapr v1 API). Also read from DAPR_GRPC_PORT.
    #[arg(long, env = "WEFT_GRPC_PORT")]
    pub grpc_port: Option<u16>,

    /// HTTP port: health, metadata, shutdown and Prometheus `/metrics`.
    /// Also read from DAPR_HTTP_PORT.
    #[arg(long, env = "WEFT_HTTP_PORT")]
    pub http_port: Option<u16>,

    /// Address the TCP listeners bind to.
    #[arg(long, env = "WEFT_LISTEN_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub listen_address: IpAddr,

    /// Also serve the gRPC API on this Unix domain socket path.
    #[arg(long, env = "WEFT_UDS")]
    pub uds: Option<PathBuf>,

    /// The application's port, where it serves Dapr's AppCallback service.
    #[arg(long, env = "WEFT_APP_PORT", conflicts_with = "app_socket")]
    pub app_port: Option<u16>,

    /// Unix socket where the app serves `AppCallback`, instead of
    /// --app-port: a faster local hop for apps that can listen on one.
    #[arg(long, env = "WEFT_APP_SOCKET")]
    pub app_socket: Option<PathBuf>,

    /// Protocol of the application's port. Only `grpc` is supported.
    #[arg(long, env = "WEFT_APP_PROTOCOL", default_value = "grpc", value_parser = ["grpc"])]
    pub app_protocol: String,

    /// Directory for embedded state (SQLite files, default configuration).
    /// Defaults to `$XDG_DATA_HOME/weft/<app-id>` or `~/.local/share/weft/<app-id>`.
    #[arg(long, env = "WEFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Largest request body accepted, in bytes (gRPC messages included).
    #[arg(long, env = "WEFT_MAX_BODY_SIZE", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..=(1 << 30)))]
    pub max_body_size: u32,

    /// How long in-flight calls may take to finish after a shutdown starts.
    #[arg(long, env = "WEFT_GRACEFUL_SHUTDOWN_SECONDS", default_value_t = 5)]
    pub graceful_shutdown_seconds: u64,

    /// API token every call must present (header `dapr-api-token`). Read
    /// from DAPR_API_TOKEN when the flag is not given.
    #[arg(long, env = "WEFT_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Worker threads of the async runtime. 1 (the default) runs everything
    /// on one thread, which gives the lowest latency on the local hop and
    /// leaves the other cores to the app; raise it for heavy fan-out.
    #[arg(long, env = "WEFT_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Log filter, e.g. `info` or `weft=debug` (RUST_LOG works too).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    /// Log line format: `text` (for people) or `json` (one JSON object a
    /// line, for log collectors; fields as key/value pairs).
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    // === shared-memory transport (docs/shm-protocol.md) ===
    /// Unix socket of the shared-memory transport. Defaults to
    /// `<data-dir>/shm.sock`.
    #[arg(long, env = "WEFT_SHM_SOCKET")]
    pub shm_socket: Option<PathBuf>,

    /// Do not serve the shared-memory transport.
    #[arg(long, env = "WEFT_NO_SHM")]
    pub no_shm: bool,

    /// Directory of shared-memory segments (files mode 0600, unlinked as
    /// soon as both sides have mapped them). Defaults to /dev/shm.
    #[arg(long, env = "WEFT_SHM_DIR")]
    pub shm_dir: Option<PathBuf>,

    /// Microseconds a shared-memory session busy-waits for the next request
    /// before yielding (lower latency, more CPU while an app is active).
    /// At most one session fewer than the vCPUs (at least one) spins or
    /// yields at a time; the others sleep at once.
    #[arg(long, env = "WEFT_SHM_SPIN_MICROS", default_value_t = 50)]
    pub shm_spin_micros: u64,

    /// Microseconds a shared-memory session then yields before it sleeps on
    /// its socket (an idle session uses no CPU).
    #[arg(long, env = "WEFT_SHM_YIELD_MICROS", default_value_t = 50)]
    pub shm_yield_micros: u64,

    // === service invocation mesh ===
    /// Port of the runtime-to-runtime mesh server (mutual TLS). 0, the
    /// default, takes any free port: name resolution publishes the real one.
    #[arg(long, env = "WEFT_MESH_PORT", default_value_t = 0)]
    pub mesh_port: u16,

    /// Address the mesh server listens on. Defaults to --listen-address.
    #[arg(long, env = "WEFT_MESH_LISTEN_ADDRESS")]
    pub mesh_listen_address: Option<IpAddr>,

    /// Address other runtimes dial, when the listen address is a wildcard or
    /// is not reachable from them as is.
    #[arg(long, env = "WEFT_MESH_ADVERTISE_ADDRESS")]
    pub mesh_advertise_address: Option<IpAddr>,

    /// Choice among an app's instances: `round-robin` or `p2c` (power of
    /// two choices: the less busy of two random instances).
    #[arg(long, env = "WEFT_MESH_LB", default_value = "round-robin")]
    pub mesh_lb: String,

    /// Longest a service invocation may take, in seconds, when the caller's
    /// deadline is not shorter.
    #[arg(long, env = "WEFT_INVOKE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub invoke_timeout_seconds: u64,

    /// Dapr Configuration resource (YAML): `spec.accessControl` policies
    /// for calls into this app, `spec.tracing` (sampling rate, OTLP
    /// collector; docs/operations.md).
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,

    // === Dubbo proxy (docs/dubbo.md) ===
    /// Port of the outbound Dubbo listener on 127.0.0.1, where the app's
    /// Dubbo consumers connect (`dubbo://127.0.0.1:<port>`) to call the
    /// services it subscribed to through /sub. Off when absent.
    #[arg(long, env = "WEFT_DUBBO_PORT")]
    pub dubbo_port: Option<u16>,

    /// Port of the inbound Dubbo listener (on the mesh listen address) that
    /// /pub advertises in the registry, for Dubbo consumers outside the
    /// mesh. 0, the default, takes any free port.
    #[arg(long, env = "WEFT_DUBBO_INBOUND_PORT", default_value_t = 0)]
    pub dubbo_inbound_port: u16,

    /// Port on 127.0.0.1 where the app serves the Dubbo services it
    /// publishes through /pub, unless the /pub body names one
    /// (`service.port`).
    #[arg(long, env = "WEFT_DUBBO_APP_PORT", default_value_t = 20880)]
    pub dubbo_app_port: u16,

    // === mesh identity ===
    /// Certificate chain (PEM) this runtime presents to other runtimes; its
    /// URI SAN `spiffe://<trust-domain>/ns/<namespace>/<app-id>` is the
    /// runtime's identity. Give all three --mtls-* files or none: without
    /// them a development CA under --dev-ca-dir issues the certificate.
    /// The files are reloaded when they change.
    #[arg(long, env = "WEFT_MTLS_CERT")]
    pub mtls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8 or SEC1) of --mtls-cert.
    #[arg(long, env = "WEFT_MTLS_KEY")]
    pub mtls_key: Option<PathBuf>,

    /// Root certificates (PEM) other runtimes' certificates must chain to;
    /// several roots let a CA rotation overlap.
    #[arg(long, env = "WEFT_MTLS_TRUST_BUNDLE")]
    pub mtls_trust_bundle: Option<PathBuf>,

    /// Trust domain of the development CA's identities.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "public")]
    pub trust_domain: String,

    /// Namespace of this app. Also read from NAMESPACE; defaults to
    /// `default`.
    #[arg(long, env = "WEFT_NAMESPACE")]
    pub namespace: Option<String>,

    /// Directory of the development CA, shared by every runtime of this
    /// user on this machine so that they trust each other. Defaults to
    /// `$XDG_RUNTIME_DIR/weft/dev-ca`, else `/tmp/weft-dev-ca-<uid>`
    /// (created 0700; refused when another user owns it).
    #[arg(long, env = "WEFT_DEV_CA_DIR")]
    pub dev_ca_dir: Option<PathBuf>,

    /// Development only: runtime-to-runtime traffic in plain text, with no
    /// authentication at all.
    #[arg(long, env = "WEFT_DEV_INSECURE_PLAINTEXT_MESH")]
    pub dev_insecure_plaintext_mesh: bool,
}

/// Settings of the Dubbo proxy.
#[derive(Debug, Clone)]
pub struct DubboSettings {
    /// The outbound listener (127.0.0.1), if any.
    pub outbound: Option<SocketAddr>,
    /// The inbound listener, advertised by /pub.
    pub inbound: SocketAddr,
    /// Where the app serves its published services by default.
    pub app_port: u16,
}

/// Settings of the shared-memory transport.
#[derive(Debug, Clone)]
pub struct ShmSettings {
    /// The Unix socket apps connect to.
    pub socket: PathBuf,
    /// Where segments are created.
    pub segment_dir: PathBuf,
    /// Busy-wait this long after the last request.
    pub spin: Duration,
    /// Then yield this long before sleeping on the socket.
    pub yield_for: Duration,
}

/// Settings of the service-invocation mesh.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// Where the mesh server listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The host other runtimes should dial, when `listen` is a wildcard
    /// address or not reachable as is.
    pub advertise: Option<IpAddr>,
    pub lb: LbPolicy,
    /// Longest a call may take when the caller set no shorter deadline.
    pub call_timeout: Duration,
}

/// How the next instance of a called app is chosen (`--mesh-lb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Each instance in turn (`round-robin`).
    RoundRobin,
    /// Two instances at random; the one with fewer calls in flight (`p2c`,
    /// also `least-loaded`).
    PowerOfTwo,
}

impl FromStr for LbPolicy {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "round-robin" => Ok(Self::RoundRobin),
            "p2c" | "least-loaded" => Ok(Self::PowerOfTwo),
            other => Err(InvalidValue(format!(
                "unknown load-balancing policy '{other}' (use round-robin or p2c)"
            ))),
        }
    }
}

/// How this runtime proves its identity to other runtimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshIdentityConfig {
    /// `--trust-domain`: of the development CA's identities (with files,
    /// the certificate says).
    pub trust_domain: String,
    /// `--namespace`.
    pub namespace: String,
    pub source: MeshCertSource,
    /// `--dev-insecure-plaintext-mesh`: no TLS on the mesh at all.
    pub plaintext: bool,
}

/// Where the mesh certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshCertSource {
    /// `--mtls-cert`, `--mtls-key`, `--mtls-trust-bundle`.
    Files {
        cert: PathBuf,
        key: PathBuf,
        trust_bundle: PathBuf,
    },
    /// A development CA in `dir`.
    DevCa { dir: PathBuf },
}

impl MeshIdentityConfig {
    /// What [`MeshTls::load`](crate::security::tls::MeshTls::load) loads for
    /// the runtime of `app_id`; `None` in plain-text mode.
    pub fn tls_source(
        &self,
        app_id: &str,
    ) -> Result<Option<crate::security::tls::TlsSource>, crate::security::SecurityError> {
        use crate::security::tls::TlsSource;
        if self.plaintext {
            return Ok(None);
        }
        Ok(Some(match &self.source {
            MeshCertSource::Files {
                cert,
                key,
                trust_bundle,
            } => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                trust_bundle: trust_bundle.clone(),
            },
            MeshCertSource::DevCa { dir } => TlsSource::DevCa {
                dir: dir.clone(),
                identity: crate::security::SpiffeId::new(
                    &self.trust_domain,
                    &self.namespace,
                    app_id,
                )?,
            },
        }))
    }
}

/// Dapr's default gRPC port.
pub const DEFAULT_GRPC_PORT: u16 = 50001;
/// Dapr's default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 3500;

fn parse_app_id(raw: &str) -> Result<String, InvalidValue> {
    let ok = !raw.is_empty()
        && raw.len() <= 63
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !raw.starts_with(['-', '.']);
    if ok {
        Ok(raw.to_string())
    } else {
        Err(InvalidValue(format!(
            "'{raw}' is not a valid app id: use 1-63 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
        )))
    }
}

fn parse_trust_domain(raw: &str) -> Result<String, InvalidValue> {
    crate::security::spiffe::validate_trust_domain(raw).map_err(|e| InvalidValue(e.to_string()))?;
    Ok(raw.to_string())
}

fn parse_namespace(raw: &str) -> Result<String, InvalidValue> {
    crate::security::spiffe::validate_segment("namespace", raw)
        .map_err(|e| InvalidValue(e.to_string()))?;
    Ok(raw.to_string())
}

/// A duration such as `90s`, `30m`, `24h` or `7d`.
fn parse_ttl(raw: &str) -> Result<Duration, InvalidValue> {
    let bad = || {
        InvalidValue(format!(
            "'{raw}' is not a duration: use a number with s, m, h or d, e.g. 24h"
        ))
    };
    let split = raw.len().checked_sub(1).ok_or_else(bad)?;
    let (num, unit) = raw.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    match secs {
        Some(s) if s > 0 && s <= 100 * 365 * 86_400 => Ok(Duration::from_secs(s)),
        Some(_) => Err(InvalidValue(format!(
            "'{raw}' is out of range: from 1s to 100 years"
        ))),
        None => Err(bad()),
    }
}

/// The resolved settings a runtime starts with.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub app_id: String,
    pub resources_path: Option<PathBuf>,
    pub listen_address: IpAddr,
    pub grpc_port: u16,
    pub http_port: u16,
    pub uds: Option<PathBuf>,
    pub app_port: Option<u16>,
    /// `--app-socket`: the app's `AppCallback` on a Unix socket.
    pub app_socket: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub max_body_size: usize,
    pub graceful_shutdown: Duration,
    pub api_token: Option<String>,
    /// `None` with `--no-shm`.
    pub shm: Option<ShmSettings>,
    pub mesh: MeshSettings,
    pub dubbo: DubboSettings,
    /// `--config`: the Dapr Configuration file, if any.
    pub app_config: Option<PathBuf>,
    /// The mesh certificate and identity.
    pub mesh_identity: MeshIdentityConfig,
}

impl RuntimeConfig {
    /// Resolves flags against an environment lookup (kept as a parameter so
    /// precedence is testable): flag or `WEFT_*` first, then `DAPR_*`, then
    /// the defaults.
    pub fn resolve(
        args: &RunArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let port_from = |name: &str| -> Result<Option<u16>, ConfigError> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<u16>().map(Some).map_err(|_| {
                    ConfigError::setting(
                        format!("environment variable {name}='{v}'"),
                        "not a port number",
                    )
                }),
            }
        };
        let grpc_port = match args.grpc_port {
            Some(p) => p,
            None => port_from("DAPR_GRPC_PORT")?.unwrap_or(DEFAULT_GRPC_PORT),
        };
        let http_port = match args.http_port {
            Some(p) => p,
            None => port_from("DAPR_HTTP_PORT")?.unwrap_or(DEFAULT_HTTP_PORT),
        };
        if grpc_port != 0 && grpc_port == http_port {
            return Err(ConfigError::Conflict(format!(
                "--grpc-port and --http-port are both {grpc_port}: they must differ"
            )));
        }
        let data_dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => default_data_dir(&env).join(&args.app_id),
        };
        let api_token = args
            .api_token
            .clone()
            .or_else(|| env("DAPR_API_TOKEN"))
            .filter(|t| !t.is_empty());
        let shm = (!args.no_shm).then(|| ShmSettings {
            socket: args
                .shm_socket
                .clone()
                .unwrap_or_else(|| data_dir.join("shm.sock")),
            segment_dir: args
                .shm_dir
                .clone()
                .unwrap_or_else(weft_shm::segment::default_dir),
            spin: Duration::from_micros(args.shm_spin_micros),
            yield_for: Duration::from_micros(args.shm_yield_micros),
        });
        let mesh_identity = resolve_mesh_identity(args, &env)?;
        Ok(Self {
            app_id: args.app_id.clone(),
            resources_path: args.resources_path.clone(),
            listen_address: args.listen_address,
            grpc_port,
            http_port,
            uds: args.uds.clone(),
            app_port: args.app_port,
            app_socket: args.app_socket.clone(),
            data_dir,
            max_body_size: args.max_body_size as usize,
            graceful_shutdown: Duration::from_secs(args.graceful_shutdown_seconds),
            api_token,
            shm,
            mesh: MeshSettings {
                listen: SocketAddr::new(
                    args.mesh_listen_address.unwrap_or(args.listen_address),
                    args.mesh_port,
                ),
                advertise: args.mesh_advertise_address,
                lb: args
                    .mesh_lb
                    .parse()
                    .map_err(|e| ConfigError::setting("--mesh-lb", e))?,
                call_timeout: Duration::from_secs(args.invoke_timeout_seconds),
            },
            dubbo: DubboSettings {
                outbound: args
                    .dubbo_port
                    .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)),
                inbound: SocketAddr::new(
                    args.mesh_listen_address.unwrap_or(args.listen_address),
                    args.dubbo_inbound_port,
                ),
                app_port: args.dubbo_app_port,
            },
            app_config: args.config.clone(),
            mesh_identity,
        })
    }
}

impl RuntimeConfig {
    /// The `--config` file, if given.
    pub fn app_configuration(&self) -> Result<Option<app_config::AppConfiguration>, ConfigError> {
        self.app_config.as_deref().map(app_config::load).transpose()
    }

    /// The settings the building blocks take: this app's identity, the
    /// invocation timeout and access policy (from the `--config` file
    /// `app`), how the app is reached, and the telemetry.
    pub fn blocks_config(
        &self,
        app: Option<&app_config::AppConfiguration>,
        telemetry: std::sync::Arc<weft_blocks::telemetry::Telemetry>,
    ) -> Result<BlocksConfig, ConfigError> {
        let access = app.map_or_else(AccessPolicy::allow_all, |a| a.access_control.clone());
        Ok(BlocksConfig {
            app_id: self.app_id.clone(),
            data_dir: self.data_dir.clone(),
            invoke: InvokeConfig {
                namespace: self.mesh_identity.namespace.clone(),
                trust_domain: self.mesh_identity.trust_domain.clone(),
                default_timeout: self.mesh.call_timeout,
                access,
            },
            app_connection: self.app_port.map(|port| AppConnection {
                port,
                protocol: "grpc".to_string(),
                channel_address: "127.0.0.1".to_string(),
            }),
            telemetry,
            secret_scopes: app.map(|a| a.secret_scopes.clone()).unwrap_or_default(),
            resiliency: std::sync::Arc::new(weft_blocks::resiliency::Policies::new(
                match &self.resources_path {
                    Some(dir) => resiliency::load_dir(dir, &self.app_id)?,
                    None => weft_blocks::resiliency::Resiliency::none(),
                },
            )),
        })
    }
}

fn resolve_mesh_identity(
    args: &RunArgs,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<MeshIdentityConfig, ConfigError> {
    crate::security::spiffe::validate_trust_domain(&args.trust_domain)
        .map_err(|e| ConfigError::setting("--trust-domain", e))?;
    let namespace = args
        .namespace
        .clone()
        .or_else(|| env("NAMESPACE"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    crate::security::spiffe::validate_segment("namespace", &namespace)
        .map_err(|e| ConfigError::setting("--namespace", e))?;
    let source = match (&args.mtls_cert, &args.mtls_key, &args.mtls_trust_bundle) {
        (Some(cert), Some(key), Some(trust_bundle)) => MeshCertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            trust_bundle: trust_bundle.clone(),
        },
        (None, None, None) => MeshCertSource::DevCa {
            dir: args
                .dev_ca_dir
                .clone()
                .unwrap_or_else(|| default_dev_ca_dir(env)),
        },
        (cert, key, bundle) => {
            let missing: Vec<&str> = [
                (cert.is_none(), "--mtls-cert"),
                (key.is_none(), "--mtls-key"),
                (bundle.is_none(), "--mtls-trust-bundle"),
            ]
            .into_iter()
            .filter_map(|(missing, flag)| missing.then_some(flag))
            .collect();
            return Err(ConfigError::Conflict(format!(
                "--mtls-cert, --mtls-key and --mtls-trust-bundle go together: {} missing",
                missing.join(" and ")
            )));
        }
    };
    if args.dev_insecure_plaintext_mesh && matches!(source, MeshCertSource::Files { .. }) {
        return Err(ConfigError::Conflict(
            "--dev-insecure-plaintext-mesh turns mesh TLS off: do not combine it with --mtls-cert"
                .to_string(),
        ));
    }
    Ok(MeshIdentityConfig {
        trust_domain: args.trust_domain.clone(),
        namespace,
        source,
        plaintext: args.dev_insecure_plaintext_mesh,
    })
}

/// The development CA every runtime of this user on this machine shares
/// when no mesh flag is given: beside the local name-resolution registry,
/// `$XDG_RUNTIME_DIR/weft/dev-ca`, else `/tmp/weft-dev-ca-<uid>`.
pub fn default_dev_ca_dir(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(xdg) = env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("weft").join("dev-ca");
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    PathBuf::from(format!("/tmp/weft-dev-ca-{uid}"))
}

fn default_data_dir(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(xdg) = env("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("weft");
    }
    if let Some(home) = env("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/weft");
    }
    std::env::temp_dir().join("weft")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["weft", "run", "--app-id", "orders"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => a,
            other => panic!("not `weft run`: {other:?}"),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_are_daprs_ports() {
        let c = RuntimeConfig::resolve(&args(&[]), env_of(&[("HOME", "/home/u")])).unwrap();
        assert_eq!((c.grpc_port, c.http_port), (50001, 3500));
        assert_eq!(
            c.data_dir,
            PathBuf::from("/home/u/.local/share/weft/orders")
        );
        assert_eq!(c.api_token, None);
    }

    #[test]
    fn dapr_env_is_honoured_and_flags_win() {
        let env = env_of(&[
            ("DAPR_GRPC_PORT", "6000"),
            ("DAPR_HTTP_PORT", "6001"),
            ("DAPR_API_TOKEN", "t"),
        ]);
        let c = RuntimeConfig::resolve(&args(&[]), &env).unwrap();
        assert_eq!((c.grpc_port, c.http_port), (6000, 6001));
        assert_eq!(c.api_token.as_deref(), Some("t"));
        let c = RuntimeConfig::resolve(&args(&["--grpc-port", "7000"]), &env).unwrap();
        assert_eq!(c.grpc_port, 7000);
    }

    #[test]
    fn bad_env_port_is_named() {
        let err = RuntimeConfig::resolve(&args(&[]), env_of(&[("DAPR_GRPC_PORT", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DAPR_GRPC_PORT"), "{err}");
    }

    #[test]
    fn same_ports_are_refused() {
        let err = RuntimeConfig::resolve(
            &args(&["--grpc-port", "5000", "--http-port", "5000"]),
            env_of(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("must differ"), "{err}");
    }

    #[test]
    fn app_id_is_validated() {
        assert!(Cli::try_parse_from(["weft", "run", "--app-id", "bad id"]).is_err());
        assert!(Cli::try_parse_from(["weft", "run", "--app-id", ""]).is_err());
        assert!(Cli::try_parse_from(["weft", "run"]).is_err());
    }

    #[test]
    fn shm_defaults_and_opt_out() {
        let c = RuntimeConfig::resolve(&args(&["--data-dir", "/d"]), env_of(&[])).unwrap();
        let shm = c.shm.expect("shared memory is on by default");
        assert_eq!(shm.socket, PathBuf::from("/d/shm.sock"));
        assert_eq!(shm.spin, Duration::from_micros(50));
        let c = RuntimeConfig::resolve(&args(&["--no-shm"]), env_of(&[])).unwrap();
        assert!(c.shm.is_none());
    }

    #[test]
    fn mesh_identity_defaults_to_a_dev_ca() {
        let c = RuntimeConfig::resolve(
            &args(&["--data-dir", "/d"]),
            env_of(&[("XDG_RUNTIME_DIR", "/run/user/7")]),
        )
        .unwrap();
        assert_eq!(
            c.mesh_identity,
            MeshIdentityConfig {
                trust_domain: "public".into(),
                namespace: "default".into(),
                source: MeshCertSource::DevCa {
                    dir: PathBuf::from("/run/user/7/weft/dev-ca")
                },
                plaintext: false,
            }
        );
        // Not per data dir: runtimes of different apps share it.
        let other = RuntimeConfig::resolve(
            &args(&["--data-dir", "/e"]),
            env_of(&[("XDG_RUNTIME_DIR", "/run/user/7")]),
        )
        .unwrap();
        assert_eq!(other.mesh_identity.source, c.mesh_identity.source);
        let tmp = RuntimeConfig::resolve(&args(&[]), env_of(&[])).unwrap();
        let MeshCertSource::DevCa { dir } = tmp.mesh_identity.source else {
            panic!("dev CA expected")
        };
        assert!(
            dir.to_string_lossy().starts_with("/tmp/weft-dev-ca-"),
            "{}",
            dir.display()
        );
        let id = match c.mesh_identity.tls_source("orders").unwrap() {
            Some(crate::security::tls::TlsSource::DevCa { identity, .. }) => identity,
            other => panic!("{other:?}"),
        };
        assert_eq!(id.to_string(), "spiffe://public/ns/default/orders");

        let c = RuntimeConfig::resolve(
            &args(&[
                "--dev-ca-dir",
                "/ca",
                "--trust-domain",
                "corp",
                "--dev-insecure-plaintext-mesh",
            ]),
            env_of(&[("NAMESPACE", "team-a")]),
        )
        .unwrap();
        let m = c.mesh_identity;
        assert_eq!(m.source, MeshCertSource::DevCa { dir: "/ca".into() });
        assert_eq!(
            (m.trust_domain.as_str(), m.namespace.as_str()),
            ("corp", "team-a")
        );
        assert!(m.plaintext);
        assert!(m.tls_source("orders").unwrap().is_none());

        let c = RuntimeConfig::resolve(
            &args(&["--namespace", "team-b"]),
            env_of(&[("NAMESPACE", "team-a")]),
        )
        .unwrap();
        assert_eq!(c.mesh_identity.namespace, "team-b");
    }

    #[test]
    fn mtls_files_go_together() {
        let files = [
            "--mtls-cert",
            "/c.pem",
            "--mtls-key",
            "/k.pem",
            "--mtls-trust-bundle",
            "/b.pem",
        ];
        let c = RuntimeConfig::resolve(&args(&files), env_of(&[])).unwrap();
        assert_eq!(
            c.mesh_identity.source,
            MeshCertSource::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into(),
                trust_bundle: "/b.pem".into()
            }
        );
        let err = RuntimeConfig::resolve(&args(&files[..2]), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--mtls-key and --mtls-trust-bundle missing"),
            "{err}"
        );
        let mut plain = files.to_vec();
        plain.push("--dev-insecure-plaintext-mesh");
        let err = RuntimeConfig::resolve(&args(&plain), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dev-insecure-plaintext-mesh"), "{err}");
    }

    #[test]
    fn trust_domain_and_namespace_are_validated() {
        let err = RuntimeConfig::resolve(&args(&["--trust-domain", "Corp"]), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--trust-domain"), "{err}");
        let err = RuntimeConfig::resolve(&args(&["--namespace", "a/b"]), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--namespace"), "{err}");
    }

    #[test]
    fn ca_subcommands_parse() {
        let cli = Cli::try_parse_from(["weft", "ca", "init", "--dir", "/ca"]).unwrap();
        let Command::Ca(CaCommand::Init(a)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(
            (a.trust_domain.as_str(), a.days, a.force),
            ("public", 365, false)
        );

        let cli = Cli::try_parse_from([
            "weft", "ca", "issue", "--ca-dir", "/ca", "--app-id", "orders", "--ttl", "90m",
            "--out", "/o",
        ])
        .unwrap();
        let Command::Ca(CaCommand::Issue(a)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(a.ttl, Duration::from_secs(5400));
        assert_eq!(a.namespace, "default");

        for bad in [
            &["--app-id", "bad id"][..],
            &["--app-id", "a", "--ttl", "24"],
            &["--app-id", "a", "--ttl", "0h"],
            &["--app-id", "a", "--namespace", "a/b"],
        ] {
            let mut argv = vec!["weft", "ca", "issue", "--ca-dir", "/ca", "--out", "/o"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
        }
        assert!(
            Cli::try_parse_from(["weft", "ca", "init", "--dir", "/ca", "--trust-domain", "A"])
                .is_err()
        );
    }

    #[test]
    fn only_grpc_app_protocol() {
        assert!(
            Cli::try_parse_from(["weft", "run", "--app-id", "a", "--app-protocol", "http"])
                .is_err()
        );
    }
}
