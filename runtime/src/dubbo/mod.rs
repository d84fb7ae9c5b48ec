//! The Dubbo proxy: Dubbo apps keep their registry habits and their wire
//! protocol, and their calls cross the mesh (docs/dubbo.md).
//!
//! * [`http`]: MOSN's registry-proxy API (`/pub`, `/unpub`, `/sub`,
//!   `/unsub`) on the runtime's HTTP port. `/pub` writes a provider node in
//!   ZooKeeper advertising this runtime's *inbound* listener (with the
//!   runtime's app id and mesh address as URL parameters); `/sub` writes a
//!   consumer node and keeps the providers' route table.
//! * The *outbound* listener (127.0.0.1, `--dubbo-port`) takes the app's
//!   Dubbo consumers' calls and routes each by interface, group and version
//!   to a provider: a provider behind a runtime through the mesh (mutual
//!   TLS, the connections, balancing, ejection and access policies of
//!   `InvokeService`, the Dubbo method as the policy's operation), any
//!   other provider over plain Dubbo.
//! * Calls arriving through the mesh, and plain Dubbo calls on the
//!   *inbound* listener (consumers outside the mesh that read ZooKeeper),
//!   go to the local app's Dubbo port over one multiplexed connection
//!   ([`upstream`]).
//!
//! Only the frame header and the hessian2 request prefix are read; bodies
//! pass through untouched. Errors reach the Dubbo caller as Dubbo does it: a
//! response status (60 no provider, 31 timeout, 40 bad request, 80 server
//! error) with a hessian2 string saying why.

pub mod http;
mod listener;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::task::JoinHandle;
use weft_blocks::app::{AppInvoker, Invoked};
use weft_blocks::invoke::DUBBO_FRAME_CONTENT_TYPE;
use weft_blocks::resiliency::Target;
use weft_blocks::telemetry::ApiMetrics;
use weft_blocks::Code;
use weft_blocks::{BlockError, Blocks, Shutdown};
use weft_dubbo::frame::serialization;
use weft_dubbo::hessian::{read_request, Request};
use weft_dubbo::registry::{Registries, ServiceKey};
use weft_dubbo::{Decoder, Frame, Status};
use weft_proto::{common, mesh};

use self::listener::Handler;
use self::upstream::{UpstreamError, Upstreams};
use crate::config::DubboSettings;
use crate::mesh::client::MeshClient;

/// Provider URL parameter: the app id of the runtime that published it.
pub const APP_ID_PARAM: &str = "weft.app-id";
/// Provider URL parameter: that runtime's mesh address.
pub const MESH_PARAM: &str = "weft.mesh";

/// A started proxy and its listeners.
pub struct Started {
    pub proxy: Arc<DubboProxy>,
    /// The outbound listener's address, if configured.
    pub outbound: Option<SocketAddr>,
    /// The inbound listener's address as advertised in the registry.
    pub inbound: SocketAddr,
    pub servers: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

/// What the provider side needs: the services published and the
/// connections to the app.
struct Local {
    published: Mutex<HashMap<ServiceKey, u16>>,
    upstreams: Upstreams,
    decoder: Decoder,
}

/// The Dubbo proxy of one runtime.
pub struct DubboProxy {
    app_id: String,
    blocks: Arc<Blocks>,
    mesh: Arc<MeshClient>,
    mesh_addr: SocketAddr,
    inbound: SocketAddr,
    app_port: u16,
    default_timeout: Duration,
    registries: Registries,
    local: Arc<Local>,
    /// Round-robin over providers outside the mesh.
    next_plain: AtomicUsize,
    outbound_calls: ApiMetrics,
    inbound_calls: ApiMetrics,
}

/// Binds the listeners, connects the provider side to the invocation block
/// and serves until shutdown.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    settings: &DubboSettings,
    app_id: &str,
    blocks: Arc<Blocks>,
    mesh: Arc<MeshClient>,
    mesh_addr: SocketAddr,
    default_timeout: Duration,
    max_body: usize,
    shutdown: Shutdown,
) -> anyhow::Result<Started> {
    let inbound_listener = tokio::net::TcpListener::bind(settings.inbound)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--dubbo-inbound-port)",
                settings.inbound
            )
        })?;
    let inbound = SocketAddr::new(mesh_addr.ip(), inbound_listener.local_addr()?.port());
    let outbound_listener = match settings.outbound {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--dubbo-port)"))?,
        ),
        None => None,
    };
    let outbound = match &outbound_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let decoder = Decoder::new(max_body);
    let local = Arc::new(Local {
        published: Mutex::new(HashMap::new()),
        upstreams: Upstreams::new(max_body),
        decoder,
    });
    blocks
        .invoke
        .set_protocol_app(Arc::new(AppSide(local.clone())));
    let metrics = &blocks.telemetry.metrics;
    let proxy = Arc::new(DubboProxy {
        app_id: app_id.to_string(),
        outbound_calls: metrics.api("dubbo-outbound", "Call"),
        inbound_calls: metrics.api("dubbo-inbound", "Call"),
        blocks: blocks.clone(),
        mesh,
        mesh_addr,
        inbound,
        app_port: settings.app_port,
        default_timeout,
        registries: Registries::new(),
        local,
        next_plain: AtomicUsize::new(0),
    });
    let mut servers = vec![(
        "dubbo-inbound",
        tokio::spawn(listener::serve(
            inbound_listener,
            Arc::new(InboundSide(proxy.clone())),
            decoder,
            shutdown.clone(),
            "inbound",
        )),
    )];
    if let Some(l) = outbound_listener {
        servers.push((
            "dubbo-outbound",
            tokio::spawn(listener::serve(
                l,
                Arc::new(OutboundSide(proxy.clone())),
                decoder,
                shutdown,
                "outbound",
            )),
        ));
    }
    tracing::info!(inbound = %inbound, outbound = ?outbound, app_port = settings.app_port, "dubbo proxy ready");
    Ok(Started {
        proxy,
        outbound,
        inbound,
        servers,
    })
}

impl DubboProxy {
    /// Withdraws every registration (provider and consumer nodes).
    pub async fn close(&self) {
        self.registries.close_all().await;
    }

    /// Routes one call of the app's consumers.
    async fn route(&self, frame: Frame) -> Result<Option<Frame>, Refusal> {
        let req = parse(&frame)?;
        let timeout = req.timeout().unwrap_or(self.default_timeout);
        let (in_mesh, plain) = self.providers(&req)?;
        if let Some((app_id, addrs)) = in_mesh.into_iter().next() {
            return self
                .via_mesh(app_id, &addrs, &req, &frame, timeout)
                .await
                .map_err(Refusal::from);
        }
        // Providers outside the mesh: round robin, the next one only when
        // the connection could not be made (the request was not sent).
        let start = self.next_plain.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..plain.len().min(3) {
            let addr = plain[(start + i) % plain.len()];
            match self
                .local
                .upstreams
                .call(addr, frame.clone(), timeout)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(e @ UpstreamError::Connect { .. }) => last = Some(e),
                Err(e) => return Err(Refusal::from(upstream_error(e))),
            }
        }
        Err(Refusal::from(upstream_error(
            last.expect("a provider was tried"),
        )))
    }

    /// The providers of a call: those behind runtimes (by app id, their
    /// mesh addresses) and the others (their Dubbo addresses).
    #[allow(clippy::type_complexity)]
    fn providers(
        &self,
        req: &Request,
    ) -> Result<(BTreeMap<String, Vec<SocketAddr>>, Vec<SocketAddr>), Refusal> {
        let (iface, group, version) = (req.interface(), req.group(), req.version());
        let mut why = Vec::new();
        let mut in_mesh: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        let mut plain = Vec::new();
        let registries = self.registries.all();
        for r in &registries {
            match r.lookup(iface, group, version) {
                Ok(found) => {
                    for p in found {
                        let u = &p.url;
                        let mesh = u.param(MESH_PARAM).and_then(|m| m.parse().ok());
                        match (u.param(APP_ID_PARAM), mesh) {
                            (Some(app), Some(addr)) if !app.is_empty() => {
                                let list = in_mesh.entry(app.to_string()).or_default();
                                if !list.contains(&addr) {
                                    list.push(addr);
                                }
                            }
                            _ => match p.address().parse::<SocketAddr>() {
                                Ok(a) if !plain.contains(&a) => plain.push(a),
                                Ok(_) => {}
                                Err(_) => why.push(format!(
                                    "provider {} has an address that is not ip:port",
                                    p.address()
                                )),
                            },
                        }
                    }
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        if in_mesh.is_empty() && plain.is_empty() {
            let key = ServiceKey {
                interface: iface.into(),
                group: group.into(),
                version: version.into(),
            };
            let message = if registries.is_empty() {
                format!(
                    "weft: no provider of {key}: the app subscribed to nothing (POST /sub first)"
                )
            } else {
                format!("weft: no provider of {key}: {}", why.join("; "))
            };
            return Err(Refusal(Status::SERVICE_NOT_FOUND, message));
        }
        Ok((in_mesh, plain))
    }

    /// One call to a provider's runtime through the mesh.
    async fn via_mesh(
        &self,
        app_id: String,
        addrs: &[SocketAddr],
        req: &Request,
        frame: &Frame,
        timeout: Duration,
    ) -> Result<Option<Frame>, BlockError> {
        let two_way = frame.header.two_way;
        let request = mesh::InvokeRequest {
            target_app_id: app_id.clone(),
            caller_app_id: self.app_id.clone(),
            message: Some(common::InvokeRequest {
                method: req.method.clone(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: frame.to_bytes().to_vec(),
                }),
                content_type: DUBBO_FRAME_CONTENT_TYPE.into(),
                http_extension: None,
            }),
            headers: Vec::new(),
        };
        // The caller's resiliency policies and flow rules for the provider's
        // app apply as to InvokeService (the Dubbo method is the method).
        let target = Target::App(&app_id);
        let invoked = match self.blocks.resiliency.active().filter(|r| r.covers(target)) {
            Some(r) => {
                r.call(target, &req.method, timeout, |t| {
                    self.mesh.call_at(request.clone(), addrs, t)
                })
                .await?
            }
            None => self.mesh.call_at(request, addrs, timeout).await?,
        };
        if !two_way {
            return Ok(None);
        }
        let data = invoked
            .response
            .data
            .map(|a| Bytes::from(a.value))
            .unwrap_or_default();
        let mut answer = decode_one(&self.local.decoder, data).map_err(|e| {
            BlockError::Internal(format!(
                "the runtime of app '{app_id}' answered with no Dubbo response: {e}"
            ))
        })?;
        answer.header.request_id = frame.header.request_id;
        Ok(Some(answer))
    }

    /// A plain Dubbo call on the inbound listener: the global access policy
    /// applies (the caller is not identified), then the app answers.
    async fn inbound(&self, frame: Frame) -> Result<Option<Frame>, Refusal> {
        let req = parse(&frame)?;
        self.blocks
            .invoke
            .admit_anonymous(&req.method)
            .map_err(Refusal::from)?;
        let timeout = req.timeout().unwrap_or(self.default_timeout);
        self.local
            .deliver(frame, &req, timeout)
            .await
            .map_err(Refusal::from)
    }
}

impl Local {
    /// Hands a request for a published service to the app.
    async fn deliver(
        &self,
        frame: Frame,
        req: &Request,
        timeout: Duration,
    ) -> Result<Option<Frame>, BlockError> {
        let key = ServiceKey {
            interface: req.interface().into(),
            group: req.group().into(),
            version: req.version().into(),
        };
        let port = self.published.lock().unwrap().get(&key).copied();
        let Some(port) = port else {
            let published: Vec<String> = self
                .published
                .lock()
                .unwrap()
                .keys()
                .map(ToString::to_string)
                .collect();
            return Err(BlockError::NotFound(format!(
                "{key} is not published through this runtime (published: {})",
                if published.is_empty() {
                    "none".to_string()
                } else {
                    published.join(", ")
                }
            )));
        };
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        self.upstreams
            .call(addr, frame, timeout)
            .await
            .map_err(upstream_error)
    }
}

/// The provider side as the invocation block sees it: calls arriving
/// through the mesh with [`DUBBO_FRAME_CONTENT_TYPE`].
struct AppSide(Arc<Local>);

impl AppInvoker for AppSide {
    fn on_invoke(
        &self,
        req: common::InvokeRequest,
        _headers: Vec<mesh::Header>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Invoked, BlockError>> {
        async move {
            let data = req.data.map(|a| Bytes::from(a.value)).unwrap_or_default();
            let frame = decode_one(&self.0.decoder, data)
                .map_err(|e| BlockError::invalid_argument(format!("mesh Dubbo call: {e}")))?;
            if !frame.header.request || frame.header.event {
                return Err(BlockError::invalid_argument(
                    "mesh Dubbo call: the frame is not a request",
                ));
            }
            let parsed = parse(&frame).map_err(|r| BlockError::invalid_argument(r.1))?;
            let answer = self.0.deliver(frame, &parsed, timeout).await?;
            Ok(Invoked {
                response: common::InvokeResponse {
                    data: answer.map(|f| prost_types::Any {
                        type_url: String::new(),
                        value: f.to_bytes().to_vec(),
                    }),
                    content_type: DUBBO_FRAME_CONTENT_TYPE.into(),
                },
                headers: Vec::new(),
            })
        }
        .boxed()
    }
}

struct OutboundSide(Arc<DubboProxy>);

impl Handler for OutboundSide {
    fn handle(self: Arc<Self>, request: Frame) -> BoxFuture<'static, Option<Frame>> {
        async move {
            let started = Instant::now();
            let (id, two_way) = (request.header.request_id, request.header.two_way);
            let r = self.0.route(request).await;
            answer(&self.0.outbound_calls, started, id, two_way, r)
        }
        .boxed()
    }
}

struct InboundSide(Arc<DubboProxy>);

impl Handler for InboundSide {
    fn handle(self: Arc<Self>, request: Frame) -> BoxFuture<'static, Option<Frame>> {
        async move {
            let started = Instant::now();
            let (id, two_way) = (request.header.request_id, request.header.two_way);
            let r = self.0.inbound(request).await;
            answer(&self.0.inbound_calls, started, id, two_way, r)
        }
        .boxed()
    }
}

/// The frame to send back, counted.
fn answer(
    metrics: &ApiMetrics,
    started: Instant,
    id: u64,
    two_way: bool,
    r: Result<Option<Frame>, Refusal>,
) -> Option<Frame> {
    match r {
        Ok(f) => {
            metrics.record(Code::Ok, Some(started));
            f.filter(|_| two_way)
        }
        Err(Refusal(status, message)) => {
            metrics.record(refusal_code(status), Some(started));
            if status == Status::SERVICE_NOT_FOUND || status == Status::SERVER_ERROR {
                tracing::debug!(status = status.0, "dubbo call refused: {message}");
            }
            two_way.then(|| Frame::error_response(id, status, &message))
        }
    }
}

fn refusal_code(s: Status) -> Code {
    match s {
        Status::BAD_REQUEST => Code::InvalidArgument,
        Status::SERVICE_NOT_FOUND => Code::NotFound,
        Status::SERVER_TIMEOUT | Status::CLIENT_TIMEOUT => Code::DeadlineExceeded,
        Status::SERVER_THREADPOOL_EXHAUSTED_ERROR => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// A call answered by the runtime itself: the Dubbo status and why.
#[derive(Debug)]
struct Refusal(Status, String);

impl From<BlockError> for Refusal {
    fn from(e: BlockError) -> Self {
        let status = match &e {
            BlockError::InvalidArgument(_) | BlockError::PermissionDenied(_) => Status::BAD_REQUEST,
            BlockError::NotFound(_) | BlockError::Unavailable(_) => Status::SERVICE_NOT_FOUND,
            BlockError::DeadlineExceeded(_) => Status::SERVER_TIMEOUT,
            BlockError::ResourceExhausted(_) => Status::SERVER_THREADPOOL_EXHAUSTED_ERROR,
            _ => Status::SERVER_ERROR,
        };
        Refusal(status, format!("weft: {}", e.message()))
    }
}

/// A Dubbo server's failure as the block error it amounts to.
fn upstream_error(e: UpstreamError) -> BlockError {
    match e {
        UpstreamError::Timeout { .. } => BlockError::DeadlineExceeded(e.to_string()),
        UpstreamError::Connect { .. } | UpstreamError::Closed { .. } => {
            BlockError::Unavailable(e.to_string())
        }
    }
}

/// Reads what routing needs of a request; only hessian2 bodies are read.
fn parse(frame: &Frame) -> Result<Request, Refusal> {
    let ser = frame.header.serialization;
    if ser != serialization::HESSIAN2 {
        return Err(Refusal(
            Status::BAD_REQUEST,
            format!(
                "weft: serialization {} (id {ser}) is not supported: the runtime routes hessian2 requests (set serialization=hessian2)",
                serialization::name(ser)
            ),
        ));
    }
    read_request(&frame.body).map_err(|e| {
        Refusal(
            Status::BAD_REQUEST,
            format!("weft: unreadable Dubbo request: {e}"),
        )
    })
}

/// Exactly one whole frame.
fn decode_one(decoder: &Decoder, data: Bytes) -> Result<Frame, String> {
    let mut buf = bytes::BytesMut::from(&data[..]);
    match decoder.decode(&mut buf) {
        Ok(Some(f)) if buf.is_empty() => Ok(f),
        Ok(Some(_)) => Err("more than one frame".into()),
        Ok(None) => Err("an incomplete frame".into()),
        Err(e) => Err(e.to_string()),
    }
}
