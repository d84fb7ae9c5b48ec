//! Pub/sub on the embedded broker of a real `weft` process: publishing,
//! streaming subscriptions (ordering, no loss, a member leaving mid-run,
//! RETRY, DROP to a dead-letter topic), the callback model against an
//! AppCallback server in the test (strict and pipelined), and bad inputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as EventStatus;
use weft_tests::order::Log;
use weft_tests::{free_port, Weft, WeftOptions};

/// Bound for any single expected event (a failure, never a speed check).
const WAIT: Duration = Duration::from_secs(60);

type Requests = mpsc::Sender<pb::SubscribeTopicEventsRequestAlpha1>;

/// A streaming subscription: the request sender and the response stream.
struct Sub {
    tx: Requests,
    rx: Streaming<pb::SubscribeTopicEventsResponseAlpha1>,
}

fn initial(
    topic: &str,
    metadata: &[(&str, &str)],
    dlt: Option<&str>,
) -> pb::SubscribeTopicEventsRequestAlpha1 {
    pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                dead_letter_topic: dlt.map(str::to_string),
            },
        )),
    }
}

fn processed(id: &str, status: EventStatus) -> pb::SubscribeTopicEventsRequestAlpha1 {
    pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::EventProcessed(
            pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                id: id.into(),
                status: Some(pb::TopicEventResponse {
                    status: status as i32,
                }),
            },
        )),
    }
}

/// Opens a stream with `first` as its first message; returns it without
/// reading anything.
async fn open_raw(
    c: &mut DaprClient<Channel>,
    first: pb::SubscribeTopicEventsRequestAlpha1,
) -> Sub {
    let (tx, rx) = mpsc::channel(1024);
    tx.send(first).await.unwrap();
    let rx = c
        .subscribe_topic_events_alpha1(ReceiverStream::new(rx))
        .await
        .expect("open the subscription stream")
        .into_inner();
    Sub { tx, rx }
}

/// Opens a subscription and waits for its initial response.
async fn subscribe(
    c: &mut DaprClient<Channel>,
    topic: &str,
    metadata: &[(&str, &str)],
    dlt: Option<&str>,
) -> Sub {
    let mut sub = open_raw(c, initial(topic, metadata, dlt)).await;
    let first = tokio::time::timeout(WAIT, sub.rx.message())
        .await
        .expect("initial response in time")
        .expect("initial response")
        .expect("stream open");
    assert!(
        matches!(
            first.subscribe_topic_events_response_type,
            Some(RespType::InitialResponse(_))
        ),
        "{first:?}"
    );
    sub
}

/// The next event on a subscription.
async fn next_event(sub: &mut Sub) -> pb::TopicEventRequest {
    let msg = tokio::time::timeout(WAIT, sub.rx.message())
        .await
        .expect("an event in time")
        .expect("stream healthy")
        .expect("stream open");
    match msg.subscribe_topic_events_response_type {
        Some(RespType::EventMessage(ev)) => ev,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// (key, seq) of an event published by [`entry`] / [`publish`].
fn key_seq(ev: &pb::TopicEventRequest) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_slice(&ev.data).unwrap_or_else(|e| {
        panic!(
            "event data {:?} is not JSON: {e}",
            String::from_utf8_lossy(&ev.data)
        )
    });
    (
        v["key"].as_str().unwrap_or_default().to_string(),
        v["seq"].as_u64().unwrap_or(u64::MAX),
    )
}

fn ext_number(ev: &pb::TopicEventRequest, field: &str) -> Option<f64> {
    match ev.extensions.as_ref()?.fields.get(field)?.kind.as_ref()? {
        prost_types::value::Kind::NumberValue(n) => Some(*n),
        _ => None,
    }
}

fn ext_string(ev: &pb::TopicEventRequest, field: &str) -> Option<String> {
    match ev.extensions.as_ref()?.fields.get(field)?.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn payload(key: &str, seq: u64) -> Vec<u8> {
    serde_json::json!({"key": key, "seq": seq})
        .to_string()
        .into_bytes()
}

async fn publish(c: &mut DaprClient<Channel>, topic: &str, key: &str, seq: u64) {
    c.publish_event(pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: topic.into(),
        data: payload(key, seq),
        data_content_type: "application/json".into(),
        metadata: HashMap::from([("partitionKey".to_string(), key.to_string())]),
    })
    .await
    .unwrap_or_else(|e| panic!("publish {key}/{seq}: {e}"));
}

/// Consumes a subscription, recording then acking SUCCESS, until `stop_after`
/// events (then it disconnects holding its in-flight events unacked) or the
/// stream ends.
fn consumer(
    mut sub: Sub,
    log: Arc<Mutex<Log>>,
    stop_after: Option<usize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok(Some(msg)) = sub.rx.message().await else {
                return n;
            };
            let Some(RespType::EventMessage(ev)) = msg.subscribe_topic_events_response_type else {
                continue;
            };
            if stop_after.is_some_and(|s| n >= s) {
                // Leave with this event (and whatever else is in flight) unacked.
                return n;
            }
            let (key, seq) = key_seq(&ev);
            log.lock().unwrap().record(key, seq);
            n += 1;
            if sub
                .tx
                .send(processed(&ev.id, EventStatus::Success))
                .await
                .is_err()
            {
                return n;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_no_loss_while_a_member_leaves() {
    let weft = Weft::start(WeftOptions::new("orders-app")).await.unwrap();
    let mut c = weft.client().await;
    let (keys, per_key) = (200usize, 100u64);
    let topic = "orders";
    let log = Arc::new(Mutex::new(Log::default()));
    let a = subscribe(&mut c, topic, &[], None).await;
    let b = subscribe(&mut c, topic, &[], None).await;
    let md = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    let streaming: Vec<_> = md
        .subscriptions
        .iter()
        .filter(|s| s.topic == topic && s.r#type == pb::PubsubSubscriptionType::Streaming as i32)
        .collect();
    assert_eq!(
        streaming.len(),
        2,
        "GetMetadata lists both streaming subscriptions: {:?}",
        md.subscriptions
    );

    let task_a = consumer(a, log.clone(), None);
    let task_b = consumer(b, log.clone(), Some(1500));

    // 20 000 messages: seq-major over 200 keys, mostly bulk, every 10th round one by one.
    for seq in 0..per_key {
        if seq % 10 == 0 {
            for k in 0..keys {
                publish(&mut c, topic, &format!("key-{k}"), seq).await;
            }
            continue;
        }
        let entries = (0..keys)
            .map(|k| pb::BulkPublishRequestEntry {
                entry_id: format!("{k}-{seq}"),
                event: payload(&format!("key-{k}"), seq),
                content_type: "application/json".into(),
                metadata: HashMap::from([("partitionKey".to_string(), format!("key-{k}"))]),
            })
            .collect();
        let res = c
            .bulk_publish_event(pb::BulkPublishRequest {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                entries,
                metadata: HashMap::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(res.failed_entries.is_empty(), "{:?}", res.failed_entries);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        {
            let l = log.lock().unwrap();
            assert!(l.errors.is_empty(), "order violated: {:?}", l.errors);
            if l.complete(keys, per_key) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not everything was delivered: {} processed, {} keys seen",
                l.total,
                l.seqs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_processed = task_b.await.unwrap();
    assert_eq!(
        b_processed, 1500,
        "member B processed its share before leaving"
    );
    let total = log.lock().unwrap().total;
    assert!(total >= keys * per_key as usize, "{total}");
    task_a.abort();
}

#[tokio::test]
async fn retry_keeps_order_and_drop_goes_to_the_dead_letter_topic() {
    let weft = Weft::start(WeftOptions::new("retry-app")).await.unwrap();
    let mut c = weft.client().await;
    let mut sub = subscribe(
        &mut c,
        "payments",
        &[("retryBackoff", "50ms")],
        Some("payments-dlt"),
    )
    .await;
    let mut dlt = subscribe(&mut c, "payments-dlt", &[], None).await;
    for seq in 0..6 {
        publish(&mut c, "payments", "acct-1", seq).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let ev = next_event(&mut sub).await;
        let (key, seq) = key_seq(&ev);
        assert_eq!(key, "acct-1");
        let attempt = ext_number(&ev, "attempt").unwrap_or(-1.0) as u32;
        assert_eq!(ext_string(&ev, "partitionKey").as_deref(), Some("acct-1"));
        assert!(ext_number(&ev, "partition").is_some() && ext_number(&ev, "offset").is_some());
        assert_eq!(
            (ev.topic.as_str(), ev.pubsub_name.as_str()),
            ("payments", "pubsub")
        );
        assert_eq!(ev.data_content_type, "application/json");
        assert_eq!(ev.source, "retry-app");
        seen.push((seq, attempt));
        let status = match (seq, attempt) {
            (2, 0) => EventStatus::Retry,
            (4, _) => EventStatus::Drop,
            _ => EventStatus::Success,
        };
        sub.tx.send(processed(&ev.id, status)).await.unwrap();
    }
    assert_eq!(
        seen,
        vec![(0, 0), (1, 0), (2, 0), (2, 1), (3, 0), (4, 0), (5, 0)]
    );

    let dead = next_event(&mut dlt).await;
    assert_eq!(
        key_seq(&dead),
        ("acct-1".to_string(), 4),
        "the dropped message is on the dead-letter topic"
    );
    assert_eq!(
        ext_string(&dead, "topic").as_deref(),
        Some("payments"),
        "its envelope names the original topic"
    );
    dlt.tx
        .send(processed(&dead.id, EventStatus::Success))
        .await
        .unwrap();
}

// === the callback model ===

/// (topic, key, seq * 10 + attempt, path) of each OnTopicEvent call.
type Calls = Arc<Mutex<Vec<(String, String, u64, String)>>>;

#[derive(Clone, Default)]
struct App {
    events: Calls,
}

weft_tests::app_callback!(App {
    async fn on_invoke(
        &self,
        _: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        Err(Status::unimplemented("no invocation"))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::ListTopicSubscriptionsResponse>, Status> {
        let sub = |topic: &str, dlt: &str, path: &str| pb::TopicSubscription {
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            metadata: HashMap::from([("retryBackoff".to_string(), "50ms".to_string())]),
            routes: Some(pb::TopicRoutes {
                rules: Vec::new(),
                default: path.into(),
            }),
            dead_letter_topic: dlt.into(),
            bulk_subscribe: None,
        };
        Ok(Response::new(pb::ListTopicSubscriptionsResponse {
            subscriptions: vec![sub("cb", "cb-dlt", "/orders"), sub("cb-dlt", "", "/dead")],
        }))
    }

    async fn on_topic_event(
        &self,
        r: Request<pb::TopicEventRequest>,
    ) -> Result<Response<pb::TopicEventResponse>, Status> {
        let ev = r.into_inner();
        let (key, seq) = key_seq(&ev);
        let attempt = ext_number(&ev, "attempt").unwrap_or(-1.0) as u64;
        self.events.lock().unwrap().push((
            ev.topic.clone(),
            key,
            seq * 10 + attempt,
            ev.path.clone(),
        ));
        let status = match (ev.topic.as_str(), seq, attempt) {
            ("cb", 1, 0) => EventStatus::Retry,
            ("cb", 2, 0) => return Err(Status::internal("the app failed")), // also a retry
            ("cb", 3, _) => EventStatus::Drop,
            _ => EventStatus::Success,
        };
        Ok(Response::new(pb::TopicEventResponse {
            status: status as i32,
        }))
    }
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_model_delivers_with_retry_and_dead_letter() {
    let app_port = free_port();
    // The runtime starts first: it must wait for the app to come up.
    let weft = Weft::start(
        WeftOptions::new("callback-app")
            .arg("--app-port")
            .arg(&app_port.to_string()),
    )
    .await
    .unwrap();
    let mut c = weft.client().await;
    for seq in 0..5 {
        publish(&mut c, "cb", "k", seq).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let app = App::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
        .await
        .unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::app_callback_server::AppCallbackServer::new(app.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let deadline = tokio::time::Instant::now() + WAIT;
    let expected_cb: Vec<u64> = vec![0, 10, 11, 20, 21, 30, 40];
    loop {
        let events = app.events.lock().unwrap().clone();
        let cb: Vec<u64> = events.iter().filter(|e| e.0 == "cb").map(|e| e.2).collect();
        let dead: Vec<u64> = events
            .iter()
            .filter(|e| e.0 == "cb-dlt")
            .map(|e| e.2)
            .collect();
        if cb.len() >= expected_cb.len() && !dead.is_empty() {
            assert_eq!(cb, expected_cb, "seq*10+attempt in delivery order on 'cb'");
            assert_eq!(
                dead,
                vec![30],
                "the dropped message went to the dead-letter topic"
            );
            assert!(events.iter().all(|e| e.1 == "k"));
            assert!(
                events
                    .iter()
                    .filter(|e| e.0 == "cb")
                    .all(|e| e.3 == "/orders"),
                "{events:?}"
            );
            assert!(
                events
                    .iter()
                    .filter(|e| e.0 == "cb-dlt")
                    .all(|e| e.3 == "/dead"),
                "{events:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "callback deliveries: {events:?}\n{}",
            weft.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let md = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        md.subscriptions.iter().any(|s| s.topic == "cb"
            && s.dead_letter_topic == "cb-dlt"
            && s.r#type == pb::PubsubSubscriptionType::Programmatic as i32),
        "{:?}",
        md.subscriptions
    );
    server.abort();
}

// === bad inputs ===

#[tokio::test]
async fn bad_inputs_get_clear_errors_and_the_runtime_keeps_serving() {
    let weft = Weft::start(WeftOptions::new("bad-app")).await.unwrap();
    let mut c = weft.client().await;

    let err = c
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "nope".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("pub/sub 'nope' is not found; configured pub/subs: pubsub"),
        "{}",
        err.message()
    );

    let err = c
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("topic"), "{}", err.message());

    let err = c
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            data: b"not an envelope".to_vec(),
            data_content_type: "application/cloudevents+json".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    let entry = |id: &str| pb::BulkPublishRequestEntry {
        entry_id: id.into(),
        event: b"x".to_vec(),
        content_type: "text/plain".into(),
        metadata: HashMap::new(),
    };
    let err = c
        .bulk_publish_event(pb::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            entries: vec![entry("1"), entry("1")],
            metadata: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("entries[1].entry_id"),
        "{}",
        err.message()
    );

    // A stream whose first message is not initial_request.
    let mut sub = open_raw(&mut c, processed("x", EventStatus::Success)).await;
    let err = tokio::time::timeout(WAIT, sub.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("initial_request"),
        "{}",
        err.message()
    );

    // Unknown pub/sub and bad metadata in initial_request.
    let mut sub = open_raw(
        &mut c,
        initial("t", &[("maxInFlightPartitions", "lots")], None),
    )
    .await;
    let err = tokio::time::timeout(WAIT, sub.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("maxInFlightPartitions"),
        "{}",
        err.message()
    );

    // An ack for an event id the runtime never sent.
    let mut sub = subscribe(&mut c, "t2", &[], None).await;
    sub.tx
        .send(processed("no-such-event", EventStatus::Success))
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, sub.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("'no-such-event'"),
        "{}",
        err.message()
    );

    // Still serving: publish and consume.
    let mut sub = subscribe(&mut c, "t3", &[], None).await;
    c.publish_event(pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "t3".into(),
        data: b"hello".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.data, b"hello");
    assert_eq!(ev.data_content_type, "text/plain");
    sub.tx
        .send(processed(&ev.id, EventStatus::Success))
        .await
        .unwrap();
    c.get_metadata(pb::GetMetadataRequest {}).await.unwrap();
}

// === the callback model, pipelined ===

/// (key, seq, attempt, partition) of each OnTopicEvent call, in call order.
type PipelinedCalls = Arc<Mutex<Vec<(String, u64, u64, i64)>>>;

/// An app whose subscription asks for 4 events per partition in flight; each
/// call takes 20 ms, so calls of one partition overlap when pipelined.
/// Events are `k<n>` / seq, published round robin over the keys.
#[derive(Clone, Default)]
struct PipelinedApp {
    calls: PipelinedCalls,
    /// Per partition: calls under way now, and the most at once.
    in_flight: Arc<Mutex<HashMap<i64, (usize, usize)>>>,
}

weft_tests::app_callback!(PipelinedApp {
    async fn on_invoke(
        &self,
        _: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        Err(Status::unimplemented("no invocation"))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(pb::ListTopicSubscriptionsResponse {
            subscriptions: vec![pb::TopicSubscription {
                pubsub_name: "pubsub".into(),
                topic: "pcb".into(),
                metadata: HashMap::from([
                    ("maxInFlightPerPartition".to_string(), "4".to_string()),
                    ("retryBackoff".to_string(), "50ms".to_string()),
                ]),
                routes: None,
                dead_letter_topic: String::new(),
                bulk_subscribe: None,
            }],
        }))
    }

    async fn on_topic_event(
        &self,
        r: Request<pb::TopicEventRequest>,
    ) -> Result<Response<pb::TopicEventResponse>, Status> {
        let ev = r.into_inner();
        let (key, seq) = key_seq(&ev);
        let attempt = ext_number(&ev, "attempt").unwrap_or(-1.0) as u64;
        let partition = ext_number(&ev, "partition").unwrap_or(-1.0) as i64;
        self.calls
            .lock()
            .unwrap()
            .push((key.clone(), seq, attempt, partition));
        {
            let mut f = self.in_flight.lock().unwrap();
            let e = f.entry(partition).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.in_flight
            .lock()
            .unwrap()
            .entry(partition)
            .or_default()
            .0 -= 1;
        let status = match (key.as_str(), seq, attempt) {
            ("k0", 3, 0) => EventStatus::Retry,
            _ => EventStatus::Success,
        };
        Ok(Response::new(pb::TopicEventResponse {
            status: status as i32,
        }))
    }
});

/// The callback model with `maxInFlightPerPartition: 4`: up to 4 calls of
/// one partition run at once. Concurrent unary calls carry no order among
/// themselves (the runtime starts them in partition order, but they may
/// reach the app's handlers in any order — which is why the default stays
/// 1), so this checks what pipelining keeps in this model: nothing is lost,
/// at most 4 calls of a partition overlap, and commits follow the partition
/// order — a RETRY in the middle of a window calls that event again and
/// then every later event of its partition that was already out, never an
/// earlier one, and no other partition repeats anything.
#[tokio::test(flavor = "current_thread")]
async fn callback_model_pipelines_with_ordered_commits() {
    let app_port = free_port();
    let weft = Weft::start(
        WeftOptions::new("pipelined-callback-app")
            .arg("--app-port")
            .arg(&app_port.to_string()),
    )
    .await
    .unwrap();
    let mut c = weft.client().await;
    let (keys, per_key) = (4, 12u64);
    for seq in 0..per_key {
        for k in 0..keys {
            publish(&mut c, "pcb", &format!("k{k}"), seq).await;
        }
    }
    let app = PipelinedApp::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
        .await
        .unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::app_callback_server::AppCallbackServer::new(app.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let everything = |calls: &[(String, u64, u64, i64)]| {
        (0..keys).all(|k| {
            (0..per_key).all(|s| {
                calls.iter().any(|c| {
                    c.0 == format!("k{k}") && c.1 == s && (c.0 != "k0" || c.1 != 3 || c.2 > 0)
                })
            })
        })
    };
    let calls = loop {
        let calls = app.calls.lock().unwrap().clone();
        if everything(&calls) {
            // Repeated calls would come right behind; give them a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            break app.calls.lock().unwrap().clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "callback deliveries: {calls:?}\n{}",
            weft.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.abort();

    // The offset of every (key, seq), and how often each was called.
    let mut times: HashMap<(String, u64), (usize, i64)> = HashMap::new();
    for (k, s, _, p) in &calls {
        times.entry((k.clone(), *s)).or_insert((0, *p)).0 += 1;
    }
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.0 == "k0" && c.1 == 3)
            .map(|c| c.2)
            .collect::<Vec<_>>(),
        vec![0, 1],
        "the retried event is called twice, attempts 0 and 1"
    );
    // Positions of the events of each partition in publish order.
    let hot_partition = times[&("k0".to_string(), 3)].1;
    let on_hot: Vec<(String, u64)> = (0..per_key)
        .flat_map(|s| (0..keys).map(move |k| (format!("k{k}"), s)))
        .filter(|m| times[m].1 == hot_partition)
        .collect();
    let at = on_hot
        .iter()
        .position(|m| *m == ("k0".to_string(), 3))
        .expect("k0/3 on its partition");
    let mut repeated_after = 0;
    for (i, m) in on_hot.iter().enumerate() {
        let n = times[m].0;
        if i < at {
            assert_eq!(n, 1, "{m:?} comes before the retried event: called once");
        } else if i > at {
            assert!(n <= 2, "{m:?} called {n} times");
            if n == 2 {
                assert!(
                    i - at <= 3,
                    "{m:?} is repeated but was not in the window (4) with the retried event"
                );
                repeated_after += 1;
            }
        }
    }
    for (m, (n, p)) in &times {
        if *p != hot_partition {
            assert_eq!(*n, 1, "{m:?} is on another partition: called once");
        }
    }
    let most = app
        .in_flight
        .lock()
        .unwrap()
        .values()
        .map(|e| e.1)
        .max()
        .unwrap_or(0);
    assert!(
        (2..=4).contains(&most),
        "calls of one partition overlap, at most 4 at once: {most}"
    );
    eprintln!(
        "pipelined callback: {} calls for {} events, up to {most} of a partition at once; {repeated_after} events after the retried one were out and called again",
        calls.len(),
        keys * per_key as usize
    );
}

/// `GET /v1.0/metadata` and GetMetadata are one view: the same id,
/// version, components with capabilities, extended metadata and active
/// subscriptions (with their metadata and dead-letter topic).
#[tokio::test]
async fn http_and_grpc_metadata_show_the_same_view() {
    let weft = Weft::start(WeftOptions::new("meta-view")).await.unwrap();
    let mut c = weft.client().await;
    c.set_metadata(pb::SetMetadataRequest {
        key: "team".into(),
        value: "payments".into(),
    })
    .await
    .unwrap();
    let _sub = subscribe(
        &mut c,
        "orders",
        &[("consumerGroup", "g1")],
        Some("orders-dlt"),
    )
    .await;
    let grpc = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    let (status, body) = weft_tests::http_get(weft.http_port, "/v1.0/metadata", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let http: serde_json::Value = serde_json::from_str(&body).unwrap();

    assert_eq!(http["id"], grpc.id);
    assert_eq!(http["runtimeVersion"], grpc.runtime_version);
    let mut from_grpc: Vec<serde_json::Value> = grpc
        .registered_components
        .iter()
        .map(|c| {
            serde_json::json!({"name": c.name, "type": c.r#type, "version": c.version, "capabilities": c.capabilities})
        })
        .collect();
    let mut from_http = http["components"].as_array().unwrap().clone();
    let by_name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_string();
    from_grpc.sort_by_key(by_name);
    from_http.sort_by_key(by_name);
    assert_eq!(from_http, from_grpc);
    assert_eq!(http["extended"]["team"], "payments");
    assert_eq!(
        http["extended"].as_object().unwrap().len(),
        grpc.extended_metadata.len()
    );
    assert_eq!(grpc.subscriptions.len(), 1, "{grpc:?}");
    let s = &grpc.subscriptions[0];
    let h = &http["subscriptions"][0];
    assert_eq!(http["subscriptions"].as_array().unwrap().len(), 1, "{http}");
    assert_eq!(h["pubsubname"], s.pubsub_name);
    assert_eq!(h["topic"], "orders");
    assert_eq!(h["deadLetterTopic"], "orders-dlt");
    assert_eq!(h["metadata"]["consumerGroup"], "g1");
    assert_eq!(h["type"], "STREAMING");
    assert_eq!(s.metadata["consumerGroup"], "g1");
}

/// A FlowControl rate rule on a subscription paces its deliveries: every
/// event arrives, in order, at about the rule's rate; a topic the rule
/// does not name is not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_rule_slows_a_subscription_and_drops_nothing() {
    let res = tempfile::tempdir().unwrap();
    weft_tests::write_component(res.path(), "pubsub", "pubsub.embedded", &[]);
    std::fs::write(
        res.path().join("flow.yaml"),
        "apiVersion: weft.dev/v1alpha1\nkind: FlowControl\nmetadata: {name: pace}\nspec:\n  rules:\n    - name: paced-deliveries\n      subscription: {pubsub: pubsub, topic: paced}\n      qps: 20\n      burst: 1\n",
    )
    .unwrap();
    let w = Weft::start(WeftOptions::new("paced").resources(res.path()))
        .await
        .expect("start");
    let mut c = w.client().await;
    let n = 60;
    let mut sub = subscribe(&mut c, "paced", &[], None).await;
    let mut free = subscribe(&mut c, "free", &[], None).await;
    for seq in 0..n {
        publish(&mut c, "paced", "k", seq).await;
        publish(&mut c, "free", "k", seq).await;
    }
    // The other topic: all at once.
    for seq in 0..n {
        let ev = next_event(&mut free).await;
        assert_eq!(key_seq(&ev), ("k".to_string(), seq));
        free.tx
            .send(processed(&ev.id, EventStatus::Success))
            .await
            .unwrap();
    }
    let mut first = None;
    for seq in 0..n {
        let ev = next_event(&mut sub).await;
        first.get_or_insert_with(std::time::Instant::now);
        assert_eq!(key_seq(&ev), ("k".to_string(), seq), "in order, none lost");
        sub.tx
            .send(processed(&ev.id, EventStatus::Success))
            .await
            .unwrap();
    }
    let rate = (n - 1) as f64 / first.unwrap().elapsed().as_secs_f64();
    eprintln!("paced subscription: {rate:.1} events/s against 20/s");
    assert!(rate <= 22.0, "{rate:.1} events/s, the rule says 20");
}
