//! A blocking client of the protocol, for Rust apps, tests and benchmarks.
//!
//! One [`Client`] is one session: it is `Send` but not shared; calls take
//! `&mut self`. A call writes its request, then waits for the answer with
//! the idle strategy (spin, yield, then sleep on the socket).
//!
//! Reconnection: when the runtime goes away (its socket closes), the call in
//! progress is retried once on a new session if the runtime had not read the
//! request yet; otherwise it fails with UNAVAILABLE and the next call
//! connects again. With `reconnect: false` the session's error is returned
//! instead.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::code;
use crate::control::{self, Goodbye, Hello, Welcome, GOODBYE_BYTE, MAPPED_MAGIC};
use crate::idle::{IdleConfig, Idler, SpinBound, SpinSlot};
use crate::layout::{Header, RingId, SESSION_CLOSED};
use crate::record::{
    context_prefix, decode_envelope, flags, split_context, Envelope, ENVELOPE_LEN,
};
use crate::ring::{Consumer, PollError, Producer};
use crate::segment::Segment;

/// A gRPC-style status: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub message: String,
}

impl Status {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(code::UNAVAILABLE, message)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Must match the runtime's `--app-id`.
    pub app_id: String,
    /// The runtime's API token, when it has one.
    pub api_token: Option<String>,
    /// Request ring size (power of two; 0: the runtime's default, 1 MiB).
    pub request_ring: u32,
    /// Response ring size (power of two; 0: the runtime's default).
    pub response_ring: u32,
    /// How this side waits for answers.
    pub idle: IdleConfig,
    /// Reconnect (and retry a call the runtime had not read) when the
    /// session is lost.
    pub reconnect: bool,
    /// A call that gets no answer this long is cancelled with DEADLINE_EXCEEDED.
    pub call_timeout: Duration,
    /// Limit on connecting and the handshake.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    pub fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_string(),
            api_token: None,
            request_ring: 0,
            response_ring: 0,
            idle: IdleConfig::default(),
            reconnect: true,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// How many of this process's waiting calls may spin or yield at once (one
/// less than the vCPUs); the others sleep on their socket at once. Sixteen
/// threads each spinning for its answer on two vCPUs would take the CPU
/// from the runtime that produces the answers.
fn spin_bound() -> &'static SpinBound {
    static BOUND: std::sync::OnceLock<SpinBound> = std::sync::OnceLock::new();
    BOUND.get_or_init(SpinBound::for_this_machine)
}

/// A response record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

impl Frame {
    /// The encoded call context of a record with flag CONTEXT (§5.1), and
    /// the body after it.
    pub fn context(&self) -> Result<(Option<&[u8]>, &[u8]), Status> {
        if self.envelope.flags & flags::CONTEXT == 0 {
            return Ok((None, &self.body));
        }
        let (ctx, body) = split_context(&self.body)
            .map_err(|e| Status::new(code::INTERNAL, format!("bad response: {e}")))?;
        Ok((Some(ctx), body))
    }

    /// The body (without a call context), or the error this record carries.
    pub fn into_result(self) -> Result<Vec<u8>, Status> {
        let ok = self.envelope.status == code::OK;
        if self.envelope.flags & flags::CONTEXT == 0 {
            // The common case: the body as it came, no copy.
            return if ok {
                Ok(self.body)
            } else {
                Err(Status::new(
                    self.envelope.status,
                    String::from_utf8_lossy(&self.body),
                ))
            };
        }
        let (_, body) = self.context()?;
        if ok {
            Ok(body.to_vec())
        } else {
            Err(Status::new(
                self.envelope.status,
                String::from_utf8_lossy(body),
            ))
        }
    }
}

struct Session {
    sock: UnixStream,
    seg: Arc<Segment>,
    tx: Producer,
    rx: Consumer,
    dead: Option<Status>,
}

/// Why waiting stopped.
enum WaitError {
    /// The session ended; `consumed` says whether the runtime had read our
    /// request (when it had not, retrying is safe).
    Dead {
        status: Status,
        consumed: bool,
    },
    Other(Status),
}

/// The largest request buffer a client keeps for its next request.
const MAX_KEPT_REQUEST: usize = 64 * 1024;
/// Emptied call queues a client keeps for reuse.
const MAX_SPARE_QUEUES: usize = 64;

/// A deadline that reads the clock only when first asked, so a wait that
/// ends within its first turns never does.
struct Due {
    timeout: Duration,
    at: Option<Instant>,
}

impl Due {
    fn after(timeout: Duration) -> Self {
        Self { timeout, at: None }
    }

    /// Starts the timeout now unless it already runs (before the wait
    /// blocks, so a blocked wait still counts from then).
    fn start(&mut self) -> Instant {
        let timeout = self.timeout;
        *self.at.get_or_insert_with(|| Instant::now() + timeout)
    }

    /// Whether the deadline passed; the first call starts the timeout.
    fn passed(&mut self) -> bool {
        Instant::now() > self.start()
    }
}

/// A session with a runtime.
pub struct Client {
    path: PathBuf,
    opts: ClientOptions,
    session: Option<Session>,
    next_correlation: u64,
    /// Calls and streams waiting for records, by correlation id (hashed
    /// with foldhash: SipHash on every turn of a spinning wait cost more
    /// than the rest of the turn).
    live: HashMap<u64, VecDeque<Frame>, foldhash::fast::RandomState>,
    /// Emptied queues of finished calls, reused so a call allocates none.
    spare: Vec<VecDeque<Frame>>,
    /// The last request [`Client::unary`] encoded (its allocation reused).
    encoded: Vec<u8>,
    idler: Idler,
    last_goodbye: Option<Status>,
}

impl Client {
    /// Connects to the runtime's shared-memory socket and maps the segment.
    pub fn connect(path: impl AsRef<Path>, opts: ClientOptions) -> Result<Self, Status> {
        let mut c = Self {
            path: path.as_ref().to_path_buf(),
            idler: Idler::new(opts.idle),
            opts,
            session: None,
            next_correlation: 1,
            live: HashMap::default(),
            spare: Vec::new(),
            encoded: Vec::new(),
            last_goodbye: None,
        };
        c.session = Some(c.handshake()?);
        Ok(c)
    }

    fn handshake(&self) -> Result<Session, Status> {
        let path = &self.path;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Status::unavailable(format!(
                "weft shared-memory socket {}: {what}: {e}",
                path.display()
            ))
        };
        let mut sock = UnixStream::connect(path).map_err(|e| fail("cannot connect", &e))?;
        sock.set_read_timeout(Some(self.opts.connect_timeout))
            .and_then(|_| sock.set_write_timeout(Some(self.opts.connect_timeout)))
            .map_err(|e| fail("cannot configure", &e))?;
        let hello = Hello::new(
            &self.opts.app_id,
            self.opts.api_token.as_deref().unwrap_or(""),
            self.opts.request_ring,
            self.opts.response_ring,
        );
        sock.write_all(&hello.encode())
            .map_err(|e| fail("cannot send hello", &e))?;
        let welcome = Welcome::read_from(&mut sock).map_err(|e| fail("no welcome", &e))?;
        if welcome.status != code::OK {
            return Err(Status::new(welcome.status, welcome.text));
        }
        let seg_path = Path::new(&welcome.text);
        let (seg, header) = Segment::open(seg_path).map_err(|e| {
            Status::new(
                code::INTERNAL,
                format!("cannot map segment {}: {e}", seg_path.display()),
            )
        })?;
        check_header(&header)?;
        sock.write_all(&MAPPED_MAGIC)
            .map_err(|e| fail("cannot acknowledge the mapping", &e))?;
        // Sleeping on the socket wakes at least this often to check the
        // call's deadline.
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| fail("cannot configure", &e))?;
        let tx = seg.producer(&header.layout, RingId::AppToRuntime);
        let rx = seg.consumer(&header.layout, RingId::RuntimeToApp);
        Ok(Session {
            sock,
            seg,
            tx,
            rx,
            dead: None,
        })
    }

    /// Connects again if the session was lost (and reconnecting is on).
    fn ensure_session(&mut self) -> Result<(), Status> {
        match &self.session {
            Some(s) if s.dead.is_none() => return Ok(()),
            Some(s) if !self.opts.reconnect => return Err(s.dead.clone().expect("dead")),
            _ => {}
        }
        let previous = self.session.take().and_then(|s| s.dead);
        self.live.clear();
        match self.handshake() {
            Ok(s) => {
                self.session = Some(s);
                Ok(())
            }
            // The runtime is gone: say why the last session ended too
            // (e.g. "weft is shutting down").
            Err(mut e) => {
                if let Some(p) = previous {
                    e.message = format!("{}; the last session ended: {}", e.message, p.message);
                }
                Err(e)
            }
        }
    }

    /// The reason the runtime gave when it last ended a session.
    pub fn last_goodbye(&self) -> Option<&Status> {
        self.last_goodbye.as_ref()
    }

    /// Whether the current session has ended.
    pub fn is_dead(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.dead.is_some())
    }

    /// The largest request body this session accepts.
    pub fn max_request_body(&self) -> usize {
        self.session
            .as_ref()
            .map(|s| s.tx.max_payload() - ENVELOPE_LEN)
            .unwrap_or(0)
    }

    /// A unary call with raw bytes: returns the response body.
    pub fn call(&mut self, method: u32, body: &[u8]) -> Result<Vec<u8>, Status> {
        self.call_frame(method, 0, body)?.into_result()
    }

    /// The runtime's feature word (§3.1; 0 before the first call, and for
    /// runtimes from before it).
    pub fn features(&self) -> u32 {
        self.session.as_ref().map_or(0, |s| s.seg.features())
    }

    /// Connects now (calls connect on first use anyway).
    pub fn connect_now(&mut self) -> Result<(), Status> {
        self.ensure_session()
    }

    /// A unary call with a call context block (flag CONTEXT, §5.1):
    /// `context` is an encoded `weft.runtime.v1.CallContext`. Returns the
    /// whole END record, whose own context (response metadata, error
    /// details) [`Frame::context`] reads. Refused locally when the runtime
    /// does not advertise the CONTEXT feature.
    pub fn call_with_context(
        &mut self,
        method: u32,
        context: &[u8],
        body: &[u8],
    ) -> Result<Frame, Status> {
        self.ensure_session()?;
        if self.features() & crate::layout::features::CONTEXT == 0 {
            return Err(Status::new(
                code::FAILED_PRECONDITION,
                "the runtime does not serve call contexts (feature CONTEXT)",
            ));
        }
        let mut with = Vec::with_capacity(4 + context.len() + body.len());
        with.extend_from_slice(&context_prefix(context.len()));
        with.extend_from_slice(context);
        with.extend_from_slice(body);
        self.call_frame(method, flags::CONTEXT, &with)
    }

    /// A unary call: the END record answering it.
    fn call_frame(&mut self, method: u32, flags: u32, body: &[u8]) -> Result<Frame, Status> {
        for attempt in 0..2 {
            self.ensure_session()?;
            let corr = self.take_correlation();
            self.track(corr);
            let sent_at = match self.send(method, flags, corr, body) {
                Ok(p) => p,
                Err(e) => {
                    self.untrack(corr);
                    match e {
                        WaitError::Dead {
                            consumed: false, ..
                        } if self.opts.reconnect && attempt == 0 => continue,
                        WaitError::Dead { status, .. } | WaitError::Other(status) => {
                            return Err(status)
                        }
                    }
                }
            };
            let r = self.wait_end(corr, self.opts.call_timeout, sent_at, true);
            self.untrack(corr);
            match r {
                Ok(f) => return Ok(f),
                Err(WaitError::Dead {
                    consumed: false, ..
                }) if self.opts.reconnect && attempt == 0 => continue,
                Err(WaitError::Dead { status, .. }) | Err(WaitError::Other(status)) => {
                    return Err(status)
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// A unary call with protobuf messages.
    pub fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &mut self,
        method: u32,
        req: &Req,
    ) -> Result<Resp, Status> {
        // The request is encoded into a buffer kept between calls.
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        encoded.reserve(req.encoded_len());
        req.encode_raw(&mut encoded);
        let r = self.call(method, &encoded);
        if encoded.capacity() <= MAX_KEPT_REQUEST {
            self.encoded = encoded;
        }
        let body = r?;
        Resp::decode(&body[..]).map_err(|e| {
            Status::new(
                code::INTERNAL,
                format!("cannot decode the response to method {method}: {e}"),
            )
        })
    }

    /// A one-way message: the runtime answers nothing, not even errors.
    pub fn send_oneway(&mut self, method: u32, body: &[u8]) -> Result<(), Status> {
        self.ensure_session()?;
        let corr = self.take_correlation();
        match self.send(method, flags::NO_REPLY, corr, body) {
            Ok(_) => Ok(()),
            Err(WaitError::Dead { status, .. } | WaitError::Other(status)) => Err(status),
        }
    }

    /// Starts a server stream, or a bidirectional call with `body` as its
    /// first message (send more with [`Client::send_more`]); read it with
    /// [`Client::next_item`].
    pub fn open_stream(&mut self, method: u32, body: &[u8]) -> Result<u64, Status> {
        self.ensure_session()?;
        let corr = self.take_correlation();
        self.track(corr);
        match self.send(method, 0, corr, body) {
            Ok(_) => Ok(corr),
            Err(WaitError::Dead { status, .. } | WaitError::Other(status)) => {
                self.untrack(corr);
                Err(status)
            }
        }
    }

    /// Sends a further message of a bidirectional call opened with
    /// [`Client::open_stream`] (a MORE record: docs/shm-protocol.md §5), e.g.
    /// an `event_processed` ack on a SubscribeTopicEventsAlpha1 call. Read
    /// the runtime's side with [`Client::next_item`]; end the call with
    /// [`Client::cancel`].
    ///
    /// The runtime ignores a MORE for a call that has already ended, so acks
    /// may race the stream's end. This never reconnects: a new session has
    /// no such call.
    pub fn send_more(&mut self, method: u32, stream: u64, body: &[u8]) -> Result<(), Status> {
        match &self.session {
            None => return Err(Status::unavailable("no shared-memory session")),
            Some(s) => {
                if let Some(d) = &s.dead {
                    return Err(d.clone());
                }
            }
        }
        match self.send(method, flags::MORE, stream, body) {
            Ok(_) => Ok(()),
            Err(WaitError::Dead { status, .. } | WaitError::Other(status)) => Err(status),
        }
    }

    /// The next item of a stream: `Ok(Some(body))`, `Ok(None)` once it has
    /// ended normally, `Err` for its error (or DEADLINE_EXCEEDED when
    /// nothing arrived within `timeout`; the stream stays open then).
    pub fn next_item(&mut self, stream: u64, timeout: Duration) -> Result<Option<Vec<u8>>, Status> {
        if !self.live.contains_key(&stream) {
            return Ok(None);
        }
        let r = self.wait_end(stream, timeout, 0, false);
        match r {
            Ok(f) if f.envelope.is_end() => {
                self.untrack(stream);
                f.into_result().map(|_| None)
            }
            Ok(f) => f.into_result().map(Some),
            Err(WaitError::Other(s)) if s.code == code::DEADLINE_EXCEEDED => Err(s),
            Err(WaitError::Dead { status, .. } | WaitError::Other(status)) => {
                self.untrack(stream);
                Err(status)
            }
        }
    }

    /// Cancels a call or stream; later records for it are dropped.
    pub fn cancel(&mut self, correlation: u64) -> Result<(), Status> {
        self.untrack(correlation);
        if self.is_dead() {
            return Ok(());
        }
        match self.send(0, flags::CANCEL, correlation, &[]) {
            Ok(_) => Ok(()),
            Err(WaitError::Dead { status, .. } | WaitError::Other(status)) => Err(status),
        }
    }

    fn take_correlation(&mut self) -> u64 {
        let c = self.next_correlation;
        self.next_correlation += 1;
        c
    }

    /// Writes one request record; returns the ring position before it.
    fn send(
        &mut self,
        method: u32,
        flags: u32,
        correlation: u64,
        body: &[u8],
    ) -> Result<u64, WaitError> {
        let env = Envelope {
            method,
            flags,
            correlation,
            status: 0,
        }
        .encode();
        let mut deadline = Due::after(self.opts.call_timeout);
        let s = self.session.as_mut().expect("session");
        if ENVELOPE_LEN + body.len() > s.tx.max_payload() {
            return Err(WaitError::Other(Status::new(
                code::RESOURCE_EXHAUSTED,
                format!(
                    "a request of {} bytes exceeds the largest shared-memory message ({} bytes, half the request ring); use a larger ring or gRPC",
                    body.len(),
                    s.tx.max_payload() - ENVELOPE_LEN
                ),
            )));
        }
        let sent_at = s.tx.position();
        let mut spins = 0u32;
        loop {
            let s = self.session.as_mut().expect("session");
            match s.tx.try_write(&[&env, body]) {
                Ok(true) => break,
                Ok(false) => {
                    // Full: keep draining responses so the runtime can make
                    // progress, and notice if it went away.
                    self.pump().map_err(|st| self.dead(st, sent_at))?;
                    let s = self.session.as_mut().expect("session");
                    if s.seg.session_state() == SESSION_CLOSED || control::peer_closed(&s.sock) {
                        let st = self.read_goodbye();
                        return Err(self.dead(st, sent_at));
                    }
                    if s.tx.consumer_needs_wakeup() {
                        let _ = control::send_wake(&s.sock);
                    }
                    spins += 1;
                    if spins > 1000 {
                        std::thread::sleep(Duration::from_micros(50));
                    } else {
                        std::thread::yield_now();
                    }
                    if deadline.passed() {
                        return Err(WaitError::Other(Status::new(
                            code::DEADLINE_EXCEEDED,
                            "the request ring stayed full",
                        )));
                    }
                }
                Err(e) => {
                    let st = Status::new(code::INTERNAL, format!("protocol error: {e}"));
                    return Err(self.dead(st, sent_at));
                }
            }
        }
        let s = self.session.as_mut().expect("session");
        if s.tx.consumer_needs_wakeup() {
            if let Err(e) = control::send_wake(&s.sock) {
                let st = Status::unavailable(format!("weft closed the shared-memory session: {e}"));
                return Err(self.dead(st, sent_at));
            }
        }
        Ok(sent_at)
    }

    /// Marks the session dead and says whether the request at `sent_at`
    /// had been read by the runtime.
    fn dead(&mut self, status: Status, sent_at: u64) -> WaitError {
        let s = self.session.as_mut().expect("session");
        let consumed =
            s.tx.consumer_position()
                .map(|h| h > sent_at)
                .unwrap_or(true);
        if s.dead.is_none() {
            s.dead = Some(status.clone());
        }
        WaitError::Dead {
            status: s.dead.clone().unwrap_or(status),
            consumed,
        }
    }

    /// Moves available response records into their calls' queues.
    fn pump(&mut self) -> Result<usize, Status> {
        let s = self.session.as_mut().expect("session");
        let live = &mut self.live;
        s.rx.poll(256, |payload| {
            let (envelope, body) = decode_envelope(payload)?;
            if let Some(q) = live.get_mut(&envelope.correlation) {
                q.push_back(Frame {
                    envelope,
                    body: body.to_vec(),
                });
            }
            Ok(())
        })
        .map_err(|e: PollError<crate::record::EnvelopeError>| match e {
            PollError::Ring(e) => Status::new(
                code::INTERNAL,
                format!("protocol error from the runtime: {e}"),
            ),
            PollError::Handler(e) => Status::new(
                code::INTERNAL,
                format!("protocol error from the runtime: {e}"),
            ),
        })
    }

    /// Waits for the next record of `corr`.
    fn wait_end(
        &mut self,
        corr: u64,
        timeout: Duration,
        sent_at: u64,
        cancel_on_timeout: bool,
    ) -> Result<Frame, WaitError> {
        self.idler.reset();
        let spins = self.opts.idle != IdleConfig::SLEEP;
        let mut slot = SpinSlot::new(spin_bound());
        let mut deadline = Due::after(timeout);
        let mut checks = 0u32;
        // Only pumping adds records: the queue is looked at after it did.
        let mut arrived = true;
        loop {
            if arrived {
                if let Some(f) = self.live.get_mut(&corr).and_then(|q| q.pop_front()) {
                    return Ok(f);
                }
                arrived = false;
            }
            match self.pump() {
                Ok(0) => {}
                Ok(_) => {
                    self.idler.reset();
                    arrived = true;
                    continue;
                }
                Err(st) => return Err(self.dead(st, sent_at)),
            }
            checks = checks.wrapping_add(1);
            let s = self.session.as_mut().expect("session");
            if checks.is_multiple_of(64) {
                if s.seg.session_state() == SESSION_CLOSED {
                    let st = self.read_goodbye();
                    return Err(self.dead(st, sent_at));
                }
                if deadline.passed() {
                    return Err(self.timed_out(corr, cancel_on_timeout));
                }
            }
            if spins && slot.hold() && !self.idler.idle() {
                continue;
            }
            slot.release();
            // Sleep: raise the flag, fence, re-check, then block on the socket.
            s.rx.arm_wakeup();
            let empty = s.rx.is_empty();
            match empty {
                Ok(false) => {
                    s.rx.disarm_wakeup();
                    continue;
                }
                Err(e) => {
                    let st = Status::new(
                        code::INTERNAL,
                        format!("protocol error from the runtime: {e}"),
                    );
                    return Err(self.dead(st, sent_at));
                }
                Ok(true) => {}
            }
            deadline.start();
            let mut buf = [0u8; 64];
            let r = s.sock.read(&mut buf);
            s.rx.disarm_wakeup();
            match r {
                Ok(0) => {
                    let st = Status::unavailable(
                        "weft closed the shared-memory session (the runtime stopped or crashed)",
                    );
                    return Err(self.dead(st, sent_at));
                }
                Ok(n) => {
                    if let Some(i) = buf[..n].iter().position(|b| *b == GOODBYE_BYTE) {
                        let st = self.parse_goodbye(&buf[i + 1..n]);
                        return Err(self.dead(st, sent_at));
                    }
                    self.idler.reset();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if deadline.passed() {
                        return Err(self.timed_out(corr, cancel_on_timeout));
                    }
                }
                Err(e) => {
                    let st = Status::unavailable(format!("weft shared-memory socket failed: {e}"));
                    return Err(self.dead(st, sent_at));
                }
            }
        }
    }

    /// Starts waiting for records of `corr`, with a queue from the spares.
    fn track(&mut self, corr: u64) {
        let q = self.spare.pop().unwrap_or_default();
        self.live.insert(corr, q);
    }

    /// Stops waiting for records of `corr`; its queue goes back to the
    /// spares.
    fn untrack(&mut self, corr: u64) {
        if let Some(mut q) = self.live.remove(&corr) {
            if self.spare.len() < MAX_SPARE_QUEUES && q.capacity() <= 16 {
                q.clear();
                self.spare.push(q);
            }
        }
    }

    fn timed_out(&mut self, corr: u64, cancel: bool) -> WaitError {
        if cancel {
            let _ = self.cancel(corr);
        }
        WaitError::Other(Status::new(
            code::DEADLINE_EXCEEDED,
            "no answer from weft within the call timeout",
        ))
    }

    /// Reads the goodbye frame after the runtime marked the session closed.
    fn read_goodbye(&mut self) -> Status {
        let s = self.session.as_mut().expect("session");
        let _ = s.sock.set_read_timeout(Some(Duration::from_secs(1)));
        let mut byte = [0u8; 1];
        loop {
            match s.sock.read(&mut byte) {
                Ok(1) if byte[0] == GOODBYE_BYTE => return self.parse_goodbye(&[]),
                Ok(1) => continue,
                _ => return Status::unavailable("weft closed the shared-memory session"),
            }
        }
    }

    /// Parses a goodbye whose first bytes (after 0xFF) are `head`.
    fn parse_goodbye(&mut self, head: &[u8]) -> Status {
        let s = self.session.as_mut().expect("session");
        let _ = s.sock.set_read_timeout(Some(Duration::from_secs(1)));
        let mut r = head.chain(&mut s.sock);
        let st = match Goodbye::read_after_marker(&mut r) {
            Ok(g) => Status::new(
                g.code,
                format!("weft ended the shared-memory session: {}", g.message),
            ),
            Err(e) => Status::unavailable(format!(
                "weft ended the shared-memory session (unreadable reason: {e})"
            )),
        };
        self.last_goodbye = Some(st.clone());
        st
    }

    /// Test hook for hostile-peer tests: the mapped segment.
    #[doc(hidden)]
    pub fn hostile_segment(&self) -> Option<Arc<Segment>> {
        self.session.as_ref().map(|s| s.seg.clone())
    }

    /// Test hook for hostile-peer tests: the request ring's producer and
    /// the socket (to send a wake-up after scribbling).
    #[doc(hidden)]
    pub fn hostile_request_ring(&mut self) -> Option<(&mut Producer, &UnixStream)> {
        self.session.as_mut().map(|s| (&mut s.tx, &s.sock))
    }

    /// Waits (at most `within`) for the runtime to end the session and
    /// returns its reason.
    pub fn wait_for_goodbye(&mut self, within: Duration) -> Option<Status> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let s = self.session.as_mut()?;
            if let Some(d) = &s.dead {
                return Some(d.clone());
            }
            let mut buf = [0u8; 64];
            match s.sock.read(&mut buf) {
                Ok(0) => {
                    s.dead = Some(Status::unavailable("weft closed the shared-memory session"));
                }
                Ok(n) => {
                    if let Some(i) = buf[..n].iter().position(|b| *b == GOODBYE_BYTE) {
                        let st = self.parse_goodbye(&buf[i + 1..n]);
                        self.session.as_mut()?.dead = Some(st);
                    }
                }
                Err(_) => {}
            }
        }
        self.session.as_ref()?.dead.clone()
    }
}

fn check_header(h: &Header) -> Result<(), Status> {
    if h.app_pid != std::process::id() {
        return Err(Status::new(
            code::PERMISSION_DENIED,
            format!(
                "segment belongs to pid {}, not to this process ({})",
                h.app_pid,
                std::process::id()
            ),
        ));
    }
    Ok(())
}
