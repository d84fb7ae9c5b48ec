//! Pub/sub over the shared-memory transport of a real `weft` process:
//! PublishEvent and BulkPublishEvent(Alpha1) into the embedded `pubsub`
//! component, SubscribeTopicEventsAlpha1 as a bidirectional call (method 12,
//! acks as MORE records) with SUCCESS and RETRY, a subscriber whose session
//! dies handing its unacked events to the other member of its group, and
//! the MORE rules (unknown call ignored, garbage or a non-bidi method ends
//! only that session).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use weft_proto::runtime as pb;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as EventStatus;
use weft_shm::method as m;
use weft_shm::{code, Client, ClientOptions, IdleConfig, Status};
use weft_tests::order::Log;
use weft_tests::{Weft, WeftOptions};

/// Bound for any single expected event (a failure, never a speed check).
const WAIT: Duration = Duration::from_secs(60);

struct Env {
    rt: tokio::runtime::Runtime,
    weft: Weft,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    app: String,
}

/// A runtime on its embedded defaults (so with the embedded `pubsub`).
fn start(app: &str) -> Env {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seg_dir = dir.path().join("segments");
    std::fs::create_dir_all(&seg_dir).unwrap();
    let socket = dir.path().join("shm.sock");
    let opts = WeftOptions::new(app)
        .arg("--shm-socket")
        .arg(socket.to_str().unwrap())
        .arg("--shm-dir")
        .arg(seg_dir.to_str().unwrap());
    let weft = rt.block_on(Weft::start(opts)).unwrap();
    Env {
        rt,
        weft,
        _dir: dir,
        socket,
        app: app.to_string(),
    }
}

impl Env {
    fn client(&self) -> Client {
        let mut o = ClientOptions::new(&self.app);
        o.call_timeout = Duration::from_secs(20);
        o.reconnect = false;
        o.idle = IdleConfig::SLEEP;
        Client::connect(&self.socket, o).unwrap()
    }
}

fn payload(key: &str, seq: u64) -> Vec<u8> {
    serde_json::json!({"key": key, "seq": seq})
        .to_string()
        .into_bytes()
}

fn publish_req(topic: &str, key: &str, seq: u64) -> pb::PublishEventRequest {
    pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: topic.into(),
        data: payload(key, seq),
        data_content_type: "application/json".into(),
        metadata: HashMap::from([("partitionKey".to_string(), key.to_string())]),
    }
}

fn publish(c: &mut Client, topic: &str, key: &str, seq: u64) {
    c.unary::<_, ()>(m::PUBLISH_EVENT, &publish_req(topic, key, seq))
        .unwrap_or_else(|e| panic!("publish {key}/{seq}: {e}"));
}

/// Publishes `(key, seq)` pairs with one BulkPublishEvent call (`method`:
/// the stable or the Alpha1 id).
fn bulk_publish(c: &mut Client, method: u32, topic: &str, items: &[(String, u64)]) {
    let entries = items
        .iter()
        .map(|(k, s)| pb::BulkPublishRequestEntry {
            entry_id: format!("{k}-{s}"),
            event: payload(k, *s),
            content_type: "application/json".into(),
            metadata: HashMap::from([("partitionKey".to_string(), k.clone())]),
        })
        .collect();
    let res: pb::BulkPublishResponse = c
        .unary(
            method,
            &pb::BulkPublishRequest {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                entries,
                metadata: HashMap::new(),
            },
        )
        .unwrap();
    assert!(res.failed_entries.is_empty(), "{:?}", res.failed_entries);
}

fn initial(topic: &str, metadata: &[(&str, &str)]) -> pb::SubscribeTopicEventsRequestAlpha1 {
    pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                dead_letter_topic: None,
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

/// A SubscribeTopicEventsAlpha1 call over shared memory.
struct ShmSub {
    c: Client,
    corr: u64,
}

impl ShmSub {
    /// Opens the call and waits for its initial response.
    fn open(mut c: Client, topic: &str, metadata: &[(&str, &str)]) -> Self {
        let corr = c
            .open_stream(
                m::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
                &initial(topic, metadata).encode_to_vec(),
            )
            .unwrap();
        let mut s = Self { c, corr };
        let first = s.next(WAIT).expect("initial response");
        assert!(
            matches!(
                first.subscribe_topic_events_response_type,
                Some(RespType::InitialResponse(_))
            ),
            "{first:?}"
        );
        s
    }

    /// The next message; `None` when nothing came within `within`.
    fn next(&mut self, within: Duration) -> Option<pb::SubscribeTopicEventsResponseAlpha1> {
        match self.c.next_item(self.corr, within) {
            Ok(Some(body)) => {
                Some(pb::SubscribeTopicEventsResponseAlpha1::decode(&body[..]).unwrap())
            }
            Ok(None) => panic!("the subscription stream ended"),
            Err(e) if e.code == code::DEADLINE_EXCEEDED => None,
            Err(e) => panic!("the subscription stream failed: {e}"),
        }
    }

    fn next_event(&mut self, within: Duration) -> Option<pb::TopicEventRequest> {
        let msg = self.next(within)?;
        match msg.subscribe_topic_events_response_type {
            Some(RespType::EventMessage(ev)) => Some(ev),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn ack(&mut self, id: &str, status: EventStatus) {
        self.c
            .send_more(
                m::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
                self.corr,
                &processed(id, status).encode_to_vec(),
            )
            .unwrap();
    }
}

fn key_seq(ev: &pb::TopicEventRequest) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_slice(&ev.data).unwrap();
    (
        v["key"].as_str().unwrap_or_default().to_string(),
        v["seq"].as_u64().unwrap_or(u64::MAX),
    )
}

fn attempt(ev: &pb::TopicEventRequest) -> u64 {
    match ev
        .extensions
        .as_ref()
        .and_then(|e| e.fields.get("attempt"))
        .and_then(|v| v.kind.as_ref())
    {
        Some(prost_types::value::Kind::NumberValue(n)) => *n as u64,
        other => panic!("no attempt extension: {other:?}"),
    }
}

fn streaming_subscriptions(c: &mut Client, topic: &str) -> usize {
    let md: pb::GetMetadataResponse = c
        .unary(m::GET_METADATA, &pb::GetMetadataRequest {})
        .unwrap();
    md.subscriptions
        .iter()
        .filter(|s| s.topic == topic && s.r#type == pb::PubsubSubscriptionType::Streaming as i32)
        .count()
}

#[test]
fn publish_and_subscribe_with_success_and_retry_over_shm() {
    let env = start("shm-pubsub");
    let mut publisher = env.client();
    let topic = "orders";
    let mut sub = ShmSub::open(env.client(), topic, &[("retryBackoff", "50ms")]);
    assert_eq!(streaming_subscriptions(&mut publisher, topic), 1);

    // seq 0..2 one by one, 2..4 with BulkPublishEvent, 4..6 with the Alpha1 id.
    let keys = ["k1", "k2", "k3"];
    for seq in 0..2 {
        for k in keys {
            publish(&mut publisher, topic, k, seq);
        }
    }
    for (method, seqs) in [
        (m::BULK_PUBLISH_EVENT, 2..4u64),
        (m::BULK_PUBLISH_EVENT_ALPHA1, 4..6u64),
    ] {
        let items: Vec<_> = seqs
            .flat_map(|s| keys.iter().map(move |k| (k.to_string(), s)))
            .collect();
        bulk_publish(&mut publisher, method, topic, &items);
    }

    // k1/2 and k2/4 are retried once; everything else is acked.
    let mut seen: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let expected = 3 * 6 + 2;
    let mut n = 0;
    while n < expected {
        let ev = sub.next_event(WAIT).expect("an event in time");
        let (key, seq) = key_seq(&ev);
        let a = attempt(&ev);
        assert_eq!(ev.topic, topic);
        assert_eq!(ev.pubsub_name, "pubsub");
        assert_eq!(ev.source, "shm-pubsub");
        seen.entry(key.clone()).or_default().push((seq, a));
        let status = match (key.as_str(), seq, a) {
            ("k1", 2, 0) | ("k2", 4, 0) => EventStatus::Retry,
            _ => EventStatus::Success,
        };
        sub.ack(&ev.id, status);
        n += 1;
    }
    let plain: Vec<(u64, u64)> = (0..6).map(|s| (s, 0)).collect();
    let with_retry = |r: u64| {
        let mut v = plain.clone();
        v.insert(r as usize + 1, (r, 1));
        v
    };
    assert_eq!(
        seen["k1"],
        with_retry(2),
        "RETRY redelivers before later events"
    );
    assert_eq!(
        seen["k2"],
        with_retry(4),
        "RETRY redelivers before later events"
    );
    assert_eq!(seen["k3"], plain);
    // Nothing more: every event was acked.
    assert!(sub.next_event(Duration::from_millis(300)).is_none());

    // Same errors as over gRPC.
    let bad = pb::PublishEventRequest {
        pubsub_name: "nope".into(),
        ..publish_req(topic, "k1", 0)
    };
    let shm_err = publisher
        .unary::<_, ()>(m::PUBLISH_EVENT, &bad)
        .unwrap_err();
    let grpc_err = env.rt.block_on(async {
        let mut g = env.weft.client().await;
        g.publish_event(bad.clone()).await.unwrap_err()
    });
    assert_eq!(shm_err.code, grpc_err.code() as u32);
    assert_eq!(shm_err.message, grpc_err.message());

    // MORE for a call that does not exist is ignored.
    sub.c
        .send_more(
            m::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
            987_654,
            &processed("nothing", EventStatus::Success).encode_to_vec(),
        )
        .unwrap();
    assert_eq!(sub.c.call(m::WEFT_ECHO, b"alive").unwrap(), b"alive");

    // CANCEL ends the subscription; a late ack for it is ignored too.
    let corr = sub.corr;
    sub.c.cancel(corr).unwrap();
    sub.c
        .send_more(
            m::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
            corr,
            &processed("late", EventStatus::Success).encode_to_vec(),
        )
        .unwrap();
    assert_eq!(sub.c.call(m::WEFT_ECHO, b"still").unwrap(), b"still");
    let deadline = Instant::now() + Duration::from_secs(10);
    while streaming_subscriptions(&mut publisher, topic) != 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled subscription is still listed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same session can subscribe again.
    let mut again = ShmSub::open(sub.c, topic, &[]);
    publish(&mut publisher, topic, "k9", 0);
    let ev = again
        .next_event(WAIT)
        .expect("an event after resubscribing");
    assert_eq!(key_seq(&ev), ("k9".to_string(), 0));
    again.ack(&ev.id, EventStatus::Success);
}

#[test]
fn a_dead_session_hands_its_unacked_events_to_the_group() {
    let env = start("shm-group");
    let mut publisher = env.client();
    let topic = "handoff";
    let group = [("consumerGroup", "shm-workers"), ("retryBackoff", "50ms")];
    let mut a = ShmSub::open(env.client(), topic, &group);
    let mut b = ShmSub::open(env.client(), topic, &group);
    assert_eq!(streaming_subscriptions(&mut publisher, topic), 2);

    let (keys, per_key) = (40usize, 25u64);
    let log = Arc::new(Mutex::new(Log::default()));
    let stop_after = 60;

    // B acks `stop_after` events, then its session dies holding the next
    // one (and whatever else it has in flight) unacked.
    let b_log = log.clone();
    let member_b = std::thread::spawn(move || {
        let mut acked = 0;
        loop {
            let Some(ev) = b.next_event(WAIT) else {
                panic!("member B got only {acked} events");
            };
            if acked == stop_after {
                let held = key_seq(&ev);
                drop(b); // closes the session's socket: the runtime ends it
                return held;
            }
            let (key, seq) = key_seq(&ev);
            b_log.lock().unwrap().record(key, seq);
            b.ack(&ev.id, EventStatus::Success);
            acked += 1;
        }
    });

    for seq in 0..per_key {
        let items: Vec<_> = (0..keys).map(|k| (format!("key-{k}"), seq)).collect();
        if seq % 5 == 0 {
            for (k, s) in &items {
                publish(&mut publisher, topic, k, *s);
            }
        } else {
            bulk_publish(&mut publisher, m::BULK_PUBLISH_EVENT, topic, &items);
        }
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut a_events = 0usize;
    let mut a_after_b: Vec<(String, u64)> = Vec::new();
    loop {
        {
            let l = log.lock().unwrap();
            assert!(l.errors.is_empty(), "order violated: {:?}", l.errors);
            if l.complete(keys, per_key) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not everything was delivered: {} processed, {} keys seen",
                l.total,
                l.seqs.len()
            );
        }
        let Some(ev) = a.next_event(Duration::from_millis(200)) else {
            continue;
        };
        let (key, seq) = key_seq(&ev);
        if member_b.is_finished() {
            a_after_b.push((key.clone(), seq));
        }
        log.lock().unwrap().record(key, seq);
        a.ack(&ev.id, EventStatus::Success);
        a_events += 1;
    }
    let held = member_b.join().unwrap();
    let l = log.lock().unwrap();
    assert!(l.errors.is_empty(), "order violated: {:?}", l.errors);
    assert!(l.total >= keys * per_key as usize, "{}", l.total);
    assert!(a_events > 0);
    assert!(
        l.seqs[&held.0].contains(&held.1),
        "the event B held unacked ({held:?}) reached A"
    );
    drop(l);
    // B's subscription left the group with its session.
    let deadline = Instant::now() + Duration::from_secs(10);
    while streaming_subscriptions(&mut publisher, topic) != 1 {
        assert!(
            Instant::now() < deadline,
            "B's subscription is still listed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_goodbye(c: &mut Client) -> Status {
    c.wait_for_goodbye(Duration::from_secs(10))
        .expect("session not closed")
}

#[test]
fn bad_more_records_close_only_that_session() {
    let env = start("shm-more");
    let mut publisher = env.client();
    let topic = "more";
    let mut bystander = ShmSub::open(env.client(), topic, &[]);

    // Undecodable body on an open subscription.
    let mut victim = ShmSub::open(env.client(), topic, &[("consumerGroup", "victims")]);
    victim
        .c
        .send_more(
            m::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
            victim.corr,
            &[0xff, 0xff, 0xff, 0xff],
        )
        .unwrap();
    let reason = wait_goodbye(&mut victim.c);
    assert_eq!(reason.code, code::INVALID_ARGUMENT, "{reason}");
    assert!(
        reason
            .message
            .contains("cannot decode the SubscribeTopicEventsAlpha1 message (MORE)"),
        "{reason}"
    );
    assert!(victim.c.call(m::WEFT_ECHO, b"x").is_err());

    // MORE on a method that is not bidirectional.
    let mut c = env.client();
    c.send_more(m::GET_STATE, 5, &[]).unwrap();
    let reason = wait_goodbye(&mut c);
    assert_eq!(reason.code, code::INVALID_ARGUMENT, "{reason}");
    assert!(
        reason
            .message
            .contains("GetState is not a bidirectional method"),
        "{reason}"
    );

    // MORE on an unknown correlation id (valid body) is ignored.
    let mut c = env.client();
    c.send_more(
        m::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
        4242,
        &processed("x", EventStatus::Success).encode_to_vec(),
    )
    .unwrap();
    assert_eq!(c.call(m::WEFT_ECHO, b"ok").unwrap(), b"ok");

    // The bystander's subscription keeps working.
    publish(&mut publisher, topic, "k", 0);
    let ev = bystander.next_event(WAIT).expect("bystander still served");
    assert_eq!(key_seq(&ev), ("k".to_string(), 0));
    bystander.ack(&ev.id, EventStatus::Success);
    assert!(
        env.weft.logs().contains("protocol error"),
        "{}",
        env.weft.logs()
    );
}

/// Pipelining over shared memory (`maxInFlightPerPartition: 4`, the same
/// block path as gRPC): 4 events of a partition arrive without acks and no
/// more; acks of later ones do not move the window while the first is
/// unacked; a RETRY in the middle of the window redelivers that event and
/// then the rest in order.
#[test]
fn pipelined_window_over_shm() {
    let env = start("shm-pipelined");
    let mut publisher = env.client();
    let topic = "window";
    let mut sub = ShmSub::open(
        env.client(),
        topic,
        &[("maxInFlightPerPartition", "4"), ("retryBackoff", "50ms")],
    );
    let items: Vec<(String, u64)> = (0..10).map(|s| ("w".to_string(), s)).collect();
    bulk_publish(&mut publisher, m::BULK_PUBLISH_EVENT, topic, &items);
    let take = |sub: &mut ShmSub, expected: &[(u64, u64)]| -> Vec<String> {
        let mut ids = Vec::new();
        for want in expected {
            let ev = sub.next_event(WAIT).expect("an event in time");
            assert_eq!((key_seq(&ev).1, attempt(&ev)), *want, "(seq, attempt)");
            ids.push(ev.id);
        }
        ids
    };
    let quiet = Duration::from_millis(300);
    let w = take(&mut sub, &[(0, 0), (1, 0), (2, 0), (3, 0)]);
    assert!(sub.next_event(quiet).is_none(), "the window of 4 is full");
    sub.ack(&w[1], EventStatus::Success);
    sub.ack(&w[2], EventStatus::Success);
    assert!(
        sub.next_event(quiet).is_none(),
        "0 is unacked: the window does not move"
    );
    sub.ack(&w[0], EventStatus::Success);
    let more = take(&mut sub, &[(4, 0), (5, 0), (6, 0)]);
    sub.ack(&more[0], EventStatus::Retry);
    let again = take(&mut sub, &[(4, 1), (5, 0), (6, 0)]);
    // Acks of hand-outs taken back by the RETRY count for nothing.
    sub.ack(&more[1], EventStatus::Success);
    sub.ack(&more[2], EventStatus::Success);
    assert!(sub.next_event(quiet).is_none(), "3 to 6 are out: full");
    for id in [&w[3], &again[0], &again[1], &again[2]] {
        sub.ack(id, EventStatus::Success);
    }
    for id in take(&mut sub, &[(7, 0), (8, 0), (9, 0)]) {
        sub.ack(&id, EventStatus::Success);
    }
    assert!(sub.next_event(quiet).is_none(), "everything was acked");
}
