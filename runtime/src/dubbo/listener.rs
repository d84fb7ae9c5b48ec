//! The server side of a Dubbo connection, shared by the outbound listener
//! (the app's consumers) and the inbound one (consumers outside the mesh).
//!
//! Frames are read with the codec's decoder; heartbeats are answered here;
//! each call is handed to the listener's [`Handler`] in a task of its own,
//! so many calls of one connection are in flight at once and answered in
//! the order they finish (Dubbo matches answers by request id). At most
//! [`MAX_IN_FLIGHT`] calls per connection run at once: past that the
//! connection is simply not read until one finishes. A stream that is not
//! Dubbo (wrong magic) or a frame larger than the limit ends that
//! connection only — after answering the oversized request with status 40
//! when its id is known.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use weft_blocks::Shutdown;
use weft_dubbo::frame::FrameError;
use weft_dubbo::{Decoder, Frame, Status};

/// Calls of one connection served at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Answers the calls of a listener's connections.
pub trait Handler: Send + Sync + 'static {
    /// The response to `request` (a request frame, not an event); `None`
    /// for a one-way request.
    fn handle(self: Arc<Self>, request: Frame) -> BoxFuture<'static, Option<Frame>>;
}

/// Accepts connections until shutdown starts; each is served until its
/// peer closes it or shutdown starts (then the calls under way finish and
/// are answered first).
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    decoder: Decoder,
    shutdown: Shutdown,
    side: &'static str,
) -> anyhow::Result<()> {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "dubbo {side}: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            remote,
            handler.clone(),
            decoder,
            shutdown.clone(),
            side,
        ));
    }
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    handler: Arc<dyn Handler>,
    decoder: Decoder,
    shutdown: Shutdown,
    side: &'static str,
) {
    let (mut read, mut write) = tcp.into_split();
    let (tx, mut rx) = mpsc::channel::<Frame>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(first) = rx.recv().await {
            first.encode(&mut buf);
            while buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(f) => f.encode(&mut buf),
                    Err(_) => break,
                }
            }
            if write.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
        let _ = write.shutdown().await;
    });
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let why: String = 'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    if let FrameError::BodyTooLarge { request_id, .. } = &e {
                        let _ = tx
                            .send(Frame::error_response(
                                *request_id,
                                Status::BAD_REQUEST,
                                &format!("weft: {e}"),
                            ))
                            .await;
                    }
                    break 'conn format!("not a Dubbo frame stream: {e}");
                }
            };
            if !frame.header.request {
                continue; // a stray response or a heartbeat's answer
            }
            if frame.header.event {
                if let Some(pong) = frame.heartbeat_response() {
                    let _ = tx.send(pong).await;
                }
                continue;
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("never closed"),
                _ = shutdown.wait() => break 'conn "the runtime is shutting down".into(),
            };
            let (handler, tx) = (handler.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(answer) = handler.handle(frame).await {
                    let _ = tx.send(answer).await;
                }
                drop(permit);
            });
        }
        let n = tokio::select! {
            r = read.read_buf(&mut buf) => r,
            _ = shutdown.wait() => break "the runtime is shutting down".into(),
        };
        match n {
            Ok(0) => break "closed by the peer".into(),
            Ok(_) => {}
            Err(e) => break format!("read failed: {e}"),
        }
    };
    tracing::debug!(%remote, "dubbo {side}: connection ended: {why}");
    // Calls under way are answered before the connection closes.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    let _ = writer.await;
}
