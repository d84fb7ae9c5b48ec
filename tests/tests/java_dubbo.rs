//! The codec and the registry against real Apache Dubbo 3.3 programs
//! (tests/dubbo-java: a provider of `dev.weft.test.Greeter` and a
//! consumer, hessian2):
//!
//! * a Rust client built on the codec calls the Java provider (heartbeat,
//!   calls, exceptions, pipelined requests answered out of order, a bad
//!   request);
//! * the Java consumer calls through a small Rust forwarder built on the
//!   codec, which routes by the decoded interface and group, answers
//!   heartbeats itself, passes bodies through untouched, and answers 60
//!   SERVICE_NOT_FOUND for what it cannot route;
//! * the registry publishes the Java provider in ZooKeeper and the
//!   unmodified Java consumer, reading ZooKeeper, finds and calls it.
//!
//! The Maven project is built once per run of this test binary (`mvn -q -B
//! package`, dependencies cached in `$WEFT_SERVICES_DIR/m2`, default
//! `<repo>/.services/m2`). Without Java 17 and Maven these tests print
//! SKIPPED, unless `CI` or `WEFT_REQUIRE_SERVICES` is set, where they fail;
//! the registry test also needs ZooKeeper (`WEFT_TEST_ZK_SERVERS`; ignored
//! with the reason when the build saw none).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use weft_dubbo::frame::{serialization, Decoder, EventKind, Frame, Status};
use weft_dubbo::hessian::{self, RequestSpec, ResultKind, Writer};
use weft_dubbo::registry::{ConsumerSpec, ProviderSpec, Registry, RegistryConfig};
use weft_dubbo::url::DubboUrl;
use weft_tests::dubbo::java::{java, start_provider, JavaProc, IFACE};
use weft_tests::dubbo::{unique, wait_for, zk_servers, WAIT};

// === a Dubbo client on the codec ===

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Conn {
    async fn connect(port: u16) -> Conn {
        Conn {
            stream: TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
            buf: BytesMut::new(),
            decoder: Decoder::default(),
        }
    }

    async fn send(&mut self, f: &Frame) {
        self.stream.write_all(&f.to_bytes()).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = self.decoder.decode(&mut self.buf).unwrap() {
                    return f;
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the provider closed the connection");
            }
        })
        .await
        .expect("no frame from the provider")
    }
}

fn call(id: u64, method: &str, desc: &str, args: &[u8], attachments: &[(&str, &str)]) -> Frame {
    let body = hessian::encode_request(&RequestSpec {
        dubbo_version: "2.0.2",
        service_path: IFACE,
        service_version: "0.0.0",
        method,
        parameter_types: desc,
        arguments: args,
        attachments,
    });
    Frame::request(id, serialization::HESSIAN2, true, body)
}

fn string_arg(s: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.string(s);
    w.into_bytes()
}

const STD_ATTACHMENTS: &[(&str, &str)] = &[
    ("path", IFACE),
    ("interface", IFACE),
    ("version", "0.0.0"),
    ("timeout", "5000"),
];

fn value_string(f: &Frame) -> String {
    assert_eq!(
        f.header.status,
        Status::OK,
        "{:?}",
        hessian::read_string(&f.body)
    );
    let r = hessian::read_response(&f.body).unwrap();
    assert_eq!(r.kind, ResultKind::Value);
    hessian::read_string(&f.body[r.value.clone()])
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_calls_the_java_provider() {
    let Some(cp) = java("rust_client_calls_the_java_provider") else {
        return;
    };
    let (provider, port) = start_provider(cp, "p1", &[]).await;
    let mut c = Conn::connect(port).await;

    // A heartbeat: answered with an event response, same id, body N.
    c.send(&Frame::heartbeat_request(1)).await;
    let hb = c.recv().await;
    assert_eq!(hb.header.request_id, 1);
    assert!(!hb.header.request && hb.header.event, "{:?}", hb.header);
    assert_eq!(hb.header.status, Status::OK);
    assert_eq!(hb.header.serialization, serialization::HESSIAN2);
    assert_eq!(&hb.body[..], hessian::NULL_BODY);
    assert!(hb.is_heartbeat());

    // A call.
    c.send(&call(
        2,
        "greet",
        "Ljava/lang/String;",
        &string_arg("weft"),
        STD_ATTACHMENTS,
    ))
    .await;
    let resp = c.recv().await;
    assert_eq!(resp.header.request_id, 2);
    assert!(!resp.header.event && !resp.header.request);
    assert_eq!(resp.header.serialization, serialization::HESSIAN2);
    assert_eq!(value_string(&resp), "Hello, weft from p1");
    let r = hessian::read_response(&resp.body).unwrap();
    assert_eq!(r.flag, hessian::RESPONSE_VALUE_WITH_ATTACHMENTS);
    assert_eq!(r.attachments.get_str("dubbo"), Some("2.0.2"));
    eprintln!(
        "wire: greet response flag {} attachments {:?}",
        r.flag, r.attachments.entries
    );

    // An exception: a Java IllegalStateException object (with its stack
    // trace) that the skipper walks over.
    c.send(&call(
        3,
        "fail",
        "Ljava/lang/String;",
        &string_arg("boom"),
        STD_ATTACHMENTS,
    ))
    .await;
    let resp = c.recv().await;
    assert_eq!(resp.header.status, Status::OK);
    let r = hessian::read_response(&resp.body).unwrap();
    assert_eq!(r.kind, ResultKind::Exception);
    assert_eq!(r.flag, hessian::RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS);
    let exc = &resp.body[r.value.clone()];
    assert!(
        exc.len() > 100,
        "a whole exception object: {} bytes",
        exc.len()
    );
    let text = String::from_utf8_lossy(exc);
    assert!(text.contains("java.lang.IllegalStateException") && text.contains("boom"));
    assert_eq!(r.attachments.range.end, resp.body.len());

    // Pipelined calls on one connection come back matched by id, the
    // slow one last.
    let mut w = Writer::new();
    w.int(400);
    c.send(&call(10, "slow", "I", w.as_bytes(), STD_ATTACHMENTS))
        .await;
    c.send(&call(
        11,
        "greet",
        "Ljava/lang/String;",
        &string_arg("a"),
        STD_ATTACHMENTS,
    ))
    .await;
    c.send(&call(
        12,
        "greet",
        "Ljava/lang/String;",
        &string_arg("b"),
        STD_ATTACHMENTS,
    ))
    .await;
    let mut got = HashMap::new();
    let mut order = Vec::new();
    for _ in 0..3 {
        let f = c.recv().await;
        order.push(f.header.request_id);
        got.insert(f.header.request_id, value_string(&f));
    }
    assert_eq!(got[&10], "slept 400");
    assert_eq!(got[&11], "Hello, a from p1");
    assert_eq!(got[&12], "Hello, b from p1");
    assert_eq!(
        order.last(),
        Some(&10),
        "the slow call answered last: {order:?}"
    );

    // A method the service does not have: Dubbo answers with an error
    // status and a string body.
    c.send(&call(
        20,
        "nosuch",
        "Ljava/lang/String;",
        &string_arg("x"),
        STD_ATTACHMENTS,
    ))
    .await;
    let resp = c.recv().await;
    assert_eq!(resp.header.request_id, 20);
    eprintln!("wire: unknown method -> status {}", resp.header.status);
    if resp.header.status.is_ok() {
        let r = hessian::read_response(&resp.body).unwrap();
        assert_eq!(r.kind, ResultKind::Exception);
    } else {
        let msg = hessian::read_string(&resp.body).unwrap().unwrap();
        eprintln!("wire: unknown method message: {msg}");
        assert!(msg.contains("nosuch"), "{msg}");
    }

    // A service the provider does not export.
    let body = hessian::encode_request(&RequestSpec {
        dubbo_version: "2.0.2",
        service_path: "dev.weft.test.Missing",
        service_version: "0.0.0",
        method: "greet",
        parameter_types: "Ljava/lang/String;",
        arguments: &string_arg("x"),
        attachments: &[
            ("path", "dev.weft.test.Missing"),
            ("interface", "dev.weft.test.Missing"),
        ],
    });
    c.send(&Frame::request(21, serialization::HESSIAN2, true, body))
        .await;
    let resp = c.recv().await;
    assert_eq!(resp.header.request_id, 21);
    eprintln!("wire: unknown service -> status {}", resp.header.status);
    if !resp.header.status.is_ok() {
        let msg = hessian::read_string(&resp.body).unwrap().unwrap();
        eprintln!("wire: unknown service message: {msg}");
        assert!(msg.contains("greet"), "{msg}");
    }
    provider.stop().await;
}

// === a forwarder on the codec ===

#[derive(Default)]
struct Seen {
    /// (serialization id, request) of every call routed or refused.
    requests: Vec<(u8, hessian::Request)>,
    heartbeats_answered: usize,
    refused: usize,
    bodies_checked: usize,
}

/// Accepts Dubbo connections; per connection, one upstream connection to
/// the provider. Calls to `IFACE` in group `group` go upstream unchanged;
/// others get 60 SERVICE_NOT_FOUND; heartbeats are answered here.
async fn start_forwarder(upstream: u16, group: &'static str) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((down, peer)) = listener.accept().await {
            assert!(peer.ip().is_loopback(), "a connection from {peer}");
            tokio::spawn(forward(down, upstream, group, s.clone()));
        }
    });
    (port, seen)
}

async fn forward(down: TcpStream, upstream: u16, group: &str, seen: Arc<Mutex<Seen>>) {
    let up = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
    let (mut down_r, mut down_w) = down.into_split();
    let (mut up_r, mut up_w) = up.into_split();
    let (to_down, mut to_down_rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(b) = to_down_rx.recv().await {
            if down_w.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    // Upstream → downstream: frames passed through.
    let back = to_down.clone();
    tokio::spawn(async move {
        let d = Decoder::default();
        let mut buf = BytesMut::new();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => {
                    let _ = back.send(f.to_bytes());
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("bad frame from the provider: {e}"),
            }
            match up_r.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    });
    let d = Decoder::default();
    let mut buf = BytesMut::new();
    loop {
        while let Some(f) = d.decode(&mut buf).expect("bad frame from the consumer") {
            if f.event_kind() == Some(EventKind::Heartbeat) {
                if let Some(r) = f.heartbeat_response() {
                    seen.lock().unwrap().heartbeats_answered += 1;
                    let _ = to_down.send(r.to_bytes());
                }
                continue;
            }
            if !f.header.request || f.header.event {
                continue;
            }
            let req = hessian::read_request(&f.body).expect("a request the reader cannot read");
            // The untouched body: prefix, arguments and attachments cover it.
            assert_eq!(req.attachments.range.end, f.body.len());
            let routed = req.interface() == IFACE && req.group() == group;
            {
                let mut s = seen.lock().unwrap();
                s.requests.push((f.header.serialization, req.clone()));
                s.bodies_checked += 1;
                if !routed {
                    s.refused += 1;
                }
            }
            if routed {
                if up_w.write_all(&f.to_bytes()).await.is_err() {
                    return;
                }
            } else {
                let msg = format!(
                    "weft test forwarder: no provider of {} (group '{}', version '{}')",
                    req.interface(),
                    req.group(),
                    req.version()
                );
                let _ = to_down.send(
                    Frame::error_response(f.header.request_id, Status::SERVICE_NOT_FOUND, &msg)
                        .to_bytes(),
                );
            }
        }
        match down_r.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_consumer_calls_through_a_forwarder_on_the_codec() {
    let Some(cp) = java("java_consumer_calls_through_a_forwarder") else {
        return;
    };
    let (provider, port) = start_provider(cp, "p1", &[]).await;
    let (fwd, seen) = start_forwarder(port, "").await;
    let direct_url = format!("dubbo://127.0.0.1:{port}");
    let fwd_url = format!("dubbo://127.0.0.1:{fwd}");
    let mut direct = JavaProc::start(cp, "Consumer", &["--url", &direct_url], "direct").await;
    let mut via = JavaProc::start(
        cp,
        "Consumer",
        &[
            "--url",
            &fwd_url,
            "--heartbeat",
            "1000",
            "--timeout",
            "5000",
        ],
        "via-forwarder",
    )
    .await;

    assert_eq!(via.ok("greet weft").await, "Hello, weft from p1");
    // Every kind of hessian2 value, in a nested object graph, crosses the
    // forwarder untouched: the provider's summary is the same as direct.
    let expected = direct.ok("describe 3").await;
    assert!(expected.contains("|by=p1"), "{expected}");
    assert_eq!(via.ok("describe 3").await, expected);
    let failed = via.call("fail boom").await;
    assert!(
        failed.starts_with("ERR ")
            && failed.contains("IllegalStateException")
            && failed.contains("boom"),
        "{failed}"
    );
    assert_eq!(via.ok("slow 200").await, "slept 200");

    // What real Dubbo 3.3 sent.
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.requests.len(), 4);
        for (ser, req) in &s.requests {
            assert_eq!(*ser, serialization::HESSIAN2, "hessian2 on the wire");
            assert_eq!(req.dubbo_version, "2.0.2");
            assert_eq!(req.service_path, IFACE);
            assert_eq!(req.attachments.get_str("path"), Some(IFACE));
            assert_eq!(req.attachments.get_str("interface"), Some(IFACE));
            assert_eq!(req.timeout(), Some(Duration::from_millis(5000)));
        }
        let (_, describe) = &s.requests[1];
        assert_eq!(describe.method, "describe");
        assert_eq!(
            describe.parameter_types,
            "Ldev/weft/test/Payload;Ljava/util/List;Ljava/util/Map;"
        );
        assert_eq!(describe.argument_count, 3);
        assert!(
            describe.arguments.len() > 10_000,
            "{:?}",
            describe.arguments
        );
        for (_, req) in s.requests.iter() {
            eprintln!(
                "wire: {} desc '{}' version '{}' attachments {:?}",
                req.method,
                req.parameter_types,
                req.service_version,
                req.attachments
                    .entries
                    .iter()
                    .map(|a| format!("{}={:?}", a.key, a.value))
                    .collect::<Vec<_>>()
            );
        }
    }

    // Heartbeats (sent by the consumer after a second of idleness) are
    // answered by the forwarder.
    wait_for("a heartbeat from the Java consumer", || async {
        (seen.lock().unwrap().heartbeats_answered > 0).then_some(())
    })
    .await;
    // The connection still works after heartbeats.
    assert_eq!(via.ok("greet again").await, "Hello, again from p1");

    // A group the forwarder cannot route: 60 with its message reaches the
    // Java consumer.
    let mut other = JavaProc::start(
        cp,
        "Consumer",
        &["--url", &fwd_url, "--group", "nope"],
        "other-group",
    )
    .await;
    let refused = other.call("greet x").await;
    assert!(
        refused.starts_with("ERR ")
            && refused.contains(
                "weft test forwarder: no provider of dev.weft.test.Greeter (group 'nope'"
            ),
        "{refused}"
    );
    eprintln!("wire: Java consumer's view of a 60 answer: {refused}");
    assert_eq!(seen.lock().unwrap().refused, 1);
    for p in [via, direct, other, provider] {
        p.stop().await;
    }
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_consumer_finds_a_published_provider_in_zookeeper() {
    let servers = zk_servers("java_consumer_finds_a_published_provider");
    let Some(cp) = java("java_consumer_finds_a_published_provider") else {
        return;
    };
    let (provider, port) = start_provider(cp, "zk-p1", &[]).await;
    // A root of this test's own (Dubbo's registry `group`).
    let group = unique("weft-dubbo-e2e");
    let cfg = RegistryConfig::new(&servers)
        .unwrap()
        .with_root(&format!("/{group}"))
        .unwrap();
    let reg = Registry::connect(cfg);
    let mut spec = ProviderSpec::new(
        IFACE,
        &["greet", "slow", "fail", "describe"],
        "127.0.0.1",
        port,
    );
    spec.params.insert("weft.app-id".into(), "greeter".into());
    let url = reg.publish(&spec).await.unwrap();
    eprintln!("published {url}");

    let registry_url = format!("zookeeper://{servers}?group={group}");
    let mut consumer = JavaProc::start(
        cp,
        "Consumer",
        &["--registry", &registry_url, "--timeout", "5000"],
        "zk-consumer",
    )
    .await;
    // The consumer learns the provider from its watch: retry until then.
    let mut answer = String::new();
    for _ in 0..60 {
        answer = consumer.call("greet zk").await;
        if answer.starts_with("OK ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(answer.ends_with("Hello, zk from zk-p1"), "{answer}");

    // The Java consumer's own node is one our URL reader understands.
    reg.subscribe(&ConsumerSpec::new(IFACE, "127.0.0.1"))
        .await
        .unwrap();
    let zk = zookeeper_client::Client::connect(&servers).await.unwrap();
    let consumers = zk
        .list_children(&format!("/{group}/{IFACE}/consumers"))
        .await
        .unwrap();
    let java_node = consumers
        .iter()
        .filter_map(|n| DubboUrl::from_node_name(n).ok())
        .find(|u| u.param("application") == Some("weft-test-consumer"))
        .unwrap_or_else(|| panic!("no Java consumer node among {consumers:?}"));
    eprintln!("wire: Java consumer node {java_node}");
    assert_eq!(java_node.param("side"), Some("consumer"));
    // Dubbo's local host is pinned to loopback in the test programs.
    assert_eq!(java_node.host(), "127.0.0.1");
    assert_eq!(java_node.interface(), IFACE);
    assert_eq!(reg.lookup(IFACE, "", "").unwrap()[0].url, url);

    // Unpublished: the consumer no longer finds a provider.
    assert!(reg.unpublish(IFACE, "", "").await.unwrap());
    let mut gone = String::new();
    for _ in 0..60 {
        gone = consumer.call("greet zk").await;
        if gone.starts_with("ERR ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gone.starts_with("ERR "), "{gone}");
    eprintln!("wire: Java consumer after unpublish: {gone}");
    consumer.stop().await;
    provider.stop().await;
    reg.close().await;
}
