//! Service invocation benchmark: app → runtime → runtime → app over the
//! mTLS mesh, against the same apps calling each other directly over gRPC,
//! in one run. Prints markdown.
//!
//! ```text
//! cargo build --release -p weft -p weft-tests
//! target/release/mesh_bench [--rate 1000] [--secs 10] [--payload 1024] [--clients 16]
//! ```
//!
//! App B (an `AppCallback` echo server) runs in this process, on a TCP port
//! and on a Unix socket. For each variant a pair of release `weft`
//! processes (`bench-a`, `bench-b`) with certificates from `weft ca init` /
//! `weft ca issue` and its own local registry:
//!
//! * mTLS between the runtimes, the local hops (app A → weft A, weft B →
//!   app B) over TCP: gRPC port and `--app-port`;
//! * the same with the local hops over Unix sockets: `--uds`, `--app-socket`;
//! * the local hops over shared memory: app A calls `InvokeService` on weft
//!   A's shared-memory transport, app B receives its calls over
//!   `weft.ServeInvocations` on weft B's (both blocking clients on threads of
//!   this process, with the client's default idle strategy);
//! * with `--plaintext`, the development plain-text mesh (Unix sockets);
//! * with `--floor`, the floor under all of these: bare relays in the
//!   runtimes' places, doing none of their work (`weft_tests::relay_floor`),
//!   against a bare echo called directly, in the same rounds.
//!
//! * Fixed rate: calls start on a fixed schedule (open loop, `--rate` per
//!   second with a `--payload`-byte body) for `--secs`, each in its own
//!   task, so a slow call never delays the next one; a call's latency runs
//!   from the moment it is sent (tokio's timer has 1 ms granularity, too
//!   coarse to measure from the schedule). Direct and mesh phases alternate in
//!   `--rounds` rounds so drift on the host hits both alike. The runtimes'
//!   CPU (from `/proc/<pid>/stat`) and resident memory are sampled over the
//!   mesh phases.
//! * Maximum throughput: `--clients` closed-loop callers for `--secs`, each
//!   with one call in flight, over one HTTP/2 connection per caller.
//!
//! The caller and app B run on separate tokio current_thread runtimes in
//! their own threads. This is a measuring tool: it asserts nothing about
//! timings.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tonic::transport::{Channel, Endpoint};
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::app_callback_client::AppCallbackClient;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_shm::client::{Client as ShmClient, ClientOptions as ShmOptions};
use weft_shm::idle::IdleConfig;
use weft_tests::certs::{ca_init, ca_issue, flags};
use weft_tests::invoke_app::InvokeApp;
use weft_tests::procfs;
use weft_tests::relay_floor::{self, Caller as FloorCaller, Hops};
use weft_tests::{free_port, Weft, WeftOptions};

const USAGE: &str = "\
mesh_bench: added latency and throughput of service invocation through two runtimes

usage: mesh_bench [options]
  --rate N        calls per second in the fixed-rate phases (default 1000)
  --secs S        length of each measured phase (default 10)
  --rounds N      direct/mesh alternations at the fixed rate (default 2)
  --payload N     request body bytes (default 1024)
  --clients N     closed-loop callers for maximum throughput (default 16)
  --plaintext     also measure the development plain-text mesh (Unix-socket local hops)
  --floor         also measure bare relays in the runtimes' places (no TLS,
                  HTTP/2 or protobuf; threads of this process), the least
                  any runtime there can add on this machine
  --app-idle-micros N
                  the shared-memory apps spin N µs, then yield N µs, before
                  sleeping on the socket (default: the client's default, 50)

The runtimes inherit the environment: WEFT_SHM_SPIN_MICROS and
WEFT_SHM_YIELD_MICROS set their side's idle strategy.

The weft binary is $WEFT_BIN, or else target/release/weft beside this binary.
";

struct Config {
    rate: u64,
    secs: f64,
    rounds: usize,
    payload: usize,
    clients: usize,
    plaintext: bool,
    floor: bool,
}

/// How the shared-memory apps wait (`--app-idle-micros`).
static APP_IDLE: std::sync::OnceLock<weft_shm::idle::IdleConfig> = std::sync::OnceLock::new();

fn shm_options(app_id: &str) -> ShmOptions {
    let mut o = ShmOptions::new(app_id);
    if let Some(idle) = APP_IDLE.get() {
        o.idle = *idle;
    }
    o
}

fn parse_args() -> anyhow::Result<Option<Config>> {
    let mut c = Config {
        rate: 1000,
        secs: 10.0,
        rounds: 2,
        payload: 1024,
        clients: 16,
        plaintext: false,
        floor: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let mut value = || -> anyhow::Result<&str> {
            i += 1;
            args.get(i)
                .map(String::as_str)
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag {
            "--rate" => c.rate = value()?.parse().context("--rate")?,
            "--secs" => c.secs = value()?.parse().context("--secs")?,
            "--rounds" => c.rounds = value()?.parse().context("--rounds")?,
            "--payload" => c.payload = value()?.parse().context("--payload")?,
            "--clients" => c.clients = value()?.parse().context("--clients")?,
            "--plaintext" => c.plaintext = true,
            "--floor" => c.floor = true,
            "--app-idle-micros" => {
                let n = Duration::from_micros(value()?.parse().context("--app-idle-micros")?);
                let _ = APP_IDLE.set(weft_shm::idle::IdleConfig {
                    spin: n,
                    yield_for: n,
                });
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
        i += 1;
    }
    if c.rate == 0 || c.secs <= 0.0 || c.clients == 0 || c.rounds == 0 {
        bail!("--rate, --secs, --rounds and --clients must be positive");
    }
    Ok(Some(c))
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh_bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = weft_tests::use_weft_beside_this_binary() {
        eprintln!("mesh_bench: {e}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// App B on its own thread and current_thread runtime, on a TCP port and on
/// the Unix socket `sock`; returns the port.
fn spawn_app(sock: PathBuf) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("app runtime");
        rt.block_on(async move {
            let app = InvokeApp::new("b");
            let (port, task) = app.serve().await;
            let _unix = app.serve_unix(&sock).await;
            tx.send(port).expect("report app port");
            let _ = task.await;
        });
    });
    rx.recv().expect("app port")
}

/// One way through the runtimes.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// App → runtime over TCP (gRPC port), runtime → app over TCP (--app-port).
    TlsTcp,
    /// The local hops over Unix sockets (--uds, --app-socket).
    TlsUnix,
    /// Unix sockets, and plain text between the runtimes (development flag).
    PlainUnix,
    /// The local hops over shared memory: app A calls `InvokeService` on
    /// weft A's shared-memory transport, app B receives over
    /// `weft.ServeInvocations` on weft B's.
    TlsShm,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::TlsTcp => "mesh mTLS, local hops TCP",
            Variant::TlsUnix => "mesh mTLS, local hops Unix socket",
            Variant::PlainUnix => "mesh plain text (dev), local hops Unix socket",
            Variant::TlsShm => "mesh mTLS, local hops shared memory",
        }
    }
}

struct Pair {
    a: Weft,
    b: Weft,
    variant: Variant,
    /// Weft A's shared-memory socket (used by the shared-memory variant).
    shm_a: PathBuf,
}

async fn start_pair(
    dir: &std::path::Path,
    app_port: u16,
    app_sock: &std::path::Path,
    variant: Variant,
    n: usize,
) -> anyhow::Result<Pair> {
    let registry = dir.join(format!("registry-{n}"));
    let mut runtimes = Vec::new();
    for app in ["bench-a", "bench-b"] {
        let mut opts = WeftOptions::new(app)
            .arg("--mesh-port")
            .arg(&free_port().to_string())
            .env("WEFT_LOCAL_REGISTRY_DIR", &registry.to_string_lossy())
            .env("WEFT_LOG", "warn");
        opts = if variant == Variant::TlsShm {
            opts.arg("--shm-socket")
                .arg(&shm_socket(dir, app, n).to_string_lossy())
        } else {
            opts.arg("--no-shm")
        };
        let unix = matches!(variant, Variant::TlsUnix | Variant::PlainUnix);
        if app == "bench-a" && unix {
            opts = opts.uds(&dir.join(format!("a-{n}.sock")));
        }
        if app == "bench-b" && variant != Variant::TlsShm {
            opts = if unix {
                opts.arg("--app-socket").arg(&app_sock.to_string_lossy())
            } else {
                opts.arg("--app-port").arg(&app_port.to_string())
            };
        }
        if variant == Variant::PlainUnix {
            opts = opts.arg("--dev-insecure-plaintext-mesh");
        } else {
            let set = ca_issue(
                &dir.join("ca"),
                app,
                &dir.join(format!("certs/{app}")),
                "24h",
            );
            for f in flags(&set) {
                opts = opts.arg(&f);
            }
        }
        runtimes.push(Weft::start(opts).await?);
    }
    let b = runtimes.pop().expect("b");
    let a = runtimes.pop().expect("a");
    if variant == Variant::TlsShm {
        let path = shm_socket(dir, "bench-b", n);
        tokio::task::spawn_blocking(move || spawn_shm_app(&path)).await??;
    }
    Ok(Pair {
        a,
        b,
        variant,
        shm_a: shm_socket(dir, "bench-a", n),
    })
}

/// Set when the measurements are done and the runtimes are about to stop.
static FINISHING: AtomicBool = AtomicBool::new(false);

fn shm_socket(dir: &std::path::Path, app: &str, n: usize) -> PathBuf {
    dir.join(format!("shm-{app}-{n}.sock"))
}

/// App B over shared memory: a thread holding a session with weft B that
/// opened `weft.ServeInvocations` and echoes every invocation. Returns once
/// the runtime has registered the stream.
fn spawn_shm_app(path: &std::path::Path) -> anyhow::Result<()> {
    weft_tests::invoke_app::serve_shm_echo(path, shm_options("bench-b"), |e| {
        if !FINISHING.load(Ordering::Relaxed) {
            eprintln!("mesh_bench: app B's invocation stream ended: {e:?}");
        }
    })
}

impl Pair {
    /// A new client of runtime A, on the transport of this variant.
    async fn caller(&self) -> anyhow::Result<Caller> {
        if self.variant == Variant::TlsShm {
            return Ok(Caller::Shm(self.shm_a.clone()));
        }
        let ch = match &self.a.uds {
            Some(path) => weft_tests::uds_channel(path).await?,
            None => channel(self.a.grpc_port).await?,
        };
        Ok(Caller::Mesh(DaprClient::new(ch)))
    }
}

/// How a call is made: directly to app B, or through runtime A (over gRPC,
/// or over its shared-memory socket — blocking calls, made on threads).
#[derive(Clone)]
enum Caller {
    Direct(AppCallbackClient<Channel>),
    Mesh(DaprClient<Channel>),
    Shm(PathBuf),
}

fn echo_request(body: &[u8]) -> common::InvokeRequest {
    common::InvokeRequest {
        method: "echo".into(),
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: body.to_vec(),
        }),
        content_type: "application/octet-stream".into(),
        http_extension: None,
    }
}

fn invoke_b(body: &[u8]) -> pb::InvokeServiceRequest {
    pb::InvokeServiceRequest {
        id: "bench-b".into(),
        message: Some(echo_request(body)),
    }
}

impl Caller {
    async fn call(&mut self, body: &[u8]) -> Result<(), tonic::Status> {
        match self {
            Caller::Direct(c) => c.on_invoke(echo_request(body)).await.map(|_| ()),
            Caller::Mesh(c) => c.invoke_service(invoke_b(body)).await.map(|_| ()),
            Caller::Shm(_) => unreachable!("shared-memory calls are made on threads"),
        }
    }
}

/// A shared-memory session with weft A, as app A.
fn shm_caller(path: &std::path::Path) -> anyhow::Result<ShmClient> {
    ShmClient::connect(path, shm_options("bench-a"))
        .map_err(|e| anyhow::anyhow!("app A over shared memory: {e:?}"))
}

/// Threads (one shared-memory session each) that share the fixed-rate
/// schedule, so that a slow call rarely holds back the next one.
const SHM_RATE_THREADS: usize = 4;

/// [`fixed_rate`] for shared-memory callers: [`SHM_RATE_THREADS`] blocking
/// threads take the slots of the schedule in turn
/// ([`relay_floor::fixed_rate`]).
fn fixed_rate_shm(
    path: &std::path::Path,
    rate: u64,
    secs: f64,
    body: &[u8],
) -> anyhow::Result<(Vec<u64>, u64)> {
    let request = prost::Message::encode_to_vec(&invoke_b(body));
    let mut clients = Vec::new();
    for _ in 0..SHM_RATE_THREADS {
        clients.push(shm_caller(path)?);
    }
    let (lat, errors, _) = relay_floor::fixed_rate(clients, rate, secs, |c: &mut ShmClient| {
        c.call(weft_shm::method::INVOKE_SERVICE, &request).is_ok()
    });
    Ok((lat, errors))
}

/// [`max_throughput`] for shared-memory callers: one thread and session each.
/// The sessions are returned open, so that memory is read while they are.
fn max_throughput_shm(
    path: &std::path::Path,
    clients: usize,
    secs: f64,
    body: &[u8],
) -> anyhow::Result<(f64, u64, Vec<ShmClient>)> {
    let request = prost::Message::encode_to_vec(&invoke_b(body));
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(shm_caller(path)?);
    }
    Ok(relay_floor::closed_loop(
        sessions,
        secs,
        |c: &mut ShmClient| c.call(weft_shm::method::INVOKE_SERVICE, &request).is_ok(),
    ))
}

/// One fixed-rate phase of a bare path ([`relay_floor`]): the latencies,
/// the failed calls and the usage of the apps (callers and app B), relay A
/// and relay B.
fn floor_fixed_rate(
    hops: Hops,
    dir: &std::path::Path,
    rate: u64,
    secs: f64,
    body: &[u8],
) -> anyhow::Result<(Vec<u64>, u64, [relay_floor::Usage; 3])> {
    let (callers, floor) =
        relay_floor::connect(hops, SHM_RATE_THREADS, IdleConfig::default(), dir)?;
    let (lat, errors, callers_usage) =
        relay_floor::fixed_rate(callers, rate, secs, |c: &mut FloorCaller| c.call(body));
    let [mut apps, a, b] = floor.finish();
    apps.add(callers_usage);
    Ok((lat, errors, [apps, a, b]))
}

/// The closed-loop phase of a bare path; all its mailboxes sleep at once
/// (with one thread per caller and hop, spinning would only take the CPU
/// from the others).
fn floor_closed_loop(
    hops: Hops,
    dir: &std::path::Path,
    clients: usize,
    secs: f64,
    body: &[u8],
) -> anyhow::Result<(f64, u64)> {
    let (callers, floor) = relay_floor::connect(hops, clients, IdleConfig::SLEEP, dir)?;
    let (rate, errors, callers) =
        relay_floor::closed_loop(callers, secs, |c: &mut FloorCaller| c.call(body));
    drop(callers);
    floor.finish();
    Ok((rate, errors))
}

async fn channel(port: u16) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Fixed-rate phase: latencies (µs) of every call and the error count.
async fn fixed_rate(caller: &Caller, rate: u64, secs: f64, body: Arc<Vec<u8>>) -> (Vec<u64>, u64) {
    if let Caller::Shm(path) = caller {
        let path = path.clone();
        return tokio::task::spawn_blocking(move || fixed_rate_shm(&path, rate, secs, &body))
            .await
            .expect("shared-memory caller thread")
            .unwrap_or_else(|e| {
                eprintln!("mesh_bench: {e:#}");
                (Vec::new(), 1)
            });
    }
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let total = (rate as f64 * secs) as u64;
    let start = Instant::now() + Duration::from_millis(10);
    let errors = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..total {
        let at = start + interval * n as u32;
        tokio::time::sleep_until(at.into()).await;
        let mut c = caller.clone();
        let tx = tx.clone();
        let body = body.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            if c.call(&body).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            let _ = tx.send(sent.elapsed().as_micros() as u64);
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    while let Some(l) = rx.recv().await {
        lat.push(l);
    }
    lat.sort_unstable();
    (lat, errors.load(Ordering::Relaxed))
}

/// Closed-loop phase: calls per second and errors.
async fn max_throughput(callers: Vec<Caller>, secs: f64, body: Arc<Vec<u8>>) -> (f64, u64) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut c| {
            let (done, errors, body) = (done.clone(), errors.clone(), body.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    match c.call(&body).await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, errors.load(Ordering::Relaxed))
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Resident and peak resident kB.
fn rss_kb(pid: u32) -> (u64, u64) {
    (
        procfs::status_kb(pid, "VmRSS:"),
        procfs::status_kb(pid, "VmHWM:"),
    )
}

/// "21.0 MB (anon 4.1, file 15.0, shm 1.9)": a process's resident memory
/// and its parts — anonymous (heap, stacks: the process's own), file-backed
/// (the pages of its binary and libraries, shared with every process that
/// maps the same files, here both runtimes) and shared memory (the rings,
/// mapped by the app too).
fn resident(pid: u32) -> String {
    let kb = |field| procfs::status_kb(pid, field) as f64 / 1024.0;
    format!(
        "{:.1} MB (anon {:.1}, file {:.1}, shm {:.1})",
        kb("VmRSS:"),
        kb("RssAnon:"),
        kb("RssFile:"),
        kb("RssShmem:")
    )
}

/// The runtimes of one path at the fixed rate.
struct Usage {
    label: String,
    cpu_a: f64,
    cpu_b: f64,
    /// CPU µs per call of weft A and weft B.
    per_call: (f64, f64),
    /// The larger runtime's resident memory, with its parts.
    resident: String,
    peak_kb: u64,
}

/// The bare paths `--floor` measures, the direct one first.
const FLOOR_HOPS: [Hops; 3] = [Hops::Direct, Hops::Handoff, Hops::Unix];

/// A bare path's fixed-rate phases summed over the rounds.
#[derive(Default)]
struct FloorRow {
    lat: Vec<u64>,
    errors: u64,
    /// Apps (callers and app B), relay A, relay B.
    usage: [relay_floor::Usage; 3],
}

/// The bare paths' latencies, what the relays add to the bare direct
/// echo, and the relays' wake-ups and CPU per call.
fn print_floors(floors: &mut [FloorRow]) {
    for f in floors.iter_mut() {
        f.lat.sort_unstable();
    }
    println!("\n## The floor: bare relays in the runtimes' places, same rounds\n");
    println!(
        "| path | calls | errors | p50 µs | p90 µs | p99 µs | added p50 | added p90 | added p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let floors = &*floors;
    let direct = &floors[0].lat;
    for (hops, f) in FLOOR_HOPS.iter().zip(floors.iter()) {
        let add = |p| match hops {
            Hops::Direct => "—".to_string(),
            _ => (pct(&f.lat, p) as i64 - pct(direct, p) as i64).to_string(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            hops.label(),
            f.lat.len(),
            f.errors,
            pct(&f.lat, 50.0),
            pct(&f.lat, 90.0),
            pct(&f.lat, 99.0),
            add(50.0),
            add(90.0),
            add(99.0)
        );
    }
    println!("\n| per call | wake-ups: apps and callers | relay A | relay B | total | CPU relay A | CPU relay B |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (hops, f) in FLOOR_HOPS.iter().zip(floors.iter()) {
        let [apps, a, b] = f.usage.map(|u| u.per_call(f.lat.len()));
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} µs | {:.1} µs |",
            hops.label(),
            apps.1,
            a.1,
            b.1,
            apps.1 + a.1 + b.1,
            a.0,
            b.0
        );
    }
}

struct Row {
    label: String,
    lat: Vec<u64>,
    errors: u64,
}

async fn run(c: Config) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ca_init(&dir.path().join("ca"), "public");
    let app_sock = dir.path().join("app-b.sock");
    let app_port = spawn_app(app_sock.clone());
    let mut variants = vec![Variant::TlsTcp, Variant::TlsUnix, Variant::TlsShm];
    if c.plaintext {
        variants.push(Variant::PlainUnix);
    }
    let mut pairs = Vec::new();
    for (n, v) in variants.into_iter().enumerate() {
        pairs.push(start_pair(dir.path(), app_port, &app_sock, v, n).await?);
    }
    let body = Arc::new(vec![0x5a_u8; c.payload]);
    let direct = Caller::Direct(AppCallbackClient::new(channel(app_port).await?));
    let meshes: Vec<Caller> = {
        let mut v = Vec::new();
        for p in &pairs {
            v.push(p.caller().await?);
        }
        v
    };
    // Warm up every path (connections, TLS sessions, caches).
    for caller in std::iter::once(&direct).chain(meshes.iter()) {
        let _ = fixed_rate(caller, c.rate, 1.0, body.clone()).await;
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut usage: Vec<Usage> = Vec::new();
    let mut direct_lat = Vec::new();
    let mut direct_err = 0;
    let mut mesh_lat: Vec<Vec<u64>> = vec![Vec::new(); pairs.len()];
    let mut mesh_err = vec![0u64; pairs.len()];
    let mut cpu = vec![(0u64, 0u64, 0f64); pairs.len()];
    // Voluntary context switches (threads that blocked and were woken) of
    // this process (both apps and the caller), weft A and weft B.
    let me = std::process::id();
    let mut direct_switches = 0u64;
    // CPU of this process over the direct phases: one gRPC exchange per
    // call, both of its ends (caller and app B).
    let mut direct_ticks = 0u64;
    let mut switches = vec![[0u64; 3]; pairs.len()];
    let mut floors: Vec<FloorRow> = FLOOR_HOPS.iter().map(|_| FloorRow::default()).collect();
    for _ in 0..c.rounds {
        let (s0, t0) = (procfs::voluntary_switches(me), procfs::cpu_ticks(me));
        let (l, e) = fixed_rate(&direct, c.rate, c.secs, body.clone()).await;
        direct_switches += procfs::voluntary_switches(me) - s0;
        direct_ticks += procfs::cpu_ticks(me) - t0;
        direct_lat.extend(l);
        direct_err += e;
        for (i, (p, m)) in pairs.iter().zip(&meshes).enumerate() {
            let (a0, b0, t0) = (
                procfs::cpu_ticks(p.a.pid()),
                procfs::cpu_ticks(p.b.pid()),
                Instant::now(),
            );
            let pids = [me, p.a.pid(), p.b.pid()];
            let s0 = pids.map(procfs::voluntary_switches);
            let (l, e) = fixed_rate(m, c.rate, c.secs, body.clone()).await;
            for (k, pid) in pids.into_iter().enumerate() {
                switches[i][k] += procfs::voluntary_switches(pid) - s0[k];
            }
            cpu[i].0 += procfs::cpu_ticks(p.a.pid()) - a0;
            cpu[i].1 += procfs::cpu_ticks(p.b.pid()) - b0;
            cpu[i].2 += t0.elapsed().as_secs_f64();
            mesh_lat[i].extend(l);
            mesh_err[i] += e;
        }
        if c.floor {
            for (k, hops) in FLOOR_HOPS.into_iter().enumerate() {
                let (d, body) = (dir.path().to_path_buf(), body.clone());
                let (rate, secs) = (c.rate, c.secs);
                let (l, e, u) = tokio::task::spawn_blocking(move || {
                    floor_fixed_rate(hops, &d, rate, secs, &body)
                })
                .await??;
                floors[k].lat.extend(l);
                floors[k].errors += e;
                for (sum, add) in floors[k].usage.iter_mut().zip(u) {
                    sum.add(add);
                }
            }
        }
    }
    direct_lat.sort_unstable();
    rows.push(Row {
        label: "direct gRPC (app → app)".into(),
        lat: direct_lat,
        errors: direct_err,
    });
    for (i, p) in pairs.iter().enumerate() {
        let mut l = std::mem::take(&mut mesh_lat[i]);
        l.sort_unstable();
        rows.push(Row {
            label: p.variant.label().to_string(),
            lat: l,
            errors: mesh_err[i],
        });
        let secs = cpu[i].2;
        let (rss_a, hwm_a) = rss_kb(p.a.pid());
        let (rss_b, hwm_b) = rss_kb(p.b.pid());
        let larger = if rss_a >= rss_b { p.a.pid() } else { p.b.pid() };
        let calls = rows.last().map_or(1, |r| r.lat.len().max(1)) as f64;
        let us = |ticks: u64| ticks as f64 / procfs::ticks_per_sec() * 1e6 / calls;
        usage.push(Usage {
            label: p.variant.label().to_string(),
            cpu_a: cpu[i].0 as f64 / procfs::ticks_per_sec() / secs * 100.0,
            cpu_b: cpu[i].1 as f64 / procfs::ticks_per_sec() / secs * 100.0,
            per_call: (us(cpu[i].0), us(cpu[i].1)),
            resident: resident(larger),
            peak_kb: hwm_a.max(hwm_b),
        });
    }

    println!(
        "## Fixed rate: {} calls/s, {} B payload, {} × {} s per path\n",
        c.rate, c.payload, c.rounds, c.secs
    );
    println!("| path | calls | errors | p50 µs | p90 µs | p99 µs | p99.9 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.lat.len(),
            r.errors,
            pct(&r.lat, 50.0),
            pct(&r.lat, 90.0),
            pct(&r.lat, 99.0),
            pct(&r.lat, 99.9)
        );
    }
    println!("\n| added by the runtimes | p50 µs | p90 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    for r in rows.iter().skip(1) {
        let d = &rows[0].lat;
        let add = |p| pct(&r.lat, p) as i64 - pct(d, p) as i64;
        println!(
            "| {} | {} | {} | {} |",
            r.label,
            add(50.0),
            add(90.0),
            add(99.0)
        );
    }
    let calls = |lat: &Vec<u64>| lat.len().max(1) as f64;
    println!("\n| wake-ups per call (voluntary context switches) | apps and caller | weft A | weft B | total |");
    println!("|---|---:|---:|---:|---:|");
    let direct_per_call = direct_switches as f64 / calls(&rows[0].lat);
    println!(
        "| {} | {direct_per_call:.1} | | | {direct_per_call:.1} |",
        rows[0].label
    );
    for (i, r) in rows.iter().skip(1).enumerate() {
        let per = switches[i].map(|n| n as f64 / calls(&r.lat));
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.label,
            per[0],
            per[1],
            per[2],
            per.iter().sum::<f64>()
        );
    }
    println!(
        "\n| runtimes at that rate | CPU weft A | CPU weft B | CPU per call A / B | RSS now (max of A, B) | RSS peak |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let direct_us = direct_ticks as f64 / procfs::ticks_per_sec() * 1e6 / calls(&rows[0].lat);
    println!(
        "| {} (this process: one gRPC exchange, both ends) | | | {direct_us:.0} µs | | |",
        rows[0].label
    );
    for u in &usage {
        println!(
            "| {} | {:.1} % | {:.1} % | {:.0} / {:.0} µs | {} | {:.1} MB |",
            u.label,
            u.cpu_a,
            u.cpu_b,
            u.per_call.0,
            u.per_call.1,
            u.resident,
            u.peak_kb as f64 / 1024.0
        );
    }
    if c.floor {
        print_floors(&mut floors);
    }

    println!(
        "\n## Maximum throughput: {} closed-loop callers, {} s\n",
        c.clients, c.secs
    );
    println!("| path | calls/s | errors | RSS after |");
    println!("|---|---:|---:|---:|");
    let mut callers = Vec::new();
    for _ in 0..c.clients {
        callers.push(Caller::Direct(AppCallbackClient::new(
            channel(app_port).await?,
        )));
    }
    let (rate, errors) = max_throughput(callers, c.secs, body.clone()).await;
    println!("| direct gRPC | {rate:.0} | {errors} | |");
    for p in &pairs {
        let (rate, errors, _sessions) = if p.variant == Variant::TlsShm {
            let (path, clients, secs, body) = (p.shm_a.clone(), c.clients, c.secs, body.clone());
            tokio::task::spawn_blocking(move || max_throughput_shm(&path, clients, secs, &body))
                .await??
        } else {
            let mut callers = Vec::new();
            for _ in 0..c.clients {
                callers.push(p.caller().await?);
            }
            let (rate, errors) = max_throughput(callers, c.secs, body.clone()).await;
            (rate, errors, Vec::new())
        };
        println!(
            "| {} | {rate:.0} | {errors} | A {}, B {} |",
            p.variant.label(),
            resident(p.a.pid()),
            resident(p.b.pid())
        );
    }
    if c.floor {
        for hops in FLOOR_HOPS {
            let (d, body, clients, secs) =
                (dir.path().to_path_buf(), body.clone(), c.clients, c.secs);
            let (rate, errors) = tokio::task::spawn_blocking(move || {
                floor_closed_loop(hops, &d, clients, secs, &body)
            })
            .await??;
            println!("| {} | {rate:.0} | {errors} | |", hops.label());
        }
    }
    FINISHING.store(true, Ordering::Relaxed);
    Ok(())
}
