//! Resiliency of real `weft` processes: Dapr `Resiliency` files read
//! unchanged (retries, timeouts, circuit breakers on service invocation and
//! on a PostgreSQL component), Weft `FlowControl` rules (rate and
//! concurrency per method), their state in the metadata, and files that
//! are wrong refused at start-up naming the file and the field.
//!
//! Every wait is bounded; the only timing-based assertion is the rate
//! rule's, a ratio over seconds with a 10 % margin, as the rule promises.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::Code;
use weft_tests::invoke_app::InvokeApp;
use weft_tests::mesh::{call, closed_loop, percentile, MeshEnv};
use weft_tests::{Weft, WeftOptions};

/// A callee app behind its runtime, and a caller runtime whose resources
/// directory holds `files`.
struct Pair {
    _env: MeshEnv,
    caller: Weft,
    app: InvokeApp,
    _callee: Weft,
    _task: tokio::task::JoinHandle<()>,
    _res: tempfile::TempDir,
}

async fn pair(files: &[(&str, &str)]) -> Pair {
    pair_with(files, None).await
}

/// [`pair`], the callee's runtime with `callee_files` as its resources.
async fn pair_with(files: &[(&str, &str)], callee_files: Option<&[(&str, &str)]>) -> Pair {
    let env = MeshEnv::new();
    let app = InvokeApp::new("callee-1");
    let (port, task) = app.serve().await;
    let res = tempfile::tempdir().unwrap();
    let mut opts = env.options("callee", &["--app-port".into(), port.to_string()]);
    if let Some(callee_files) = callee_files {
        let dir = res.path().join("callee");
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in callee_files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        opts = opts.resources(&dir);
    }
    let callee = Weft::start(opts).await.expect("start callee");
    for (name, text) in files {
        std::fs::write(res.path().join(name), text).unwrap();
    }
    let caller = Weft::start(env.options("caller", &[]).resources(res.path()))
        .await
        .expect("start caller");
    Pair {
        _env: env,
        caller,
        app,
        _callee: callee,
        _task: task,
        _res: res,
    }
}

/// The resiliency state in the caller's metadata (extended attribute).
async fn state(w: &Weft) -> serde_json::Value {
    let md = w
        .client()
        .await
        .get_metadata(weft_proto::runtime::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    let raw = md
        .extended_metadata
        .get("weft.resiliency")
        .expect("weft.resiliency in the metadata");
    serde_json::from_str(raw).unwrap()
}

const POLICY: &str = r#"apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: callee-policy
spec:
  policies:
    timeouts:
      short: 300ms
    retries:
      fast:
        policy: constant
        duration: 50ms
        maxRetries: 3
        matching:
          gRPCStatusCodes: "14"
    circuitBreakers:
      cb:
        maxRequests: 1
        timeout: 1s
        trip: consecutiveFailures >= 3
  targets:
    apps:
      callee:
        timeout: short
        retry: fast
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_retry_and_timeout_policies_apply_to_invoke() {
    let p = pair(&[("resiliency.yaml", POLICY)]).await;
    let mut c = p.caller.client().await;

    // Two failures, then success: the caller sees only the success.
    p.app.fail_next.store(2, Ordering::SeqCst);
    let before = p.app.calls();
    call(&mut c, "callee", "flaky")
        .await
        .expect("retried to success");
    assert_eq!(p.app.calls() - before, 3);

    // Failing for good: one call and three retries, then the app's own
    // error, unchanged.
    p.app.fail_next.store(100, Ordering::SeqCst);
    let before = p.app.calls();
    let e = call(&mut c, "callee", "flaky").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(e.message(), "app is down");
    assert_eq!(p.app.calls() - before, 4);
    p.app.fail_next.store(0, Ordering::SeqCst);

    // A code outside gRPCStatusCodes is not retried.
    let before = p.app.calls();
    let e = call(&mut c, "callee", "fail").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(p.app.calls() - before, 1);

    // The timeout policy ends a slow call, naming itself.
    let started = Instant::now();
    let e = call(&mut c, "callee", "sleep/3000").await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message()
            .contains("timeout 'short' (300 ms) of app 'callee'"),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not the app's 3 s"
    );

    let s = state(&p.caller).await;
    assert_eq!(s[0]["name"], "callee");
    assert_eq!(s[0]["retry"], "fast");
    assert!(
        s[0]["retries"]["retriedTotal"].as_u64().unwrap() >= 5,
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_callee_trips_the_breaker_and_a_probe_closes_it() {
    let policy = POLICY.replace("        retry: fast\n", "        circuitBreaker: cb\n");
    let p = pair(&[("resiliency.yaml", &policy)]).await;
    let mut c = p.caller.client().await;
    p.app.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let e = call(&mut c, "callee", "flaky").await.unwrap_err();
        assert_eq!(e.message(), "app is down");
    }
    // Open: refused at once, the app not called.
    let before = p.app.calls();
    let e = call(&mut c, "callee", "flaky").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message()
            .contains("circuit breaker 'cb' of app 'callee' is open"),
        "{e:?}"
    );
    assert_eq!(p.app.calls(), before);
    assert_eq!(state(&p.caller).await[0]["circuitBreaker"]["state"], "open");
    let (_, metrics) = weft_tests::http_get(p.caller.http_port, "/metrics", &[])
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"weft_resiliency_breaker_state{target="app",name="callee",breaker="cb"} 1"#
        ),
        "{metrics}"
    );

    // The callee recovers; after the breaker's timeout a probe closes it.
    p.app.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call(&mut c, "callee", "flaky").await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.message().contains("is open"), "{e:?}");
                assert!(Instant::now() < deadline, "the breaker never closed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let s = state(&p.caller).await;
    assert_eq!(s[0]["circuitBreaker"]["state"], "closed", "{s}");
    assert_eq!(s[0]["circuitBreaker"]["openedTotal"], 1, "{s}");
    call(&mut c, "callee", "echo").await.unwrap();
}

const FLOW: &str = r#"apiVersion: weft.dev/v1alpha1
kind: FlowControl
metadata:
  name: callee-limits
spec:
  rules:
    - name: echo-rate
      app: callee
      method: echo
      qps: 20
      burst: 1
    - name: sleepers
      app: callee
      method: sleep/300
      maxConcurrency: 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_rules_hold_the_rate_and_the_concurrency() {
    let p = pair(&[("flow.yaml", FLOW)]).await;

    // Rate: four callers as fast as they can for 3 s.
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = p.caller.client().await;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0u64, 0u64);
            while started.elapsed() < run_for {
                match call(&mut c, "callee", "echo").await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                        assert!(e.message().contains("flow rule 'echo-rate'"), "{e:?}");
                        limited += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    let rate = ok as f64 / started.elapsed().as_secs_f64();
    eprintln!("rate rule: {ok} admitted, {limited} limited: {rate:.1}/s against 20/s");
    assert!(
        (18.0..=22.0).contains(&rate),
        "{rate:.1} calls/s admitted, rule says 20"
    );
    assert!(limited > 0);

    // Concurrency: ten at once, never more than two at the app.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = p.caller.client().await;
        tasks.push(tokio::spawn(async move {
            call(&mut c, "callee", "sleep/300").await
        }));
    }
    let mut refused = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            assert!(e.message().contains("flow rule 'sleepers'"), "{e:?}");
            refused += 1;
        }
    }
    assert!(p.app.max_in_flight.load(Ordering::SeqCst) <= 2);
    assert!(refused >= 1, "ten calls at once against a limit of two");
    let s = state(&p.caller).await;
    let rules = &s[0]["flowRules"];
    assert_eq!(rules[0]["rate"]["passedTotal"].as_u64().unwrap(), ok);
    assert!(
        rules[1]["concurrency"]["rejectedTotal"].as_u64().unwrap() >= 1,
        "{s}"
    );
}

#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_policy_retries_then_answers_unavailable_when_postgres_is_gone() {
    use weft_tests::dubbo::Relay;
    // PostgreSQL behind a relay this test can cut.
    let url = weft_tests::pg_url();
    let after = url.split_once('@').map_or(url.as_str(), |(_, a)| a);
    let host_port = after.split(['/', '?']).next().unwrap().to_string();
    let upstream: std::net::SocketAddr = tokio::net::lookup_host(&host_port)
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(upstream).await;
    let via = url.replacen(&host_port, &relay.addr.to_string(), 1);
    let res = tempfile::tempdir().unwrap();
    let table = format!("resiliency_{}", std::process::id());
    weft_tests::write_component(
        res.path(),
        "pgstore",
        "state.postgresql",
        &[
            ("connectionString", via.as_str()),
            ("tableName", table.as_str()),
        ],
    );
    std::fs::write(
        res.path().join("resiliency.yaml"),
        r#"apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: pg}
spec:
  policies:
    timeouts: {pg: 2s}
    retries:
      pg: {policy: constant, duration: 100ms, maxRetries: 3}
  targets:
    components:
      pgstore:
        outbound: {timeout: pg, retry: pg}
"#,
    )
    .unwrap();
    let w = Weft::start(WeftOptions::new("resilient").resources(res.path()))
        .await
        .expect("start");
    let mut c = w.client().await;
    let save = |v: &str| weft_proto::runtime::SaveStateRequest {
        store_name: "pgstore".into(),
        states: vec![weft_proto::common::StateItem {
            key: "k".into(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        }],
    };
    c.save_state(save("one"))
        .await
        .expect("save through the relay");

    relay.set_up(false);
    let started = Instant::now();
    let e = c.save_state(save("two")).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("PostgreSQL gone: {e:?} after {took:?}");
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{e:?}"
    );
    assert!(
        e.message().contains("policy 'pg'") || e.message().contains("timeout 'pg'"),
        "{e:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "bounded, not a hang: {took:?}"
    );

    relay.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.save_state(save("three")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL back, writes never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn wrong_policy_files_refuse_to_start_naming_file_and_field() {
    let cases = [
        (
            POLICY.replace("retry: fast", "retry: fastest"),
            "spec.targets.apps.callee.retry: no retry policy named 'fastest'",
        ),
        (
            POLICY.replace("consecutiveFailures >= 3", "failures >= 3"),
            "spec.policies.circuitBreakers.cb.trip",
        ),
        (
            FLOW.replace("maxConcurrency: 2", "maxConcurrency: many"),
            "spec.rules[1].maxConcurrency",
        ),
        (
            POLICY.replace("  targets:\n", "  targets:\n    actors:\n      a: {}\n"),
            "spec.targets.actors: actors are not supported",
        ),
    ];
    for (text, want) in cases {
        let res = tempfile::tempdir().unwrap();
        std::fs::write(res.path().join("bad.yaml"), &text).unwrap();
        let e = match Weft::start(WeftOptions::new("bad-policy").resources(res.path())).await {
            Ok(_) => panic!("started with a wrong file; wanted: {want}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("bad.yaml: "), "{e}");
        assert!(e.contains(want), "{e}\nshould contain: {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_reload_when_their_files_change() {
    let p = pair(&[("resiliency.yaml", POLICY)]).await;
    let mut c = p.caller.client().await;
    let e = call(&mut c, "callee", "sleep/1000").await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    // A wrong file: logged, the policies in force stay.
    let file = p._res.path().join("resiliency.yaml");
    std::fs::write(&file, POLICY.replace("short: 300ms", "short: soon")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p
        .caller
        .logs()
        .contains("spec.policies.timeouts.short: 'soon' is not a duration")
    {
        assert!(
            Instant::now() < deadline,
            "the wrong file was not reported:\n{}",
            p.caller.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = call(&mut c, "callee", "sleep/1000").await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    // A longer timeout takes over without a restart.
    std::fs::write(&file, POLICY.replace("short: 300ms", "short: 5s")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call(&mut c, "callee", "sleep/1000").await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
                assert!(Instant::now() < deadline, "the new policy never applied");
            }
        }
    }
    assert!(p
        .caller
        .logs()
        .contains("resiliency policies and flow rules reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_callee_sheds_and_keeps_admitted_latency_bounded() {
    let protect = r#"apiVersion: weft.dev/v1alpha1
kind: FlowControl
metadata:
  name: protect
spec:
  system:
    window: 2s
    buckets: 20
"#;
    let p = pair_with(&[], Some(&[("flow.yaml", protect)])).await;
    // Unloaded: one caller at a time against an app doing one 20 ms call at a time.
    let (quiet, shed) = closed_loop(&p.caller, "callee", "work/20", 1, 2.5).await;
    assert_eq!(shed, 0, "nothing is shed without load");
    // Overloaded: sixteen callers.
    let (busy, shed) = closed_loop(&p.caller, "callee", "work/20", 16, 3.0).await;
    let (q, b) = (percentile(&quiet, 0.99), percentile(&busy, 0.99));
    eprintln!(
        "unloaded p99 {q:.1} ms ({} calls); overloaded: {} admitted, p99 {b:.1} ms, {shed} shed",
        quiet.len(),
        busy.len()
    );
    assert!(
        shed > 0,
        "sixteen callers against one worker: some must be shed"
    );
    // Without protection the queue would make the p99 about sixteen times
    // the unloaded one; a wide margin for a shared machine.
    assert!(
        b < q * 5.0,
        "admitted p99 {b:.1} ms against {q:.1} ms unloaded"
    );
    let md = state(&p._callee).await;
    let system = md
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == "system")
        .unwrap()
        .clone();
    assert!(system["shedTotal"].as_u64().unwrap() >= shed, "{system}");
    let (_, metrics) = weft_tests::http_get(p._callee.http_port, "/metrics", &[])
        .await
        .unwrap();
    assert!(metrics.contains("weft_resiliency_shed_total "), "{metrics}");
}
