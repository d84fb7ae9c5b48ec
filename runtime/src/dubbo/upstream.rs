//! Connections from the runtime to Dubbo servers: the local app's Dubbo
//! port (calls arriving for a published service) and providers outside the
//! mesh (registered without a runtime's parameters).
//!
//! One TCP connection per address carries every call, as Dubbo's own
//! clients do: each request gets a request id unique on that connection,
//! the response with that id is handed back to its caller with the
//! caller's own id restored, so many calls are in flight at once and are
//! answered in any order. A connection that fails is dropped with every
//! call on it answered (the next call opens a new one). An idle connection
//! sends a heartbeat every [`HEARTBEAT`] so that the server (whose idle
//! limit is three of its own heartbeat periods, 180 s by default) keeps it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use weft_dubbo::{Decoder, Frame};

/// Idle period after which a heartbeat is sent to the server.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames queued for one connection's writer.
const QUEUE: usize = 1024;

/// Why a call to a Dubbo server got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request was not sent.
    #[error("cannot connect to the Dubbo server at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The connection ended before the answer came.
    #[error("the connection to the Dubbo server at {addr} closed before it answered: {reason}")]
    Closed { addr: SocketAddr, reason: String },
    /// No answer within the call's timeout.
    #[error("the Dubbo server at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

/// One connection and its calls in flight.
struct Conn {
    writer: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    /// Why the connection ended, once it has.
    ended: Arc<Mutex<Option<String>>>,
}

/// The connections of one runtime to Dubbo servers, one per address.
pub struct Upstreams {
    decoder: Decoder,
    conns: tokio::sync::Mutex<HashMap<SocketAddr, Arc<Conn>>>,
}

impl Upstreams {
    /// Connections reading bodies of at most `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self {
            decoder: Decoder::new(max_body),
            conns: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Sends `request` to the server at `addr` and waits at most `timeout`
    /// for its response, which comes back with `request`'s id. A one-way
    /// request returns `None` once written.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: Frame,
        timeout: Duration,
    ) -> Result<Option<Frame>, UpstreamError> {
        let conn = self.conn(addr).await?;
        let caller_id = request.header.request_id;
        let mut frame = request;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        frame.header.request_id = id;
        let two_way = frame.header.two_way;
        let answer = if two_way {
            let (tx, rx) = oneshot::channel();
            conn.pending.lock().unwrap().insert(id, tx);
            Some(rx)
        } else {
            None
        };
        let closed = |conn: &Conn| UpstreamError::Closed {
            addr,
            reason: conn
                .ended
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| "connection lost".into()),
        };
        if !conn.alive.load(Ordering::Acquire) || conn.writer.send(frame).await.is_err() {
            conn.pending.lock().unwrap().remove(&id);
            return Err(closed(&conn));
        }
        let Some(rx) = answer else {
            return Ok(None);
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(mut response)) => {
                response.header.request_id = caller_id;
                Ok(Some(response))
            }
            Ok(Err(_)) => Err(closed(&conn)),
            Err(_) => {
                conn.pending.lock().unwrap().remove(&id);
                Err(UpstreamError::Timeout { addr, timeout })
            }
        }
    }

    /// The live connection to `addr`, opened when there is none.
    async fn conn(&self, addr: SocketAddr) -> Result<Arc<Conn>, UpstreamError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr) {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
            conns.remove(&addr);
        }
        let fail = |reason: String| UpstreamError::Connect { addr, reason };
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail(format!("no connection within {CONNECT_TIMEOUT:?}"))),
        };
        let _ = tcp.set_nodelay(true);
        let conn = Arc::new(self.spawn(addr, tcp));
        conns.insert(addr, conn.clone());
        Ok(conn)
    }

    fn spawn(&self, addr: SocketAddr, tcp: TcpStream) -> Conn {
        let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (mut read, mut write) = tcp.into_split();
        let decoder = self.decoder;
        // Heartbeats use ids of their own range (top bit set), never a call's.
        let heartbeat_ids = AtomicU64::new(1 << 63);

        let end = {
            let (pending, alive, ended) = (pending.clone(), alive.clone(), ended.clone());
            move |why: String| {
                if alive.swap(false, Ordering::AcqRel) {
                    tracing::debug!(upstream = %addr, "dubbo: connection ended: {why}");
                    *ended.lock().unwrap() = Some(why);
                }
                // Dropping the senders answers every waiting call.
                pending.lock().unwrap().clear();
            }
        };

        let writer_end = end.clone();
        let hb_tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                let first = tokio::select! {
                    f = rx.recv() => match f {
                        Some(f) => f,
                        None => return,
                    },
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        let id = heartbeat_ids.fetch_add(1, Ordering::Relaxed);
                        Frame::heartbeat_request(id)
                    }
                };
                first.encode(&mut buf);
                // Everything already queued goes out in the same write.
                while buf.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(f) => f.encode(&mut buf),
                        Err(_) => break,
                    }
                }
                if let Err(e) = write.write_all(&buf).await {
                    writer_end(format!("write failed: {e}"));
                    return;
                }
                buf.clear();
            }
        });

        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(8 * 1024);
            let why = loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if frame.header.request {
                            // The server's heartbeat: answer it.
                            if let Some(pong) = frame.heartbeat_response() {
                                if hb_tx.send(pong).await.is_err() {
                                    break "the connection is closing".to_string();
                                }
                            }
                            continue;
                        }
                        if frame.header.event {
                            continue; // answers to our heartbeats
                        }
                        let waiter = reader_pending
                            .lock()
                            .unwrap()
                            .remove(&frame.header.request_id);
                        if let Some(w) = waiter {
                            let _ = w.send(frame);
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => break format!("unreadable frame from the server: {e}"),
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) => break "the server closed the connection".to_string(),
                    Ok(_) => {}
                    Err(e) => break format!("read failed: {e}"),
                }
            };
            end(why);
        });

        Conn {
            writer: tx,
            pending,
            next_id: AtomicU64::new(1),
            alive,
            ended,
        }
    }
}
