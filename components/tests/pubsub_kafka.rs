//! `pubsub.kafka` against a real Apache Kafka broker (`scripts/services.sh
//! start kafka`, address in `WEFT_TEST_KAFKA_BROKERS`): the generic
//! conformance suite plus focused ordering, retry, restart and redelivery
//! checks, and the factory and broker-down errors.
//!
//! Built without `WEFT_TEST_KAFKA_BROKERS` the broker tests are reported as
//! ignored with the reason, unless `CI` or `WEFT_REQUIRE_SERVICES` is set:
//! then they run and fail. Every test uses fresh topic and group
//! names. Waits are bounded; nothing asserts on timing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use weft_components::pubsub::{
    self, conformance, Ack, Delivery, Feature, PubSub, PubSubError, PublishRequest,
    SubscribeOptions,
};
use weft_components::{pubsub_conformance, ComponentError, InitContext, Metadata};

/// Bound on any wait for an expected delivery.
const WAIT: Duration = Duration::from_secs(90);
/// How long to wait before concluding nothing more arrives.
const QUIET: Duration = Duration::from_secs(3);

/// The test broker. Tests that call this are ignored when the build saw no
/// broker (build/services.rs), so here it must be set.
fn brokers(test: &str) -> String {
    match std::env::var("WEFT_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "{test}: WEFT_TEST_KAFKA_BROKERS is not set: start Kafka (scripts/services.sh start kafka) and export its environment (scripts/services.sh env)"
        ),
    }
}

fn ctx() -> InitContext {
    InitContext {
        data_dir: std::env::temp_dir(),
        app_id: "kafka-test".to_string(),
    }
}

fn md(fields: &[(&str, &str)]) -> Metadata {
    Metadata::new(
        "kafka-test",
        "pubsub.kafka",
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

async fn component(brokers: &str) -> std::sync::Arc<dyn PubSub> {
    pubsub::create(
        &md(&[("brokers", brokers), ("sessionTimeout", "6s")]),
        &ctx(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn unique(what: &str) -> String {
    format!("kafka-{what}-{}", uuid::Uuid::new_v4().simple())
}

fn options(topic: &str, group: &str) -> SubscribeOptions {
    let mut o = SubscribeOptions::new(topic, group);
    o.retry_backoff = Duration::from_millis(100);
    o.revoke_timeout = Duration::from_secs(3);
    o
}

fn msg(topic: &str, key: &str, seq: u64) -> PublishRequest {
    PublishRequest {
        topic: topic.to_string(),
        key: Some(key.to_string()),
        data: format!("{key}|{seq}").into_bytes(),
        headers: HashMap::from([("seq".to_string(), seq.to_string())]),
    }
}

fn parse(d: &Delivery) -> (String, u64) {
    let text = String::from_utf8_lossy(&d.message.data).into_owned();
    let (k, s) = text
        .split_once('|')
        .unwrap_or_else(|| panic!("bad payload {text:?}"));
    (
        k.to_string(),
        s.parse().unwrap_or_else(|_| panic!("bad payload {text:?}")),
    )
}

async fn publish_all(ps: &dyn PubSub, reqs: Vec<PublishRequest>) {
    for chunk in reqs.chunks(1000) {
        for (i, r) in ps
            .publish_bulk(chunk.to_vec())
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = r {
                panic!("publishing message {i} of a bulk failed: {e}");
            }
        }
    }
}

async fn recv(rx: &mut mpsc::Receiver<Delivery>, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("{what} not delivered within {WAIT:?}"),
    }
}

async fn subscribe(ps: &dyn PubSub, o: SubscribeOptions) -> mpsc::Receiver<Delivery> {
    ps.subscribe(o)
        .await
        .unwrap_or_else(|e| panic!("subscribe failed: {e}"))
}

/// Per key: each processed seq is the previous plus one, or a step back to
/// one already seen (a redelivered suffix); never a gap.
#[derive(Default)]
struct Log {
    seqs: HashMap<String, Vec<u64>>,
    partition_of: HashMap<String, i32>,
    by_member: HashMap<usize, BTreeSet<i32>>,
    errors: Vec<String>,
}

impl Log {
    fn record(&mut self, member: usize, d: &Delivery) {
        let (key, seq) = parse(d);
        self.by_member
            .entry(member)
            .or_default()
            .insert(d.message.partition);
        if let Some(p) = self.partition_of.insert(key.clone(), d.message.partition) {
            if p != d.message.partition {
                self.errors.push(format!(
                    "key {key} on partitions {p} and {}",
                    d.message.partition
                ));
            }
        }
        let seqs = self.seqs.entry(key.clone()).or_default();
        let ok = match seqs.last() {
            None => seq == 0,
            Some(&last) => seq == last + 1 || seq <= last,
        };
        if !ok {
            self.errors.push(format!(
                "key {key}: seq {seq} after {:?}",
                seqs.iter().rev().take(3).collect::<Vec<_>>()
            ));
        }
        seqs.push(seq);
    }

    fn complete(&self, keys: usize, per_key: u64) -> bool {
        self.seqs.len() == keys
            && self
                .seqs
                .values()
                .all(|v| v.iter().max() == Some(&(per_key - 1)))
    }
}

// === the generic suite ===

/// The broker component with the suite's settings for a networked broker.
async fn kafka_fixture() -> (std::sync::Arc<dyn PubSub>, conformance::Settings) {
    let ps = component(&brokers("kafka conformance")).await;
    let mut s = conformance::Settings::networked();
    s.topic_prefix = "kafka-conformance-".into();
    (ps, s)
}

pubsub_conformance!(
    #[cfg_attr(
        weft_no_kafka,
        ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
    )]
    kafka,
    kafka_fixture()
);

// === focused checks ===

/// Two members of one group over an 8-partition topic: every key's messages
/// arrive in publish order, none is missing, the members split the partitions.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_across_eight_partitions_two_members() {
    let b = brokers("per_key_order_across_eight_partitions_two_members");
    let ps = component(&b).await;
    let (topic, group) = (unique("order"), unique("order-group"));
    let a = subscribe(ps.as_ref(), options(&topic, &group)).await;
    let bb = subscribe(ps.as_ref(), options(&topic, &group)).await;
    let (keys, per_key) = (200usize, 20u64);
    let reqs: Vec<_> = (0..per_key)
        .flat_map(|seq| (0..keys).map(move |k| (k, seq)))
        .map(|(k, seq)| msg(&topic, &format!("key-{k}"), seq))
        .collect();
    publish_all(ps.as_ref(), reqs).await;

    let log = std::sync::Arc::new(std::sync::Mutex::new(Log::default()));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    for (member, mut rx) in [a, bb].into_iter().enumerate() {
        let (log, done_tx) = (log.clone(), done_tx.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let complete = {
                    let mut l = log.lock().unwrap();
                    l.record(member, &d);
                    l.complete(keys, per_key)
                };
                d.ack(Ack::Success);
                if complete {
                    let _ = done_tx.try_send(());
                }
            }
        }));
    }
    let finished = tokio::time::timeout(Duration::from_secs(180), done_rx.recv())
        .await
        .is_ok();
    for t in &tasks {
        t.abort();
    }
    {
        let l = log.lock().unwrap();
        let total: usize = l.seqs.values().map(Vec::len).sum();
        assert!(
            finished,
            "not complete within bound: {total} processed, errors {:?}",
            l.errors
        );
        assert!(l.errors.is_empty(), "ordering errors: {:?}", l.errors);
        let partitions: BTreeSet<i32> = l.partition_of.values().copied().collect();
        assert_eq!(
            partitions.len(),
            8,
            "the auto-created topic has 8 partitions: {partitions:?}"
        );
        let (pa, pb) = (
            l.by_member.get(&0).cloned().unwrap_or_default(),
            l.by_member.get(&1).cloned().unwrap_or_default(),
        );
        assert!(
            pa.is_disjoint(&pb),
            "a partition has one owner: {pa:?} / {pb:?}"
        );
    }
    ps.close().await;
}

/// `Retry` redelivers the same message (attempt + 1) before later ones of its
/// partition, and a held message blocks only its own partition.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_keeps_order_other_partitions_continue() {
    let b = brokers("retry_keeps_order_other_partitions_continue");
    let ps = component(&b).await;
    let (topic, group) = (unique("retry"), unique("retry-group"));
    let mut rx = subscribe(ps.as_ref(), options(&topic, &group)).await;
    // 16 keys: they land on several of the 8 partitions.
    let keys: Vec<String> = (0..16).map(|k| format!("key-{k}")).collect();
    let reqs: Vec<_> = (0..3)
        .flat_map(|seq| keys.iter().map(move |k| (k.clone(), seq)))
        .map(|(k, s)| msg(&topic, &k, s))
        .collect();
    publish_all(ps.as_ref(), reqs).await;

    // Hold the first delivery; other partitions must still deliver, its own must not.
    let held = recv(&mut rx, "first message").await;
    let (held_key, held_seq) = parse(&held);
    assert_eq!(held_seq, 0);
    let held_partition = held.message.partition;
    let mut others = 0;
    while let Ok(Some(d)) = tokio::time::timeout(QUIET, rx.recv()).await {
        assert_ne!(
            d.message.partition, held_partition,
            "partition {held_partition} delivered past an unacked message"
        );
        others += 1;
        d.ack(Ack::Success);
    }
    assert!(
        others > 0,
        "no other partition delivered while one message was held"
    );

    // Retry it twice: the same message comes back with attempt 1, then 2.
    let held_offset = held.message.offset;
    held.ack(Ack::Retry);
    for attempt in 1..=2u32 {
        let d = recv(&mut rx, "the retried message").await;
        assert_eq!(
            (d.message.partition, d.message.offset, d.message.attempt),
            (held_partition, held_offset, attempt)
        );
        assert_eq!(parse(&d), (held_key.clone(), 0));
        if attempt == 1 {
            d.ack(Ack::Retry);
        } else {
            d.ack(Ack::Success);
        }
    }
    // The rest of that partition follows in order.
    let mut seen: HashMap<String, u64> = HashMap::from([(held_key.clone(), 0)]);
    while let Ok(Some(d)) = tokio::time::timeout(QUIET, rx.recv()).await {
        assert_eq!(d.message.partition, held_partition);
        assert_eq!(d.message.attempt, 0);
        let (k, s) = parse(&d);
        let prev = seen.insert(k.clone(), s);
        assert_eq!(prev.map(|p| p + 1).unwrap_or(0), s, "key {k} out of order");
        d.ack(Ack::Success);
    }
    assert_eq!(
        seen.get(&held_key),
        Some(&2),
        "the held key's later messages arrived"
    );
    ps.close().await;
}

/// A restarted component (new clients, same group) resumes at the first
/// message that was not acked.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_resumes_from_committed_offsets() {
    let b = brokers("restart_resumes_from_committed_offsets");
    let (topic, group) = (unique("restart"), unique("restart-group"));
    let first = component(&b).await;
    let mut rx = subscribe(first.as_ref(), options(&topic, &group)).await;
    publish_all(
        first.as_ref(),
        (0..10).map(|i| msg(&topic, "k", i)).collect(),
    )
    .await;
    for i in 0..6 {
        let d = recv(&mut rx, &format!("message {i}")).await;
        assert_eq!(parse(&d).1, i);
        if i < 5 {
            d.ack(Ack::Success);
        } // message 5 is dropped unacked
    }
    drop(rx);
    first.close().await;
    drop(first);

    let second = component(&b).await;
    let mut rx = subscribe(second.as_ref(), options(&topic, &group)).await;
    for i in 5..10 {
        let d = recv(&mut rx, &format!("message {i} after the restart")).await;
        assert_eq!(
            parse(&d).1,
            i,
            "resumes at the first unacked message, in order"
        );
        d.ack(Ack::Success);
    }
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("unexpected extra delivery {:?}", parse(&d));
    }
    second.close().await;
}

/// Messages a member held unacked when it left go to the other member, each
/// key still in order.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacked_redelivered_after_subscription_dropped() {
    let b = brokers("unacked_redelivered_after_subscription_dropped");
    let ps = component(&b).await;
    let (topic, group) = (unique("handover"), unique("handover-group"));
    let mut a = subscribe(ps.as_ref(), options(&topic, &group)).await;
    let (keys, per_key) = (32usize, 10u64);
    let reqs: Vec<_> = (0..per_key)
        .flat_map(|seq| (0..keys).map(move |k| (k, seq)))
        .map(|(k, seq)| msg(&topic, &format!("key-{k}"), seq))
        .collect();
    publish_all(ps.as_ref(), reqs).await;

    // A owns everything: ack 30, then hold a few and leave.
    let mut log = Log::default();
    for i in 0..30 {
        let d = recv(&mut a, &format!("member A's message {i}")).await;
        log.record(0, &d);
        d.ack(Ack::Success);
    }
    let mut held = Vec::new();
    while held.len() < 4 {
        match tokio::time::timeout(QUIET, a.recv()).await {
            Ok(Some(d)) => held.push(d),
            _ => break,
        }
    }
    assert!(!held.is_empty(), "member A got nothing to hold");
    let held_ids: Vec<(i32, i64)> = held
        .iter()
        .map(|d| (d.message.partition, d.message.offset))
        .collect();
    drop(a);
    drop(held);

    let mut bb = subscribe(ps.as_ref(), options(&topic, &group)).await;
    let mut redelivered = BTreeSet::new();
    while !log.complete(keys, per_key) {
        let d = recv(&mut bb, "member B's next message").await;
        if held_ids.contains(&(d.message.partition, d.message.offset)) {
            redelivered.insert((d.message.partition, d.message.offset));
        }
        log.record(1, &d);
        d.ack(Ack::Success);
    }
    assert!(log.errors.is_empty(), "ordering errors: {:?}", log.errors);
    assert_eq!(
        redelivered.len(),
        held_ids.len(),
        "every held message redelivered: {held_ids:?} vs {redelivered:?}"
    );
    ps.close().await;
}

// === errors ===

#[tokio::test]
async fn missing_brokers_names_the_field() {
    let err: ComponentError = match pubsub::create(&md(&[]), &ctx()).await {
        Ok(_) => panic!("a kafka component without brokers was accepted"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, ComponentError::MissingField { .. }), "{text}");
    assert!(
        text.contains("'brokers'") && text.contains("kafka-test"),
        "{text}"
    );

    let err = match pubsub::create(
        &md(&[("brokers", "127.0.0.1:1"), ("initialOffset", "middle")]),
        &ctx(),
    )
    .await
    {
        Ok(_) => panic!("a bad initialOffset was accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("'initialOffset'"), "{err}");
    let err = match pubsub::create(
        &md(&[("brokers", "127.0.0.1:1"), ("partitions", "0")]),
        &ctx(),
    )
    .await
    {
        Ok(_) => panic!("zero partitions accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("'partitions'"), "{err}");
}

#[tokio::test]
async fn broker_down_is_unavailable() {
    let ps = pubsub::create(
        &md(&[("brokers", "127.0.0.1:1"), ("publishTimeout", "2s")]),
        &ctx(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(ps.features().contains(&Feature::DistributedGroups));
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        ps.publish(msg("kafka-down", "k", 0)),
    )
    .await
    .expect("publish to a dead broker returns within its bound");
    match r {
        Err(PubSubError::Unavailable(text)) => {
            assert!(
                text.contains("127.0.0.1:1") && text.contains("kafka-down"),
                "{text}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        ps.subscribe(options("kafka-down", "g")),
    )
    .await
    .expect("subscribe to a dead broker returns within its bound");
    assert!(
        matches!(r, Err(PubSubError::Unavailable(_))),
        "{:?}",
        r.err()
    );
    let r = ps.publish(msg("", "k", 0)).await;
    assert!(matches!(r, Err(PubSubError::InvalidRequest(_))), "{r:?}");
    ps.close().await;
}
