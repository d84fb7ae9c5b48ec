//! The calling side of the mesh: resolves the target app, picks an
//! instance, and calls it over a pooled, multiplexed HTTP/2 connection
//! (one per instance) protected by mutual TLS.
//!
//! A call is retried on another instance only when it certainly never
//! reached the first one: the connection could not be established
//! (refused, unreachable, TLS or identity failure). Once a request may have
//! been sent it is never repeated, as the method may not be idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use weft_blocks::app::{Invoked, ERROR_ORIGIN_HEADER};
use weft_blocks::context::{header, TRACEPARENT};
use weft_blocks::invoke::RemoteInvoker;
use weft_blocks::telemetry::{Labels, Telemetry};
use weft_blocks::BlockError;
use weft_components::nameresolution::{NameResolver, ResolveError};
use weft_proto::mesh;
use weft_proto::mesh::mesh_client::MeshClient as GrpcMeshClient;

use super::balancer::{Balancer, InstanceStats};
use super::io::MaybeTls;
use crate::api::status::{caused_by, deadline_fired, from_status};
use crate::coalesce::Coalesce;
use crate::config::LbPolicy;
use crate::security::tls::{peer_identity, MeshTls};

/// How long establishing a connection (TCP + TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most instances tried for one call.
const MAX_ATTEMPTS: usize = 3;

/// Why a connection to an instance could not be made. Its presence in an
/// error's source chain proves the request was never sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {addr}: {reason}")]
pub struct ConnectError {
    addr: SocketAddr,
    reason: String,
}

/// Who a connection must reach: the caller's view of the target.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    tls: Option<Arc<MeshTls>>,
    /// `weft_mesh_tls_handshakes_total`.
    handshakes: Family<Labels, Counter>,
    app_id: String,
    namespace: String,
    trust_domain: String,
}

type ClientIo = TokioIo<Coalesce<MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>>>;

impl tower_service::Service<Uri> for Connector {
    type Response = ClientIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let fail = |reason: String| ConnectError {
                addr: this.addr,
                reason,
            };
            let connect = async {
                let tcp = TcpStream::connect(this.addr)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                let Some(tls) = &this.tls else {
                    return Ok(TokioIo::new(Coalesce::new(MaybeTls::Plain(tcp))));
                };
                let connector = tokio_rustls::TlsConnector::from(tls.client_config());
                let name = rustls::pki_types::ServerName::try_from("weft.mesh")
                    .expect("static server name is valid");
                let handshake = |result: &str| {
                    this.handshakes
                        .get_or_create(&vec![
                            ("side", "client".to_string()),
                            ("result", result.to_string()),
                        ])
                        .inc();
                };
                let stream = connector.connect(name, tcp).await.map_err(|e| {
                    handshake("failed");
                    fail(format!("TLS handshake failed: {e}{}", trust_hint(&e)))
                })?;
                let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
                let id = peer_identity(certs).map_err(|e| {
                    handshake("failed");
                    fail(e.to_string())
                })?;
                if id.app_id != this.app_id
                    || id.namespace != this.namespace
                    || id.trust_domain != this.trust_domain
                {
                    handshake("failed");
                    return Err(fail(format!(
                        "the instance presented identity {id}, expected app '{}' in namespace '{}' of trust domain '{}'",
                        this.app_id, this.namespace, this.trust_domain
                    )));
                }
                handshake("ok");
                Ok(TokioIo::new(Coalesce::new(MaybeTls::Tls(Box::new(stream)))))
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(r) => r,
                Err(_) => Err(fail(format!("no connection within {CONNECT_TIMEOUT:?}"))),
            }
        })
    }
}

/// One instance: its statistics and its connection.
struct Instance {
    stats: InstanceStats,
    client: GrpcMeshClient<Channel>,
}

impl AsRef<InstanceStats> for Arc<Instance> {
    fn as_ref(&self) -> &InstanceStats {
        &self.stats
    }
}

/// The mesh client of one runtime.
pub struct MeshClient {
    resolver: Arc<dyn NameResolver>,
    tls: Option<Arc<MeshTls>>,
    namespace: String,
    trust_domain: String,
    max_body_size: usize,
    balancer: Balancer,
    instances: Mutex<HashMap<(String, SocketAddr), Arc<Instance>>>,
    telemetry: Arc<Telemetry>,
    /// Call latency histograms by called app id.
    latency: Mutex<HashMap<String, Histogram>>,
}

impl MeshClient {
    pub fn new(
        resolver: Arc<dyn NameResolver>,
        tls: Option<Arc<MeshTls>>,
        namespace: &str,
        trust_domain: &str,
        policy: LbPolicy,
        max_body_size: usize,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            resolver,
            tls,
            namespace: namespace.to_string(),
            trust_domain: trust_domain.to_string(),
            max_body_size,
            balancer: Balancer::new(policy),
            instances: Mutex::new(HashMap::new()),
            telemetry,
            latency: Mutex::new(HashMap::new()),
        }
    }

    /// The latency histogram of calls to `app_id`.
    fn latency(&self, app_id: &str) -> Histogram {
        let mut map = self.latency.lock().expect("mesh latency map poisoned");
        if let Some(h) = map.get(app_id) {
            return h.clone();
        }
        let h = self.telemetry.metrics.mesh_call(app_id);
        map.insert(app_id.to_string(), h.clone());
        h
    }

    /// Counts and logs an ejection.
    fn ejected(&self, app_id: &str, addr: SocketAddr, t: Duration, why: &str) {
        self.telemetry.metrics.mesh_ejections.inc();
        tracing::warn!(app_id = %app_id, instance = %addr, eject_for = ?t, "mesh: instance ejected: {why}");
    }

    fn instance(&self, app_id: &str, addr: SocketAddr) -> Arc<Instance> {
        let mut map = self.instances.lock().expect("mesh instance map poisoned");
        map.entry((app_id.to_string(), addr))
            .or_insert_with(|| {
                let connector = Connector {
                    addr,
                    tls: self.tls.clone(),
                    handshakes: self.telemetry.metrics.mesh_handshakes.clone(),
                    app_id: app_id.to_string(),
                    namespace: self.namespace.clone(),
                    trust_domain: self.trust_domain.clone(),
                };
                let channel = Endpoint::from_static("http://weft.mesh")
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .connect_with_connector_lazy(connector);
                Arc::new(Instance {
                    stats: InstanceStats::new(addr),
                    client: GrpcMeshClient::new(channel)
                        .max_decoding_message_size(self.max_body_size.max(4 << 20))
                        .max_encoding_message_size(usize::MAX),
                })
            })
            .clone()
    }

    async fn call(
        &self,
        req: mesh::InvokeRequest,
        timeout: Duration,
    ) -> Result<Invoked, BlockError> {
        self.call_timed(req, None, timeout).await
    }

    /// Calls one of `instances` (mesh addresses of runtimes of
    /// `req.target_app_id`, learnt elsewhere than name resolution: the
    /// Dubbo registry) with the same connections, balancing, ejection and
    /// retry rules as [`RemoteInvoker::invoke`].
    pub async fn call_at(
        &self,
        req: mesh::InvokeRequest,
        instances: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Invoked, BlockError> {
        self.call_timed(req, Some(instances), timeout).await
    }

    async fn call_timed(
        &self,
        req: mesh::InvokeRequest,
        instances: Option<&[SocketAddr]>,
        timeout: Duration,
    ) -> Result<Invoked, BlockError> {
        let started = Instant::now();
        let app_id = req.target_app_id.clone();
        let r = self.attempt(req, instances, timeout).await;
        // Only apps that exist get a series (a mistyped id must not add
        // one per typo).
        if !matches!(r, Err(BlockError::NotFound(_))) {
            self.latency(&app_id)
                .observe(started.elapsed().as_secs_f64());
        }
        r
    }

    /// Resolves, picks and calls instances until one answers, the deadline
    /// passes or [`MAX_ATTEMPTS`] are used.
    async fn attempt(
        &self,
        req: mesh::InvokeRequest,
        instances: Option<&[SocketAddr]>,
        timeout: Duration,
    ) -> Result<Invoked, BlockError> {
        let app_id = req.target_app_id.clone();
        let resolved;
        let addrs = match instances {
            Some(given) => given,
            None => {
                resolved = self
                    .resolver
                    .resolve(&app_id, &self.namespace)
                    .await
                    .map_err(|e| match e {
                        ResolveError::NotFound { .. } => BlockError::NotFound(e.to_string()),
                        other => BlockError::Unavailable(other.to_string()),
                    })?;
                &resolved[..]
            }
        };
        let mut candidates: Vec<Arc<Instance>> =
            addrs.iter().map(|a| self.instance(&app_id, *a)).collect();
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        for _ in 0..MAX_ATTEMPTS {
            let Some(chosen) = self.balancer.pick(&candidates).cloned() else {
                break;
            };
            candidates.retain(|c| !Arc::ptr_eq(c, &chosen));
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(left);
            // The trace context also rides as gRPC metadata on the hop itself.
            if let Some(tp) = header(&req.headers, TRACEPARENT) {
                if let Ok(v) = tp.parse() {
                    request.metadata_mut().insert(TRACEPARENT, v);
                }
            }
            let mut client = chosen.client.clone();
            let outcome = {
                let _in_flight = chosen.stats.start_call();
                tokio::time::timeout(left, client.invoke(request)).await
            };
            let out_of_time = || {
                BlockError::DeadlineExceeded(format!(
                    "invocation of app '{app_id}' (instance {}) did not complete within {timeout:?}",
                    chosen.stats.addr
                ))
            };
            match outcome {
                Ok(Ok(resp)) => {
                    chosen.stats.record_success();
                    let body = resp.into_inner();
                    return Ok(Invoked {
                        response: body.message.unwrap_or_default(),
                        headers: body.headers,
                    });
                }
                Ok(Err(status)) if never_sent(&status) => {
                    if let Some(t) = chosen.stats.record_failure(true, Instant::now()) {
                        let why = format!("{}; trying another", status.message());
                        self.ejected(&app_id, chosen.stats.addr, t, &why);
                    }
                    last_error = Some(BlockError::Unavailable(format!(
                        "app '{app_id}': {}",
                        describe(&status)
                    )));
                }
                // tonic's own grpc-timeout timer, racing ours: the same
                // answer as ours, and not the instance's fault.
                Ok(Err(status)) if deadline_fired(&status) => return Err(out_of_time()),
                Ok(Err(status)) => {
                    if !is_transport_failure(&status) {
                        // An answer of the called runtime or app.
                        chosen.stats.record_success();
                        return Err(from_status(&status));
                    }
                    if let Some(t) = chosen.stats.record_failure(false, Instant::now()) {
                        self.ejected(&app_id, chosen.stats.addr, t, "repeated failures");
                    }
                    return Err(BlockError::Unavailable(format!(
                        "app '{app_id}': the connection to instance {} failed during the call: {}",
                        chosen.stats.addr,
                        describe(&status)
                    )));
                }
                Err(_) => return Err(out_of_time()),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            BlockError::DeadlineExceeded(format!(
                "invocation of app '{app_id}' did not start within {timeout:?}"
            ))
        }))
    }
}

impl RemoteInvoker for MeshClient {
    fn invoke(
        &self,
        req: mesh::InvokeRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Invoked, BlockError>> {
        Box::pin(self.call(req, timeout))
    }
}

/// What to do about a handshake that failed on trust: the two runtimes'
/// certificates come from roots the other does not know.
pub(crate) fn trust_hint(e: &std::io::Error) -> &'static str {
    let unknown_root = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|re| {
            matches!(
                re,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    | rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
                    | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
            )
        });
    if unknown_root {
        " (the two runtimes do not trust each other's certificate authority: give both the same \
         --dev-ca-dir for development, or certificates issued by one CA with its root in \
         --mtls-trust-bundle)"
    } else {
        ""
    }
}

/// The connection was never established, so the request was not sent.
fn never_sent(status: &Status) -> bool {
    caused_by::<ConnectError>(status)
}

/// An error of the connection, produced locally by the HTTP/2 client (an
/// answer of the called runtime or app is decoded from the response and has
/// no source error).
fn is_transport_failure(status: &Status) -> bool {
    status.metadata().get(ERROR_ORIGIN_HEADER).is_none()
        && std::error::Error::source(status).is_some()
}

/// The innermost cause, for an error message that says what happened.
fn describe(status: &Status) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut last = status.message().to_string();
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return c.to_string();
        }
        last = e.to_string();
        source = e.source();
    }
    last
}
