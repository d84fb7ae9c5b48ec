//! Shared-memory transport benchmark: round-trip latency of the same calls
//! over shared memory (spinning, and with a forced sleep/wake on every
//! call), gRPC over a Unix socket and over TCP, beside a plain Unix-socket
//! ping-pong baseline; then one-way throughput through the runtime's
//! decoder. Everything is measured in one run against real `weft`
//! processes.
//!
//! ```sh
//! cargo build --release -p weft -p weft-tests --bin shm_bench
//! target/release/shm_bench [--iters 200000] [--grpc-iters 20000] [--oneway 5000000]
//! target/release/shm_bench --only pingpong,sleep   # the sleep/wake comparison only
//! ```
//!
//! `--only` takes a comma-separated subset of `pingpong`, `spin`, `sleep`,
//! `placement`, `grpc` and `oneway` (default: all of them). `placement`
//! repeats the 64-byte sleep/wake vs ping-pong echo with both pairs pinned
//! (taskset) to one vCPU, then split over two.
//!
//! Uses `$WEFT_BIN`, else target/release/weft.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_proto::common::StateItem;
use weft_proto::runtime as pb;
use weft_shm::method as m;
use weft_shm::{Client, ClientOptions, IdleConfig};
use weft_tests::{write_component, Weft, WeftOptions};

const APP: &str = "bench";

struct Stats {
    p50: f64,
    p99: f64,
    p999: f64,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

fn measure(iters: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..iters / 10 + 1 {
        f();
    }
    let mut ns = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f();
        ns.push(t.elapsed().as_nanos() as u64);
    }
    stats(ns)
}

/// Measures two round trips in alternating slices of `iters / SLICES`
/// calls, so that both see the same host (load from neighbours and vCPU
/// placement drift over seconds on a shared VM).
fn measure_interleaved(iters: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Stats, Stats) {
    const SLICES: usize = 20;
    for _ in 0..iters / 10 + 1 {
        a();
        b();
    }
    let (mut na, mut nb) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    let per = iters.div_ceil(SLICES);
    for _ in 0..SLICES {
        for (f, ns) in [
            (&mut a as &mut dyn FnMut(), &mut na),
            (&mut b as &mut dyn FnMut(), &mut nb),
        ] {
            for _ in 0..per {
                let t = Instant::now();
                f();
                ns.push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    (stats(na), stats(nb))
}

struct Row {
    transport: String,
    call: String,
    size: usize,
    s: Stats,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the `--only` list (default: everything) includes `group`.
fn wanted(group: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args
            .get(i + 1)
            .is_some_and(|v| v.split(',').any(|g| g.trim() == group)),
        None => true,
    }
}

/// The ping-pong peer: reads one length-prefixed frame (one `read` when it
/// has arrived whole, as it does here) and writes it back with one `write`,
/// so each side makes one write and one read per round trip, as the
/// shared-memory sleep/wake path does.
fn pingpong_server(path: &Path) {
    let l = UnixListener::bind(path).expect("bind ping-pong socket");
    let (mut s, _) = l.accept().expect("accept");
    let mut buf = vec![0u8; 1 << 16];
    let mut have = 0;
    loop {
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        if have < 4 {
            continue;
        }
        let frame = 4 + u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        if have < frame {
            continue;
        }
        if s.write_all(&buf[..frame]).is_err() {
            return;
        }
        buf.copy_within(frame..have, 0);
        have -= frame;
    }
}

async fn start_weft(dir: &Path, name: &str, extra: &[&str]) -> (Weft, PathBuf) {
    let res = dir.join("resources");
    std::fs::create_dir_all(&res).unwrap();
    write_component(&res, "statestore", "state.in-memory", &[]);
    let sock = dir.join(format!("{name}-shm.sock"));
    let uds = dir.join(format!("{name}-grpc.sock"));
    let mut o = WeftOptions::new(APP)
        .resources(&res)
        .uds(&uds)
        .arg("--shm-socket")
        .arg(sock.to_str().unwrap())
        .arg("--log")
        .arg("warn");
    for a in extra {
        o = o.arg(a);
    }
    (Weft::start(o).await.expect("start weft"), sock)
}

fn value(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// A plain Unix-socket ping-pong with a second process (this binary with
/// `--pingpong-server`): the same process layout as the shared-memory rows
/// (app process ↔ runtime process).
struct PingPong {
    s: UnixStream,
    server: std::process::Child,
}

impl PingPong {
    fn start(dir: &Path) -> Self {
        let pp = dir.join("pingpong.sock");
        let server = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--pingpong-server")
            .arg(&pp)
            .spawn()
            .unwrap();
        let s = loop {
            match UnixStream::connect(&pp) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        Self { s, server }
    }

    /// One round trip: one write of the whole frame, then read it back.
    fn echo(&mut self, frame: &[u8], back: &mut [u8]) {
        self.s.write_all(frame).unwrap();
        self.s.read_exact(back).unwrap();
    }

    fn stop(mut self) {
        let _ = self.s.shutdown(std::net::Shutdown::Both);
        let _ = self.server.wait();
    }
}

/// Sets the CPU affinity of every thread of `pid` (with taskset(1)).
fn pin(pid: u32, cpus: &str) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A length-prefixed ping-pong frame with a `size`-byte body.
fn frame(size: usize) -> Vec<u8> {
    let mut f = (size as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&value(size));
    f
}

const PINGPONG: &str = "plain UDS ping-pong (baseline)";
const SLEEP: &str = "shm, sleep/wake every call";

/// The sleep/wake goal's comparison: ping-pong echo and shared-memory echo
/// (forced sleep/wake), interleaved; either alone when only one is wanted.
fn echo_comparison(
    pp: Option<&mut PingPong>,
    shm: Option<&mut Client>,
    sizes: &[usize],
    iters: usize,
    placement: &str,
    rows: &mut Vec<Row>,
) {
    let mut pp = pp;
    let mut shm = shm;
    for &size in sizes {
        let f = frame(size);
        let body = value(size);
        let mut back = vec![0u8; size + 4];
        let mut pp_call = |pp: &mut PingPong| pp.echo(&f, &mut back);
        let shm_call = |c: &mut Client| {
            let r = c.call(m::WEFT_ECHO, &body).unwrap();
            assert_eq!(r.len(), size);
        };
        let (a, b) = match (pp.as_deref_mut(), shm.as_deref_mut()) {
            (Some(p), Some(c)) => {
                let (a, b) = measure_interleaved(iters, || pp_call(p), || shm_call(c));
                (Some(a), Some(b))
            }
            (Some(p), None) => (Some(measure(iters, || pp_call(p))), None),
            (None, Some(c)) => (None, Some(measure(iters, || shm_call(c)))),
            (None, None) => (None, None),
        };
        for (label, st) in [(PINGPONG, a), (SLEEP, b)] {
            if let Some(s) = st {
                rows.push(Row {
                    transport: format!("{label}{placement}"),
                    call: "echo".into(),
                    size,
                    s,
                });
            }
        }
    }
}

/// Echo and state Get rows over one shared-memory session.
fn shm_rows(
    label: &str,
    sock: &Path,
    idle: IdleConfig,
    n: usize,
    sizes: &[usize],
    rows: &mut Vec<Row>,
) {
    let mut o = ClientOptions::new(APP);
    o.idle = idle;
    let mut c = Client::connect(sock, o).expect("connect shm");
    echo_rows(label, &mut c, n, sizes, rows);
    state_rows(label, &mut c, n, sizes, rows);
}

fn echo_rows(label: &str, c: &mut Client, n: usize, sizes: &[usize], rows: &mut Vec<Row>) {
    for &size in sizes {
        let body = value(size);
        let st = measure(n, || {
            let r = c.call(m::WEFT_ECHO, &body).unwrap();
            assert_eq!(r.len(), size);
        });
        rows.push(Row {
            transport: label.into(),
            call: "echo".into(),
            size,
            s: st,
        });
    }
}

fn state_rows(label: &str, c: &mut Client, n: usize, sizes: &[usize], rows: &mut Vec<Row>) {
    for &size in sizes {
        let body = value(size);
        let key = format!("k{size}");
        c.unary::<_, ()>(
            m::SAVE_STATE,
            &pb::SaveStateRequest {
                store_name: "statestore".into(),
                states: vec![StateItem {
                    key: key.clone(),
                    value: body.clone(),
                    ..Default::default()
                }],
            },
        )
        .unwrap();
        let req = pb::GetStateRequest {
            store_name: "statestore".into(),
            key: key.clone(),
            ..Default::default()
        };
        let st = measure(n, || {
            let r: pb::GetStateResponse = c.unary(m::GET_STATE, &req).unwrap();
            assert_eq!(r.data.len(), size);
        });
        rows.push(Row {
            transport: label.into(),
            call: "state Get".into(),
            size,
            s: st,
        });
    }
}

/// gRPC (tonic, current_thread client; runtime --threads 1), UDS and TCP.
fn grpc_rows(
    rt: &tokio::runtime::Runtime,
    weft: &Weft,
    iters: usize,
    sizes: &[usize],
    rows: &mut Vec<Row>,
) {
    for (label, uds) in [("gRPC over UDS", true), ("gRPC over TCP", false)] {
        let mut client = rt.block_on(async {
            if uds {
                weft.uds_client().await
            } else {
                weft.client().await
            }
        });
        for &size in sizes {
            let key = format!("k{size}");
            rt.block_on(client.save_state(pb::SaveStateRequest {
                store_name: "statestore".into(),
                states: vec![StateItem {
                    key: key.clone(),
                    value: value(size),
                    ..Default::default()
                }],
            }))
            .unwrap();
            let req = pb::GetStateRequest {
                store_name: "statestore".into(),
                key,
                ..Default::default()
            };
            let st = measure(iters, || {
                let r = rt
                    .block_on(client.get_state(req.clone()))
                    .unwrap()
                    .into_inner();
                assert_eq!(r.data.len(), size);
            });
            rows.push(Row {
                transport: label.into(),
                call: "state Get".into(),
                size,
                s: st,
            });
        }
    }
}

/// One-way throughput: 64-byte echo records with NO_REPLY, then one round
/// trip (ordered after them) to know the runtime decoded them all.
fn oneway_rate(sock: &Path, oneway: usize) -> (Duration, f64) {
    let mut o = ClientOptions::new(APP);
    o.idle = IdleConfig {
        spin: Duration::from_secs(3600),
        yield_for: Duration::ZERO,
    };
    o.request_ring = 4 << 20;
    let mut c = Client::connect(sock, o).expect("connect shm");
    let body = value(64);
    for _ in 0..oneway / 10 {
        c.send_oneway(m::WEFT_ECHO, &body).unwrap();
    }
    c.call(m::WEFT_ECHO, b"sync").unwrap();
    let t = Instant::now();
    for _ in 0..oneway {
        c.send_oneway(m::WEFT_ECHO, &body).unwrap();
    }
    c.call(m::WEFT_ECHO, b"sync").unwrap();
    let elapsed = t.elapsed();
    (elapsed, oneway as f64 / elapsed.as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--pingpong-server") {
        return pingpong_server(Path::new(&args[i + 1]));
    }
    if std::env::var_os("WEFT_BIN").is_none() {
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/weft");
        std::env::set_var("WEFT_BIN", release);
    }
    let iters = arg("--iters", 200_000);
    let grpc_iters = arg("--grpc-iters", 20_000);
    let oneway = arg("--oneway", 5_000_000);
    let sizes = [64usize, 4096];
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spin = (wanted("spin") || wanted("grpc") || wanted("oneway"))
        .then(|| rt.block_on(start_weft(dir.path(), "spin", &[])));
    let sleep = wanted("sleep").then(|| {
        rt.block_on(start_weft(
            dir.path(),
            "sleep",
            &["--shm-spin-micros", "0", "--shm-yield-micros", "0"],
        ))
    });
    let mut rows = Vec::new();

    // Plain Unix-socket ping-pong and shm with a forced sleep/wake on
    // every call: echo measured interleaved, then shm state Get.
    let mut pp = wanted("pingpong").then(|| PingPong::start(dir.path()));
    let mut sleeper = sleep.as_ref().map(|(_, sock)| {
        let mut o = ClientOptions::new(APP);
        o.idle = IdleConfig::SLEEP;
        Client::connect(sock, o).expect("connect shm")
    });
    echo_comparison(
        pp.as_mut(),
        sleeper.as_mut(),
        &sizes,
        grpc_iters,
        "",
        &mut rows,
    );
    // The scheduler puts each pair either on one vCPU or on two, and that
    // choice (not the transport) dominates a sleep/wake round trip: repeat
    // with both placements forced, for a like-for-like comparison.
    if let (Some(p), Some(c), Some((weft, _))) = (&mut pp, &mut sleeper, &sleep) {
        if wanted("placement") && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            let me = std::process::id();
            let (srv, rt_pid) = (p.server.id(), weft.pid());
            for (suffix, mine, peers) in [(", same vCPU", "0", "0"), (", split vCPUs", "0", "1")] {
                if pin(me, mine) && pin(srv, peers) && pin(rt_pid, peers) {
                    echo_comparison(Some(p), Some(c), &sizes[..1], grpc_iters, suffix, &mut rows);
                }
            }
            let all = format!(
                "0-{}",
                std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
            );
            for pid in [me, srv, rt_pid] {
                pin(pid, &all);
            }
        }
    }
    if let Some(c) = &mut sleeper {
        state_rows(SLEEP, c, grpc_iters, &sizes, &mut rows);
    }
    drop(sleeper);
    if let Some(pp) = pp {
        pp.stop();
    }
    if let (true, Some((_, sock))) = (wanted("spin"), &spin) {
        let idle = IdleConfig {
            spin: Duration::from_secs(3600),
            yield_for: Duration::ZERO,
        };
        shm_rows("shm, spinning", sock, idle, iters, &sizes, &mut rows);
    }
    if let (true, Some((weft, _))) = (wanted("grpc"), &spin) {
        grpc_rows(&rt, weft, grpc_iters, &sizes, &mut rows);
    }
    let rate = match (wanted("oneway"), &spin) {
        (true, Some((_, sock))) => Some(oneway_rate(sock, oneway)),
        _ => None,
    };

    println!("| transport | call | size | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} B | {:.2} | {:.2} | {:.2} |",
            r.transport, r.call, r.size, r.s.p50, r.s.p99, r.s.p999
        );
    }
    println!();
    if let Some((elapsed, rate)) = rate {
        println!(
            "one-way: {oneway} × 64-byte messages through the runtime's decoder in {:.3} s = {:.2} M msgs/s",
            elapsed.as_secs_f64(),
            rate / 1e6
        );
    }
    let p50 = |t: &str, call: &str, size: usize| {
        rows.iter()
            .find(|r| r.transport == t && r.call == call && r.size == size)
            .map(|r| r.s.p50)
            .unwrap_or(f64::NAN)
    };
    if wanted("spin") && wanted("grpc") {
        let shm = p50("shm, spinning", "state Get", 64);
        let grpc = p50("gRPC over UDS", "state Get", 64);
        println!(
            "state Get 64 B p50: shm spinning {shm:.2} µs vs gRPC over UDS {grpc:.2} µs = {:.0}× faster",
            grpc / shm
        );
    }
    if wanted("sleep") && wanted("pingpong") {
        println!(
            "echo 64 B p50: shm sleep/wake {:.2} µs vs plain UDS ping-pong {:.2} µs",
            p50(SLEEP, "echo", 64),
            p50(PINGPONG, "echo", 64)
        );
    }
    drop(sleep);
    drop(spin);
}
