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
//! ```
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

fn pingpong_server(path: &Path) {
    let l = UnixListener::bind(path).expect("bind ping-pong socket");
    let (mut s, _) = l.accept().expect("accept");
    let mut len = [0u8; 4];
    let mut buf = vec![0u8; 1 << 16];
    while s.read_exact(&mut len).is_ok() {
        let n = u32::from_le_bytes(len) as usize;
        if s.read_exact(&mut buf[..n]).is_err() {
            break;
        }
        let _ = s.write_all(&len);
        if s.write_all(&buf[..n]).is_err() {
            break;
        }
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
    let (spin_weft, spin_sock) = rt.block_on(start_weft(dir.path(), "spin", &[]));
    let (sleep_weft, sleep_sock) = rt.block_on(start_weft(
        dir.path(),
        "sleep",
        &["--shm-spin-micros", "0", "--shm-yield-micros", "0"],
    ));
    let mut rows = Vec::new();

    // Plain Unix-socket ping-pong between two processes.
    let pp = dir.path().join("pingpong.sock");
    let mut server = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--pingpong-server")
        .arg(&pp)
        .spawn()
        .unwrap();
    let mut s = loop {
        match UnixStream::connect(&pp) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    for &size in &sizes {
        let msg = value(size);
        let mut back = vec![0u8; size + 4];
        let st = measure(grpc_iters, || {
            s.write_all(&(size as u32).to_le_bytes()).unwrap();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
        });
        rows.push(Row {
            transport: "plain UDS ping-pong (baseline)".into(),
            call: "echo".into(),
            size,
            s: st,
        });
    }
    drop(s);
    let _ = server.wait();

    // Shared memory: spinning, then forced sleep/wake on every call.
    for (label, sock, idle, n) in [
        (
            "shm, spinning",
            &spin_sock,
            IdleConfig {
                spin: Duration::from_secs(3600),
                yield_for: Duration::ZERO,
            },
            iters,
        ),
        (
            "shm, sleep/wake every call",
            &sleep_sock,
            IdleConfig::SLEEP,
            grpc_iters,
        ),
    ] {
        let mut o = ClientOptions::new(APP);
        o.idle = idle;
        let mut c = Client::connect(sock, o).expect("connect shm");
        for &size in &sizes {
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

    // gRPC (tonic, current_thread client; runtime --threads 1), UDS and TCP.
    for (label, uds) in [("gRPC over UDS", true), ("gRPC over TCP", false)] {
        let mut client = rt.block_on(async {
            if uds {
                spin_weft.uds_client().await
            } else {
                spin_weft.client().await
            }
        });
        for &size in &sizes {
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
            let st = measure(grpc_iters, || {
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

    // One-way throughput: 64-byte echo records with NO_REPLY, then one
    // round trip (ordered after them) to know the runtime decoded them all.
    let mut o = ClientOptions::new(APP);
    o.idle = IdleConfig {
        spin: Duration::from_secs(3600),
        yield_for: Duration::ZERO,
    };
    o.request_ring = 4 << 20;
    let mut c = Client::connect(&spin_sock, o).expect("connect shm");
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
    let rate = oneway as f64 / elapsed.as_secs_f64();

    println!("| transport | call | size | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} B | {:.2} | {:.2} | {:.2} |",
            r.transport, r.call, r.size, r.s.p50, r.s.p99, r.s.p999
        );
    }
    println!();
    println!(
        "one-way: {oneway} × 64-byte messages through the runtime's decoder in {:.3} s = {:.2} M msgs/s",
        elapsed.as_secs_f64(),
        rate / 1e6
    );
    let p50 = |t: &str, call: &str, size: usize| {
        rows.iter()
            .find(|r| r.transport == t && r.call == call && r.size == size)
            .map(|r| r.s.p50)
            .unwrap_or(f64::NAN)
    };
    let shm = p50("shm, spinning", "state Get", 64);
    let grpc = p50("gRPC over UDS", "state Get", 64);
    println!(
        "state Get 64 B p50: shm spinning {shm:.2} µs vs gRPC over UDS {grpc:.2} µs = {:.0}× faster",
        grpc / shm
    );
    println!(
        "echo 64 B p50: shm sleep/wake {:.2} µs vs plain UDS ping-pong {:.2} µs",
        p50("shm, sleep/wake every call", "echo", 64),
        p50("plain UDS ping-pong (baseline)", "echo", 64)
    );
    drop(sleep_weft);
}
