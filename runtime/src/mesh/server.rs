//! The called side of the mesh: accepts mTLS connections, learns each
//! caller's SPIFFE identity from its certificate and serves
//! `weft.internal.v1.Mesh` with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::{Request, Response, Status};
use weft_proto::mesh;
use weft_proto::mesh::mesh_server::{Mesh, MeshServer};

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use prometheus_client::metrics::gauge::Gauge;
use weft_blocks::context::{header, TRACEPARENT, TRACESTATE};
use weft_blocks::telemetry::{Metrics, Telemetry};
use weft_blocks::{Authentication, Blocks, CallContext, Caller, PeerIdentity, Shutdown};

use super::io::MaybeTls;
use crate::api::headers;
use crate::api::status::to_status;
use crate::coalesce::Coalesce;
use crate::security::tls::{peer_identity, MeshTls};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted mesh connection and who is on the other end.
pub struct Inbound {
    io: Coalesce<MaybeTls<TlsStream<TcpStream>>>,
    peer: Arc<PeerIdentity>,
    /// `weft_mesh_connections`, decremented when the connection closes.
    open: Gauge,
}

impl Inbound {
    fn new(io: MaybeTls<TlsStream<TcpStream>>, peer: PeerIdentity, open: &Gauge) -> Self {
        open.inc();
        Self {
            io: Coalesce::new(io),
            peer: Arc::new(peer),
            open: open.clone(),
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Inbound {
    /// Who is on the other end (every request of the connection carries it).
    pub fn peer(&self) -> Arc<PeerIdentity> {
        self.peer.clone()
    }
}

impl tokio::io::AsyncRead for Inbound {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Inbound {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Accepts connections and completes handshakes concurrently, so one slow
/// or hostile client cannot hold up the others. Refused handshakes are
/// logged with the reason (no certificate, unknown root, expired, …).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<MeshTls>>,
    metrics: &Metrics,
    shutdown: Shutdown,
) -> mpsc::Receiver<Result<Inbound, std::io::Error>> {
    let open = metrics.mesh_connections.clone();
    let handshakes = metrics.mesh_handshakes.clone();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config()));
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.wait() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "mesh: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            match &acceptor {
                None => {
                    let conn = Inbound::new(MaybeTls::Plain(tcp), PeerIdentity::Unverified, &open);
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let (open, handshakes) = (open.clone(), handshakes.clone());
                    tokio::spawn(async move {
                        let conn = handshake(acceptor, tcp, remote, &open).await;
                        let result = if conn.is_some() { "ok" } else { "failed" };
                        handshakes
                            .get_or_create(&vec![
                                ("side", "server".to_string()),
                                ("result", result.to_string()),
                            ])
                            .inc();
                        if let Some(conn) = conn {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                }
            }
        }
    });
    rx
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    open: &Gauge,
) -> Option<Inbound> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, hint = super::client::trust_hint(&e), "mesh: refused a connection: TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(%remote, "mesh: refused a connection: TLS handshake timed out");
            return None;
        }
    };
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    match peer_identity(certs) {
        Ok(id) => Some(Inbound::new(
            MaybeTls::Tls(Box::new(tls)),
            PeerIdentity::Verified {
                trust_domain: id.trust_domain,
                namespace: id.namespace,
                app_id: id.app_id,
            },
            open,
        )),
        Err(e) => {
            tracing::warn!(%remote, error = %e, "mesh: refused a connection: no usable SPIFFE identity");
            None
        }
    }
}

/// `weft.internal.v1.Mesh` on top of the invocation block.
pub struct MeshService {
    blocks: Arc<Blocks>,
}

impl MeshService {
    pub fn new(blocks: Arc<Blocks>, max_body_size: usize) -> MeshServer<Self> {
        MeshServer::new(Self { blocks })
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl Mesh for MeshService {
    async fn invoke(
        &self,
        r: Request<mesh::InvokeRequest>,
    ) -> Result<Response<mesh::InvokeResponse>, Status> {
        let peer = r
            .extensions()
            .get::<Arc<PeerIdentity>>()
            .cloned()
            .ok_or_else(|| Status::internal("mesh: connection without peer information"))?;
        let mut ctx = CallContext {
            caller: Caller::Runtime(PeerIdentity::clone(&peer)),
            authentication: Authentication::Mesh,
            timed: true,
            ..CallContext::default()
        }
        .with_timeout(headers::deadline(r.metadata()));
        let req = r.into_inner();
        // The server span of this hop, a child of the calling runtime's
        // client span (its traceparent rides in the request's headers).
        let telemetry = &self.blocks.telemetry;
        ctx.trace = telemetry.start_from(
            header(&req.headers, TRACEPARENT),
            header(&req.headers, TRACESTATE),
            SpanKind::Server,
            || {
                (
                    "weft.internal.v1.Mesh/Invoke".into(),
                    vec![
                        KeyValue::new("rpc.system", "grpc"),
                        KeyValue::new("rpc.service", "weft.internal.v1.Mesh"),
                        KeyValue::new("rpc.method", "Invoke"),
                        KeyValue::new("weft.invoke.caller", req.caller_app_id.clone()),
                    ],
                )
            },
        );
        let out = self.blocks.invoke.handle_remote(&ctx, req).await;
        Telemetry::end(ctx.trace.clone(), out.as_ref().map(|_| ()));
        let invoked = out.map_err(to_status)?;
        Ok(Response::new(mesh::InvokeResponse {
            message: Some(invoked.response),
            headers: invoked.headers,
        }))
    }
}
