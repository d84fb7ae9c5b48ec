//! Distributed lock benchmark: a TryLock + Unlock pair against one release
//! runtime, per lock store (`lock.sqlite`, and `lock.postgresql` when
//! `WEFT_TEST_PG_URL` is set), over shared memory and over gRPC on the
//! runtime's Unix socket: p50/p99 of the pair with one client, and pairs/s
//! with 1 and 16 clients (16 shm sessions, or 16 concurrent gRPC callers on
//! one connection), each client on resources of its own. Prints markdown;
//! asserts nothing about timings.
//!
//! ```sh
//! cargo build --release -p weft -p weft-tests --bin lock_bench
//! target/release/lock_bench [--secs 3] [--iters 20000]
//! ```
//!
//! Uses `$WEFT_BIN`, else target/release/weft.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_proto::runtime as pb;
use weft_shm::{method as m, Client, ClientOptions};
use weft_tests::{write_component, Weft, WeftOptions};

const APP: &str = "lock-bench";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn try_lock(store: &str, r: &str) -> pb::TryLockRequest {
    pb::TryLockRequest {
        store_name: store.into(),
        resource_id: r.into(),
        lock_owner: "bench".into(),
        expiry_in_seconds: 30,
    }
}

fn unlock(store: &str, r: &str) -> pb::UnlockRequest {
    pb::UnlockRequest {
        store_name: store.into(),
        resource_id: r.into(),
        lock_owner: "bench".into(),
    }
}

/// One TryLock + Unlock pair over shared memory.
fn shm_pair(c: &mut Client, store: &str, r: &str) {
    let got: pb::TryLockResponse = c.unary(m::TRY_LOCK_ALPHA1, &try_lock(store, r)).unwrap();
    assert!(got.success, "{r} was free");
    let un: pb::UnlockResponse = c.unary(m::UNLOCK_ALPHA1, &unlock(store, r)).unwrap();
    assert_eq!(un.status, 0);
}

fn percentiles(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

fn shm_latency(sock: &std::path::Path, store: &str, iters: u64) -> (f64, f64) {
    let mut c = Client::connect(sock, ClientOptions::new(APP)).unwrap();
    let mut ns = Vec::with_capacity(iters as usize);
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        shm_pair(&mut c, store, &format!("lat-{i}"));
        if i >= iters / 10 {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    percentiles(ns)
}

fn shm_throughput(sock: &std::path::Path, store: &str, clients: usize, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (sock, store) = (sock.to_path_buf(), store.to_string());
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&sock, ClientOptions::new(APP)).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    shm_pair(&mut c, &store, &format!("tp-{clients}-{t}-{}", i % 64));
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

async fn grpc_pair(
    c: &mut weft_proto::runtime::dapr_client::DaprClient<tonic::transport::Channel>,
    store: &str,
    r: &str,
) {
    assert!(
        c.try_lock_alpha1(try_lock(store, r))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    c.unlock_alpha1(unlock(store, r)).await.unwrap();
}

async fn grpc_latency(weft: &Weft, store: &str, iters: u64) -> (f64, f64) {
    let mut c = weft.uds_client().await;
    let mut ns = Vec::with_capacity(iters as usize);
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        grpc_pair(&mut c, store, &format!("glat-{i}")).await;
        if i >= iters / 10 {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    percentiles(ns)
}

async fn grpc_throughput(weft: &Weft, store: &str, clients: usize, secs: u64) -> f64 {
    let c = weft.uds_client().await;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = c.clone();
        let store = store.to_string();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                grpc_pair(&mut c, &store, &format!("gtp-{clients}-{t}-{}", i % 64)).await;
                i += 1;
            }
            i
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n as f64 / secs as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = arg("--secs", 3);
    let iters = arg("--iters", 20_000);
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir_all(&res).unwrap();
    let db = dir.path().join("locks.db");
    write_component(
        &res,
        "sqlite",
        "lock.sqlite",
        &[("databasePath", &db.to_string_lossy())],
    );
    let mut stores = vec!["sqlite"];
    if let Ok(url) = std::env::var("WEFT_TEST_PG_URL") {
        write_component(
            &res,
            "postgresql",
            "lock.postgresql",
            &[("connectionString", &url), ("tableName", "weft_lock_bench")],
        );
        stores.push("postgresql");
    }
    let sock = dir.path().join("shm.sock");
    let weft = Weft::start(
        WeftOptions::new(APP)
            .resources(&res)
            .uds(&dir.path().join("grpc.sock"))
            .arg("--shm-socket")
            .arg(&sock.to_string_lossy())
            .arg("--log")
            .arg("warn"),
    )
    .await
    .expect("start weft");

    println!("| store | transport | pair p50 µs | pair p99 µs | pairs/s, 1 client | pairs/s, 16 clients |");
    println!("|---|---|---:|---:|---:|---:|");
    for store in stores {
        let (s, st) = (sock.clone(), store.to_string());
        let (p50, p99, one, sixteen) = tokio::task::spawn_blocking(move || {
            let (p50, p99) = shm_latency(&s, &st, iters);
            (
                p50,
                p99,
                shm_throughput(&s, &st, 1, secs),
                shm_throughput(&s, &st, 16, secs),
            )
        })
        .await
        .unwrap();
        println!("| {store} | shm | {p50:.1} | {p99:.1} | {one:.0} | {sixteen:.0} |");
        let (p50, p99) = grpc_latency(&weft, store, iters / 4).await;
        let one = grpc_throughput(&weft, store, 1, secs).await;
        let sixteen = grpc_throughput(&weft, store, 16, secs).await;
        println!("| {store} | gRPC (UDS) | {p50:.1} | {p99:.1} | {one:.0} | {sixteen:.0} |");
    }
}
