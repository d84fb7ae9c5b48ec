//! The floor under a call through two runtimes on this machine: two bare
//! relays in the mesh's topology doing none of its work (no TLS, no HTTP/2,
//! no protobuf: length-prefixed bytes, one blocking thread per caller and
//! hop), beside the same bare echo called directly. What the relays add
//! over the direct echo is the least that any pair of runtimes in that place
//! can add here: the extra wake-ups and system calls of the topology itself.
//!
//! * [`Hops::Direct`]: caller → TCP → echo thread (app B).
//! * [`Hops::Handoff`]: caller → in-memory mailbox → relay A → TCP → relay
//!   B → mailbox → app B → mailbox → relay B → TCP → relay A → mailbox →
//!   caller: the shape of the shared-memory local hops, each runtime one
//!   thread per caller (weft splits that work between a session thread and
//!   its tokio thread). A mailbox's reader sleeps at once when it is empty,
//!   except relay B waiting for app B's answer, which comes microseconds
//!   after app B wakes: that wait spins and yields first, as the caller of
//!   [`connect`] says ([`IdleConfig`]). Spinning everywhere is slower on a
//!   two-vCPU machine (the spinners take the CPU the others need), sleeping
//!   everywhere a little slower.
//! * [`Hops::Unix`]: the local hops over Unix sockets instead: the shape of
//!   the socket local hops without gRPC on them.
//!
//! Every thread runs in the calling process, so a wake-up never switches
//! address space: the figures are a lower bound for separate processes.
//! Each thread of the relays and of app B adds its CPU time and voluntary
//! context switches to its role's [`Usage`] when it ends; the blocking
//! runners below do the same for the callers.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use weft_shm::idle::{IdleConfig, Idler};

use crate::procfs;

/// CPU time and voluntary context switches of a set of threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub switches: u64,
}

impl Usage {
    /// The calling thread's ([`procfs::this_thread`]).
    pub fn this_thread() -> Self {
        let (cpu_ns, switches) = procfs::this_thread();
        Usage {
            cpu: Duration::from_nanos(cpu_ns),
            switches,
        }
    }

    pub fn add(&mut self, o: Usage) {
        self.cpu += o.cpu;
        self.switches += o.switches;
    }

    /// CPU µs and wake-ups per call over `calls`.
    pub fn per_call(&self, calls: usize) -> (f64, f64) {
        let n = calls.max(1) as f64;
        (self.cpu.as_secs_f64() * 1e6 / n, self.switches as f64 / n)
    }
}

/// Where a thread's usage is added when it ends.
#[derive(Clone, Copy)]
enum Role {
    AppB = 0,
    RelayA = 1,
    RelayB = 2,
}

type Roles = Arc<Mutex<[Usage; 3]>>;

/// The local hops of a bare path (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hops {
    Direct,
    Handoff,
    Unix,
}

impl Hops {
    pub fn label(self) -> &'static str {
        match self {
            Hops::Direct => "floor: bare echo, direct over TCP",
            Hops::Handoff => "floor: bare relays, in-memory hand-offs",
            Hops::Unix => "floor: bare relays, Unix-socket hops",
        }
    }
}

/// One message slot between two threads; an empty message ends the peer.
struct Mailbox {
    ready: AtomicBool,
    asleep: AtomicBool,
    message: Mutex<Vec<u8>>,
    sleeper: Mutex<Option<Thread>>,
    idle: IdleConfig,
}

impl Mailbox {
    fn new(idle: IdleConfig) -> Arc<Self> {
        Arc::new(Mailbox {
            ready: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            message: Mutex::new(Vec::new()),
            sleeper: Mutex::new(None),
            idle,
        })
    }

    fn put(&self, m: Vec<u8>) {
        *self.message.lock().expect("mailbox") = m;
        // Paired with `take`: either it sees `ready` before it sleeps, or
        // this side sees `asleep` and unparks it.
        self.ready.store(true, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            if let Some(t) = self.sleeper.lock().expect("mailbox").as_ref() {
                t.unpark();
            }
        }
    }

    fn take(&self) -> Vec<u8> {
        let mut idler = Idler::new(self.idle);
        loop {
            if self.ready.swap(false, Ordering::SeqCst) {
                return std::mem::take(&mut *self.message.lock().expect("mailbox"));
            }
            if !idler.idle() {
                continue;
            }
            *self.sleeper.lock().expect("mailbox") = Some(std::thread::current());
            self.asleep.store(true, Ordering::SeqCst);
            if !self.ready.load(Ordering::SeqCst) {
                std::thread::park();
            }
            self.asleep.store(false, Ordering::SeqCst);
        }
    }
}

/// A length-prefixed message in one write.
fn write_frame(w: &mut impl Write, scratch: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
    scratch.clear();
    scratch.extend_from_slice(&(body.len() as u32).to_le_bytes());
    scratch.extend_from_slice(body);
    w.write_all(scratch)
}

/// The next message into `out`; `false` at the end of the stream.
fn read_frame(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<bool> {
    if r.fill_buf()?.is_empty() {
        return Ok(false);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    out.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(out)?;
    Ok(true)
}

/// A stream read through a buffer (one read system call per message)
/// and written directly.
struct Conn<S> {
    r: BufReader<S>,
    w: S,
    scratch: Vec<u8>,
}

trait Split: Read + Write + Sized {
    fn split(self) -> io::Result<Conn<Self>>;
}

impl Split for TcpStream {
    fn split(self) -> io::Result<Conn<Self>> {
        self.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::new(self.try_clone()?),
            w: self,
            scratch: Vec::new(),
        })
    }
}

impl Split for UnixStream {
    fn split(self) -> io::Result<Conn<Self>> {
        Ok(Conn {
            r: BufReader::new(self.try_clone()?),
            w: self,
            scratch: Vec::new(),
        })
    }
}

impl<S: Read + Write> Conn<S> {
    fn send(&mut self, body: &[u8]) -> io::Result<()> {
        write_frame(&mut self.w, &mut self.scratch, body)
    }

    fn recv(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        read_frame(&mut self.r, out)
    }

    fn call(&mut self, body: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.send(body)?;
        if self.recv(out)? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }
}

/// A caller's end of a bare path.
pub struct Caller(End);

enum End {
    Tcp(Conn<TcpStream>),
    Unix(Conn<UnixStream>),
    Mail {
        to: Arc<Mailbox>,
        from: Arc<Mailbox>,
    },
}

impl Caller {
    /// One call with `body`: `true` when the same number of bytes came back.
    pub fn call(&mut self, body: &[u8]) -> bool {
        let mut out = Vec::new();
        let ok = match &mut self.0 {
            End::Tcp(c) => c.call(body, &mut out).is_ok(),
            End::Unix(c) => c.call(body, &mut out).is_ok(),
            End::Mail { to, from } => {
                to.put(body.to_vec());
                out = from.take();
                true
            }
        };
        ok && out.len() == body.len()
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        if let End::Mail { to, .. } = &self.0 {
            to.put(Vec::new());
        }
    }
}

/// The threads behind a set of callers; [`Floor::finish`] after the
/// callers are dropped.
pub struct Floor {
    threads: Vec<JoinHandle<()>>,
    roles: Roles,
}

impl Floor {
    /// Joins the threads (they end when their callers are gone) and
    /// returns the usage of app B, relay A and relay B.
    pub fn finish(self) -> [Usage; 3] {
        for t in self.threads {
            let _ = t.join();
        }
        *self.roles.lock().expect("roles")
    }
}

fn spawn(
    threads: &mut Vec<JoinHandle<()>>,
    roles: &Roles,
    role: Role,
    f: impl FnOnce() + Send + 'static,
) {
    let roles = roles.clone();
    threads.push(std::thread::spawn(move || {
        f();
        let u = Usage::this_thread();
        roles.lock().expect("roles")[role as usize].add(u);
    }));
}

/// Relays every message of `from` to `to` and its answer back, until
/// either side ends.
fn relay<A: Read + Write, B: Read + Write>(mut from: Conn<A>, mut to: Conn<B>) {
    let (mut call, mut answer) = (Vec::new(), Vec::new());
    while let Ok(true) = from.recv(&mut call) {
        if to.call(&call, &mut answer).is_err() || from.send(&answer).is_err() {
            return;
        }
    }
}

/// Answers every message of `conn` with itself.
fn echo<S: Read + Write>(mut conn: Conn<S>) {
    let mut m = Vec::new();
    while let Ok(true) = conn.recv(&mut m) {
        if conn.send(&m).is_err() {
            return;
        }
    }
}

/// Sets up `n` callers of a bare path; Unix sockets go in `dir`. Relay B
/// waits for app B's answers as `answer_idle` says, every other mailbox
/// reader sleeps at once.
pub fn connect(
    hops: Hops,
    n: usize,
    answer_idle: IdleConfig,
    dir: &Path,
) -> io::Result<(Vec<Caller>, Floor)> {
    let idle = IdleConfig::SLEEP;
    let roles: Roles = Arc::default();
    let mut threads = Vec::new();
    let mut callers = Vec::new();
    let tcp = TcpListener::bind("127.0.0.1:0")?;
    let tcp_addr = tcp.local_addr()?;
    for i in 0..n {
        // The runtime-to-runtime hop (or, direct, the app-to-app one).
        let near = TcpStream::connect(tcp_addr)?.split()?;
        let far = tcp.accept()?.0.split()?;
        match hops {
            Hops::Direct => {
                spawn(&mut threads, &roles, Role::AppB, move || echo(far));
                callers.push(Caller(End::Tcp(near)));
            }
            Hops::Unix => {
                let path = dir.join(format!("floor-{i}.sock"));
                let _ = std::fs::remove_file(&path);
                let local = UnixListener::bind(&path)?;
                let app_a = UnixStream::connect(&path)?.split()?;
                let a_side = local.accept()?.0.split()?;
                let b_side = UnixStream::connect(&path)?.split()?;
                let app_b = local.accept()?.0.split()?;
                let _ = std::fs::remove_file(&path);
                spawn(&mut threads, &roles, Role::RelayA, move || {
                    relay(a_side, near)
                });
                spawn(&mut threads, &roles, Role::RelayB, move || {
                    relay(far, b_side)
                });
                spawn(&mut threads, &roles, Role::AppB, move || echo(app_b));
                callers.push(Caller(End::Unix(app_a)));
            }
            Hops::Handoff => {
                let (a_in, a_out) = (Mailbox::new(idle), Mailbox::new(idle));
                let (b_in, b_out) = (Mailbox::new(idle), Mailbox::new(answer_idle));
                let (a_rx, a_tx) = (a_in.clone(), a_out.clone());
                spawn(&mut threads, &roles, Role::RelayA, move || {
                    let mut near = near;
                    let mut answer = Vec::new();
                    loop {
                        let call = a_rx.take();
                        if call.is_empty() || near.call(&call, &mut answer).is_err() {
                            return;
                        }
                        a_tx.put(std::mem::take(&mut answer));
                    }
                });
                let (b_tx, b_rx) = (b_in.clone(), b_out.clone());
                spawn(&mut threads, &roles, Role::RelayB, move || {
                    let mut far = far;
                    let mut call = Vec::new();
                    while let Ok(true) = far.recv(&mut call) {
                        b_tx.put(std::mem::take(&mut call));
                        if far.send(&b_rx.take()).is_err() {
                            break;
                        }
                    }
                    b_tx.put(Vec::new());
                });
                spawn(&mut threads, &roles, Role::AppB, move || loop {
                    let m = b_in.take();
                    if m.is_empty() {
                        return;
                    }
                    b_out.put(m);
                });
                callers.push(Caller(End::Mail {
                    to: a_in,
                    from: a_out,
                }));
            }
        }
    }
    Ok((callers, Floor { threads, roles }))
}

/// A fixed-rate phase with blocking callers: the threads (one per client)
/// take the slots of the schedule (`rate` per second for `secs`) in turn. A
/// call's latency (µs) runs from its send — unless the thread's previous
/// call overran this slot: then from the slot, since an open loop would
/// have sent it on time. Returns the sorted latencies, the failed calls
/// and the callers' threads' usage.
pub fn fixed_rate<C: Send>(
    clients: Vec<C>,
    rate: u64,
    secs: f64,
    call: impl Fn(&mut C) -> bool + Sync,
) -> (Vec<u64>, u64, Usage) {
    let threads = clients.len().max(1) as u64;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = (rate as f64 * secs) as u64;
    let start = Instant::now() + Duration::from_millis(10);
    let call = &call;
    let per_thread = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(first, mut client)| {
                scope.spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    let mut previous_end = start;
                    for n in (first as u64..total).step_by(threads as usize) {
                        let at = start + interval * n as u32;
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                        let sent = Instant::now();
                        if !call(&mut client) {
                            errors += 1;
                        }
                        let from = if previous_end > at { at } else { sent };
                        previous_end = Instant::now();
                        lat.push(previous_end.duration_since(from).as_micros() as u64);
                    }
                    drop(client);
                    (lat, errors, Usage::this_thread())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| t.join().expect("caller thread"))
            .collect::<Vec<_>>()
    });
    let mut lat = Vec::with_capacity(total as usize);
    let (mut errors, mut usage) = (0, Usage::default());
    for (l, e, u) in per_thread {
        lat.extend(l);
        errors += e;
        usage.add(u);
    }
    lat.sort_unstable();
    (lat, errors, usage)
}

/// A closed-loop phase: each client on its own thread, one call in flight,
/// for `secs`. Returns calls per second, the failed calls and the clients
/// (still open, so that what they hold can be measured).
pub fn closed_loop<C: Send>(
    clients: Vec<C>,
    secs: f64,
    call: impl Fn(&mut C) -> bool + Sync,
) -> (f64, u64, Vec<C>) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let call = &call;
    let per_thread = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                scope.spawn(move || {
                    let (mut done, mut errors) = (0u64, 0u64);
                    while Instant::now() < until {
                        if call(&mut client) {
                            done += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    (done, errors, client)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| t.join().expect("caller thread"))
            .collect::<Vec<_>>()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (mut done, mut errors, mut clients) = (0, 0, Vec::new());
    for (d, e, c) in per_thread {
        done += d;
        errors += e;
        clients.push(c);
    }
    (done as f64 / elapsed, errors, clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_echoes_and_accounts_its_threads() {
        let dir = tempfile::tempdir().unwrap();
        for hops in [Hops::Direct, Hops::Handoff, Hops::Unix] {
            let (callers, floor) = connect(hops, 2, IdleConfig::SLEEP, dir.path()).unwrap();
            let (lat, errors, _) = fixed_rate(callers, 2000, 0.05, |c| c.call(&[7u8; 100]));
            assert_eq!((lat.len(), errors), (100, 0), "{hops:?}");
            let roles = floor.finish();
            let relays =
                roles[Role::RelayA as usize].switches + roles[Role::RelayB as usize].switches;
            if hops == Hops::Direct {
                assert_eq!(relays, 0);
            } else {
                // Each relay thread blocks at least once per call.
                assert!(relays >= 100, "{hops:?}: {relays}");
            }
            assert!(roles[Role::AppB as usize].switches > 0, "{hops:?}");
        }
    }
}
