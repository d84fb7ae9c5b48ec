//! Traces and metrics of real `weft` processes: spans exported over OTLP
//! (gRPC by one runtime, HTTP/protobuf by the other) to a receiver in this
//! test, joined into one trace across two apps and two runtimes and across
//! publish → delivery → redelivery; `/metrics` after known traffic.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Request;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as EventStatus;
use weft_tests::invoke_app::InvokeApp;
use weft_tests::mesh::{md, request, MeshEnv};
use weft_tests::otlp::{ReceivedSpan, Receiver};
use weft_tests::{http_get, Weft, WeftOptions};

/// Bound for spans to arrive (the exporter batches every few seconds).
const WAIT: Duration = Duration::from_secs(60);

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The caller's own span: the test plays an instrumented app.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str, span: &str) -> String {
    format!("00-{trace_id}-{span}-01")
}

/// (trace id, parent span id) of a `traceparent` value.
fn parse(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    (parts[1].to_string(), parts[2].to_string())
}

/// A Dapr Configuration turning tracing on at 100 % with the collector at
/// `endpoint` over `protocol`.
fn tracing_config(dir: &std::path::Path, endpoint: &str, protocol: &str) -> String {
    let path = dir.join(format!("tracing-{protocol}.yaml"));
    let addr = endpoint.trim_start_matches("http://");
    std::fs::write(
        &path,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: tracing\nspec:\n  tracing:\n    samplingRate: \"1\"\n    otel:\n      endpointAddress: \"{addr}\"\n      isSecure: false\n      protocol: {protocol}\n"
        ),
    )
    .expect("write configuration");
    path.to_string_lossy().into_owned()
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    kind: i32,
) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && s.kind == kind)
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} kind={} trace={} span={} parent={} via={}",
                s.service, s.name, s.kind, s.trace_id, s.span_id, s.parent_span_id, s.via
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn one_trace_across_two_apps_and_two_runtimes() {
    let receiver = Receiver::start().await;
    let env = MeshEnv::new();
    let dir = tempfile::tempdir().unwrap();

    // Runtime B (callee): exports over OTLP/HTTP, configured the standard
    // OpenTelemetry way (environment), to its app on a port.
    let app_b = InvokeApp::new("b");
    let (app_port, _app_task) = app_b.serve().await;
    let opts = env
        .options("callee", &["--app-port".to_string(), app_port.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let callee = Weft::start(opts).await.expect("start callee");

    // Runtime A (caller): exports over OTLP/gRPC, configured Dapr's way.
    let config = tracing_config(dir.path(), &receiver.grpc_endpoint, "grpc");
    let caller = env
        .runtime("caller", &["--config".to_string(), config])
        .await;
    let mut client = caller.client().await;

    let mut req = Request::new(request("callee", "echo", b"ping"));
    req.metadata_mut().insert(
        "traceparent",
        traceparent(TRACE_ID, APP_SPAN).parse().unwrap(),
    );
    let resp = client.invoke_service(req).await.expect("invoke callee");
    let seen_by_b = md(&resp, "x-seen-traceparent");
    assert!(!seen_by_b.is_empty(), "app B got no traceparent");
    let (b_trace, b_parent) = parse(&seen_by_b);
    assert_eq!(b_trace, TRACE_ID, "app B is in the caller's trace");

    let spans = receiver
        .spans
        .trace(TRACE_ID, WAIT, |trace| trace.len() >= 4)
        .await
        .unwrap_or_else(|all| {
            panic!(
                "four spans of the trace did not arrive:\n{}\ncallee's log:\n{}",
                describe(&all),
                callee.logs()
            )
        });
    let all = describe(&spans);

    // App A → runtime A: the API call's server span, a child of app A's span.
    let a_server = find(
        &spans,
        "caller",
        "dapr.proto.runtime.v1.Dapr/InvokeService",
        SERVER,
    )
    .unwrap_or_else(|| panic!("runtime A's server span:\n{all}"));
    assert_eq!(a_server.parent_span_id, APP_SPAN, "{all}");
    assert_eq!(a_server.attr("rpc.system"), Some("grpc"));
    assert_eq!(a_server.attr("rpc.method"), Some("InvokeService"));
    assert_eq!(a_server.attr("weft.app_id"), Some("caller"));
    assert_eq!(a_server.via, "grpc");
    // Runtime A → runtime B: the mesh hop, client side and server side.
    let a_client = find(&spans, "caller", "weft.internal.v1.Mesh/Invoke", CLIENT)
        .unwrap_or_else(|| panic!("runtime A's mesh client span:\n{all}"));
    assert_eq!(a_client.parent_span_id, a_server.span_id, "{all}");
    assert_eq!(a_client.attr("rpc.service"), Some("weft.internal.v1.Mesh"));
    let b_server = find(&spans, "callee", "weft.internal.v1.Mesh/Invoke", SERVER)
        .unwrap_or_else(|| panic!("runtime B's mesh server span:\n{all}"));
    assert_eq!(b_server.parent_span_id, a_client.span_id, "{all}");
    assert_eq!(b_server.via, "http");
    // Runtime B → app B: the call into the app, whose traceparent names it.
    let b_client = find(
        &spans,
        "callee",
        "dapr.proto.runtime.v1.AppCallback/OnInvoke",
        CLIENT,
    )
    .unwrap_or_else(|| panic!("runtime B's app call span:\n{all}"));
    assert_eq!(b_client.parent_span_id, b_server.span_id, "{all}");
    assert_eq!(
        b_parent, b_client.span_id,
        "app B's parent is runtime B's span\n{all}"
    );

    // The same calls are counted in /metrics with their status code.
    let (status, text) = http_get(caller.http_port, "/metrics", &[])
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "weft_api_requests_total{transport=\"grpc\",method=\"InvokeService\",code=\"OK\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("weft_mesh_call_duration_seconds_count{app_id=\"callee\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("weft_mesh_tls_handshakes_total{side=\"client\",result=\"ok\"}"),
        "{text}"
    );
    let (_, text_b) = http_get(callee.http_port, "/metrics", &[]).await.unwrap();
    assert!(text_b.contains("weft_mesh_connections 1"), "{text_b}");
    assert!(
        text_b.contains("\nprocess_resident_memory_bytes "),
        "{text_b}"
    );
}

type Sub = (
    mpsc::Sender<pb::SubscribeTopicEventsRequestAlpha1>,
    tonic::Streaming<pb::SubscribeTopicEventsResponseAlpha1>,
);

async fn subscribe(c: &mut DaprClient<Channel>, topic: &str) -> Sub {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                metadata: Default::default(),
                dead_letter_topic: None,
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = c
        .subscribe_topic_events_alpha1(ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("initial response in time")
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.subscribe_topic_events_response_type,
        Some(RespType::InitialResponse(_))
    ));
    (tx, stream)
}

async fn next_event(sub: &mut Sub) -> pb::TopicEventRequest {
    let msg = tokio::time::timeout(WAIT, sub.1.message())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    match msg.subscribe_topic_events_response_type {
        Some(RespType::EventMessage(ev)) => ev,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn answer(sub: &Sub, id: &str, status: EventStatus) {
    sub.0
        .send(pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(ReqType::EventProcessed(
                pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                    id: id.into(),
                    status: Some(pb::TopicEventResponse {
                        status: status as i32,
                    }),
                },
            )),
        })
        .await
        .unwrap();
}

/// Publishes `data` (JSON) to `topic` of component `pubsub` as a caller in
/// trace `trace_id`, span `parent`.
async fn publish_traced(
    c: &mut DaprClient<Channel>,
    topic: &str,
    data: &[u8],
    trace_id: &str,
    parent: &str,
) {
    let mut req = Request::new(pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: topic.into(),
        data: data.to_vec(),
        data_content_type: "application/json".into(),
        metadata: Default::default(),
    });
    req.metadata_mut().insert(
        "traceparent",
        traceparent(trace_id, parent).parse().unwrap(),
    );
    c.publish_event(req).await.expect("publish");
}

/// A runtime `app_id` exporting its spans to `endpoint` over `protocol`,
/// serving shared memory on the socket returned (in `dir`).
async fn traced_shm_runtime(
    dir: &std::path::Path,
    app_id: &str,
    endpoint: &str,
    protocol: &str,
) -> (Weft, std::path::PathBuf) {
    let config = tracing_config(dir, endpoint, protocol);
    let socket = dir.join("shm.sock");
    let weft = Weft::start(
        WeftOptions::new(app_id)
            .arg("--config")
            .arg(&config)
            .arg("--shm-socket")
            .arg(&socket.to_string_lossy()),
    )
    .await
    .expect("start weft");
    (weft, socket)
}

fn ext(ev: &pb::TopicEventRequest, key: &str) -> String {
    match ev
        .extensions
        .as_ref()
        .and_then(|e| e.fields.get(key))
        .and_then(|v| v.kind.as_ref())
    {
        Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("extension {key}: {other:?}"),
    }
}

#[tokio::test]
async fn publish_delivery_and_redelivery_join_the_publishers_trace() {
    publish_delivery_trace(None).await;
}

#[tokio::test]
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
async fn kafka_publish_delivery_and_redelivery_join_the_publishers_trace() {
    let brokers = std::env::var("WEFT_TEST_KAFKA_BROKERS")
        .expect("WEFT_TEST_KAFKA_BROKERS (scripts/services.sh env)");
    publish_delivery_trace(Some(&brokers)).await;
}

/// Publish with a caller's trace context, a delivery answered RETRY, its
/// redelivery acked: one trace, on the embedded broker or on Kafka.
async fn publish_delivery_trace(kafka: Option<&str>) {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = tracing_config(dir.path(), &receiver.grpc_endpoint, "grpc");
    let mut opts = WeftOptions::new("orders").arg("--config").arg(&config);
    let (pubsub, topic) = match kafka {
        Some(brokers) => {
            let res = dir.path().join("resources");
            std::fs::create_dir_all(&res).unwrap();
            weft_tests::write_component(
                &res,
                "pubsub",
                "pubsub.kafka",
                &[("brokers", brokers), ("partitions", "2")],
            );
            opts = opts.resources(&res);
            ("pubsub.kafka", format!("placed-{}", std::process::id()))
        }
        None => ("pubsub.embedded", "placed".to_string()),
    };
    let topic = topic.as_str();
    let weft = Weft::start(opts).await.expect("start weft");
    let mut c = weft.client().await;
    let mut sub = subscribe(&mut c, topic).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    publish_traced(
        &mut c,
        topic,
        br#"{"order":1}"#,
        trace_id,
        "b7ad6b7169203331",
    )
    .await;

    // First delivery: the app asks for a retry; the second is acked.
    let first = next_event(&mut sub).await;
    let (t1, p1) = parse(&ext(&first, "traceparent"));
    answer(&sub, &first.id, EventStatus::Retry).await;
    let second = next_event(&mut sub).await;
    let (t2, p2) = parse(&ext(&second, "traceparent"));
    answer(&sub, &second.id, EventStatus::Success).await;
    assert_eq!((t1.as_str(), t2.as_str()), (trace_id, trace_id));
    assert_ne!(p1, p2, "each delivery has its own consumer span");

    let spans = receiver
        .spans
        .trace(trace_id, WAIT, |trace| {
            trace.iter().filter(|s| s.kind == CONSUMER).count() >= 2
        })
        .await
        .unwrap_or_else(|all| panic!("the delivery spans did not arrive:\n{}", describe(&all)));
    let all = describe(&spans);
    let server = find(
        &spans,
        "orders",
        "dapr.proto.runtime.v1.Dapr/PublishEvent",
        SERVER,
    )
    .unwrap_or_else(|| panic!("publish server span:\n{all}"));
    assert_eq!(server.parent_span_id, "b7ad6b7169203331", "{all}");
    let producer = find(&spans, "orders", &format!("publish {topic}"), PRODUCER)
        .unwrap_or_else(|| panic!("producer span:\n{all}"));
    assert_eq!(producer.parent_span_id, server.span_id, "{all}");
    assert_eq!(producer.attr("messaging.destination.name"), Some(topic));
    let consumers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == CONSUMER).collect();
    for (c, delivered_parent, attempt) in [(&p1, "0"), (&p2, "1")].iter().map(|(p, a)| {
        let span = consumers
            .iter()
            .find(|s| &s.span_id == *p)
            .unwrap_or_else(|| panic!("consumer span {p}:\n{all}"));
        (*span, p, *a)
    }) {
        assert_eq!(c.parent_span_id, producer.span_id, "{all}");
        assert_eq!(&c.span_id, *delivered_parent);
        assert_eq!(c.name, format!("process {topic}"));
        assert_eq!(c.attr("messaging.destination.name"), Some(topic));
        let system = if pubsub == "pubsub.kafka" {
            "kafka"
        } else {
            pubsub
        };
        assert_eq!(c.attr("messaging.system"), Some(system), "{all}");
        if kafka.is_some() {
            assert!(c.attr("messaging.kafka.partition").is_some(), "{all}");
            assert!(c.attr("messaging.kafka.offset").is_some(), "{all}");
        }
        assert_eq!(c.attr("weft.delivery.attempt"), Some(attempt));
        assert!(
            c.attr("messaging.destination.partition.id").is_some(),
            "{all}"
        );
    }

    let (_, text) = http_get(weft.http_port, "/metrics", &[]).await.unwrap();
    assert!(
        text.contains(&format!(
            "weft_pubsub_deliveries_total{{component=\"pubsub\",topic=\"{topic}\"}} 2"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "weft_pubsub_redeliveries_total{{component=\"pubsub\",topic=\"{topic}\"}} 1"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn tracing_off_forwards_the_callers_trace_context_and_metrics_still_count() {
    // No collector configured: no spans, but the event still carries the
    // publisher's trace context, and /metrics counts the calls.
    let weft = Weft::start(WeftOptions::new("plain"))
        .await
        .expect("start weft");
    let mut c = weft.client().await;
    let mut sub = subscribe(&mut c, "t").await;
    let (trace_id, parent) = ("11111111111111111111111111111111", "2222222222222222");
    let tp = traceparent(trace_id, parent);
    publish_traced(&mut c, "t", b"{}", trace_id, parent).await;
    let ev = next_event(&mut sub).await;
    assert_eq!(ext(&ev, "traceparent"), tp);
    answer(&sub, &ev.id, EventStatus::Success).await;

    let err = c
        .get_state(pb::GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let (status, text) = http_get(weft.http_port, "/metrics", &[]).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "weft_api_requests_total{transport=\"grpc\",method=\"PublishEvent\",code=\"OK\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "weft_api_requests_total{transport=\"grpc\",method=\"GetState\",code=\"INVALID_ARGUMENT\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
}

/// Debian's Prometheus server (started by scripts/services.sh) scrapes two
/// runtimes; its query API answers for a request counter and for a
/// consumer-lag gauge after known traffic.
#[tokio::test]
#[cfg_attr(
    weft_no_prometheus,
    ignore = "needs Prometheus: scripts/services.sh start prometheus, then export scripts/services.sh env"
)]
async fn prometheus_scrapes_two_runtimes_and_answers_for_their_series() {
    let prom = weft_tests::prometheus::Prometheus::require();
    let a = Weft::start(WeftOptions::new("prom-a"))
        .await
        .expect("start a");
    let b = Weft::start(WeftOptions::new("prom-b"))
        .await
        .expect("start b");
    // Tell this test's runtimes apart from any other run's by a label.
    let run = format!("observability-{}", std::process::id());
    let _targets = prom.add_targets(
        &run,
        &[
            ([127, 0, 0, 1], a.http_port).into(),
            ([127, 0, 0, 1], b.http_port).into(),
        ],
        &[("run", &run)],
    );

    // Known traffic: 7 saves on A, 4 on B; on B, 5 events to a topic whose
    // subscriber takes them and acknowledges none (a lag of 5 in all).
    for (weft, n) in [(&a, 7), (&b, 4)] {
        let mut c = weft.client().await;
        for i in 0..n {
            c.save_state(pb::SaveStateRequest {
                store_name: "statestore".into(),
                states: vec![weft_proto::common::StateItem {
                    key: format!("k{i}"),
                    value: b"v".to_vec(),
                    ..Default::default()
                }],
            })
            .await
            .expect("save");
        }
    }
    let mut c = b.client().await;
    let mut sub = subscribe(&mut c, "lagging").await;
    for i in 0..5 {
        c.publish_event(pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "lagging".into(),
            data: format!("{{\"n\":{i}}}").into_bytes(),
            data_content_type: "application/json".into(),
            metadata: Default::default(),
        })
        .await
        .expect("publish");
    }
    let _first = next_event(&mut sub).await;

    let saves = format!(
        "sum by (instance) (weft_api_requests_total{{run=\"{run}\",method=\"SaveState\",code=\"OK\"}})"
    );
    let want = |s: &[weft_tests::prometheus::Sample]| {
        let mut v: Vec<f64> = s.iter().map(|(_, v)| *v).collect();
        v.sort_by(f64::total_cmp);
        v == [4.0, 7.0]
    };
    prom.wait_for(&saves, want, WAIT)
        .await
        .expect("Prometheus has both runtimes' SaveState counters");
    let lag = format!("sum(weft_pubsub_consumer_lag{{run=\"{run}\",topic=\"lagging\"}})");
    prom.wait_for(
        &lag,
        |s: &[weft_tests::prometheus::Sample]| s.len() == 1 && s[0].1 == 5.0,
        WAIT,
    )
    .await
    .expect("Prometheus has B's consumer lag");
    let up = format!("sum(up{{run=\"{run}\"}})");
    let r = prom.query(&up).await.expect("query up");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1, 2.0, "both runtimes scraped: {r:?}");
}

/// A call over shared memory continues the caller's trace from the
/// `traceparent` in its call context (docs/shm-protocol.md §5.1): the
/// runtime's API span and the state store's span join it, and the shm
/// transport is counted in /metrics.
#[tokio::test]
async fn shared_memory_calls_continue_the_callers_trace() {
    use prost::Message;
    use weft_proto::appchannel as ac;

    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (weft, socket) =
        traced_shm_runtime(dir.path(), "shm-traced", &receiver.http_endpoint, "http").await;
    let trace_id = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    let parent = "1b1b1b1b1b1b1b1b";
    let ctx = ac::CallContext {
        timeout_micros: 0,
        metadata: vec![ac::Metadata {
            key: "traceparent".into(),
            values: vec![traceparent(trace_id, parent)],
        }],
        status_details: Vec::new(),
    }
    .encode_to_vec();
    let body = pb::GetStateRequest {
        store_name: "statestore".into(),
        key: "traced".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let status = tokio::task::spawn_blocking(move || {
        let mut c = weft_shm::Client::connect(&socket, weft_shm::ClientOptions::new("shm-traced"))
            .expect("shm session");
        c.call_with_context(weft_shm::method::GET_STATE, &ctx, &body)
            .expect("answered")
            .envelope
            .status
    })
    .await
    .unwrap();
    assert_eq!(status, 0, "GetState over shm");

    let spans = receiver
        .spans
        .trace(trace_id, WAIT, |trace| trace.len() >= 2)
        .await
        .unwrap_or_else(|all| panic!("the shm call's spans did not arrive:\n{}", describe(&all)));
    let all = describe(&spans);
    let server = find(
        &spans,
        "shm-traced",
        "dapr.proto.runtime.v1.Dapr/GetState",
        SERVER,
    )
    .unwrap_or_else(|| panic!("API span:\n{all}"));
    assert_eq!(server.parent_span_id, parent, "{all}");
    assert_eq!(server.attr("rpc.system"), Some("weft-shm"));
    let store = find(&spans, "shm-traced", "state get", CLIENT)
        .unwrap_or_else(|| panic!("store span:\n{all}"));
    assert_eq!(store.parent_span_id, server.span_id, "{all}");
    assert_eq!(store.attr("weft.component.type"), Some("state.sqlite"));

    let (_, text) = http_get(weft.http_port, "/metrics", &[]).await.unwrap();
    assert!(
        text.contains(
            "weft_api_requests_total{transport=\"shm\",method=\"GetState\",code=\"OK\"} 1"
        ),
        "{text}"
    );
    // The client is gone, and so is its session.
    assert!(text.contains("weft_shm_sessions 0"), "{text}");
}

/// A subscription over shared memory in a traced runtime: the event it
/// hands out carries the consumer span's trace context (a child of the
/// publisher's producer span), as over gRPC, and the span ends with the
/// app's ack.
#[tokio::test]
async fn shared_memory_deliveries_carry_the_consumer_span() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (weft, socket) =
        traced_shm_runtime(dir.path(), "shm-orders", &receiver.grpc_endpoint, "grpc").await;
    let sub = tokio::task::spawn_blocking(move || {
        let client = weft_shm::Client::connect(&socket, weft_shm::ClientOptions::new("shm-orders"))
            .expect("shm session");
        weft_tests::subscribe::ShmSubscription::open(client, "pubsub", "traced", Default::default())
            .expect("subscribe over shm")
    })
    .await
    .unwrap();

    let trace_id = "7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c";
    let mut c = weft.client().await;
    publish_traced(
        &mut c,
        "traced",
        br#"{"order":2}"#,
        trace_id,
        "2c2c2c2c2c2c2c2c",
    )
    .await;

    let ev = tokio::task::spawn_blocking(move || {
        let mut sub = sub;
        let ev = sub
            .next_event(Duration::from_secs(30))
            .expect("subscription")
            .expect("an event within 30 s");
        sub.ack(ev.id.clone()).expect("ack");
        ev
    })
    .await
    .unwrap();
    assert_eq!(ev.data, br#"{"order":2}"#);
    let (delivered_trace, delivered_span) = parse(&ext(&ev, "traceparent"));
    assert_eq!(delivered_trace, trace_id);

    let spans = receiver
        .spans
        .trace(trace_id, WAIT, |trace| {
            trace.iter().any(|s| s.kind == CONSUMER)
        })
        .await
        .unwrap_or_else(|all| panic!("the delivery span did not arrive:\n{}", describe(&all)));
    let all = describe(&spans);
    let producer = find(&spans, "shm-orders", "publish traced", PRODUCER)
        .unwrap_or_else(|| panic!("producer span:\n{all}"));
    let consumer = find(&spans, "shm-orders", "process traced", CONSUMER)
        .unwrap_or_else(|| panic!("consumer span:\n{all}"));
    assert_eq!(consumer.span_id, delivered_span, "{all}");
    assert_eq!(consumer.parent_span_id, producer.span_id, "{all}");
    assert_eq!(
        consumer.attr("weft.delivery.outcome"),
        Some("success"),
        "{all}"
    );
}
