//! Sequencer benchmark: GetNextId against one release runtime, per
//! sequencer store (`sequencer.sqlite`; `sequencer.postgresql` when
//! `WEFT_TEST_PG_URL` is set; `sequencer.zookeeper` when
//! `WEFT_TEST_ZK_SERVERS` is set), per increment (WEAK from segments of
//! the default 10 000 ids, STRONG), over shared memory and over gRPC on
//! the runtime's Unix socket: ids/s with 1 and 16 clients (16 shm sessions
//! on threads, or 16 concurrent gRPC callers on one connection), every
//! client on one key, and the p50 of one call with one client. First, the
//! floor of the shared-memory hop in the same conditions: `weft.Echo` of
//! 16 bytes (no block, no protobuf) with one client. Prints markdown;
//! asserts nothing about timings (only that each client's ids grow).
//!
//! ```sh
//! cargo build --release -p weft && cargo build --release -p weft-tests --bin sequencer_bench
//! target/release/sequencer_bench [--secs 3] [--only sqlite]
//! ```
//!
//! Uses `$WEFT_BIN`, else target/release/weft.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_proto::sequencer as pb;
use weft_proto::sequencer::sequencer_client::SequencerClient;
use weft_proto::sequencer::sequencer_options::Increment;
use weft_shm::{method as m, Client, ClientOptions};
use weft_tests::{write_component, Weft, WeftOptions};

const APP: &str = "sequencer-bench";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn request(store: &str, inc: Increment) -> pb::GetNextIdRequest {
    pb::GetNextIdRequest {
        store_name: store.into(),
        key: "bench".into(),
        options: Some(pb::SequencerOptions {
            increment: inc as i32,
        }),
        metadata: Default::default(),
    }
}

/// Calls for `secs` on `clients` shm sessions; ids/s and the p50 (µs) of
/// the first client's calls.
fn shm_run(
    sock: &std::path::Path,
    store: &str,
    inc: Increment,
    clients: usize,
    secs: f64,
) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (sock, req) = (sock.to_path_buf(), request(store, inc));
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&sock, ClientOptions::new(APP)).unwrap();
                let mut last = 0;
                let mut n = 0u64;
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let timed = t == 0 && n.is_multiple_of(16);
                    let started = timed.then(Instant::now);
                    let r: pb::GetNextIdResponse = c.unary(m::WEFT_GET_NEXT_ID, &req).unwrap();
                    if let Some(s) = started {
                        lat.push(s.elapsed().as_nanos() as u64);
                    }
                    assert!(r.next_id > last, "{} after {last}", r.next_id);
                    last = r.next_id;
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().unwrap());
    }
    (done.load(Ordering::Relaxed) as f64 / secs, p50(lat))
}

/// `weft.Echo` round trips on one session for `secs`: calls/s and p50 µs.
fn echo_floor(sock: &std::path::Path, secs: f64) -> (f64, f64) {
    let mut c = Client::connect(sock, ClientOptions::new(APP)).unwrap();
    let body = [7u8; 16];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (mut n, mut lat) = (0u64, Vec::new());
    while Instant::now() < end {
        let started = n.is_multiple_of(16).then(Instant::now);
        c.call(m::WEFT_ECHO, &body).unwrap();
        if let Some(s) = started {
            lat.push(s.elapsed().as_nanos() as u64);
        }
        n += 1;
    }
    (n as f64 / secs, p50(lat))
}

fn p50(mut ns: Vec<u64>) -> f64 {
    if ns.is_empty() {
        return f64::NAN;
    }
    ns.sort_unstable();
    ns[ns.len() / 2] as f64 / 1000.0
}

async fn grpc_run(
    weft: &Weft,
    store: &str,
    inc: Increment,
    clients: usize,
    secs: f64,
) -> (f64, f64) {
    let channel = weft_tests::uds_channel(weft.uds.as_ref().unwrap())
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = SequencerClient::new(channel.clone());
        let req = request(store, inc);
        tasks.push(tokio::spawn(async move {
            let (mut n, mut last, mut lat) = (0u64, 0, Vec::new());
            while Instant::now() < end {
                let started = (t == 0 && n.is_multiple_of(16)).then(Instant::now);
                let id = c
                    .get_next_id(req.clone())
                    .await
                    .unwrap()
                    .into_inner()
                    .next_id;
                if let Some(s) = started {
                    lat.push(s.elapsed().as_nanos() as u64);
                }
                assert!(id > last, "{id} after {last}");
                last = id;
                n += 1;
            }
            (n, lat)
        }));
    }
    let (mut n, mut lat) = (0, Vec::new());
    for t in tasks {
        let (k, l) = t.await.unwrap();
        n += k;
        lat.extend(l);
    }
    (n as f64 / secs, p50(lat))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: f64 = arg("--secs").and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let only = arg("--only");
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir_all(&res).unwrap();
    let db = dir.path().join("sequencer.db");
    write_component(
        &res,
        "sqlite",
        "sequencer.sqlite",
        &[("databasePath", &db.to_string_lossy())],
    );
    let mut stores = vec!["sqlite"];
    if let Ok(url) = std::env::var("WEFT_TEST_PG_URL") {
        write_component(
            &res,
            "postgresql",
            "sequencer.postgresql",
            &[
                ("connectionString", &url),
                (
                    "tableName",
                    &format!("weft_seq_bench_{}", std::process::id()),
                ),
            ],
        );
        stores.push("postgresql");
    }
    if let Ok(servers) = std::env::var("WEFT_TEST_ZK_SERVERS") {
        write_component(
            &res,
            "zookeeper",
            "sequencer.zookeeper",
            &[
                ("servers", &servers),
                ("root", &format!("/weft-seq-bench-{}", std::process::id())),
            ],
        );
        stores.push("zookeeper");
    }
    stores.retain(|s| only.as_deref().is_none_or(|o| o == *s));
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

    let s = sock.clone();
    let (echo, echo_p50) = tokio::task::spawn_blocking(move || echo_floor(&s, secs))
        .await
        .unwrap();
    println!("shm floor: weft.Echo 16 B, 1 client: p50 {echo_p50:.2} µs, {echo:.0} calls/s\n");
    println!("| store | increment | transport | p50 µs, 1 client | ids/s, 1 client | ids/s, 16 clients |");
    println!("|---|---|---|---:|---:|---:|");
    for store in stores {
        for inc in [Increment::Weak, Increment::Strong] {
            let name = inc.as_str_name();
            let (s, st) = (sock.clone(), store.to_string());
            let ((one, lat), (sixteen, _)) = tokio::task::spawn_blocking(move || {
                (
                    shm_run(&s, &st, inc, 1, secs),
                    shm_run(&s, &st, inc, 16, secs),
                )
            })
            .await
            .unwrap();
            println!("| {store} | {name} | shm | {lat:.1} | {one:.0} | {sixteen:.0} |");
            let (one, lat) = grpc_run(&weft, store, inc, 1, secs).await;
            let (sixteen, _) = grpc_run(&weft, store, inc, 16, secs).await;
            println!("| {store} | {name} | gRPC (UDS) | {lat:.1} | {one:.0} | {sixteen:.0} |");
        }
    }
}
