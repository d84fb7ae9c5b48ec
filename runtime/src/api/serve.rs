//! Serves gRPC services (tonic routes) over HTTP/2 on accepted connections,
//! with the caller's deadline answered as gRPC defines it.
//!
//! tonic's own server races the caller with a timer of its own for
//! `grpc-timeout` and answers CANCELLED "Timeout expired" when that timer
//! wins; callers then see a cancellation instead of DEADLINE_EXCEEDED. Here
//! connections are served by hyper directly and the deadline layer answers
//! DEADLINE_EXCEEDED, naming the deadline, once `grpc-timeout` has passed.
//! Used by the app-facing API and the mesh server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::service::Routes;
use weft_blocks::Shutdown;

use crate::api::headers;

/// Serves `routes` on every connection `incoming` yields until shutdown
/// starts, then lets the calls under way finish (the runtime bounds that by
/// its grace period). `info` gives, per connection, a value every request
/// of that connection carries as an extension (the mesh: the caller's
/// verified identity).
pub async fn serve<I, IO, E, F, T>(
    routes: Routes,
    incoming: I,
    shutdown: Shutdown,
    info: F,
) -> anyhow::Result<()>
where
    I: Stream<Item = Result<IO, E>> + Send,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    E: std::fmt::Display,
    F: Fn(&IO) -> T,
    T: Clone + Send + Sync + 'static,
{
    let mut incoming = std::pin::pin!(incoming);
    let graceful = GracefulShutdown::new();
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    loop {
        let io = tokio::select! {
            _ = shutdown.wait() => break,
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accepting a connection failed");
                    continue;
                }
                None => break,
            },
        };
        let service = Deadline {
            inner: routes.clone(),
            info: info(&io),
            shutdown: shutdown.clone(),
        };
        let conn = http2.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // For a moment new calls on open connections are answered UNAVAILABLE
    // with the reason (a caller learns why, and that it may go elsewhere)
    // while the calls under way go on; then the connections are told to go
    // away (GOAWAY) and close once their calls are done.
    tokio::time::sleep(REFUSE_WINDOW).await;
    graceful.shutdown().await;
    Ok(())
}

/// How long after shutdown starts new calls are refused with a reason
/// before connections are closed.
const REFUSE_WINDOW: Duration = Duration::from_millis(300);

/// Refuses new calls once shutdown started (UNAVAILABLE, with the reason),
/// ends a call whose `grpc-timeout` passed with DEADLINE_EXCEEDED, and adds
/// the connection's `info` to each request.
#[derive(Clone)]
struct Deadline<T> {
    inner: Routes,
    info: T,
    shutdown: Shutdown,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B, T> tower_service::Service<Request<B>> for Deadline<T>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: Request<B>) -> BoxFuture {
        if self.shutdown.is_triggered() {
            return Box::pin(async {
                Ok(tonic::Status::unavailable(
                    "the runtime is shutting down: the call was not started (calls under way finish)",
                )
                .into_http())
            });
        }
        req.extensions_mut().insert(self.info.clone());
        let timeout = headers::timeout_header(req.headers());
        let call = self.inner.call(req);
        Box::pin(async move {
            match timeout {
                None => call.await,
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => Ok(deadline_exceeded(t)),
                },
            }
        })
    }
}

fn deadline_exceeded(t: Duration) -> Response<Body> {
    tonic::Status::deadline_exceeded(format!(
        "the call's deadline (grpc-timeout {t:?}) passed before it was answered"
    ))
    .into_http()
}
