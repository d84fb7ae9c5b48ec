//! The Dubbo registry proxy of real `weft` processes with real Apache Dubbo
//! 3.3 programs (tests/dubbo-java) and the test ZooKeeper:
//!
//! * a Java provider published through its runtime's `/pub` (as a dubbo-go
//!   app would) and a Java consumer pointed at its own runtime's outbound
//!   listener call each other only through the two runtimes (mutual TLS
//!   between them);
//! * an unmodified Java consumer reading ZooKeeper finds the provider
//!   `/pub` registered, advertising the runtime's inbound listener, and
//!   calls it through the provider's runtime;
//! * a provider runtime killed: the next calls go to the other provider
//!   (or get status 60 saying why); `/unsub` → 60; `/unpub` → node gone;
//! * bad bodies → `err_no` 1 naming the field; the API token applies.

use std::time::Duration;

use serde_json::{json, Value};
use weft_tests::dubbo::java::{java, start_provider, JavaProc, IFACE};
use weft_tests::dubbo::{unique, wait_for, zk_servers};
use weft_tests::{free_port, http_request, Weft, WeftOptions};

const METHODS: [&str; 4] = ["greet", "slow", "fail", "describe"];

/// POSTs `body` to `path` on the runtime's HTTP port: (HTTP status, JSON).
async fn post(w: &Weft, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let (status, text) = http_request(w.http_port, "POST", path, headers, body)
        .await
        .unwrap_or_else(|| panic!("no answer from POST {path}"));
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"));
    (status, v)
}

/// POSTs and expects `err_no` 0.
async fn ok(w: &Weft, path: &str, body: &Value) -> String {
    let (status, v) = post(w, path, &[], &body.to_string()).await;
    assert_eq!(status, 200, "{path}: {v}");
    assert_eq!(v["err_no"], 0, "{path} {body}: {v}");
    v["err_msg"].as_str().unwrap_or_default().to_string()
}

/// The inbound Dubbo listener a runtime advertises (its metadata).
async fn inbound(w: &Weft) -> String {
    let (_, text) = weft_tests::http_get(w.http_port, "/v1.0/metadata", &[])
        .await
        .expect("metadata");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["extended"]["weft.dubbo.inbound"]
        .as_str()
        .unwrap_or_else(|| panic!("no weft.dubbo.inbound in {v}"))
        .to_string()
}

fn registry(servers: &str, root: &str) -> Value {
    json!({"type": "zookeeper", "addr": servers, "group": root})
}

/// Calls until `check` accepts an answer (the consumer learns providers
/// from its watch, the runtime from its own), at most 60 tries.
async fn call_until(c: &mut JavaProc, line: &str, check: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        last = c.call(line).await;
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("'{line}' never gave the expected answer; last: {last}");
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_consumer_and_provider_meet_only_through_two_runtimes() {
    let servers = zk_servers("java_consumer_and_provider_meet_only_through_two_runtimes");
    let Some(cp) = java("java_consumer_and_provider_meet_only_through_two_runtimes") else {
        return;
    };
    let root = unique("weft-dubbo-proxy");
    let reg = registry(&servers, &root);

    // Provider side: two instances of app "greeter", each with its Java provider.
    let (p1, p1_port) = start_provider(cp, "p1", &[]).await;
    let (p2, p2_port) = start_provider(cp, "p2", &[]).await;
    // The provider's access policy: app "caller" may not call `slow` (the
    // Dubbo method is the operation); everyone else may call anything.
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.yaml");
    std::fs::write(
        &acl,
        r#"apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: acl
spec:
  accessControl:
    defaultAction: allow
    trustDomain: public
    policies:
      - appId: caller
        defaultAction: allow
        trustDomain: public
        namespace: default
        operations:
          - name: /slow
            action: deny
"#,
    )
    .unwrap();
    let acl = acl.to_string_lossy().into_owned();
    let mut a1 = Weft::start(WeftOptions::new("greeter").arg("--config").arg(&acl))
        .await
        .expect("a1");
    let a2 = Weft::start(WeftOptions::new("greeter").arg("--config").arg(&acl))
        .await
        .expect("a2");
    for (w, port) in [(&a1, p1_port), (&a2, p2_port)] {
        let msg = ok(
            w,
            "/pub",
            &json!({"registry": reg, "service": {"interface": IFACE, "methods": METHODS, "port": port.to_string()}}),
        )
        .await;
        assert!(msg.contains(IFACE), "{msg}");
    }

    // What landed in ZooKeeper: the runtimes' inbound listeners, never the
    // apps' ports, with the runtime's app id and mesh address.
    let zk = zookeeper_client::Client::connect(&servers).await.unwrap();
    let nodes = zk
        .list_children(&format!("/{root}/{IFACE}/providers"))
        .await
        .unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for n in &nodes {
        let url = weft_dubbo::url::DubboUrl::from_node_name(n).unwrap();
        eprintln!("provider node: {url}");
        assert_eq!(url.protocol(), "dubbo");
        assert_eq!(url.host(), "127.0.0.1");
        assert!(
            url.port() != Some(p1_port) && url.port() != Some(p2_port),
            "{url}"
        );
        assert_eq!(url.param("weft.app-id"), Some("greeter"));
        assert!(url.param("weft.mesh").is_some(), "{url}");
        assert_eq!(url.param("methods"), Some("describe,fail,greet,slow"));
        assert_eq!(url.param("group"), None, "empty group left out");
        assert_eq!(url.param("version"), None, "empty version left out");
    }

    // Consumer side: runtime "caller" with an outbound listener.
    let outbound = free_port();
    // The caller's flow rule for the provider's app: one `fail` call, then
    // the rule refuses (status 100 naming it).
    let res = dir.path().join("caller-resources");
    std::fs::create_dir(&res).unwrap();
    std::fs::write(
        res.join("flow.yaml"),
        "apiVersion: weft.dev/v1alpha1\nkind: FlowControl\nmetadata: {name: caller-limits}\nspec:\n  rules:\n    - name: one-failure\n      app: greeter\n      method: fail\n      qps: 0.01\n      burst: 1\n",
    )
    .unwrap();
    let b = Weft::start(
        WeftOptions::new("caller")
            .resources(&res)
            .arg("--dubbo-port")
            .arg(&outbound.to_string()),
    )
    .await
    .expect("b");
    ok(
        &b,
        "/sub",
        &json!({"registry": reg, "service": {"interface": IFACE, "methods": METHODS}}),
    )
    .await;
    let consumers = zk
        .list_children(&format!("/{root}/{IFACE}/consumers"))
        .await
        .unwrap();
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    assert!(
        consumers[0].contains("application%3Dcaller"),
        "{consumers:?}"
    );

    let via = format!("dubbo://127.0.0.1:{outbound}");
    let mut c = JavaProc::start(
        cp,
        "Consumer",
        &["--url", &via, "--timeout", "5000", "--heartbeat", "1000"],
        "mesh-consumer",
    )
    .await;
    // Calls are balanced over both provider runtimes.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..8 {
        let v = c.ok(&format!("greet n{i}")).await;
        assert!(v.starts_with(&format!("Hello, n{i} from p")), "{v}");
        seen.insert(v.rsplit(' ').next().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both providers answer: {seen:?}");
    // A big object graph crosses untouched; exceptions come back as such.
    let mut direct = JavaProc::start(
        cp,
        "Consumer",
        &["--url", &format!("dubbo://127.0.0.1:{p1_port}")],
        "direct",
    )
    .await;
    let expected = direct.ok("describe 3").await;
    let got = c.ok("describe 3").await;
    assert_eq!(
        got.split("|by=").next(),
        expected.split("|by=").next(),
        "same summary through the mesh"
    );
    direct.stop().await;
    let failed = c.call("fail boom").await;
    assert!(
        failed.starts_with("ERR ")
            && failed.contains("IllegalStateException")
            && failed.contains("boom"),
        "{failed}"
    );
    let limited = c.call("fail again").await;
    assert!(
        limited.starts_with("ERR ") && limited.contains("flow rule 'one-failure'"),
        "{limited}"
    );
    // The provider runtime's access policy, with the Dubbo method as the
    // operation: status 40 naming the rule.
    let denied = c.call("slow 10").await;
    assert!(
        denied.starts_with("ERR ")
            && denied.contains("access denied by policy for app 'caller'")
            && denied.contains("'/slow'"),
        "{denied}"
    );
    // Heartbeats from the consumer (every second when idle) are answered.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(c
        .ok("greet after-idle")
        .await
        .starts_with("Hello, after-idle"));

    // An unmodified consumer reading ZooKeeper calls through a provider runtime.
    let registry_url = format!("zookeeper://{servers}?group={root}");
    let mut plain = JavaProc::start(
        cp,
        "Consumer",
        &["--registry", &registry_url, "--timeout", "5000"],
        "zk-consumer",
    )
    .await;
    let a = call_until(&mut plain, "greet zk", |a| a.starts_with("OK ")).await;
    assert!(a.contains("Hello, zk from p"), "{a}");
    plain.stop().await;

    // Provider runtime a1 killed: the consumer's calls go to a2 (a call
    // already routed to a1 may get status 60 with the reason).
    a1.signal("KILL");
    a1.wait_exit(Duration::from_secs(10)).await.unwrap();
    let mut answers = Vec::new();
    for i in 0..6 {
        answers.push(c.call(&format!("greet k{i}")).await);
    }
    for a in &answers {
        assert!(
            a.ends_with("from p2") || (a.starts_with("ERR ") && a.contains("weft:")),
            "after the kill: {answers:?}"
        );
    }
    assert!(
        answers.iter().rev().take(3).all(|a| a.ends_with("from p2")),
        "the last calls are served by the other provider: {answers:?}"
    );

    // Unsubscribed: status 60 with the reason.
    ok(
        &b,
        "/unsub",
        &json!({"registry": reg, "service": {"interface": IFACE, "methods": METHODS}}),
    )
    .await;
    let refused = c.call("greet gone").await;
    assert!(
        refused.starts_with("ERR ") && refused.contains("no provider of dev.weft.test.Greeter"),
        "{refused}"
    );
    eprintln!("after /unsub: {refused}");
    let consumers = zk
        .list_children(&format!("/{root}/{IFACE}/consumers"))
        .await
        .unwrap();
    // (The killed ZooKeeper-reading consumer's node lasts until its session times out.)
    assert!(
        !consumers.iter().any(|n| n.contains("application%3Dcaller")),
        "{consumers:?}"
    );

    // Unpublished: a2's provider node is gone; unpublishing again is an error.
    let unpub = json!({"registry": reg, "service": {"interface": IFACE, "methods": METHODS}});
    ok(&a2, "/unpub", &unpub).await;
    let (_, again) = post(&a2, "/unpub", &[], &unpub.to_string()).await;
    assert_eq!(again["err_no"], 1, "{again}");
    assert!(
        again["err_msg"].as_str().unwrap().contains("not published"),
        "{again}"
    );
    let a2_inbound = inbound(&a2).await;
    let left = wait_for("a2's provider node to go", || async {
        let n = zk
            .list_children(&format!("/{root}/{IFACE}/providers"))
            .await
            .ok()?;
        // (a1's ephemeral node goes when its session times out.)
        (!n.iter()
            .any(|n| n.contains(&a2_inbound.replace(':', "%3A"))))
        .then_some(n)
    })
    .await;
    eprintln!("providers left: {left:?}");

    c.stop().await;
    p1.stop().await;
    p2.stop().await;
}

#[tokio::test]
async fn registry_proxy_bad_bodies_are_named() {
    let w = Weft::start(WeftOptions::new("dubbo-bad"))
        .await
        .expect("start");
    let reg = json!({"type": "zookeeper", "addr": "127.0.0.1:1"});
    let cases: Vec<(&str, String, &str)> = vec![
        ("/pub", "not json".into(), "not JSON"),
        ("/pub", "[1,2]".into(), "JSON object"),
        ("/pub", json!({"service": {"interface": "a.B", "methods": ["m"]}}).to_string(), "registry is missing"),
        ("/pub", json!({"registry": {"type": "nacos", "addr": "x:1"}, "service": {"interface": "a.B", "methods": ["m"]}}).to_string(), "registry.type 'nacos'"),
        ("/pub", json!({"registry": {"type": "zookeeper"}, "service": {"interface": "a.B", "methods": ["m"]}}).to_string(), "registry.addr"),
        ("/pub", json!({"registry": {"type": "zookeeper", "addr": "host:notaport"}, "service": {"interface": "a.B", "methods": ["m"]}}).to_string(), "registry addr"),
        ("/pub", json!({"registry": reg, "service": {"methods": ["m"]}}).to_string(), "service.interface"),
        ("/pub", json!({"registry": reg, "service": {"interface": "a.B"}}).to_string(), "service.methods is missing"),
        ("/pub", json!({"registry": reg, "service": {"interface": "a.B", "methods": []}}).to_string(), "service.methods is empty"),
        ("/pub", json!({"registry": reg, "service": {"interface": "a.B", "methods": [7]}}).to_string(), "service.methods[0]"),
        ("/pub", json!({"registry": reg, "service": {"interface": "a.B", "methods": ["m"], "port": "70000"}}).to_string(), "service.port"),
        ("/pub", json!({"registry": reg, "service": {"interface": "a.B", "methods": ["m"], "group": 5}}).to_string(), "service.group"),
        ("/pub", json!({"registry": reg, "service": {"interface": "a b", "methods": ["m"]}}).to_string(), "interface"),
        ("/sub", json!({"registry": reg, "service": {"interface": "a.B"}}).to_string(), "service.methods"),
        ("/unsub", json!({"registry": reg, "service": {"interface": "a.B", "methods": ["m"]}}).to_string(), "not subscribed"),
        ("/unpub", json!({"registry": reg, "service": {"interface": "a.B", "methods": ["m"]}}).to_string(), "not published"),
    ];
    for (path, body, expect) in cases {
        let (status, v) = post(&w, path, &[], &body).await;
        assert_eq!(status, 200, "{path} {body}: {v}");
        assert_eq!(v["err_no"], 1, "{path} {body}: {v}");
        let msg = v["err_msg"].as_str().unwrap();
        assert!(
            msg.contains(expect),
            "{path} {body}: '{msg}' should mention '{expect}'"
        );
    }
    // The runtime is still up.
    assert_eq!(
        weft_tests::http_status(w.http_port, "/v1.0/healthz").await,
        Some(204)
    );

    // With an API token the routes need it.
    let t = Weft::start(
        WeftOptions::new("dubbo-token")
            .arg("--api-token")
            .arg("s3cret"),
    )
    .await
    .expect("start");
    let body =
        json!({"registry": reg, "service": {"interface": "a.B", "methods": ["m"]}}).to_string();
    let (status, v) = post(&t, "/unsub", &[], &body).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["err_no"], 1);
    let (status, v) = post(&t, "/unsub", &[("dapr-api-token", "s3cret")], &body).await;
    assert_eq!((status, v["err_no"].clone()), (200, json!(1)), "{v}");
    assert!(
        v["err_msg"].as_str().unwrap().contains("not subscribed"),
        "{v}"
    );
}

/// Raw frames on the outbound and inbound listeners: what cannot be read
/// is answered with status 40 when it can be, a stream that is not Dubbo
/// or a frame over the limit ends that connection only, and the runtime
/// keeps serving.
#[tokio::test]
async fn hostile_frames_end_one_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_dubbo::frame::{serialization, Frame, Status};
    use weft_dubbo::hessian::{encode_request, RequestSpec};

    let outbound = free_port();
    let w = Weft::start(
        WeftOptions::new("dubbo-hostile")
            .arg("--dubbo-port")
            .arg(&outbound.to_string())
            .arg("--max-body-size")
            .arg("65536"),
    )
    .await
    .expect("start");
    let inbound = inbound(&w).await;
    let decoder = weft_dubbo::Decoder::new(1 << 20);

    async fn answer(s: &mut tokio::net::TcpStream, d: &weft_dubbo::Decoder) -> Option<Frame> {
        let mut buf = bytes::BytesMut::new();
        loop {
            if let Some(f) = d.decode(&mut buf).unwrap() {
                return Some(f);
            }
            match tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return None,
                Ok(Ok(_)) => {}
                other => panic!("no answer: {other:?}"),
            }
        }
    }
    let request = |id: u64, ser: u8, body: bytes::Bytes| Frame::request(id, ser, true, body);
    let good_body = encode_request(&RequestSpec {
        dubbo_version: "2.0.2",
        service_path: "a.B",
        service_version: "",
        method: "m",
        parameter_types: "",
        arguments: &[],
        attachments: &[("path", "a.B"), ("interface", "a.B")],
    });

    for addr in [format!("127.0.0.1:{outbound}"), inbound.clone()] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // An unreadable body: 40 naming the problem; the connection stays.
        s.write_all(
            &request(
                1,
                serialization::HESSIAN2,
                bytes::Bytes::from_static(b"\xff\xfe"),
            )
            .to_bytes(),
        )
        .await
        .unwrap();
        let a = answer(&mut s, &decoder).await.expect("answered");
        assert_eq!(
            (a.header.request_id, a.header.status),
            (1, Status::BAD_REQUEST),
            "{addr}"
        );
        let why = weft_dubbo::hessian::read_string(&a.body).unwrap().unwrap();
        assert!(why.contains("unreadable Dubbo request"), "{why}");
        // Another serialization: 40 saying which.
        s.write_all(&request(2, serialization::KRYO, good_body.clone()).to_bytes())
            .await
            .unwrap();
        let a = answer(&mut s, &decoder).await.expect("answered");
        assert_eq!(a.header.status, Status::BAD_REQUEST);
        let why = weft_dubbo::hessian::read_string(&a.body).unwrap().unwrap();
        assert!(why.contains("kryo") && why.contains("hessian2"), "{why}");
        // A well-formed call nobody serves: 60 (outbound: no subscription;
        // inbound: not published).
        s.write_all(&request(3, serialization::HESSIAN2, good_body.clone()).to_bytes())
            .await
            .unwrap();
        let a = answer(&mut s, &decoder).await.expect("answered");
        assert_eq!(
            (a.header.request_id, a.header.status),
            (3, Status::SERVICE_NOT_FOUND),
            "{addr}"
        );
        // A heartbeat is answered by the runtime.
        s.write_all(&Frame::heartbeat_request(4).to_bytes())
            .await
            .unwrap();
        let a = answer(&mut s, &decoder).await.expect("answered");
        assert!(a.header.event && a.header.request_id == 4 && a.header.status == Status::OK);
        // A frame over --max-body-size: 40, then the connection ends.
        let mut huge = Frame::request(5, serialization::HESSIAN2, true, bytes::Bytes::new()).header;
        huge.body_len = 10 << 20;
        s.write_all(&huge.to_bytes()).await.unwrap();
        let a = answer(&mut s, &decoder).await.expect("answered");
        assert_eq!(
            (a.header.request_id, a.header.status),
            (5, Status::BAD_REQUEST)
        );
        assert!(
            answer(&mut s, &decoder).await.is_none(),
            "closed after an oversized frame"
        );
        // Not Dubbo at all: the connection ends without an answer.
        let mut t = tokio::net::TcpStream::connect(&addr).await.unwrap();
        t.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(answer(&mut t, &decoder).await.is_none());
    }
    assert_eq!(
        weft_tests::http_status(w.http_port, "/v1.0/healthz").await,
        Some(204)
    );
    // The calls were counted.
    let (_, metrics) = weft_tests::http_get(w.http_port, "/metrics", &[])
        .await
        .unwrap();
    assert!(
        metrics.contains("transport=\"dubbo-outbound\""),
        "{metrics}"
    );
}
