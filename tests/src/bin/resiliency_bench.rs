//! Resiliency benchmark, in three parts. Prints markdown; asserts nothing
//! about timings.
//!
//! 1. The rule check alone, in this process: `Resiliency::call` around a
//!    call that is already done, 2 M times, for nothing configured, a
//!    target without rules, flow rules (rate + concurrency), and flow rules
//!    with a Dapr policy (breaker + timeout) — ns per call.
//! 2. State `GetState` (in-memory store, 64-byte value) over shared memory
//!    and over gRPC on the Unix socket, against a runtime without rules and
//!    one with a FlowControl rule on the store (rate and concurrency limits
//!    too high to bite): p50 and p99, rounds interleaved.
//! 3. Overload: an app that does one 20 ms call at a time (50 calls/s),
//!    sixteen closed-loop callers through two runtimes for `--secs`, the
//!    callee's runtime without and with load protection (FlowControl
//!    `system`): goodput, admitted p50/p99, shed calls.
//!
//! ```sh
//! cargo build --release -p weft && cargo build --release -p weft-tests --bin resiliency_bench
//! target/release/resiliency_bench [--secs 5] [--iters 20000] [--rounds 2]
//! ```
//!
//! Uses `$WEFT_BIN`, else target/release/weft beside this binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_blocks::resiliency::{DaprPolicy, FlowRule, Named, Policies, Resiliency, Target};
use weft_proto::runtime as pb;
use weft_resilience::{
    BreakerConfig, BudgetConfig, CircuitBreaker, ConcurrencyLimiter, RateConfig, RateLimiter,
    RetryBudget,
};
use weft_shm::{method as m, Client, ClientOptions};
use weft_tests::invoke_app::InvokeApp;
use weft_tests::mesh::{closed_loop, percentile, MeshEnv};
use weft_tests::{write_component, Weft, WeftOptions};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flow_rule() -> FlowRule {
    FlowRule {
        name: "bench".into(),
        method: None,
        rate: Some(
            RateLimiter::new(
                RateConfig {
                    burst: 1_000_000_000,
                    ..RateConfig::per_second(1e9)
                },
                Instant::now(),
            )
            .unwrap(),
        ),
        concurrency: Some(Arc::new(ConcurrencyLimiter::new(1_000_000))),
        breaker: None,
    }
}

/// ns per call of the check around an already finished call.
async fn check_cost(p: &Policies, target: Target<'_>, n: u64) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        let r = match p.active().filter(|r| r.covers(target)) {
            Some(r) => {
                r.call(target, "m", Duration::from_secs(5), |_| async { Ok(()) })
                    .await
            }
            None => Ok(()),
        };
        std::hint::black_box(r).unwrap();
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

async fn part1() {
    let n = 2_000_000;
    let none = Policies::default();
    let mut other = Resiliency::none();
    other
        .guards_mut(Target::App("other"))
        .flow
        .push(flow_rule());
    let other = Policies::new(other);
    let mut flow = Resiliency::none();
    flow.guards_mut(Target::App("b")).flow.push(flow_rule());
    let flow = Policies::new(flow);
    let mut both = Resiliency::none();
    let g = both.guards_mut(Target::App("b"));
    g.flow.push(flow_rule());
    g.dapr = Some(DaprPolicy {
        timeout: Some(Named {
            name: "t".into(),
            value: Duration::from_secs(5),
        }),
        retry: None,
        breaker: Some(Named {
            name: "cb".into(),
            value: Arc::new(CircuitBreaker::new(BreakerConfig::default()).unwrap()),
        }),
        budget: RetryBudget::new(BudgetConfig::default()).unwrap(),
    });
    let both = Policies::new(both);
    println!("### The rule check alone ({n} calls each, in-process)\n");
    println!("| configured | ns per call |\n|---|---:|");
    for round in 0..2 {
        let rows = [
            ("nothing", check_cost(&none, Target::App("b"), n).await),
            (
                "rules for another target only",
                check_cost(&other, Target::App("b"), n).await,
            ),
            (
                "flow rule (rate + concurrency)",
                check_cost(&flow, Target::App("b"), n).await,
            ),
            (
                "flow rule + Dapr policy (breaker + timeout)",
                check_cost(&both, Target::App("b"), n).await,
            ),
        ];
        if round == 1 {
            for (what, ns) in rows {
                println!("| {what} | {ns:.1} |");
            }
        }
    }
}

fn percentiles_us(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

fn get_req() -> pb::GetStateRequest {
    pb::GetStateRequest {
        store_name: "statestore".into(),
        key: "k".into(),
        ..Default::default()
    }
}

async fn runtime(dir: &std::path::Path, with_rule: bool) -> (Weft, std::path::PathBuf) {
    let res = dir.join("resources");
    std::fs::create_dir_all(&res).unwrap();
    write_component(&res, "statestore", "state.in-memory", &[]);
    if with_rule {
        std::fs::write(
            res.join("flow.yaml"),
            "apiVersion: weft.dev/v1alpha1\nkind: FlowControl\nmetadata: {name: bench}\nspec:\n  rules:\n    - component: statestore\n      qps: 1000000000\n      maxConcurrency: 1000000\n",
        )
        .unwrap();
    }
    let sock = dir.join("shm.sock");
    let w = Weft::start(
        WeftOptions::new("res-bench")
            .resources(&res)
            .uds(&dir.join("grpc.sock"))
            .arg("--shm-socket")
            .arg(&sock.to_string_lossy())
            .arg("--log")
            .arg("warn"),
    )
    .await
    .expect("start weft");
    let mut c = w.uds_client().await;
    c.save_state(pb::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![weft_proto::common::StateItem {
            key: "k".into(),
            value: vec![7; 64],
            ..Default::default()
        }],
    })
    .await
    .unwrap();
    (w, sock)
}

fn shm_get(sock: &std::path::Path, iters: u64) -> (f64, f64) {
    let mut c = Client::connect(sock, ClientOptions::new("res-bench")).unwrap();
    let mut ns = Vec::with_capacity(iters as usize);
    let req = get_req();
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        let r: pb::GetStateResponse = c.unary(m::GET_STATE, &req).unwrap();
        let e = t.elapsed();
        assert_eq!(r.data.len(), 64);
        if i >= iters / 10 {
            ns.push(e.as_nanos() as u64);
        }
    }
    percentiles_us(ns)
}

async fn grpc_get(w: &Weft, iters: u64) -> (f64, f64) {
    let mut c = w.uds_client().await;
    let mut ns = Vec::with_capacity(iters as usize);
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        c.get_state(get_req()).await.unwrap();
        if i >= iters / 10 {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    percentiles_us(ns)
}

async fn part2(iters: u64, rounds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (plain_dir, rule_dir) = (dir.path().join("plain"), dir.path().join("rule"));
    let (plain, plain_sock) = runtime(&plain_dir, false).await;
    let (ruled, rule_sock) = runtime(&rule_dir, true).await;
    println!("\n### GetState, 64 B, in-memory store: without and with a flow rule on the store ({iters} calls per row)\n");
    println!("| round | transport | runtime | p50 µs | p99 µs |\n|---|---|---|---:|---:|");
    for round in 1..=rounds {
        for (name, w, sock) in [
            ("no rules", &plain, &plain_sock),
            ("flow rule on the store", &ruled, &rule_sock),
        ] {
            let s = sock.clone();
            let (p50, p99) = tokio::task::spawn_blocking(move || shm_get(&s, iters))
                .await
                .unwrap();
            println!("| {round} | shm | {name} | {p50:.2} | {p99:.2} |");
            let (p50, p99) = grpc_get(w, iters / 4).await;
            println!("| {round} | gRPC (UDS) | {name} | {p50:.1} | {p99:.1} |");
        }
    }
}

async fn part3(secs: f64) {
    println!(
        "\n### Overload: 16 callers, an app of 50 calls/s (one 20 ms call at a time), {secs} s\n"
    );
    println!("| callee runtime | goodput calls/s | admitted p50 ms | admitted p99 ms | shed |\n|---|---:|---:|---:|---:|");
    for protect in [false, true] {
        let env = MeshEnv::new();
        let app = InvokeApp::new("worker");
        let (port, _task) = app.serve().await;
        let res = tempfile::tempdir().unwrap();
        let mut opts = env.options(
            "callee",
            &[
                "--app-port".into(),
                port.to_string(),
                "--log".into(),
                "warn".into(),
            ],
        );
        if protect {
            std::fs::write(
                res.path().join("flow.yaml"),
                "apiVersion: weft.dev/v1alpha1\nkind: FlowControl\nmetadata: {name: protect}\nspec:\n  system:\n    window: 2s\n    buckets: 20\n",
            )
            .unwrap();
            opts = opts.resources(res.path());
        }
        let _callee = Weft::start(opts).await.expect("callee");
        let caller = Weft::start(env.options("caller", &["--log".into(), "warn".into()]))
            .await
            .expect("caller");
        // Warm-up, and the protection's statistics.
        closed_loop(&caller, "callee", "work/20", 1, 2.0).await;
        let (ok, shed) = closed_loop(&caller, "callee", "work/20", 16, secs).await;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {shed} |",
            if protect {
                "load protection"
            } else {
                "no protection"
            },
            ok.len() as f64 / secs,
            percentile(&ok, 0.5),
            percentile(&ok, 0.99)
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = weft_tests::use_weft_beside_this_binary() {
        eprintln!("resiliency_bench: {e}");
        std::process::exit(2);
    }
    let secs = arg("--secs", 5) as f64;
    let iters = arg("--iters", 20_000);
    let rounds = arg("--rounds", 2);
    part1().await;
    part2(iters, rounds).await;
    part3(secs).await;
}
