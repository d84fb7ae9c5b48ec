//! The shared-memory transport (docs/shm-protocol.md): a Unix socket for the
//! handshake, wake-ups and liveness, and one segment with two rings per
//! connected app.
//!
//! Each session runs on its own OS thread that consumes the request ring
//! (spin, yield, then sleep on the socket). A request is decoded into the
//! same protobuf message the gRPC API uses and handed to the same
//! building-block method; its future is polled once on the session thread
//! (an in-memory state read completes there, with no thread hop) and moved
//! to a tokio task only when it has to wait. Answers go to the response
//! ring through one lock shared by the session thread and those tasks.
//!
//! Anything that breaks the protocol ends only that session, with a
//! goodbye frame (status code and message) on its socket.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use weft_blocks::pubsub::EncodedResponse;
use weft_blocks::telemetry::{trace_id_of, ApiMetrics, Telemetry, SHM_TIMING_EVERY};
use weft_blocks::{Authentication, BlockError, Blocks, CallContext, Code, Shutdown};
use weft_proto::appchannel as ac;
use weft_proto::mesh::Header as MetadataEntry;
use weft_proto::runtime as pb;
use weft_shm::control::{self, Goodbye, Hello, Welcome, MAPPED_MAGIC};
use weft_shm::idle::{IdleConfig, Idler, SpinBound, SpinSlot};
use weft_shm::layout::{
    features, Header, Layout, RingId, DEFAULT_RING, PROTOCOL_VERSION, SESSION_CLOSED,
};
use weft_shm::method;
use weft_shm::record::{
    context_prefix, decode_envelope, flags, split_context, Envelope, ENVELOPE_LEN,
};
use weft_shm::ring::{Consumer, PollError, Producer, RingError};
use weft_shm::segment::{self, Segment};

use crate::api::common::{self, TokenCheck};
use crate::api::headers;
use crate::api::shm_drive::Driver;
use crate::api::shm_in_place::{metadata_field, GetStateParts, GetStateRef};
use crate::config::ShmSettings;

/// How long a client may take over the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A sleeping session thread wakes at least this often to check for
/// shutdown.
const SLEEP_SLICE: Duration = Duration::from_millis(250);
/// Records consumed before the head is published.
const BATCH: usize = 64;
/// Calls one session may have waiting in tokio before the session thread
/// stops reading requests (back-pressure through the ring).
const MAX_IN_FLIGHT: usize = 4096;
/// Stream messages written to the ring together at most.
const STREAM_WRITE_BATCH: usize = 64;

/// Settings shared by every session.
struct ServerCtx {
    blocks: Arc<Blocks>,
    /// Metric handles per method, indexed like `method::ALL`.
    api: Vec<Arc<ApiMetrics>>,
    handle: tokio::runtime::Handle,
    app_id: String,
    tokens: TokenCheck,
    max_body_size: usize,
    segment_dir: PathBuf,
    idle: IdleConfig,
    /// How many session threads may spin or yield at once (one less than
    /// the vCPUs): the rest sleep as soon as their ring is empty, so
    /// spinning never takes every core from the threads with work (apps,
    /// tokio, the other runtime).
    spin_bound: SpinBound,
    stopping: AtomicBool,
    sessions: AtomicUsize,
    next_session: AtomicU64,
}

/// Binds the socket, sweeps stale segments and starts accepting. Returns
/// the socket path and the server task, which ends (after closing every
/// session) once shutdown starts.
pub fn start(
    settings: &ShmSettings,
    app_id: &str,
    tokens: TokenCheck,
    max_body_size: usize,
    blocks: Arc<Blocks>,
    shutdown: Shutdown,
) -> anyhow::Result<(PathBuf, JoinHandle<anyhow::Result<()>>)> {
    let segment_dir = settings.segment_dir.clone();
    match segment::sweep_stale(&segment_dir) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(count = removed.len(), dir = %segment_dir.display(), "removed stale shared-memory segments")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(dir = %segment_dir.display(), error = %e, "cannot sweep stale shared-memory segments")
        }
    }
    let listener = bind(&settings.socket)?;
    let metrics = &blocks.telemetry.metrics;
    let api = method::ALL
        .iter()
        .map(|m| Arc::new(metrics.api("shm", common::rpc_of(m.name).1)))
        .collect();
    let ctx = Arc::new(ServerCtx {
        api,
        blocks,
        handle: tokio::runtime::Handle::current(),
        app_id: app_id.to_string(),
        tokens,
        max_body_size,
        segment_dir,
        idle: IdleConfig {
            spin: settings.spin,
            yield_for: settings.yield_for,
        },
        spin_bound: SpinBound::for_this_machine(),
        stopping: AtomicBool::new(false),
        sessions: AtomicUsize::new(0),
        next_session: AtomicU64::new(1),
    });
    tracing::info!(socket = %settings.socket.display(), segments = %ctx.segment_dir.display(), "shared-memory transport listening");
    let path = settings.socket.clone();
    let task = tokio::spawn(accept_loop(listener, path.clone(), ctx, shutdown));
    Ok((path, task))
}

fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(anyhow!(
                "cannot listen on --shm-socket {}: another process is serving on it",
                path.display()
            ));
        }
        std::fs::remove_file(path).with_context(|| {
            format!("cannot remove stale socket --shm-socket {}", path.display())
        })?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "cannot create directory for --shm-socket {}",
                path.display()
            )
        })?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on --shm-socket {}", path.display()))?;
    // Peer credentials are checked per connection; the mode keeps other
    // users from connecting at all.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of --shm-socket {}", path.display()))?;
    Ok(l)
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    ctx: Arc<ServerCtx>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let uid = control::current_uid();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "shared-memory socket: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream.peer_cred().ok();
        let peer_pid = peer.and_then(|c| c.pid()).unwrap_or(0).max(0) as u32;
        let allowed = peer.is_some_and(|c| c.uid() == uid || c.uid() == 0);
        let sock = match stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|_| s))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "shared-memory socket: cannot take the connection");
                continue;
            }
        };
        let id = ctx.next_session.fetch_add(1, Ordering::Relaxed);
        ctx.sessions.fetch_add(1, Ordering::AcqRel);
        let ctx2 = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("weft-shm-{id}"))
            .spawn(move || {
                let open = &ctx2.blocks.telemetry.metrics.shm_sessions;
                open.inc();
                run_session(&ctx2, sock, id, peer_pid, allowed);
                open.dec();
                ctx2.sessions.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            ctx.sessions.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(error = %e, "shared-memory socket: cannot start a session thread");
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    ctx.stopping.store(true, Ordering::Release);
    // Session threads notice within one sleep slice and say goodbye.
    let deadline = Instant::now() + Duration::from_secs(2);
    while ctx.sessions.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// === impl session ===

/// Why a session ended.
struct End {
    code: Code,
    message: String,
    /// Send a goodbye (false when the peer is already gone).
    goodbye: bool,
}

impl End {
    fn protocol(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: format!("protocol error: {}", message.into()),
            goodbye: true,
        }
    }
}

/// State a session's tokio tasks share with its thread.
struct Shared {
    seg: Arc<Segment>,
    tx: Mutex<Producer>,
    /// A second handle on the socket for wake-ups.
    wake: UnixStream,
    closed: AtomicBool,
    /// Set when a task hit a protocol error; the thread ends the session.
    fatal: Mutex<Option<String>>,
    /// Whether `fatal` holds a reason (read without the lock on every turn
    /// of the session loop).
    failed: AtomicBool,
    /// Calls answered from tokio tasks: correlation id → task.
    in_flight: Mutex<HashMap<u64, Option<AbortHandle>>>,
    /// Open bidirectional calls: correlation id → where their MORE records
    /// go. Dropping a sender ends the call's client stream.
    client_streams: Mutex<HashMap<u64, ClientStream>>,
    /// `weft_shm_ring_full_total` and `weft_shm_wakeups_total`.
    ring_full: Counter,
    wakeups: Counter,
}

/// The app's side of an open bidirectional call: its method id (MORE
/// records must name the same) and where its messages go.
struct ClientStream {
    method: u32,
    tx: mpsc::UnboundedSender<Result<BidiMessage, BlockError>>,
}
type ClientStreamRef = mpsc::WeakUnboundedSender<Result<BidiMessage, BlockError>>;

/// One message of the app's side of a bidirectional call: the opening
/// record's body or a MORE record's, decoded as the method's request type.
#[derive(Debug)]
pub enum BidiMessage {
    /// SubscribeTopicEventsAlpha1 (method 12).
    Topics(pb::SubscribeTopicEventsRequestAlpha1),
    /// weft.runtime.v1.AppChannel/ServeInvocations (method 0x10002).
    Invocations(ac::ServeInvocationsRequest),
}

impl BidiMessage {
    /// Decodes a message of `method`; `None` when the method is not
    /// bidirectional.
    fn decode(method: u32, body: &[u8]) -> Option<Result<Self, prost::DecodeError>> {
        Some(match method {
            method::SUBSCRIBE_TOPIC_EVENTS_ALPHA1 => {
                pb::SubscribeTopicEventsRequestAlpha1::decode(body).map(Self::Topics)
            }
            method::WEFT_SERVE_INVOCATIONS => {
                ac::ServeInvocationsRequest::decode(body).map(Self::Invocations)
            }
            _ => return None,
        })
    }

    /// The method id this message belongs to.
    fn method(&self) -> u32 {
        match self {
            Self::Topics(_) => method::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
            Self::Invocations(_) => method::WEFT_SERVE_INVOCATIONS,
        }
    }

    fn into_topics(self) -> Option<pb::SubscribeTopicEventsRequestAlpha1> {
        match self {
            Self::Topics(m) => Some(m),
            _ => None,
        }
    }

    fn into_invocations(self) -> Option<ac::ServeInvocationsRequest> {
        match self {
            Self::Invocations(m) => Some(m),
            _ => None,
        }
    }
}

/// What a block reads as the app's side of a bidirectional call: the
/// call's messages as the method's request type (`pick`, which cannot fail
/// for a message that reached the channel: [`Session::more`] checks the
/// method first).
struct Requests<T> {
    rx: mpsc::UnboundedReceiver<Result<BidiMessage, BlockError>>,
    pick: fn(BidiMessage) -> Option<T>,
}

impl<T> futures::Stream for Requests<T> {
    type Item = Result<T, BlockError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let pick = self.pick;
        self.rx.poll_recv(cx).map(|m| {
            m.map(|r| {
                r.and_then(|msg| {
                    let method = msg.method();
                    pick(msg).ok_or_else(|| {
                        BlockError::Internal(format!(
                            "a message of method {method} reached another method's stream"
                        ))
                    })
                })
            })
        })
    }
}

/// A bidirectional call the block accepted: its stream of messages to the
/// app and, for a call the session thread serves itself, the future that
/// serves it (otherwise the block runs it on tokio).
struct Opening<M> {
    stream: mpsc::Receiver<Result<M, BlockError>>,
    serve_here: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// A message of a server stream, as the record body that carries it.
trait IntoRecord: Send + 'static {
    fn into_record(self) -> Vec<u8>;
}

impl IntoRecord for pb::SubscribeConfigurationResponse {
    fn into_record(self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl IntoRecord for ac::ServeInvocationsResponse {
    fn into_record(self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

/// Topic events come already in protobuf form, written from the broker's
/// message (see `PubSubBlock::topic_events`).
impl IntoRecord for EncodedResponse {
    fn into_record(self) -> Vec<u8> {
        self.0
    }
}

/// Why a response could not be written.
#[derive(Debug, thiserror::Error)]
enum RespondError {
    #[error("response ring lock poisoned")]
    Poisoned,
    #[error(transparent)]
    Ring(weft_shm::ring::RingError),
}

enum TryRespond {
    Written,
    Full,
}

/// Writes one record answering with `env` whose body is `parts`
/// (concatenated); `false` when the ring is full. A body too large for the
/// ring is replaced by a RESOURCE_EXHAUSTED error that ends the call.
fn write_record(tx: &mut Producer, env: Envelope, parts: &[&[u8]]) -> Result<bool, RingError> {
    let max = tx.max_payload() - ENVELOPE_LEN;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > max {
        let too_large = format!(
            "the response of {len} bytes exceeds the largest shared-memory message ({max} bytes, half the runtime->app ring); use a larger response ring or gRPC"
        );
        let env = Envelope {
            status: Code::ResourceExhausted as u32,
            flags: (env.flags | flags::END) & !flags::CONTEXT,
            ..env
        };
        return tx.try_write(&[&env.encode(), too_large.as_bytes()]);
    }
    let env = env.encode();
    let mut all: [&[u8]; 8] = [&[]; 8];
    if parts.len() < all.len() {
        all[0] = &env;
        all[1..=parts.len()].copy_from_slice(parts);
        tx.try_write(&all[..=parts.len()])
    } else {
        let body = parts.concat();
        tx.try_write(&[&env, &body])
    }
}

/// A block's answer to one call, before it is written: the response body,
/// or the error, and for calls opened with CONTEXT what goes in the END
/// record's call context.
struct Reply {
    status: u32,
    /// The encoded response, or the UTF-8 error message.
    body: Vec<u8>,
    /// The encoded `CallContext` (empty: none to send).
    context: Vec<u8>,
}

impl Reply {
    /// The record for `r`; `with_context` when the call's opening record
    /// had CONTEXT (only then may the END record carry one).
    fn new(r: Result<Answer, BlockError>, with_context: bool) -> Self {
        let (status, body, metadata, details) = match r {
            Ok(a) => (0, a.body, a.metadata, Vec::new()),
            Err(e) => (
                e.code() as u32,
                e.message().as_bytes().to_vec(),
                e.metadata().to_vec(),
                e.details().to_vec(),
            ),
        };
        let context = if with_context && (!metadata.is_empty() || !details.is_empty()) {
            ac::CallContext {
                timeout_micros: 0,
                metadata: metadata
                    .into_iter()
                    .map(|h| ac::Metadata {
                        key: h.key,
                        values: h.values,
                    })
                    .collect(),
                status_details: details,
            }
            .encode_to_vec()
        } else {
            Vec::new()
        };
        Self {
            status,
            body,
            context,
        }
    }

    /// The envelope and body parts of the record answering `env`.
    fn parts<'a>(&'a self, env: Envelope, prefix: &'a [u8; 4]) -> (Envelope, [&'a [u8]; 3]) {
        if self.context.is_empty() {
            (
                Envelope {
                    status: self.status,
                    ..env
                },
                [&self.body, &[], &[]],
            )
        } else {
            (
                Envelope {
                    status: self.status,
                    flags: env.flags | flags::CONTEXT,
                    ..env
                },
                [prefix, &self.context, &self.body],
            )
        }
    }
}

impl Shared {
    /// Writes one response record whose body is `parts` (concatenated), or
    /// says the ring is full. A body too large for the ring is replaced by
    /// a RESOURCE_EXHAUSTED error.
    fn try_respond(&self, env: Envelope, parts: &[&[u8]]) -> Result<TryRespond, RespondError> {
        let mut tx = self.tx.lock().map_err(|_| RespondError::Poisoned)?;
        let written = write_record(&mut tx, env, parts).map_err(RespondError::Ring)?;
        if written {
            self.wake_app(&tx);
            Ok(TryRespond::Written)
        } else {
            self.ring_full.inc();
            Ok(TryRespond::Full)
        }
    }

    /// Writes as many of `bodies` (records of `env`) as fit, in order,
    /// under one lock and with at most one wake-up; returns how many.
    fn try_respond_many(&self, env: Envelope, bodies: &[Vec<u8>]) -> Result<usize, RespondError> {
        let mut tx = self.tx.lock().map_err(|_| RespondError::Poisoned)?;
        let mut n = 0;
        for body in bodies {
            if !write_record(&mut tx, env, &[body]).map_err(RespondError::Ring)? {
                self.ring_full.inc();
                break;
            }
            n += 1;
        }
        if n > 0 {
            self.wake_app(&tx);
        }
        Ok(n)
    }

    /// Wakes the app if it went to sleep waiting for records.
    fn wake_app(&self, tx: &Producer) {
        if tx.consumer_needs_wakeup() {
            self.wakeups.inc();
            let _ = control::send_wake(&self.wake);
        }
    }

    /// Answers from the session thread, waiting while the ring is full.
    fn respond_blocking(&self, env: Envelope, parts: &[&[u8]]) -> Result<(), End> {
        let mut waits = 0u32;
        loop {
            match self.try_respond(env, parts) {
                Ok(TryRespond::Written) => return Ok(()),
                Ok(TryRespond::Full) => {}
                Err(e) => return Err(End::protocol(Code::InvalidArgument, e.to_string())),
            }
            if control::peer_closed(&self.wake) {
                return Err(End {
                    code: Code::Unavailable,
                    message: "app closed the connection".into(),
                    goodbye: false,
                });
            }
            waits += 1;
            if waits < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Answers from a tokio task, waiting while the ring is full.
    async fn respond_async(&self, env: Envelope, parts: &[&[u8]]) {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            match self.try_respond(env, parts) {
                Ok(TryRespond::Written) => return,
                Ok(TryRespond::Full) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => return self.fail(e.to_string()),
            }
        }
    }

    /// Writes stream messages from a tokio task (all of `bodies`, which it
    /// empties), waiting while the ring is full.
    async fn respond_many_async(&self, env: Envelope, bodies: &mut Vec<Vec<u8>>) {
        let mut done = 0;
        while done < bodies.len() {
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            match self.try_respond_many(env, &bodies[done..]) {
                Ok(n) => {
                    done += n;
                    if done < bodies.len() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                Err(e) => {
                    self.fail(e.to_string());
                    break;
                }
            }
        }
        bodies.clear();
    }

    /// Writes a call's final record.
    async fn respond_reply(&self, env: Envelope, reply: &Reply) {
        let prefix = context_prefix(reply.context.len());
        let (env, parts) = reply.parts(env, &prefix);
        self.respond_async(env, &parts).await
    }

    /// Ends the session from a task: records the reason and wakes the thread.
    fn fail(&self, reason: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(reason);
        }
        self.failed.store(true, Ordering::Release);
        let _ = self.wake.shutdown(std::net::Shutdown::Read);
    }

    /// Takes a call out of the in-flight table: `true` when the caller is
    /// the one to send its final record.
    fn finish(&self, corr: u64) -> bool {
        self.in_flight
            .lock()
            .map(|mut m| m.remove(&corr).is_some())
            .unwrap_or(false)
    }

    /// Ends a bidirectional call's client stream (the block then hands the
    /// call's unacked events to the group's other members).
    fn end_client_stream(&self, corr: u64) {
        let sender = self
            .client_streams
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&corr));
        drop(sender);
    }

    /// Like [`Shared::end_client_stream`], but only while `corr` still names
    /// the call that `weak` belongs to (the app may already have reused the
    /// correlation id for a new call once it saw this one's END).
    fn end_client_stream_of(&self, corr: u64, weak: &ClientStreamRef) {
        let Some(ours) = weak.upgrade() else {
            return; // already removed
        };
        let sender = self.client_streams.lock().ok().and_then(|mut m| {
            if m.get(&corr).is_some_and(|s| s.tx.same_channel(&ours)) {
                m.remove(&corr)
            } else {
                None
            }
        });
        drop(ours);
        drop(sender);
    }

    fn is_live(&self, corr: u64) -> bool {
        self.in_flight
            .lock()
            .map(|m| m.contains_key(&corr))
            .unwrap_or(false)
    }
}

fn welcome_error(sock: &mut UnixStream, code: Code, text: String) {
    tracing::warn!(code = ?code, reason = %text, "shared-memory handshake refused");
    let w = Welcome {
        version: PROTOCOL_VERSION,
        status: code as u32,
        text,
    };
    let _ = sock.write_all(&w.encode());
}

fn run_session(ctx: &ServerCtx, mut sock: UnixStream, id: u64, peer_pid: u32, allowed: bool) {
    if sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err()
        || sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).is_err()
    {
        return;
    }
    let hello = match Hello::read_from(&mut sock) {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(session = id, error = %e, "shared-memory handshake failed");
            return;
        }
    };
    if hello.version != PROTOCOL_VERSION {
        return welcome_error(
            &mut sock,
            Code::FailedPrecondition,
            format!(
                "protocol version {} is not supported; this runtime speaks {PROTOCOL_VERSION}",
                hello.version
            ),
        );
    }
    if !allowed {
        return welcome_error(
            &mut sock,
            Code::PermissionDenied,
            "the connecting process runs as another user than the runtime".into(),
        );
    }
    if hello.app_id != ctx.app_id {
        return welcome_error(
            &mut sock,
            Code::PermissionDenied,
            format!(
                "app id '{}' does not match this runtime's app id '{}'",
                hello.app_id, ctx.app_id
            ),
        );
    }
    let given = (!hello.token.is_empty()).then_some(hello.token.as_bytes());
    let authentication = match ctx.tokens.check(given) {
        Ok(a) => a,
        Err(_) => return welcome_error(
            &mut sock,
            Code::Unauthenticated,
            "this runtime requires an API token: the hello's token is missing or does not match"
                .into(),
        ),
    };
    let driver = match Driver::new() {
        Ok(d) => d,
        Err(e) => {
            return welcome_error(
                &mut sock,
                Code::ResourceExhausted,
                format!("weft cannot open a session (eventfd: {e})"),
            )
        }
    };
    let size = |s: u32| u64::from(if s == 0 { DEFAULT_RING } else { s });
    let layout = match Layout::new(size(hello.a2r_capacity), size(hello.r2a_capacity)) {
        Ok(l) => l,
        Err(e) => return welcome_error(&mut sock, Code::InvalidArgument, e.to_string()),
    };
    let header = Header {
        runtime_pid: std::process::id(),
        app_pid: peer_pid,
        session_id: id,
        layout,
    };
    let seg = match Segment::create(
        &ctx.segment_dir,
        &segment::segment_name(std::process::id(), id),
        &header,
    ) {
        Ok(s) => s,
        Err(e) => {
            return welcome_error(
                &mut sock,
                Code::ResourceExhausted,
                format!(
                    "cannot create a shared-memory segment in {}: {e}",
                    ctx.segment_dir.display()
                ),
            )
        }
    };
    seg.set_features(features::ALL);
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        status: 0,
        text: seg.path().display().to_string(),
    };
    let mut ack = [0u8; 8];
    let acked = sock
        .write_all(&welcome.encode())
        .and_then(|_| sock.read_exact(&mut ack));
    // Both sides have mapped it (or the app failed): the file can go, so a
    // crash leaves nothing behind.
    let _ = seg.unlink();
    if acked.is_err() || ack != MAPPED_MAGIC {
        tracing::debug!(
            session = id,
            "shared-memory handshake: no mapping acknowledgement"
        );
        return;
    }
    let (wake, rx) = match sock.try_clone() {
        Ok(w) => (w, seg.consumer(&layout, RingId::AppToRuntime)),
        Err(_) => return,
    };
    let shared = Arc::new(Shared {
        tx: Mutex::new(seg.producer(&layout, RingId::RuntimeToApp)),
        seg,
        wake,
        closed: AtomicBool::new(false),
        fatal: Mutex::new(None),
        failed: AtomicBool::new(false),
        in_flight: Mutex::new(HashMap::new()),
        client_streams: Mutex::new(HashMap::new()),
        ring_full: ctx.blocks.telemetry.metrics.shm_ring_full.clone(),
        wakeups: ctx.blocks.telemetry.metrics.shm_wakeups.clone(),
    });
    tracing::info!(
        session = id,
        app_pid = peer_pid,
        a2r = layout.a2r_capacity,
        r2a = layout.r2a_capacity,
        "shared-memory session opened"
    );
    let session = Session {
        ctx,
        shared,
        sock,
        id,
        authentication,
        sample: Cell::new(0),
        driver,
    };
    let mut rx = rx;
    let end = session.serve(&mut rx);
    session.close(end);
}

struct Session<'a> {
    ctx: &'a ServerCtx,
    shared: Arc<Shared>,
    sock: UnixStream,
    id: u64,
    /// How the session's hello passed the token check.
    authentication: Authentication,
    /// Calls seen, for the timed sample (one in `SHM_TIMING_EVERY`).
    sample: Cell<u64>,
    /// The calls this thread serves itself (topic subscriptions).
    driver: Driver,
}

impl Session<'_> {
    fn serve(&self, rx: &mut Consumer) -> End {
        let mut sock = &self.sock;
        if sock.set_read_timeout(Some(SLEEP_SLICE)).is_err() {
            return End::protocol(Code::Internal, "cannot configure the socket");
        }
        let mut idler = Idler::new(self.ctx.idle);
        let spins = self.ctx.idle != IdleConfig::SLEEP;
        let mut slot = SpinSlot::new(&self.ctx.spin_bound);
        // Calls are polled on this thread inside the runtime's context (a
        // call that has to wait registers with its reactor and timers).
        let _rt = self.ctx.handle.enter();
        // Only handling requests adds to the in-flight table, so its size
        // is looked at after a poll that handled some.
        let mut check_in_flight = false;
        loop {
            if self.ctx.stopping.load(Ordering::Acquire) {
                // What the served calls have to say about it goes first.
                self.driver.run_all();
                return End {
                    code: Code::Unavailable,
                    message: "weft is shutting down".into(),
                    goodbye: true,
                };
            }
            if self.shared.failed.load(Ordering::Acquire) {
                if let Some(reason) = self.shared.fatal.lock().ok().and_then(|f| f.clone()) {
                    return End::protocol(Code::InvalidArgument, reason);
                }
            }
            if check_in_flight {
                if self.in_flight() >= MAX_IN_FLIGHT {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                check_in_flight = false;
            }
            if self.driver.is_woken() && self.driver.run() {
                idler.reset();
            }
            let polled = rx.poll(BATCH, |payload| self.handle(payload));
            match polled {
                Ok(0) => {}
                Ok(_) => {
                    idler.reset();
                    check_in_flight = true;
                    continue;
                }
                Err(PollError::Ring(e)) => {
                    return End::protocol(Code::InvalidArgument, e.to_string())
                }
                Err(PollError::Handler(end)) => return end,
            }
            if spins && slot.hold() && !idler.idle() {
                continue;
            }
            slot.release();
            // Sleep: raise the flag, fence, re-check, then block on the socket.
            rx.arm_wakeup();
            match rx.is_empty() {
                Ok(true) => {}
                Ok(false) => {
                    rx.disarm_wakeup();
                    continue;
                }
                Err(e) => return End::protocol(Code::InvalidArgument, e.to_string()),
            }
            let mut buf = [0u8; 256];
            // With calls of its own to serve, the thread also wakes for them.
            let r = if self.driver.is_empty() || self.driver.wait(sock, SLEEP_SLICE) {
                sock.read(&mut buf)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
            rx.disarm_wakeup();
            match r {
                Ok(0) => {
                    if let Some(reason) = self.shared.fatal.lock().ok().and_then(|f| f.clone()) {
                        return End::protocol(Code::InvalidArgument, reason);
                    }
                    return End {
                        code: Code::Unavailable,
                        message: "app closed the connection".into(),
                        goodbye: false,
                    };
                }
                Ok(_) => idler.reset(),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    return End {
                        code: Code::Unavailable,
                        message: format!("socket failed: {e}"),
                        goodbye: false,
                    }
                }
            }
        }
    }

    /// Starts measuring a call of `method::ALL[index]`: its counter by
    /// code always, its latency in the timed sample, its server span when
    /// tracing is on (made the context's current span).
    fn measure(&self, index: usize, ctx: &mut CallContext) -> Measure {
        let timed = self.next_sample();
        ctx.timed = timed;
        let telemetry = &self.ctx.blocks.telemetry;
        let (service, name) = common::rpc_of(method::ALL[index].name);
        if telemetry.tracing() {
            telemetry.start_call(ctx, "weft-shm", service, name);
        }
        Measure {
            api: self.ctx.api[index].clone(),
            started: timed.then(Instant::now),
            trace: ctx.trace.clone(),
            trace_id: trace_id_of(ctx),
            name,
        }
    }

    /// Whether the next call is in the timed sample.
    fn next_sample(&self) -> bool {
        let n = self.sample.get();
        self.sample.set(n.wrapping_add(1));
        n.is_multiple_of(SHM_TIMING_EVERY)
    }

    /// GetState read and answered in place (see `shm_in_place`): the
    /// store lends the item and the response is written into the ring from
    /// it; only a full ring makes a copy, written once the store let go.
    /// `None`: the call is not plain enough (the block declined) and takes
    /// the ordinary path.
    fn get_state_in_place(
        &self,
        index: usize,
        answer: Envelope,
        req: &GetStateRef<'_>,
    ) -> Option<Result<(), End>> {
        let mut ctx = CallContext::app().with_authentication(self.authentication);
        ctx.timed = self.next_sample();
        let started = ctx.timed.then(Instant::now);
        let r = self.ctx.blocks.state.get_state_now(
            &ctx,
            req.store_name,
            req.key,
            req.consistency,
            |found| {
                let (entry, metadata) = match found {
                    Some(v) => (Some(v.entry), metadata_field(v.metadata)),
                    None => (None, Vec::new()),
                };
                let parts = match entry {
                    Some(e) => GetStateParts::new(e.value, e.etag, &metadata),
                    None => GetStateParts::new(&[], "", &[]),
                };
                let slices = parts.slices();
                match self.shared.try_respond(answer, &slices) {
                    Ok(TryRespond::Written) => Ok(None),
                    Ok(TryRespond::Full) => Ok(Some(slices.concat())),
                    Err(e) => Err(End::protocol(Code::InvalidArgument, e.to_string())),
                }
            },
        )?;
        let api = &self.ctx.api[index];
        Some(match r {
            Ok(Ok(None)) => {
                api.record(Code::Ok, started);
                Ok(())
            }
            Ok(Ok(Some(copied))) => {
                api.record(Code::Ok, started);
                self.shared.respond_blocking(answer, &[&copied])
            }
            Ok(Err(end)) => Err(end),
            Err(e) => {
                api.record(e.code(), started);
                common::log_failure("shm", method::ALL[index].name, None, &e);
                self.answer(true, answer, Err(e), false)
            }
        })
    }

    fn in_flight(&self) -> usize {
        self.shared.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The context of a call: the session's authentication, and what the
    /// record's call context block says (`None`: no CONTEXT flag).
    fn call_context(&self, block: Option<&[u8]>, corr: u64) -> Result<CallContext, End> {
        let ctx = CallContext::app().with_authentication(self.authentication);
        let Some(block) = block else {
            return Ok(ctx);
        };
        let decoded = ac::CallContext::decode(block).map_err(|e| {
            End::protocol(
                Code::InvalidArgument,
                format!("cannot decode the call context of request {corr}: {e}"),
            )
        })?;
        let metadata = decoded
            .metadata
            .into_iter()
            .filter(|m| !headers::is_hop_header(&m.key))
            .map(|m| MetadataEntry {
                key: m.key,
                values: m.values,
            })
            .collect();
        let timeout =
            (decoded.timeout_micros != 0).then(|| Duration::from_micros(decoded.timeout_micros));
        Ok(ctx.with_timeout(timeout).with_metadata(metadata))
    }

    /// Handles one request record.
    fn handle(&self, payload: &[u8]) -> Result<(), End> {
        let (env, body) = decode_envelope(payload)
            .map_err(|e| End::protocol(Code::InvalidArgument, e.to_string()))?;
        let corr = env.correlation;
        if env.flags & flags::MORE != 0 && env.flags != flags::MORE {
            return Err(End::protocol(
                Code::InvalidArgument,
                format!(
                    "request {corr} combines MORE with other flags ({:#x})",
                    env.flags
                ),
            ));
        }
        if env.flags & flags::CANCEL != 0 {
            if env.flags & flags::CONTEXT != 0 {
                return Err(End::protocol(
                    Code::InvalidArgument,
                    format!("CANCEL record {corr} has the CONTEXT flag, which only a call's opening record may"),
                ));
            }
            return self.cancel(corr);
        }
        if env.status != 0 || env.flags & flags::END != 0 {
            return Err(End::protocol(
                Code::InvalidArgument,
                format!(
                    "request {corr} carries a status or the END flag, which only responses may"
                ),
            ));
        }
        if env.flags & flags::MORE != 0 {
            return self.more(env.method, corr, body);
        }
        let Some(index) = method::index_of(env.method) else {
            return Err(End::protocol(
                Code::Unimplemented,
                format!("unknown method id {} (request {corr})", env.method),
            ));
        };
        let m = &method::ALL[index];
        let reply = env.flags & flags::NO_REPLY == 0;
        if !reply && m.kind == method::Kind::Bidi {
            return Err(End::protocol(
                Code::InvalidArgument,
                format!(
                    "{} request {corr} is one-way (NO_REPLY), which a bidirectional call cannot be",
                    m.name
                ),
            ));
        }
        let with_context = env.flags & flags::CONTEXT != 0;
        let (block, body) = if with_context {
            let (block, body) = split_context(body).map_err(|e| {
                End::protocol(
                    Code::InvalidArgument,
                    format!("{} request {corr}: {e}", m.name),
                )
            })?;
            (Some(block), body)
        } else {
            (None, body)
        };
        let answer = Envelope {
            method: env.method,
            flags: flags::END,
            correlation: corr,
            status: 0,
        };
        if body.len() > self.ctx.max_body_size {
            self.ctx.api[index].record(Code::ResourceExhausted, None);
            let msg = format!(
                "{} request of {} bytes is larger than the runtime's --max-body-size ({} bytes)",
                m.name,
                body.len(),
                self.ctx.max_body_size
            );
            return self.answer(
                reply,
                answer,
                Err(BlockError::ResourceExhausted(msg)),
                with_context,
            );
        }
        if m.id == method::WEFT_ECHO {
            return if reply {
                self.shared.respond_blocking(answer, &[body])
            } else {
                Ok(())
            };
        }
        if reply && self.shared.is_live(corr) {
            return Err(End::protocol(
                Code::InvalidArgument,
                format!("correlation id {corr} reused while its call is in flight"),
            ));
        }
        if m.id == method::GET_STATE && reply && block.is_none() {
            if let Some(done) =
                GetStateRef::read(body).and_then(|req| self.get_state_in_place(index, answer, &req))
            {
                return done;
            }
        }
        let mut ctx = self.call_context(block, corr)?;
        let measure = self.measure(index, &mut ctx);
        let deadline = ctx.deadline;
        let call = dispatch(&self.ctx.blocks, ctx, m.id, body).map_err(|e| {
            End::protocol(
                Code::InvalidArgument,
                format!("cannot decode the {} request {corr}: {e}", m.name),
            )
        })?;
        match call {
            Call::Unary(fut) => {
                let mut fut = match deadline {
                    Some(at) => within_deadline(fut, at, m.name),
                    None => fut,
                };
                // Poll once here: calls that do not wait finish without a
                // thread hop.
                let polled = fut
                    .as_mut()
                    .poll(&mut TaskContext::from_waker(Waker::noop()));
                match polled {
                    Poll::Ready(r) => {
                        measure.done(&r);
                        self.answer(reply, answer, r, with_context)
                    }
                    Poll::Pending => {
                        self.spawn(corr, reply, async move {
                            let r = fut.await;
                            measure.done(&r);
                            move |shared: Arc<Shared>| async move {
                                if shared.finish(corr) {
                                    shared
                                        .respond_reply(answer, &Reply::new(r, with_context))
                                        .await;
                                }
                            }
                        });
                        Ok(())
                    }
                }
            }
            Call::Stream(fut) => {
                let stream_env = Envelope { flags: 0, ..answer };
                self.spawn(corr, reply, async move {
                    let r = fut.await;
                    measure.done(&r);
                    move |shared: Arc<Shared>| async move {
                        let out = stream_out(&shared, stream_env, r, with_context);
                        until_deadline(out, &shared, stream_env, deadline, m.name, with_context)
                            .await
                    }
                });
                Ok(())
            }
            Call::Bidi(first, ctx) => {
                let env = Envelope { flags: 0, ..answer };
                let blocks = &self.ctx.blocks;
                let opened = Opened {
                    corr,
                    env,
                    deadline,
                    name: m.name,
                    with_context,
                    measure,
                };
                match first {
                    m @ BidiMessage::Topics(_) => {
                        self.open_bidi(opened, m, BidiMessage::into_topics, |requests| {
                            let (stream, serve) = blocks
                                .pubsub
                                .topic_events::<EncodedResponse, _>(&ctx, requests);
                            Ok(Opening {
                                stream,
                                serve_here: Some(Box::pin(serve)),
                            })
                        })
                    }
                    m @ BidiMessage::Invocations(_) => {
                        self.open_bidi(opened, m, BidiMessage::into_invocations, |requests| {
                            blocks
                                .invoke
                                .serve_invocations(&ctx, requests)
                                .map(|stream| Opening {
                                    stream,
                                    serve_here: None,
                                })
                        })
                    }
                }
                Ok(())
            }
        }
    }

    /// Opens a bidirectional call: registers its client stream (fed with
    /// `first`, then with MORE records), hands it to the block (`start`),
    /// and sends the block's messages, or the error that refused the call,
    /// as a server stream. The client stream ends when the call does.
    fn open_bidi<T, M, F>(
        &self,
        opened: Opened,
        first: BidiMessage,
        pick: fn(BidiMessage) -> Option<T>,
        start: F,
    ) where
        M: IntoRecord,
        F: FnOnce(Requests<T>) -> Result<Opening<M>, BlockError>,
    {
        // The app's messages answer what the runtime sent (acks of events
        // it handed out, results of invocations it wrote), so the client
        // stream's channel needs no bound of its own.
        let (tx, rx) = mpsc::unbounded_channel();
        let method = first.method();
        let _ = tx.send(Ok(first));
        let ours = tx.downgrade();
        let corr = opened.corr;
        if let Ok(mut m) = self.shared.client_streams.lock() {
            m.insert(corr, ClientStream { method, tx });
        }
        let (out, serve_here) = match start(Requests { rx, pick }) {
            Ok(o) => (Ok(o.stream), o.serve_here),
            Err(e) => (Err(e), None),
        };
        let Opened {
            env,
            deadline,
            name,
            with_context,
            measure,
            ..
        } = opened;
        measure.done(&out);
        let send = move |shared: Arc<Shared>| async move {
            let sent = stream_out(&shared, env, out, with_context);
            until_deadline(sent, &shared, env, deadline, name, with_context).await;
            shared.end_client_stream_of(corr, &ours);
        };
        match serve_here {
            // The block's side and the sending both run on this thread.
            Some(serve) => {
                if let Ok(mut m) = self.shared.in_flight.lock() {
                    m.insert(corr, None);
                }
                let send = send(self.shared.clone());
                self.driver.add(
                    corr,
                    Box::pin(async move {
                        futures::join!(serve, send);
                    }),
                );
            }
            None => self.spawn(corr, true, async move { send }),
        }
    }

    /// A further message of a bidirectional call's client stream.
    fn more(&self, method_id: u32, corr: u64, body: &[u8]) -> Result<(), End> {
        let Some(m) = method::by_id(method_id) else {
            return Err(End::protocol(
                Code::Unimplemented,
                format!("unknown method id {method_id} (request {corr})"),
            ));
        };
        let Some(decoded) = BidiMessage::decode(m.id, body) else {
            return Err(End::protocol(
                Code::InvalidArgument,
                format!(
                    "request {corr} has the MORE flag but {} is not a bidirectional method",
                    m.name
                ),
            ));
        };
        let msg = decoded.map_err(|e| {
            End::protocol(
                Code::InvalidArgument,
                format!(
                    "cannot decode the {} message (MORE) of call {corr}: {e}",
                    m.name
                ),
            )
        })?;
        let open = self
            .shared
            .client_streams
            .lock()
            .ok()
            .and_then(|s| s.get(&corr).map(|c| (c.method, c.tx.clone())));
        // No open call (it ended, or the app raced an ack with its end):
        // ignored, as the spec says.
        let Some((call_method, tx)) = open else {
            return Ok(());
        };
        if call_method != m.id {
            let call_name = method::by_id(call_method).map_or("another method", |c| c.name);
            return Err(End::protocol(
                Code::InvalidArgument,
                format!(
                    "MORE record of {} for call {corr}, which is a {call_name} call",
                    m.name
                ),
            ));
        }
        let _ = tx.send(Ok(msg));
        Ok(())
    }

    /// Runs `work` on tokio; its output then runs with the session's shared
    /// state. Registered in the in-flight table (for cancellation) unless
    /// the call wants no reply.
    fn spawn<W, F, G>(&self, corr: u64, reply: bool, work: W)
    where
        W: Future<Output = F> + Send + 'static,
        F: FnOnce(Arc<Shared>) -> G + Send + 'static,
        G: Future<Output = ()> + Send + 'static,
    {
        let shared = self.shared.clone();
        if reply {
            if let Ok(mut m) = shared.in_flight.lock() {
                m.insert(corr, None);
            }
        }
        let task_shared = shared.clone();
        let handle = self.ctx.handle.spawn(async move {
            let then = work.await;
            if reply {
                then(task_shared).await;
            } else {
                // One-way: the outcome is dropped, as the spec says.
                drop(then);
            }
        });
        if reply {
            if let Ok(mut m) = shared.in_flight.lock() {
                if let Some(slot) = m.get_mut(&corr) {
                    *slot = Some(handle.abort_handle());
                }
            }
        }
    }

    fn answer(
        &self,
        reply: bool,
        env: Envelope,
        r: Result<Answer, BlockError>,
        with_context: bool,
    ) -> Result<(), End> {
        if !reply {
            return Ok(());
        }
        let reply = Reply::new(r, with_context);
        let prefix = context_prefix(reply.context.len());
        let (env, parts) = reply.parts(env, &prefix);
        self.shared.respond_blocking(env, &parts)
    }

    fn cancel(&self, corr: u64) -> Result<(), End> {
        self.shared.end_client_stream(corr);
        let task = self
            .shared
            .in_flight
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&corr));
        let Some(task) = task else {
            return Ok(()); // already finished: nothing to do
        };
        match task {
            Some(h) => h.abort(),
            None => self.driver.remove(corr),
        }
        let env = Envelope {
            method: 0,
            flags: flags::END,
            correlation: corr,
            status: Code::Cancelled as u32,
        };
        self.shared
            .respond_blocking(env, &[b"cancelled by the app"])
    }

    fn close(self, end: End) {
        // Calls served here end (are dropped) with the session, inside the
        // runtime's context.
        let _rt = self.ctx.handle.enter();
        self.driver.clear();
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        shared.seg.set_session_state(SESSION_CLOSED);
        if let Ok(mut m) = shared.in_flight.lock() {
            for (_, task) in m.drain() {
                if let Some(h) = task {
                    h.abort();
                }
            }
        }
        // Ends every bidirectional call's client stream: their unacked
        // events go to the group's other members.
        if let Ok(mut m) = shared.client_streams.lock() {
            m.clear();
        }
        if end.goodbye {
            let g = Goodbye {
                code: end.code as u32,
                message: end.message.clone(),
            };
            let _ = self.sock.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = (&self.sock).write_all(&g.encode());
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = shared.seg.unlink();
        if end.goodbye && end.code != Code::Unavailable {
            tracing::warn!(session = self.id, code = ?end.code, reason = %end.message, "shared-memory session closed");
        } else {
            tracing::info!(session = self.id, reason = %end.message, "shared-memory session ended");
        }
    }
}

/// What a bidirectional call needs after it is opened.
struct Opened {
    corr: u64,
    env: Envelope,
    deadline: Option<Instant>,
    name: &'static str,
    with_context: bool,
    measure: Measure,
}

/// What a call records when it is answered (or, for a stream, opened).
struct Measure {
    api: Arc<ApiMetrics>,
    started: Option<Instant>,
    trace: Option<opentelemetry::Context>,
    trace_id: Option<String>,
    name: &'static str,
}

impl Measure {
    fn done<T>(self, r: &Result<T, BlockError>) {
        let code = r.as_ref().err().map_or(Code::Ok, BlockError::code);
        self.api.record(code, self.started);
        Telemetry::end(self.trace, r.as_ref().map(|_| ()));
        if let Err(e) = r {
            common::log_failure("shm", self.name, self.trace_id.as_deref(), e);
        }
    }
}

/// The error a call gets when its deadline passes.
fn deadline_error(name: &str) -> BlockError {
    BlockError::DeadlineExceeded(format!(
        "{name}: the deadline in the request's call context passed"
    ))
}

/// `fut`, ended with DEADLINE_EXCEEDED at `at` (the timer starts when the
/// call is first polled, which is inside the runtime).
fn within_deadline(fut: UnaryFuture, at: Instant, name: &'static str) -> UnaryFuture {
    Box::pin(async move {
        tokio::time::timeout_at(at.into(), fut)
            .await
            .unwrap_or_else(|_| Err(deadline_error(name)))
    })
}

/// Runs a stream's sending until it ends or the deadline passes; then the
/// stream ends with DEADLINE_EXCEEDED (as a gRPC stream past its deadline).
async fn until_deadline(
    sending: impl Future<Output = ()>,
    shared: &Shared,
    env: Envelope,
    deadline: Option<Instant>,
    name: &str,
    with_context: bool,
) {
    let Some(at) = deadline else {
        return sending.await;
    };
    if tokio::time::timeout_at(at.into(), sending).await.is_err() && shared.finish(env.correlation)
    {
        let end = Envelope {
            flags: flags::END,
            ..env
        };
        shared
            .respond_reply(end, &Reply::new(Err(deadline_error(name)), with_context))
            .await;
    }
}

/// Sends a server stream (or the runtime's side of a bidirectional call):
/// every item, then the END marker.
async fn stream_out<M: IntoRecord>(
    shared: &Shared,
    env: Envelope,
    r: Result<mpsc::Receiver<Result<M, BlockError>>, BlockError>,
    with_context: bool,
) {
    let end = Envelope {
        flags: flags::END,
        ..env
    };
    let mut rx = match r {
        Ok(rx) => rx,
        Err(e) => {
            if shared.finish(env.correlation) {
                shared
                    .respond_reply(end, &Reply::new(Err(e), with_context))
                    .await;
            }
            return;
        }
    };
    // Messages that are ready together (the events a burst of acks let
    // out) are written together: one lock of the ring and at most one
    // wake-up of the app for all of them.
    let mut ready: Vec<Vec<u8>> = Vec::new();
    while let Some(item) = rx.recv().await {
        let mut next = Some(item);
        while let Some(Ok(msg)) = next {
            ready.push(msg.into_record());
            next = if ready.len() < STREAM_WRITE_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !ready.is_empty() {
            if !shared.is_live(env.correlation) {
                return;
            }
            shared.respond_many_async(env, &mut ready).await;
        }
        match next {
            None | Some(Ok(_)) => {}
            Some(Err(e)) => {
                if shared.finish(env.correlation) {
                    shared
                        .respond_reply(end, &Reply::new(Err(e), with_context))
                        .await;
                }
                return;
            }
        }
    }
    if shared.finish(env.correlation) {
        shared.respond_async(end, &[]).await;
    }
}

// === impl dispatch ===

/// A block's successful answer: the encoded response and, for
/// InvokeService, the called app's response metadata.
pub struct Answer {
    pub body: Vec<u8>,
    pub metadata: Vec<MetadataEntry>,
}

impl Answer {
    fn body(body: Vec<u8>) -> Self {
        Self {
            body,
            metadata: Vec::new(),
        }
    }
}

type UnaryFuture = Pin<Box<dyn Future<Output = Result<Answer, BlockError>> + Send>>;
type StreamFuture = Pin<
    Box<
        dyn Future<Output = Result<weft_blocks::configuration::SubscriptionStream, BlockError>>
            + Send,
    >,
>;

/// A decoded request bound to its building-block method.
pub enum Call {
    Unary(UnaryFuture),
    Stream(StreamFuture),
    /// A bidirectional method (SubscribeTopicEventsAlpha1,
    /// weft.ServeInvocations): the first message of the app's stream (later
    /// ones arrive as MORE records) and the call's context.
    Bidi(BidiMessage, Box<CallContext>),
}

fn unary<Req, Resp, Fut>(
    body: &[u8],
    f: impl FnOnce(Req) -> Fut,
) -> Result<Call, prost::DecodeError>
where
    Req: Message + Default,
    Resp: Message,
    Fut: Future<Output = Result<Resp, BlockError>> + Send + 'static,
{
    let fut = f(Req::decode(body)?);
    Ok(Call::Unary(Box::pin(async move {
        fut.await.map(|r| Answer::body(r.encode_to_vec()))
    })))
}

/// An RPC of a building block this runtime lacks
/// ([`common::UNIMPLEMENTED`]), named by its method table entry.
fn unimplemented<Req: Message + Default>(
    body: &[u8],
    rpc: &'static str,
) -> Result<Call, prost::DecodeError> {
    Req::decode(body)?;
    Ok(Call::Unary(Box::pin(async move {
        Err(common::unimplemented(rpc))
    })))
}

/// Decodes a request for `method` (an id from the method table) and binds it
/// to the building-block method gRPC calls for the same RPC, with `ctx`.
pub fn dispatch(
    blocks: &Arc<Blocks>,
    ctx: CallContext,
    method: u32,
    body: &[u8],
) -> Result<Call, prost::DecodeError> {
    use weft_shm::method::*;
    // Bidirectional methods: the opening record is the app's first message
    // (the session binds the call to its block).
    if let Some(first) = BidiMessage::decode(method, body) {
        return first.map(|m| Call::Bidi(m, Box::new(ctx)));
    }
    let b = blocks.clone();
    match method {
        // The RPCs of api::common::UNIMPLEMENTED (a test keeps the two
        // lists equal): the request must still decode.
        QUERY_STATE_ALPHA1 => unimplemented::<pb::QueryStateRequest>(body, "QueryStateAlpha1"),
        INVOKE_BINDING => unimplemented::<pb::InvokeBindingRequest>(body, "InvokeBinding"),
        INVOKE_SERVICE => {
            let req = pb::InvokeServiceRequest::decode(body)?;
            Ok(Call::Unary(Box::pin(async move {
                b.invoke
                    .invoke_service(&ctx, req)
                    .await
                    .map(|invoked| Answer {
                        body: invoked.response.encode_to_vec(),
                        metadata: invoked.headers,
                    })
            })))
        }
        TRY_LOCK_ALPHA1 => unary(body, move |r| async move { b.lock.try_lock(&ctx, r).await }),
        UNLOCK_ALPHA1 => unary(body, move |r| async move { b.lock.unlock(&ctx, r).await }),
        WEFT_GET_NEXT_ID => unary(body, move |r| async move {
            b.sequencer.get_next_id(&ctx, r).await
        }),
        GET_SECRET => unary(
            body,
            move |r| async move { b.secrets.get_secret(&ctx, r).await },
        ),
        GET_BULK_SECRET => unary(body, move |r| async move {
            b.secrets.get_bulk_secret(&ctx, r).await
        }),
        GET_STATE => unary(
            body,
            move |r| async move { b.state.get_state(&ctx, r).await },
        ),
        GET_BULK_STATE => unary(body, move |r| async move {
            b.state.get_bulk_state(&ctx, r).await
        }),
        SAVE_STATE => unary(
            body,
            move |r| async move { b.state.save_state(&ctx, r).await },
        ),
        DELETE_STATE => unary(
            body,
            move |r| async move { b.state.delete_state(&ctx, r).await },
        ),
        DELETE_BULK_STATE => unary(body, move |r| async move {
            b.state.delete_bulk_state(&ctx, r).await
        }),
        EXECUTE_STATE_TRANSACTION => unary(body, move |r| async move {
            b.state.execute_state_transaction(&ctx, r).await
        }),
        PUBLISH_EVENT => unary(body, move |r| async move {
            b.pubsub.publish_event(&ctx, r).await
        }),
        BULK_PUBLISH_EVENT_ALPHA1 | BULK_PUBLISH_EVENT => unary(body, move |r| async move {
            b.pubsub.bulk_publish_event(&ctx, r).await
        }),
        GET_CONFIGURATION_ALPHA1 | GET_CONFIGURATION => unary(body, move |r| async move {
            b.configuration.get_configuration(&ctx, r).await
        }),
        SUBSCRIBE_CONFIGURATION_ALPHA1 | SUBSCRIBE_CONFIGURATION => {
            let req = pb::SubscribeConfigurationRequest::decode(body)?;
            Ok(Call::Stream(Box::pin(async move {
                b.configuration.subscribe_configuration(&ctx, req).await
            })))
        }
        UNSUBSCRIBE_CONFIGURATION_ALPHA1 | UNSUBSCRIBE_CONFIGURATION => {
            unary(body, move |r| async move {
                b.configuration.unsubscribe_configuration(&ctx, r).await
            })
        }
        GET_METADATA => unary(body, move |_: pb::GetMetadataRequest| async move {
            Ok(b.metadata_view())
        }),
        SET_METADATA => unary(body, move |r| async move { b.metadata.set_metadata(r) }),
        SHUTDOWN => unary(body, move |_: pb::ShutdownRequest| async move {
            b.shutdown.trigger("Shutdown RPC (shared memory)");
            Ok(())
        }),
        WEFT_ECHO => {
            let body = body.to_vec();
            Ok(Call::Unary(Box::pin(async move { Ok(Answer::body(body)) })))
        }
        other => {
            // The method table and this match must cover the same ids.
            debug_assert!(method::by_id(other).is_none());
            Ok(Call::Unary(Box::pin(async move {
                Err(BlockError::Unimplemented(format!(
                    "method id {other} is not served"
                )))
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The methods shared memory answers UNIMPLEMENTED for are exactly the
    /// RPCs of api::common::UNIMPLEMENTED, with the same message.
    #[test]
    fn unimplemented_methods_are_the_common_list() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = crate::config::RuntimeConfig::resolve(
                &match <crate::config::Cli as clap::Parser>::try_parse_from([
                    "weft",
                    "run",
                    "--app-id",
                    "t",
                    "--data-dir",
                    dir.path().to_str().unwrap(),
                ])
                .unwrap()
                .command
                {
                    crate::config::Command::Run(a) => a,
                    _ => unreachable!("argv is `weft run`"),
                },
                |_| None,
            )
            .unwrap();
            let blocks = Blocks::build(
                cfg.blocks_config(None, weft_blocks::telemetry::Telemetry::disabled("t"))
                    .unwrap(),
                vec![],
                Shutdown::new(),
            )
            .await
            .unwrap();
            let mut answered = Vec::new();
            for m in method::ALL {
                if let Ok(Call::Unary(f)) = dispatch(&blocks, CallContext::app(), m.id, &[]) {
                    if let Err(e) = f.await {
                        if e.code() == Code::Unimplemented && e == common::unimplemented(m.name) {
                            answered.push(m.name);
                        }
                    }
                }
            }
            let mut expected: Vec<&str> = common::UNIMPLEMENTED.iter().map(|(n, _)| *n).collect();
            answered.sort_unstable();
            expected.sort_unstable();
            assert_eq!(answered, expected);
        });
    }

    /// Every id in the method table binds to a call, so the shared-memory
    /// transport reaches exactly what the table (and so gRPC) lists.
    #[test]
    fn every_method_id_dispatches() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let argv = [
                "weft",
                "run",
                "--app-id",
                "t",
                "--data-dir",
                dir.path().to_str().unwrap(),
            ];
            let crate::config::Command::Run(args) =
                <crate::config::Cli as clap::Parser>::try_parse_from(argv)
                    .unwrap()
                    .command
            else {
                unreachable!("argv is `weft run`")
            };
            let cfg = crate::config::RuntimeConfig::resolve(&args, |_| None).unwrap();
            let blocks = Blocks::build(
                cfg.blocks_config(None, weft_blocks::telemetry::Telemetry::disabled("t"))
                    .unwrap(),
                vec![],
                Shutdown::new(),
            )
            .await
            .unwrap();
            for m in method::ALL {
                let call = dispatch(&blocks, CallContext::app(), m.id, &[]).unwrap();
                let streaming = matches!(call, Call::Stream(_));
                assert_eq!(
                    streaming,
                    m.kind == method::Kind::ServerStream,
                    "{}",
                    m.name
                );
                assert_eq!(
                    matches!(call, Call::Bidi(..)),
                    m.kind == method::Kind::Bidi,
                    "{}",
                    m.name
                );
                if let Call::Bidi(first, _) = &call {
                    assert_eq!(first.method(), m.id, "{}", m.name);
                }
                if let Call::Unary(f) = call {
                    if let Err(e) = f.await {
                        assert_ne!(
                            e.message(),
                            format!("method id {} is not served", m.id),
                            "{}",
                            m.name
                        );
                    }
                }
            }
        });
    }
}
