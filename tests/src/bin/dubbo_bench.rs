//! Dubbo through two runtimes: a Dubbo consumer calling a real Apache Dubbo
//! provider (tests/dubbo-java) directly, against the same consumer calling
//! through its runtime's outbound listener, the mTLS mesh and the
//! provider's runtime, in one run. Prints markdown.
//!
//! ```text
//! scripts/services.sh start zookeeper; eval "$(scripts/services.sh env)"
//! cargo build --release -p weft && cargo build --release -p weft-tests --bin dubbo_bench
//! target/release/dubbo_bench [--rate 1000] [--secs 10] [--rounds 2] [--clients 16]
//! ```
//!
//! The provider registers through its runtime's `/pub` (as a dubbo-go app
//! would), the consumer's runtime subscribes through `/sub`. The consumer
//! is a Dubbo client on weft-dubbo's codec in this process: one connection
//! per path with every call multiplexed on it (as Dubbo's own clients do),
//! `greet(String)` with hessian2.
//!
//! * Fixed rate: calls start on a fixed schedule (open loop) for `--secs`,
//!   each in its own task; latency runs from the moment the request is
//!   written. Direct and proxied phases alternate in `--rounds` rounds.
//! * Maximum throughput: `--clients` closed-loop callers for `--secs` on
//!   the path's one connection.
//!
//! A measuring tool: it asserts nothing about timings.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use weft_dubbo::frame::{serialization, Decoder, Frame, Status};
use weft_dubbo::hessian::{encode_request, RequestSpec, Writer};
use weft_tests::dubbo::java::{java, start_provider, IFACE};
use weft_tests::dubbo::unique;
use weft_tests::{free_port, http_request, Weft, WeftOptions};

const USAGE: &str = "\
dubbo_bench: added latency and throughput of Dubbo calls through two runtimes

usage: dubbo_bench [options]
  --rate N      calls per second in the fixed-rate phases (default 1000)
  --secs S      length of each measured phase (default 10)
  --rounds N    direct/proxied alternations at the fixed rate (default 2)
  --clients N   closed-loop callers for maximum throughput (default 16)

Needs ZooKeeper ($WEFT_TEST_ZK_SERVERS), Java 17 and Maven. The weft binary
is $WEFT_BIN, or else target/release/weft beside this binary.
";

struct Config {
    rate: u64,
    secs: f64,
    rounds: u32,
    clients: usize,
}

fn parse_args() -> anyhow::Result<Config> {
    let mut c = Config {
        rate: 1000,
        secs: 10.0,
        rounds: 2,
        clients: 16,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rate" => c.rate = value()?.parse().context("--rate")?,
            "--secs" => c.secs = value()?.parse().context("--secs")?,
            "--rounds" => c.rounds = value()?.parse().context("--rounds")?,
            "--clients" => c.clients = value()?.parse().context("--clients")?,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n\n{USAGE}"),
        }
    }
    if c.rate == 0 || c.secs <= 0.0 || c.clients == 0 {
        bail!("--rate, --secs and --clients must be positive");
    }
    Ok(c)
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dubbo_bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = weft_tests::use_weft_beside_this_binary() {
        eprintln!("dubbo_bench: {e}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dubbo_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A Dubbo client connection with calls multiplexed by request id.
#[derive(Clone)]
struct Client {
    tx: mpsc::UnboundedSender<Frame>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>,
    next: Arc<AtomicU64>,
    body: bytes::Bytes,
}

impl Client {
    async fn connect(addr: &str) -> anyhow::Result<Client> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let (mut r, mut w) = tcp.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>> = Arc::default();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some(f) = rx.recv().await {
                f.encode(&mut buf);
                while let Ok(f) = rx.try_recv() {
                    f.encode(&mut buf);
                }
                if w.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        });
        let p = pending.clone();
        tokio::spawn(async move {
            let d = Decoder::default();
            let mut buf = BytesMut::new();
            loop {
                while let Ok(Some(f)) = d.decode(&mut buf) {
                    if let Some(w) = p.lock().unwrap().remove(&f.header.request_id) {
                        let _ = w.send(f);
                    }
                }
                match r.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
        });
        let mut arg = Writer::new();
        arg.string("bench");
        let arg = arg.into_bytes();
        let body = encode_request(&RequestSpec {
            dubbo_version: "2.0.2",
            service_path: IFACE,
            service_version: "0.0.0",
            method: "greet",
            parameter_types: "Ljava/lang/String;",
            arguments: &arg,
            attachments: &[("path", IFACE), ("interface", IFACE), ("timeout", "5000")],
        });
        Ok(Client {
            tx,
            pending,
            next: Arc::new(AtomicU64::new(1)),
            body,
        })
    }

    /// One `greet` call: its latency.
    async fn call(&self) -> anyhow::Result<Duration> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let started = Instant::now();
        self.tx
            .send(Frame::request(
                id,
                serialization::HESSIAN2,
                true,
                self.body.clone(),
            ))
            .ok()
            .context("connection closed")?;
        let f = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("no answer within 10 s")?
            .context("connection closed")?;
        if f.header.status != Status::OK {
            bail!(
                "status {}: {:?}",
                f.header.status.0,
                weft_dubbo::hessian::read_string(&f.body)
            );
        }
        Ok(started.elapsed())
    }
}

/// Latencies (µs) of calls started at `rate` per second for `secs`.
async fn fixed_rate(c: &Client, rate: u64, secs: f64) -> anyhow::Result<Vec<f64>> {
    let n = (rate as f64 * secs) as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(start + period * i as u32).await;
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.call().await }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??.as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Calls per second of `clients` closed-loop callers for `secs`.
async fn max_throughput(c: &Client, clients: usize, secs: f64) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, stop, done) = (c.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.call().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(calls as f64 / elapsed)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn post(w: &Weft, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let (status, text) = http_request(w.http_port, "POST", path, &[], &body.to_string())
        .await
        .with_context(|| format!("no answer to {path}"))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    if status != 200 || v["err_no"] != 0 {
        bail!("{path}: {text}");
    }
    Ok(())
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let servers = std::env::var("WEFT_TEST_ZK_SERVERS")
        .context("WEFT_TEST_ZK_SERVERS is not set (scripts/services.sh env)")?;
    let cp = java("dubbo_bench").context("the Java test programs could not be built")?;
    let (provider, port) = start_provider(cp, "p1", &[]).await;
    let registry =
        json!({"type": "zookeeper", "addr": servers, "group": unique("weft-dubbo-bench")});
    let service =
        json!({"interface": IFACE, "methods": ["greet", "slow", "fail", "describe"], "port": port});
    let a = Weft::start(WeftOptions::new("dubbo-bench-provider")).await?;
    let outbound = free_port();
    let b = Weft::start(
        WeftOptions::new("dubbo-bench-consumer")
            .arg("--dubbo-port")
            .arg(&outbound.to_string()),
    )
    .await?;
    post(
        &a,
        "/pub",
        json!({"registry": registry, "service": service}),
    )
    .await?;
    post(
        &b,
        "/sub",
        json!({"registry": registry, "service": service}),
    )
    .await?;

    let direct = Client::connect(&format!("127.0.0.1:{port}")).await?;
    let proxied = Client::connect(&format!("127.0.0.1:{outbound}")).await?;
    // Warm-up: the JVM's JIT, connections, TLS.
    for c in [&direct, &proxied] {
        max_throughput(c, cfg.clients, 3.0).await?;
        fixed_rate(c, cfg.rate, 2.0).await?;
    }

    println!(
        "### Dubbo consumer → provider, direct vs through two runtimes (mTLS)\n\n{} calls/s for {} s per phase, {} rounds; greet(String), hessian2, one multiplexed connection per path\n",
        cfg.rate, cfg.secs, cfg.rounds
    );
    println!("| round | path | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for round in 1..=cfg.rounds {
        let mut d = fixed_rate(&direct, cfg.rate, cfg.secs).await?;
        let mut p = fixed_rate(&proxied, cfg.rate, cfg.secs).await?;
        d.sort_by(f64::total_cmp);
        p.sort_by(f64::total_cmp);
        println!(
            "| {round} | direct | {:.0} | {:.0} | {:.0} | | |",
            pct(&d, 0.5),
            pct(&d, 0.9),
            pct(&d, 0.99)
        );
        println!(
            "| {round} | two runtimes | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            pct(&p, 0.5),
            pct(&p, 0.9),
            pct(&p, 0.99),
            pct(&p, 0.5) - pct(&d, 0.5),
            pct(&p, 0.99) - pct(&d, 0.99)
        );
    }
    println!(
        "\n| path | max calls/s ({} callers, one connection) |\n| --- | --- |",
        cfg.clients
    );
    let d = max_throughput(&direct, cfg.clients, cfg.secs).await?;
    let p = max_throughput(&proxied, cfg.clients, cfg.secs).await?;
    println!("| direct | {d:.0} |");
    println!(
        "| two runtimes | {p:.0} ({:.0} % of direct) |",
        p / d * 100.0
    );
    provider.stop().await;
    Ok(())
}
