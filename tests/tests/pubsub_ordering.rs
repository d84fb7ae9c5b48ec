//! Partition-ordered consumer groups end to end (issue 4, item 8): real
//! `weft` processes on real Apache Kafka (`WEFT_TEST_KAFKA_BROKERS`, from
//! `scripts/services.sh env`) and on the embedded broker. This test is the
//! app: it holds streaming subscriptions (`SubscribeTopicEventsAlpha1`) and
//! records every delivery before it acks it.
//!
//! Payloads are `"<key>:<seq>"` (text/plain, in the default CloudEvents
//! envelope), published with BulkPublishEvent and `partitionKey =
//! key-<key>`; `seq` counts each key's messages in publish order.
//!
//! The ordering check runs over all deliveries of a test in the order the app
//! observed them (across every subscriber and runtime): per key it keeps
//! `next`, the next sequence number never seen. A delivery with `seq == next`
//! advances it; `seq < next` is a redelivery of a message the app already saw
//! (allowed: at-least-once, e.g. after a kill or a rebalance — it may repeat
//! a suffix); `seq > next` means a message was skipped or reordered, which
//! fails the test. At the end every key must have reached its count. This is
//! sound because the app records a delivery before acking it, a stream
//! delivers each partition in offset order, and a partition's committed
//! position — where its next owner starts — never passes a message that was
//! not acked (so every message before it is already in the record). That
//! holds strict (one message of a partition out at a time) and pipelined
//! (`maxInFlightPerPartition`: several out at once, commits over the acked
//! prefix only); the tests run both ways.
//!
//! Kafka tests are reported as ignored, with the reason, when the tests are
//! built without `WEFT_TEST_KAFKA_BROKERS`, and run (and fail) when `CI` or
//! `WEFT_REQUIRE_SERVICES` is set. The tests of this file run one at a time (each
//! starts several runtimes). No test asserts on timings; every wait is
//! bounded.

// The SERIAL guard is held for a whole test on purpose (each test has its own
// tokio runtime on its own thread; the guard only keeps the tests apart).
#![allow(clippy::await_holding_lock)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost_types::value::Kind;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as Status;
use weft_tests::{write_component, Weft, WeftOptions};

type Client = DaprClient<Channel>;

// === environment ===

static SERIAL: Mutex<()> = Mutex::new(());

/// The tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kafka for tests. The Kafka tests are ignored when the build saw no
/// broker (components/build/services.rs), so here it must be set.
fn kafka_brokers() -> String {
    match std::env::var("WEFT_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b.trim().to_string(),
        _ => panic!(
            "WEFT_TEST_KAFKA_BROKERS is not set: start Kafka (scripts/services.sh start kafka) and export its environment (scripts/services.sh env)"
        ),
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

#[derive(Clone)]
enum Backend {
    Kafka(String),
    Embedded,
}

impl Backend {
    /// The pub/sub component name the app uses.
    fn pubsub(&self) -> &'static str {
        match self {
            Backend::Kafka(_) => "kafka",
            Backend::Embedded => "pubsub",
        }
    }

    /// A resources directory; `None` for the embedded broker, which is the
    /// runtime's default `pubsub` component when no resources path is given.
    fn resources(&self) -> Option<tempfile::TempDir> {
        match self {
            Backend::Kafka(brokers) => {
                let dir = tempfile::tempdir().expect("tempdir");
                write_component(
                    dir.path(),
                    "kafka",
                    "pubsub.kafka",
                    &[
                        ("brokers", brokers),
                        ("partitions", "8"),
                        ("sessionTimeout", "6s"),
                    ],
                );
                Some(dir)
            }
            Backend::Embedded => None,
        }
    }
}

/// [`start`], with the Kafka component's partition assignments in the log.
async fn start_logging_assignments(app: &str, resources: Option<&Path>) -> Weft {
    let mut opts =
        WeftOptions::new(app).env("WEFT_LOG", "info,weft_components::pubsub::kafka=debug");
    if let Some(r) = resources {
        opts = opts.resources(r);
    }
    Weft::start(opts).await.expect("start weft")
}

/// Whether a runtime started by [`start_logging_assignments`] was assigned
/// partitions.
fn holds_partitions(w: &Weft) -> bool {
    w.logs()
        .lines()
        .any(|l| l.contains("partitions assigned") && !l.contains("assigned=0"))
}

/// Waits (bounded) until every runtime holds partitions of its group.
async fn wait_for_assignments(wefts: &[Weft], within: Duration) {
    let start = Instant::now();
    loop {
        let waiting: Vec<usize> = (0..wefts.len())
            .filter(|&i| !holds_partitions(&wefts[i]))
            .collect();
        if waiting.is_empty() {
            return;
        }
        if start.elapsed() > within {
            let refs: Vec<&Weft> = wefts.iter().collect();
            panic!(
                "runtimes {waiting:?} were assigned no partition within {within:?}\n{}",
                runtime_logs(&refs)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(app: &str, resources: Option<&Path>) -> Weft {
    let mut opts = WeftOptions::new(app);
    if let Some(r) = resources {
        opts = opts.resources(r);
    }
    Weft::start(opts).await.expect("start weft")
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn runtime_logs(wefts: &[&Weft]) -> String {
    wefts
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "--- runtime {i} (pid {}) ---\n{}\n",
                w.pid(),
                tail(&w.logs(), 4000)
            )
        })
        .collect()
}

// === what is published ===

fn key_name(key: u32) -> String {
    format!("key-{key:04}")
}

/// Messages in publish order: `(key, seq)`, `seq` counting per key.
struct Plan {
    msgs: Vec<(u32, u32)>,
    counts: Vec<u32>,
}

impl Plan {
    /// `n` messages over `keys` keys drawn pseudo-randomly, so a key may
    /// appear several times in one bulk request.
    fn random(keys: u32, n: usize, seed: u64) -> Self {
        let mut x = seed | 1;
        let mut counts = vec![0u32; keys as usize];
        let msgs = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = (x % u64::from(keys)) as u32;
                let s = counts[k as usize];
                counts[k as usize] += 1;
                (k, s)
            })
            .collect();
        Self { msgs, counts }
    }

    /// `per_key` rounds over all keys.
    fn round_robin(keys: u32, per_key: u32) -> Self {
        let msgs = (0..per_key)
            .flat_map(|s| (0..keys).map(move |k| (k, s)))
            .collect();
        Self {
            msgs,
            counts: vec![per_key; keys as usize],
        }
    }

    fn total(&self) -> usize {
        self.msgs.len()
    }
}

/// BulkPublishEvent entries for `msgs`: `"<key>:<seq>"`, partition key
/// `key-<key>`.
fn bulk_entries(msgs: &[(u32, u32)]) -> Vec<pb::BulkPublishRequestEntry> {
    msgs.iter()
        .enumerate()
        .map(|(i, (k, s))| pb::BulkPublishRequestEntry {
            entry_id: i.to_string(),
            event: format!("{k}:{s}").into_bytes(),
            content_type: "text/plain".into(),
            metadata: HashMap::from([("partitionKey".to_string(), key_name(*k))]),
        })
        .collect()
}

/// Publishes `msgs` in order with BulkPublishEvent, `batch` entries per call,
/// one call at a time (so per-key order is publish order).
async fn publish(
    client: &mut Client,
    pubsub: &str,
    topic: &str,
    msgs: &[(u32, u32)],
    batch: usize,
) {
    for (b, chunk) in msgs.chunks(batch).enumerate() {
        let entries = bulk_entries(chunk);
        let req = pb::BulkPublishRequest {
            pubsub_name: pubsub.into(),
            topic: topic.into(),
            entries,
            metadata: HashMap::new(),
        };
        let resp = tokio::time::timeout(Duration::from_secs(60), client.bulk_publish_event(req))
            .await
            .unwrap_or_else(|_| panic!("bulk publish #{b} did not answer within 60 s"))
            .unwrap_or_else(|e| panic!("bulk publish #{b} failed: {e}"))
            .into_inner();
        assert!(
            resp.failed_entries.is_empty(),
            "bulk publish #{b}: {} entries failed, first: {:?}",
            resp.failed_entries.len(),
            resp.failed_entries.first()
        );
    }
}

// === what was delivered ===

/// One delivery as the app observed it.
#[derive(Debug, Clone)]
struct Obs {
    sub: usize,
    key: u32,
    seq: u32,
    partition: i64,
    offset: i64,
    attempt: i64,
    /// The app's answer; `None`: held, never acked.
    status: Option<Status>,
}

struct State {
    log: Vec<Obs>,
    /// Per key, the next sequence number never seen.
    next: Vec<u32>,
    counts: Vec<u32>,
    /// Distinct messages seen.
    seen: usize,
    total: usize,
    redeliveries: usize,
    violations: Vec<String>,
    key_partition: HashMap<u32, i64>,
    /// Check order (off for a dead-letter reader, which sees a subset).
    check: bool,
}

/// All deliveries of a test, in observation order, checked as they arrive.
struct Recorder {
    st: Mutex<State>,
}

impl Recorder {
    fn new(counts: &[u32], check: bool) -> Arc<Self> {
        Arc::new(Self {
            st: Mutex::new(State {
                log: Vec::new(),
                next: vec![0; counts.len()],
                counts: counts.to_vec(),
                seen: 0,
                total: counts.iter().map(|c| *c as usize).sum(),
                redeliveries: 0,
                violations: Vec::new(),
                key_partition: HashMap::new(),
                check,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn violation(&self, v: String) {
        self.lock().violations.push(v);
    }

    fn record(&self, obs: Obs) {
        let mut st = self.lock();
        let st = &mut *st;
        let k = obs.key as usize;
        if k >= st.counts.len() || obs.seq >= st.counts[k] {
            st.violations
                .push(format!("delivery of a message never published: {obs:?}"));
            st.log.push(obs);
            return;
        }
        match st.key_partition.get(&obs.key) {
            Some(p) if *p != obs.partition => st.violations.push(format!(
                "key {} delivered from partition {} and from partition {}",
                obs.key, p, obs.partition
            )),
            Some(_) => {}
            None => {
                st.key_partition.insert(obs.key, obs.partition);
            }
        }
        if st.check {
            let next = st.next[k];
            if obs.seq == next {
                st.next[k] += 1;
                st.seen += 1;
            } else if obs.seq < next {
                st.redeliveries += 1;
            } else if st.violations.len() < 50 {
                st.violations.push(format!(
                    "key {}: seq {} delivered (subscriber {}, partition {}, offset {}, attempt {}) while {} was the next expected: a gap or a reorder",
                    obs.key, obs.seq, obs.sub, obs.partition, obs.offset, obs.attempt, next
                ));
            }
        }
        st.log.push(obs);
    }

    fn len(&self) -> usize {
        self.lock().log.len()
    }

    fn seen(&self) -> usize {
        self.lock().seen
    }

    fn log(&self) -> Vec<Obs> {
        self.lock().log.clone()
    }

    fn progress(&self) -> String {
        let st = self.lock();
        let mut per_sub: Vec<(usize, usize)> = Vec::new();
        for o in &st.log {
            match per_sub.iter_mut().find(|(s, _)| *s == o.sub) {
                Some((_, n)) => *n += 1,
                None => per_sub.push((o.sub, 1)),
            }
        }
        per_sub.sort();
        format!(
            "seen {}/{} distinct, {} deliveries, {} redeliveries, {} violations, per subscriber {:?}",
            st.seen,
            st.total,
            st.log.len(),
            st.redeliveries,
            st.violations.len(),
            per_sub
        )
    }

    /// Asserts: no gap, no reorder, no unknown message, every key complete.
    fn assert_complete(&self, what: &str) {
        let st = self.lock();
        assert!(
            st.violations.is_empty(),
            "{what}: {} ordering violations, first ones:\n{}",
            st.violations.len(),
            st.violations
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let missing: Vec<String> = st
            .next
            .iter()
            .zip(&st.counts)
            .enumerate()
            .filter(|(_, (n, c))| n < c)
            .map(|(k, (n, c))| format!("key {k}: {n} of {c}"))
            .collect();
        assert!(
            missing.is_empty(),
            "{what}: messages missing: {}",
            missing.join(", ")
        );
    }
}

fn number(ev: &pb::TopicEventRequest, field: &str) -> Option<f64> {
    match ev.extensions.as_ref()?.fields.get(field)?.kind.as_ref()? {
        Kind::NumberValue(n) => Some(*n),
        _ => None,
    }
}

fn text<'a>(ev: &'a pb::TopicEventRequest, field: &str) -> Option<&'a str> {
    match ev.extensions.as_ref()?.fields.get(field)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

fn parse(sub: usize, ev: &pb::TopicEventRequest) -> Result<Obs, String> {
    let data = std::str::from_utf8(&ev.data)
        .map_err(|_| format!("payload is not UTF-8: {:?}", ev.data))?;
    let mut parts = data.split(':');
    let mut field = || parts.next().and_then(|p| p.parse::<u32>().ok());
    let (Some(key), Some(seq)) = (field(), field()) else {
        return Err(format!("payload is not <key>:<seq>: {data:?}"));
    };
    if text(ev, "partitionKey") != Some(key_name(key).as_str()) {
        return Err(format!(
            "event {data:?} carries partitionKey {:?}, expected {}",
            text(ev, "partitionKey"),
            key_name(key)
        ));
    }
    let partition = number(ev, "partition")
        .ok_or_else(|| format!("event {data:?} has no partition extension"))?;
    let offset =
        number(ev, "offset").ok_or_else(|| format!("event {data:?} has no offset extension"))?;
    Ok(Obs {
        sub,
        key,
        seq,
        partition: partition as i64,
        offset: offset as i64,
        attempt: number(ev, "attempt").unwrap_or(-1.0) as i64,
        status: None,
    })
}

// === the app's subscriptions ===

/// What the app answers to a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Reply(Status),
    /// Record it and never ack it.
    Hold,
}

type Policy = Box<dyn FnMut(&Obs) -> Decision + Send>;

fn ack_all() -> Policy {
    Box::new(|_| Decision::Reply(Status::Success))
}

/// Acks until `hold` is set, then holds everything.
fn ack_until(hold: Arc<AtomicBool>) -> Policy {
    Box::new(move |_| {
        if hold.load(Ordering::SeqCst) {
            Decision::Hold
        } else {
            Decision::Reply(Status::Success)
        }
    })
}

/// A streaming subscription held by the test.
struct Sub {
    close: Arc<Notify>,
    task: JoinHandle<String>,
}

impl Sub {
    /// Ends the app's side of the stream (half-close) and waits (bounded)
    /// until the runtime ends its side: every ack sent before was processed.
    async fn close(self) -> String {
        self.close.notify_one();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("subscription did not end within 30 s of closing it")
            .expect("subscription task")
    }

    /// Drops the stream abruptly (no half-close, unacked events stay unacked).
    fn abort(self) {
        self.task.abort();
    }
}

/// Opens a streaming subscription and waits (bounded) for its initial
/// response; then records every event and answers per `policy`.
#[allow(clippy::too_many_arguments)]
async fn subscribe(
    mut client: Client,
    id: usize,
    pubsub: &str,
    topic: &str,
    metadata: &[(&str, &str)],
    dead_letter_topic: Option<&str>,
    rec: Arc<Recorder>,
    mut policy: Policy,
) -> Sub {
    let (tx, rx) = mpsc::channel::<pb::SubscribeTopicEventsRequestAlpha1>(8192);
    tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: pubsub.into(),
                topic: topic.into(),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                dead_letter_topic: dead_letter_topic.map(str::to_string),
            },
        )),
    })
    .await
    .expect("queue initial request");
    let mut stream = tokio::time::timeout(
        Duration::from_secs(60),
        client.subscribe_topic_events_alpha1(ReceiverStream::new(rx)),
    )
    .await
    .expect("SubscribeTopicEventsAlpha1 did not answer within 60 s")
    .expect("SubscribeTopicEventsAlpha1")
    .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("no initial response within 60 s")
        .expect("subscription stream failed before the initial response");
    assert!(
        matches!(
            first
                .as_ref()
                .and_then(|m| m.subscribe_topic_events_response_type.as_ref()),
            Some(RespType::InitialResponse(_))
        ),
        "expected the initial response first, got {first:?}"
    );
    let close = Arc::new(Notify::new());
    let closed = close.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut tx = Some(tx);
        loop {
            let msg = tokio::select! {
                _ = closed.notified(), if tx.is_some() => {
                    tx = None;
                    continue;
                }
                m = stream.message() => m,
            };
            let ev = match msg {
                Ok(Some(pb::SubscribeTopicEventsResponseAlpha1 {
                    subscribe_topic_events_response_type: Some(RespType::EventMessage(ev)),
                })) => ev,
                Ok(Some(other)) => return format!("unexpected message {other:?}"),
                Ok(None) => return "stream ended".to_string(),
                Err(e) => return format!("stream failed: {e}"),
            };
            let decision = match parse(id, &ev) {
                Ok(mut obs) => {
                    let d = if tx.is_some() {
                        policy(&obs)
                    } else {
                        Decision::Hold
                    };
                    obs.status = match d {
                        Decision::Reply(s) => Some(s),
                        Decision::Hold => None,
                    };
                    rec.record(obs);
                    d
                }
                Err(e) => {
                    rec.violation(e);
                    Decision::Reply(Status::Success)
                }
            };
            if let (Decision::Reply(status), Some(sender)) = (decision, &tx) {
                let processed = pb::SubscribeTopicEventsRequestAlpha1 {
                    subscribe_topic_events_request_type: Some(ReqType::EventProcessed(
                        pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                            id: ev.id.clone(),
                            status: Some(pb::TopicEventResponse {
                                status: status as i32,
                            }),
                        },
                    )),
                };
                if sender.send(processed).await.is_err() {
                    return "request stream closed".to_string();
                }
            }
        }
    });
    Sub { close, task }
}

/// Waits (bounded) until `done`, logging progress every 5 s.
async fn wait_until(
    what: &str,
    within: Duration,
    rec: &Recorder,
    wefts: &[&Weft],
    mut done: impl FnMut() -> bool,
) {
    let start = Instant::now();
    let mut last_log = Instant::now();
    while !done() {
        if start.elapsed() > within {
            panic!(
                "{what}: not done within {within:?}: {}\n{}",
                rec.progress(),
                runtime_logs(wefts)
            );
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "[{:>5.1}s] {what}: {}",
                start.elapsed().as_secs_f64(),
                rec.progress()
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[{:>5.1}s] {what}: done: {}",
        start.elapsed().as_secs_f64(),
        rec.progress()
    );
}

// === (a) and (e): ordering and no loss through crashes and joins ===

/// One test per backend for a scenario taking a [`Backend`]: `$kafka` runs
/// it against the Kafka broker of the test services (ignored, with the
/// reason, when the build saw none), `$embedded` against the embedded
/// broker.
macro_rules! on_both_backends {
    ($kafka:ident, $embedded:ident, $scenario:ident) => {
        #[cfg_attr(
            weft_no_kafka,
            ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
        )]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $kafka() {
            let brokers = kafka_brokers();
            let _serial = serial();
            $scenario(Backend::Kafka(brokers)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            let _serial = serial();
            $scenario(Backend::Embedded).await;
        }
    };
}

/// Kafka: three runtimes of one app consume 100 000 messages over 1 000
/// keys while they are published; one runtime is killed with SIGKILL mid-run
/// and a fourth joins.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_group_keeps_key_order_through_kill_and_join() {
    let brokers = kafka_brokers();
    let _serial = serial();
    kafka_kill_and_join(brokers, &[], 100_000, false).await;
}

/// The same, pipelined (16 events per partition out to the app at once),
/// killing a runtime whose app stopped acking: its full windows come back.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_pipelined_group_keeps_key_order_through_kill_and_join() {
    let brokers = kafka_brokers();
    let _serial = serial();
    kafka_kill_and_join(brokers, &[(PIPELINED, "16")], 60_000, true).await;
}

/// Subscription metadata of the pipelined tests.
const PIPELINED: &str = "maxInFlightPerPartition";

/// `hold`: runtime 1's subscriber stops acking at 30 % and the kill waits
/// until it holds a full window (16) of unacked events, so the kill
/// certainly leaves pipelined windows behind.
async fn kafka_kill_and_join(
    brokers: String,
    metadata: &[(&str, &str)],
    n: usize,
    hold_before_kill: bool,
) {
    let backend = Backend::Kafka(brokers);
    let res = backend.resources().expect("resources");
    let pubsub = backend.pubsub();
    let (app, topic) = (unique("ordered"), unique("orders"));
    let plan = Plan::random(1000, n, 0x5eed_1234);
    let total = plan.total();
    let rec = Recorder::new(&plan.counts, true);

    let mut wefts: Vec<Weft> = futures::future::join_all(
        (0..3).map(|_| start_logging_assignments(&app, Some(res.path()))),
    )
    .await;
    let hold = Arc::new(AtomicBool::new(false));
    let mut subs: Vec<Option<Sub>> = Vec::new();
    for (i, w) in wefts.iter().enumerate() {
        let policy = if i == 1 && hold_before_kill {
            ack_until(hold.clone())
        } else {
            ack_all()
        };
        subs.push(Some(
            subscribe(
                w.client().await,
                i,
                pubsub,
                &topic,
                metadata,
                None,
                rec.clone(),
                policy,
            )
            .await,
        ));
    }
    // The group settles before anything is published: a cooperative
    // rebalance takes a few heartbeats, and pipelined consumers can drain
    // the whole topic in less, leaving the later members nothing to hold.
    wait_for_assignments(&wefts, Duration::from_secs(60)).await;
    // Four publishers over disjoint key sets (each in order) outpace the
    // consumers, so the runtime killed below has a backlog to work on.
    let lanes = 4;
    let mut publishers = Vec::new();
    for lane in 0..lanes {
        let mut client = wefts[lane % 2 * 2].client().await;
        let msgs: Vec<(u32, u32)> = plan
            .msgs
            .iter()
            .copied()
            .filter(|(k, _)| *k as usize % lanes == lane)
            .collect();
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            publish(&mut client, pubsub, &topic, &msgs, 500).await;
        }));
    }
    let publisher = futures::future::try_join_all(publishers);

    // Kill runtime 1 once 30 % were seen, then start a fourth.
    let refs: Vec<&Weft> = wefts.iter().collect();
    wait_until(
        "kafka: 30 % seen",
        Duration::from_secs(180),
        &rec,
        &refs,
        || rec.seen() >= total * 3 / 10,
    )
    .await;
    let held_by_1 = || -> Vec<Obs> {
        rec.log()
            .into_iter()
            .filter(|o| o.sub == 1 && o.status.is_none())
            .collect()
    };
    if hold_before_kill {
        hold.store(true, Ordering::SeqCst);
        let refs: Vec<&Weft> = wefts.iter().collect();
        wait_until(
            "kafka: runtime 1 holds a full window",
            Duration::from_secs(120),
            &rec,
            &refs,
            || held_by_1().len() >= 16,
        )
        .await;
    }
    let held = held_by_1();
    let before_kill = rec.len();
    wefts[1].signal("KILL");
    let status = wefts[1]
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("killed runtime exits");
    eprintln!("runtime 1 killed ({status}) after {before_kill} deliveries");
    let ended = tokio::time::timeout(Duration::from_secs(30), subs[1].take().expect("sub 1").task)
        .await
        .expect("the killed runtime's subscription ends")
        .expect("subscription task");
    eprintln!("subscriber 1 ended: {ended}");
    wefts.push(start(&app, Some(res.path())).await);
    subs.push(Some(
        subscribe(
            wefts[3].client().await,
            3,
            pubsub,
            &topic,
            metadata,
            None,
            rec.clone(),
            ack_all(),
        )
        .await,
    ));

    let refs: Vec<&Weft> = wefts.iter().collect();
    wait_until(
        "kafka: everything seen",
        Duration::from_secs(300),
        &rec,
        &refs,
        || rec.seen() >= total,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher finishes")
        .expect("publisher");
    rec.assert_complete(&format!(
        "kafka, 3 runtimes, kill -9 and join, {metadata:?}"
    ));
    let log = rec.log();
    let after_kill = log[before_kill..].iter().filter(|o| o.sub == 3).count();
    eprintln!(
        "kafka kill/join {metadata:?}: {total} messages, {} deliveries, {} redeliveries ({} held unacked by the killed runtime); the fourth runtime took {after_kill}",
        log.len(),
        log.len() - total,
        held.len()
    );
    assert!(
        after_kill > 0,
        "the runtime that joined after the kill got no partition"
    );
    assert!(
        log.len() - total == rec.lock().redeliveries,
        "every extra delivery is a counted redelivery"
    );
    let missing: Vec<&Obs> = held
        .iter()
        .filter(|h| {
            !log[before_kill..]
                .iter()
                .any(|o| (o.key, o.seq) == (h.key, h.seq) && o.sub != 1)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of the {} events runtime 1 held unacked when it was killed were not delivered again, e.g. {:?}",
        missing.len(),
        held.len(),
        missing.first()
    );
}

/// Embedded broker: three streaming subscribers of one group in one runtime;
/// one stops acking and disconnects abruptly mid-run, then a new one joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_group_keeps_key_order_through_disconnect_and_join() {
    let _serial = serial();
    embedded_disconnect_and_join(&[]).await;
}

/// The same, pipelined: 16 events per partition out to the app at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pipelined_group_keeps_key_order_through_disconnect_and_join() {
    let _serial = serial();
    embedded_disconnect_and_join(&[(PIPELINED, "16")]).await;
}

async fn embedded_disconnect_and_join(metadata: &[(&str, &str)]) {
    let backend = Backend::Embedded;
    let pubsub = backend.pubsub();
    let (app, topic) = (unique("ordered"), unique("orders"));
    let plan = Plan::random(500, 20_000, 0xfeed_0042);
    let total = plan.total();
    let rec = Recorder::new(&plan.counts, true);
    let weft = start(&app, None).await;

    let hold = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for i in 0..3 {
        let policy = if i == 1 {
            ack_until(hold.clone())
        } else {
            ack_all()
        };
        subs.push(Some(
            subscribe(
                weft.client().await,
                i,
                pubsub,
                &topic,
                metadata,
                None,
                rec.clone(),
                policy,
            )
            .await,
        ));
    }
    let mut client = weft.client().await;
    let publisher = {
        let topic = topic.clone();
        tokio::spawn(async move {
            publish(&mut client, pubsub, &topic, &plan.msgs, 500).await;
        })
    };

    wait_until(
        "embedded: 30 % seen",
        Duration::from_secs(120),
        &rec,
        &[&weft],
        || rec.seen() >= total * 3 / 10,
    )
    .await;
    hold.store(true, Ordering::SeqCst);
    let held_by_1 = || {
        rec.log()
            .iter()
            .filter(|o| o.sub == 1 && o.status.is_none())
            .count()
    };
    wait_until(
        "embedded: subscriber 1 holds an event",
        Duration::from_secs(60),
        &rec,
        &[&weft],
        || held_by_1() > 0,
    )
    .await;
    subs[1].take().expect("sub 1").abort();
    let cut = rec.len();
    let held: Vec<Obs> = rec
        .log()
        .into_iter()
        .filter(|o| o.sub == 1 && o.status.is_none())
        .collect();
    eprintln!(
        "subscriber 1 disconnected abruptly holding {} unacked events",
        held.len()
    );
    subs.push(Some(
        subscribe(
            weft.client().await,
            3,
            pubsub,
            &topic,
            metadata,
            None,
            rec.clone(),
            ack_all(),
        )
        .await,
    ));

    wait_until(
        "embedded: everything seen",
        Duration::from_secs(180),
        &rec,
        &[&weft],
        || rec.seen() >= total,
    )
    .await;
    // The held events come back even when nothing later of their keys remains.
    let log_has_redelivery = |h: &Obs, log: &[Obs]| {
        log[cut..]
            .iter()
            .any(|o| o.key == h.key && o.seq == h.seq && o.sub != 1)
    };
    wait_until(
        "embedded: held events redelivered",
        Duration::from_secs(60),
        &rec,
        &[&weft],
        || {
            let log = rec.log();
            held.iter().all(|h| log_has_redelivery(h, &log))
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher finishes")
        .expect("publisher");
    rec.assert_complete(&format!(
        "embedded, 3 subscribers, abrupt disconnect and join, {metadata:?}"
    ));
    let log = rec.log();
    let late = log[cut..].iter().filter(|o| o.sub == 3).count();
    eprintln!(
        "embedded disconnect/join {metadata:?}: {total} messages, {} deliveries, {} redeliveries ({} held by the disconnected subscriber); the new subscriber took {late}",
        log.len(),
        rec.lock().redeliveries,
        held.len()
    );
    assert!(late > 0, "the subscriber that joined got no partition");
    // Nothing is redelivered except around the disconnect: every duplicate
    // of an acked message would be a bug of the embedded broker (in-process,
    // no lost acks).
    let mut acked: HashSet<(u32, u32)> = HashSet::new();
    for o in &log {
        assert!(
            !acked.contains(&(o.key, o.seq)),
            "embedded broker redelivered an acked message: {o:?}"
        );
        if o.status == Some(Status::Success) {
            acked.insert((o.key, o.seq));
        }
    }
}

// === (b) RETRY keeps the partition's order ===

async fn retry_keeps_partition_order(backend: Backend) {
    let pubsub = backend.pubsub();
    let res = backend.resources();
    let (app, topic) = (unique("retry"), unique("retry"));
    let weft = start(&app, res.as_ref().map(|d| d.path())).await;
    let plan = Plan::round_robin(32, 40);
    let total = plan.total();
    let mut client = weft.client().await;
    publish(&mut client, pubsub, &topic, &plan.msgs, 256).await;

    // (0, 5) is answered RETRY at least 3 times, and until 30 deliveries of
    // other messages happened after its first RETRY (at most 100 times).
    let hot = (0u32, 5u32);
    let rec = Recorder::new(&plan.counts, true);
    let (mut attempts, mut others) = (0u32, None::<u32>);
    let policy: Policy = Box::new(move |o| {
        if (o.key, o.seq) == hot {
            attempts += 1;
            let others = *others.get_or_insert(0);
            if attempts <= 3 || (others < 30 && attempts < 100) {
                return Decision::Reply(Status::Retry);
            }
        } else if let Some(n) = others.as_mut() {
            *n += 1;
        }
        Decision::Reply(Status::Success)
    });
    let _sub = subscribe(
        weft.client().await,
        0,
        pubsub,
        &topic,
        &[("retryBackoff", "200ms")],
        None,
        rec.clone(),
        policy,
    )
    .await;
    wait_until(
        "retry: everything seen",
        Duration::from_secs(120),
        &rec,
        &[&weft],
        || rec.seen() >= total,
    )
    .await;
    rec.assert_complete("retry");

    let log = rec.log();
    let hot_idx: Vec<usize> = (0..log.len())
        .filter(|i| (log[*i].key, log[*i].seq) == hot)
        .collect();
    let (first, last) = (hot_idx[0], *hot_idx.last().expect("hot delivered"));
    let hot_partition = log[first].partition;
    let statuses: Vec<_> = hot_idx.iter().map(|i| log[*i].status).collect();
    assert!(
        hot_idx.len() >= 4,
        "the retried message was delivered {} times",
        hot_idx.len()
    );
    assert!(
        statuses[..statuses.len() - 1]
            .iter()
            .all(|s| *s == Some(Status::Retry))
            && statuses.last() == Some(&Some(Status::Success)),
        "statuses of the retried message: {statuses:?}"
    );
    let attempts: Vec<i64> = hot_idx.iter().map(|i| log[*i].attempt).collect();
    assert_eq!(
        attempts,
        (0..hot_idx.len() as i64).collect::<Vec<_>>(),
        "attempt extension of the retries"
    );
    let same_partition: Vec<&Obs> = log[first..=last]
        .iter()
        .filter(|o| o.partition == hot_partition && (o.key, o.seq) != hot)
        .collect();
    assert!(
        same_partition.is_empty(),
        "while {hot:?} was being retried its partition {hot_partition} delivered {} other messages, first {:?}",
        same_partition.len(),
        same_partition.first()
    );
    let flowed = log[first..=last]
        .iter()
        .filter(|o| o.partition != hot_partition)
        .count();
    assert!(
        flowed >= 30,
        "only {flowed} messages of other partitions were delivered during the retries"
    );
    assert_eq!(
        log.len(),
        total + hot_idx.len() - 1,
        "only the retried message is delivered more than once"
    );
    eprintln!(
        "retry: {hot:?} delivered {} times (partition {hot_partition}); {flowed} messages of other partitions flowed meanwhile, none of its own",
        hot_idx.len()
    );
}

on_both_backends!(
    kafka_retry_keeps_partition_order,
    embedded_retry_keeps_partition_order,
    retry_keeps_partition_order
);

// === (c) poison messages go to the dead-letter topic ===

async fn poison_goes_to_dead_letter_topic(backend: Backend) {
    let pubsub = backend.pubsub();
    let res = backend.resources();
    let (app, topic) = (unique("dlt"), unique("dlt"));
    let dlt = format!("{topic}-dead");
    let weft = start(&app, res.as_ref().map(|d| d.path())).await;
    let plan = Plan::round_robin(32, 20);
    let total = plan.total();
    let poisoned = |(k, s): (u32, u32)| (k * 7 + s) % 41 == 3;
    let poison: HashSet<(u32, u32)> = plan.msgs.iter().copied().filter(|m| poisoned(*m)).collect();

    // The dead-letter reader first: it creates the topic (Kafka) and its group.
    let dead = Recorder::new(&plan.counts, false);
    let reader_group = unique("dlt-reader");
    let _reader = subscribe(
        weft.client().await,
        1,
        pubsub,
        &dlt,
        &[("consumerGroup", &reader_group)],
        None,
        dead.clone(),
        ack_all(),
    )
    .await;
    let mut client = weft.client().await;
    publish(&mut client, pubsub, &topic, &plan.msgs, 256).await;
    let rec = Recorder::new(&plan.counts, true);
    let policy: Policy = Box::new(move |o| {
        if poisoned((o.key, o.seq)) {
            Decision::Reply(Status::Drop)
        } else {
            Decision::Reply(Status::Success)
        }
    });
    let _sub = subscribe(
        weft.client().await,
        0,
        pubsub,
        &topic,
        &[],
        Some(&dlt),
        rec.clone(),
        policy,
    )
    .await;
    wait_until(
        "dead letter: everything seen",
        Duration::from_secs(120),
        &rec,
        &[&weft],
        || rec.seen() >= total,
    )
    .await;
    wait_until(
        "dead letter: poison in the dead-letter topic",
        Duration::from_secs(60),
        &dead,
        &[&weft],
        || dead.len() >= poison.len(),
    )
    .await;
    // Anything extra would arrive right behind; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    rec.assert_complete("dead letter");
    let log = rec.log();
    assert_eq!(
        log.len(),
        total,
        "every message delivered exactly once: DROP moves on"
    );
    let dead_log = dead.log();
    let dead_msgs: Vec<(u32, u32)> = dead_log.iter().map(|o| (o.key, o.seq)).collect();
    let dead_set: HashSet<(u32, u32)> = dead_msgs.iter().copied().collect();
    assert_eq!(
        dead_msgs.len(),
        dead_set.len(),
        "a poison message reached the dead-letter topic twice: {dead_msgs:?}"
    );
    assert_eq!(
        dead_set, poison,
        "the dead-letter topic holds exactly the dropped messages"
    );
    assert!(
        dead.lock().violations.is_empty(),
        "dead-letter events: {:?}",
        dead.lock().violations
    );
    eprintln!(
        "dead letter: {} of {total} messages dropped, all {} in {dlt}, nothing else",
        poison.len(),
        dead_set.len()
    );
}

on_both_backends!(
    kafka_poison_goes_to_dead_letter_topic,
    embedded_poison_goes_to_dead_letter_topic,
    poison_goes_to_dead_letter_topic
);

// === (d) a restart resumes from the committed offsets ===

/// Consume part, stop the runtime gracefully, start it again with the same
/// group: exactly the messages that were not acked are delivered, once.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restart_resumes_from_committed_offsets() {
    let brokers = kafka_brokers();
    let _serial = serial();
    let backend = Backend::Kafka(brokers);
    let pubsub = backend.pubsub();
    let res = backend.resources().expect("resources");
    let (app, topic) = (unique("resume"), unique("resume"));
    let plan = Plan::round_robin(64, 30);
    let total = plan.total();
    let rec = Recorder::new(&plan.counts, true);

    let mut first = start(&app, Some(res.path())).await;
    let mut client = first.client().await;
    publish(&mut client, pubsub, &topic, &plan.msgs, 500).await;
    let hold = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(0usize));
    let policy: Policy = {
        let (hold, acks) = (hold.clone(), acks.clone());
        Box::new(move |_| {
            let mut n = acks.lock().unwrap_or_else(|e| e.into_inner());
            if *n >= 800 {
                hold.store(true, Ordering::SeqCst);
                Decision::Hold
            } else {
                *n += 1;
                Decision::Reply(Status::Success)
            }
        })
    };
    let sub = subscribe(
        first.client().await,
        0,
        pubsub,
        &topic,
        &[],
        None,
        rec.clone(),
        policy,
    )
    .await;
    wait_until(
        "resume: 800 acked and one held",
        Duration::from_secs(120),
        &rec,
        &[&first],
        || hold.load(Ordering::SeqCst),
    )
    .await;
    let ended = sub.close().await;
    eprintln!("resume: first subscription closed ({ended})");
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("graceful stop");
    assert!(
        status.success(),
        "weft exited with {status} on SIGTERM:\n{}",
        tail(&first.logs(), 4000)
    );
    let phase1 = rec.log();
    let acked: HashSet<(u32, u32)> = phase1
        .iter()
        .filter(|o| o.status == Some(Status::Success))
        .map(|o| (o.key, o.seq))
        .collect();
    let held: HashSet<(u32, u32)> = phase1
        .iter()
        .filter(|o| o.status.is_none())
        .map(|o| (o.key, o.seq))
        .collect();
    assert_eq!(acked.len(), 800);

    let second = start(&app, Some(res.path())).await;
    let _sub = subscribe(
        second.client().await,
        1,
        pubsub,
        &topic,
        &[],
        None,
        rec.clone(),
        ack_all(),
    )
    .await;
    let remaining = total - acked.len();
    let phase2_distinct = || {
        rec.log()
            .iter()
            .filter(|o| o.sub == 1)
            .map(|o| (o.key, o.seq))
            .collect::<HashSet<_>>()
            .len()
    };
    wait_until(
        "resume: the rest delivered",
        Duration::from_secs(120),
        &rec,
        &[&second],
        || phase2_distinct() >= remaining,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    rec.assert_complete("resume after restart");
    let phase2: Vec<(u32, u32)> = rec
        .log()
        .iter()
        .filter(|o| o.sub == 1)
        .map(|o| (o.key, o.seq))
        .collect();
    let phase2_set: HashSet<(u32, u32)> = phase2.iter().copied().collect();
    let again: Vec<&(u32, u32)> = phase2_set.intersection(&acked).collect();
    assert!(
        again.is_empty(),
        "acked before the restart but delivered again: {again:?}"
    );
    assert_eq!(
        phase2.len(),
        phase2_set.len(),
        "a message was delivered twice after the restart"
    );
    assert_eq!(
        phase2_set.len(),
        remaining,
        "after the restart: exactly the unacked messages"
    );
    assert!(
        held.is_subset(&phase2_set),
        "held (unacked) messages were not redelivered"
    );
    eprintln!(
        "resume: {} acked before a graceful restart, {} held unacked; after the restart {} delivered, {} of them redeliveries (the held ones), none acked before",
        acked.len(),
        held.len(),
        phase2.len(),
        held.len()
    );
}

// === pipelining: RETRY in the middle of a window, commits ===

/// Pipelined (8 per partition), with everything published beforehand so the
/// window is full: a RETRY of one message rewinds its partition to exactly
/// that message — it comes again (attempt 1) and then everything after it
/// in order, including the messages that were out (and acked) when it was
/// retried — while every other partition is delivered once, without a
/// repeat.
async fn retry_in_the_middle_of_a_window(backend: Backend) {
    let pubsub = backend.pubsub();
    let res = backend.resources();
    let (app, topic) = (unique("pretry"), unique("pretry"));
    let weft = start(&app, res.as_ref().map(|d| d.path())).await;
    // Key 0 has 40 messages, keys 1..32 have 10; interleaved.
    let mut counts = vec![10u32; 32];
    counts[0] = 40;
    let msgs: Vec<(u32, u32)> = (0..40u32)
        .flat_map(|s| {
            (0..32u32)
                .filter(move |k| *k == 0 || s < 10)
                .map(move |k| (k, s))
        })
        .collect();
    let total = msgs.len();
    let mut client = weft.client().await;
    publish(&mut client, pubsub, &topic, &msgs, 256).await;

    let hot = (0u32, 5u32);
    let rec = Recorder::new(&counts, true);
    let policy: Policy = Box::new(move |o| {
        if (o.key, o.seq) == hot && o.attempt == 0 {
            Decision::Reply(Status::Retry)
        } else {
            Decision::Reply(Status::Success)
        }
    });
    let _sub = subscribe(
        weft.client().await,
        0,
        pubsub,
        &topic,
        &[(PIPELINED, "8"), ("retryBackoff", "200ms")],
        None,
        rec.clone(),
        policy,
    )
    .await;
    wait_until(
        "pipelined retry: everything seen",
        Duration::from_secs(120),
        &rec,
        &[&weft],
        || rec.seen() >= total,
    )
    .await;
    // A redelivered suffix would arrive right behind; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rec.assert_complete("pipelined retry");

    let log = rec.log();
    let first = log
        .iter()
        .find(|o| (o.key, o.seq) == hot)
        .expect("the retried message was delivered")
        .clone();
    let on_hot: Vec<&Obs> = log
        .iter()
        .filter(|o| o.partition == first.partition)
        .collect();
    let offsets: Vec<i64> = on_hot.iter().map(|o| o.offset).collect();
    let steps_back: Vec<usize> = (1..offsets.len())
        .filter(|i| offsets[*i] != offsets[i - 1] + 1)
        .collect();
    assert_eq!(
        steps_back.len(),
        1,
        "partition {} of the retried message: offsets must go up one by one except for one step back, got {offsets:?}",
        first.partition
    );
    let r = steps_back[0];
    assert_eq!(
        offsets[r], first.offset,
        "the partition rewinds to the retried message: {offsets:?}"
    );
    assert_eq!(
        (on_hot[r].key, on_hot[r].seq, on_hot[r].attempt),
        (hot.0, hot.1, 1),
        "the first redelivery is the retried message, attempt 1"
    );
    let past = offsets[r - 1] - first.offset;
    assert!(
        (1..8).contains(&past),
        "when the RETRY came, messages past the retried one were out (pipelined), at most a window's worth: {past}"
    );
    for o in &log {
        if o.partition != first.partition {
            assert!(
                o.attempt == 0 && o.status == Some(Status::Success),
                "other partitions flow once: {o:?}"
            );
        }
    }
    let others = log
        .iter()
        .filter(|o| o.partition != first.partition)
        .count();
    assert_eq!(
        others + (on_hot.len() - past as usize - 1),
        total,
        "only the suffix of the retried message's partition is delivered twice"
    );
    eprintln!(
        "pipelined retry: {hot:?} at offset {} of partition {}; {past} messages after it were out and came again after it",
        first.offset, first.partition
    );
}

on_both_backends!(
    kafka_pipelined_retry_in_the_middle_of_a_window,
    embedded_pipelined_retry_in_the_middle_of_a_window,
    retry_in_the_middle_of_a_window
);

/// Waits (bounded) until nothing new was recorded for `quiet`.
async fn wait_quiet(what: &str, rec: &Recorder, wefts: &[&Weft], quiet: Duration) {
    let start = Instant::now();
    let (mut len, mut since) = (rec.len(), Instant::now());
    while since.elapsed() < quiet {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{what}: deliveries did not stop within 120 s: {}\n{}",
            rec.progress(),
            runtime_logs(wefts)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        if rec.len() != len {
            (len, since) = (rec.len(), Instant::now());
        }
    }
}

/// Pipelined (8 per partition): the app holds (never acks) one message in
/// some partitions and acks everything else, including what comes after
/// the held message. Each such partition stops with exactly 8 messages out
/// past its committed position. After a restart (Kafka: a new runtime of
/// the same app; embedded: a new subscription of the same group, the broker
/// lives in the runtime) exactly the suffix from each partition's first
/// held message is delivered again — the acked messages after it too, the
/// ones before it never.
async fn commit_never_skips_an_unacked_message(backend: Backend) {
    let pubsub = backend.pubsub();
    let res = backend.resources();
    let (app, topic) = (unique("pcommit"), unique("pcommit"));
    let plan = Plan::round_robin(64, 30);
    let total = plan.total();
    let rec = Recorder::new(&plan.counts, true);
    let held = |(k, s): (u32, u32)| k % 5 == 0 && s == 3;

    let mut first = start(&app, res.as_ref().map(|d| d.path())).await;
    let mut client = first.client().await;
    publish(&mut client, pubsub, &topic, &plan.msgs, 500).await;
    let policy: Policy = Box::new(move |o| {
        if held((o.key, o.seq)) {
            Decision::Hold
        } else {
            Decision::Reply(Status::Success)
        }
    });
    let sub = subscribe(
        first.client().await,
        0,
        pubsub,
        &topic,
        &[(PIPELINED, "8")],
        None,
        rec.clone(),
        policy,
    )
    .await;
    wait_until(
        "commit: something delivered",
        Duration::from_secs(120),
        &rec,
        &[&first],
        || rec.len() > 0,
    )
    .await;
    wait_quiet("commit: phase 1", &rec, &[&first], Duration::from_secs(3)).await;
    let phase1 = rec.log();
    let mut parts: HashMap<i64, Vec<&Obs>> = HashMap::new();
    for o in &phase1 {
        parts.entry(o.partition).or_default().push(o);
    }
    // Per partition: the offset of its first held message, if any.
    let mut first_held: HashMap<i64, i64> = HashMap::new();
    for (p, obs) in &parts {
        let offsets: Vec<i64> = obs.iter().map(|o| o.offset).collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "phase 1, partition {p}: delivered once each, in order: {offsets:?}"
        );
        if let Some(h) = obs
            .iter()
            .filter(|o| o.status.is_none())
            .map(|o| o.offset)
            .min()
        {
            first_held.insert(*p, h);
            assert_eq!(
                *offsets.last().expect("delivered"),
                h + 7,
                "phase 1, partition {p}: first held message at offset {h}, so exactly 8 out past the commit"
            );
        }
    }
    assert!(
        !first_held.is_empty(),
        "no partition holds a message: {}",
        rec.progress()
    );
    let ended = sub.close().await;
    eprintln!("commit: first subscription closed ({ended})");

    let (second, _first) = match backend {
        Backend::Kafka(_) => {
            first.signal("TERM");
            let status = first
                .wait_exit(Duration::from_secs(30))
                .await
                .expect("graceful stop");
            assert!(status.success(), "weft exited with {status} on SIGTERM");
            (
                start(&app, res.as_ref().map(|d| d.path())).await,
                Some(first),
            )
        }
        Backend::Embedded => (first, None),
    };
    let cut = rec.len();
    let _sub = subscribe(
        second.client().await,
        1,
        pubsub,
        &topic,
        &[(PIPELINED, "8")],
        None,
        rec.clone(),
        ack_all(),
    )
    .await;
    wait_until(
        "commit: everything seen",
        Duration::from_secs(120),
        &rec,
        &[&second],
        || rec.seen() >= total,
    )
    .await;
    wait_quiet("commit: phase 2", &rec, &[&second], Duration::from_secs(2)).await;
    rec.assert_complete("pipelined commits");

    let log = rec.log();
    let mut last: HashMap<i64, i64> = HashMap::new();
    for o in &log {
        let l = last.entry(o.partition).or_insert(o.offset);
        *l = (*l).max(o.offset);
    }
    for (p, l) in &last {
        let again: Vec<i64> = log[cut..]
            .iter()
            .filter(|o| o.partition == *p)
            .map(|o| o.offset)
            .collect();
        let from = match first_held.get(p) {
            Some(h) => *h,
            None => parts
                .get(p)
                .and_then(|obs| obs.last())
                .map_or(0, |o| o.offset + 1),
        };
        let expected: Vec<i64> = (from..=*l).collect();
        assert_eq!(
            again, expected,
            "partition {p} after the restart: exactly the suffix from its first unacked message ({:?})",
            first_held.get(p)
        );
    }
    eprintln!(
        "pipelined commits: {} partitions held a message; after the restart each was delivered again from exactly that message; {} deliveries in all for {total} messages",
        first_held.len(),
        log.len()
    );
}

on_both_backends!(
    kafka_pipelined_restart_redelivers_exactly_the_unacked_suffix,
    embedded_pipelined_resubscribe_redelivers_exactly_the_unacked_suffix,
    commit_never_skips_an_unacked_message
);

// === faults in the broker ===

/// The `weft.health` entry of a runtime's metadata for `component`.
async fn component_health(w: &Weft, component: &str) -> serde_json::Value {
    let md = w
        .client()
        .await
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .expect("GetMetadata")
        .into_inner();
    let health: serde_json::Value = md
        .extended_metadata
        .get("weft.health")
        .map(|h| serde_json::from_str(h).expect("weft.health is JSON"))
        .unwrap_or(serde_json::Value::Null);
    health[component].clone()
}

/// Waits (bounded) until the runtime reports `component` healthy or not,
/// in metadata and in `/v1.0/healthz/outbound` (which names it when not).
async fn wait_for_health(w: &Weft, component: &str, healthy: bool, within: Duration) {
    let start = Instant::now();
    loop {
        let h = component_health(w, component).await;
        let outbound = weft_tests::http_get(w.http_port, "/v1.0/healthz/outbound", &[]).await;
        let outbound_ok = match &outbound {
            Some((204, _)) => healthy,
            Some((503, body)) => {
                !healthy
                    && body.contains(&format!("'{component}'"))
                    && body.contains("ERR_OUTBOUND_HEALTH_NOT_READY")
            }
            _ => false,
        };
        if h["healthy"] == healthy && outbound_ok {
            eprintln!(
                "[{:>5.1}s] {component} reported healthy={healthy}: {h} / outbound {outbound:?}",
                start.elapsed().as_secs_f64()
            );
            if !healthy {
                assert!(
                    h["error"].as_str().is_some_and(|e| e.contains(component)),
                    "the reason names the component: {h}"
                );
            }
            return;
        }
        assert!(
            start.elapsed() < within,
            "{component} not reported healthy={healthy} within {within:?}: metadata {h}, outbound {outbound:?}\n{}",
            tail(&w.logs(), 3000)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // /v1.0/healthz is about the runtime itself: it stays 204 throughout.
}

/// Publishes `msgs` in order (per key), retrying a failed request until it
/// succeeds (bounded): `single` with PublishEvent one message at a time,
/// else with BulkPublishEvent in batches. Every failure must name the
/// component and say the broker is unavailable; a message reported
/// published must never be lost (the recorder checks that at the end).
/// Returns how many requests failed.
async fn publish_through_outage(
    client: &mut Client,
    topic: &str,
    msgs: &[(u32, u32)],
    single: bool,
    pace: Duration,
) -> usize {
    let mut failures = 0;
    let chunk = if single { 1 } else { 20 };
    for batch in msgs.chunks(chunk) {
        let start = Instant::now();
        loop {
            let failed: Option<String> = if single {
                let (k, s) = batch[0];
                let req = pb::PublishEventRequest {
                    pubsub_name: "kafka".into(),
                    topic: topic.into(),
                    data: format!("{k}:{s}").into_bytes(),
                    data_content_type: "text/plain".into(),
                    metadata: HashMap::from([("partitionKey".to_string(), key_name(k))]),
                };
                match client.publish_event(req).await {
                    Ok(_) => None,
                    Err(e) => {
                        assert!(
                            e.code() == tonic::Code::Unavailable,
                            "a publish during the outage fails as UNAVAILABLE: {e}"
                        );
                        Some(e.message().to_string())
                    }
                }
            } else {
                let entries = bulk_entries(batch);
                let req = pb::BulkPublishRequest {
                    pubsub_name: "kafka".into(),
                    topic: topic.into(),
                    entries,
                    metadata: HashMap::new(),
                };
                match client.bulk_publish_event(req).await {
                    Ok(r) => r
                        .into_inner()
                        .failed_entries
                        .first()
                        .map(|f| f.error.clone()),
                    Err(e) => {
                        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
                        Some(e.message().to_string())
                    }
                }
            };
            let Some(why) = failed else { break };
            failures += 1;
            assert!(
                why.contains("pubsub 'kafka'"),
                "a failed publish names the component: {why}"
            );
            if failures <= 3 {
                eprintln!("publish failed during the outage (retried): {why}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "a publish did not succeed within 180 s: {why}"
            );
            // Retrying the whole batch keeps each key in order; entries that
            // were written before the failure come twice (seen as a repeat).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(pace).await;
    }
    failures
}

/// Kafka stopped for 15 s and started again mid-stream, on a broker of the
/// test's own: three runtimes consume one group, a fourth publishes. Each
/// publish either succeeds (the idempotent producer holds it through the
/// outage, up to `publishTimeout`) or fails naming the component and is
/// retried; nothing reported published is lost, each key stays in order,
/// the consumers resume from their committed offsets (the only repeats are
/// redeliveries), the runtimes report the component unhealthy while the
/// broker is away and healthy after, and none exits.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_outage_loses_nothing_and_keeps_key_order() {
    let _serial = serial();
    let broker = weft_tests::services::PrivateService::kafka().expect("a private Kafka broker");
    let backend = Backend::Kafka(broker.addr());
    let res = backend.resources().expect("resources");
    let (app, topic) = (unique("outage"), unique("outage"));
    let plan = Plan::random(200, 16_000, 0x7a6e_0017);
    let total = plan.total();
    let rec = Recorder::new(&plan.counts, true);

    let mut wefts: Vec<Weft> = futures::future::join_all(
        (0..3).map(|_| start_logging_assignments(&app, Some(res.path()))),
    )
    .await;
    let mut subs = Vec::new();
    for (i, w) in wefts.iter().enumerate() {
        subs.push(
            subscribe(
                w.client().await,
                i,
                "kafka",
                &topic,
                &[],
                None,
                rec.clone(),
                ack_all(),
            )
            .await,
        );
    }
    wait_for_assignments(&wefts, Duration::from_secs(60)).await;
    wefts.push(start(&format!("{app}-publisher"), Some(res.path())).await);
    wait_for_health(&wefts[3], "kafka", true, Duration::from_secs(30)).await;

    // Four publishers over disjoint keys, paced so publishing spans the
    // outage; one publishes single events (the gRPC status is checked),
    // three in batches.
    let lanes = 4;
    let mut publishers = Vec::new();
    for lane in 0..lanes {
        let mut client = wefts[3].client().await;
        let msgs: Vec<(u32, u32)> = plan
            .msgs
            .iter()
            .copied()
            .filter(|(k, _)| *k as usize % lanes == lane)
            .collect();
        let topic = topic.clone();
        let single = lane == 0;
        let pace = if single {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(40)
        };
        publishers.push(tokio::spawn(async move {
            publish_through_outage(&mut client, &topic, &msgs, single, pace).await
        }));
    }

    let refs: Vec<&Weft> = wefts.iter().collect();
    wait_until(
        "kafka outage: 20 % seen",
        Duration::from_secs(120),
        &rec,
        &refs,
        || rec.seen() >= total / 5,
    )
    .await;
    let before = rec.len();
    broker.stop().expect("stop the broker");
    eprintln!("broker stopped after {before} deliveries");
    let down = Instant::now();
    wait_for_health(&wefts[3], "kafka", false, Duration::from_secs(15)).await;
    wait_for_health(&wefts[0], "kafka", false, Duration::from_secs(15)).await;
    let healthz = weft_tests::http_status(wefts[3].http_port, "/v1.0/healthz").await;
    assert_eq!(healthz, Some(204), "the runtime itself stays healthy");
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(down.elapsed())).await;
    let during = rec.len() - before;
    broker.start().expect("start the broker again");
    eprintln!(
        "broker started again after {:.1} s down ({during} deliveries while it was down)",
        down.elapsed().as_secs_f64()
    );
    wait_for_health(&wefts[3], "kafka", true, Duration::from_secs(60)).await;

    let refs: Vec<&Weft> = wefts.iter().collect();
    wait_until(
        "kafka outage: everything seen",
        Duration::from_secs(300),
        &rec,
        &refs,
        || rec.seen() >= total,
    )
    .await;
    let failures: usize = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::try_join_all(publishers),
    )
    .await
    .expect("publishers finish")
    .expect("publisher")
    .into_iter()
    .sum();
    rec.assert_complete("kafka broker outage");
    let log = rec.log();
    assert_eq!(
        log.len() - total,
        rec.lock().redeliveries,
        "every extra delivery is a counted repeat"
    );
    for (i, w) in wefts.iter_mut().enumerate() {
        assert!(
            w.is_running(),
            "runtime {i} exited:\n{}",
            tail(&w.logs(), 3000)
        );
    }
    eprintln!(
        "kafka outage: {total} messages, {} deliveries ({} repeats), {failures} publish requests failed and were retried",
        log.len(),
        log.len() - total
    );
    for s in subs {
        s.close().await;
    }
}

/// A broker that is not there when the runtime starts: the runtime starts
/// and serves, reports the component unhealthy, refuses publishes with
/// UNAVAILABLE naming it (within `publishTimeout`), and once the broker
/// appears reports it healthy and publishes and delivers. A topic name the
/// broker cannot have is refused naming the topic.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_at_start_then_appears() {
    let _serial = serial();
    let broker =
        weft_tests::services::PrivateService::kafka_unstarted().expect("a private broker's port");
    let dir = tempfile::tempdir().expect("tempdir");
    write_component(
        dir.path(),
        "kafka",
        "pubsub.kafka",
        &[("brokers", &broker.addr()), ("publishTimeout", "4s")],
    );
    let mut w = start(&unique("late"), Some(dir.path())).await;
    wait_for_health(&w, "kafka", false, Duration::from_secs(20)).await;
    let topic = unique("late");
    let mut c = w.client().await;
    let publish = |c: &mut Client, topic: &str| {
        let req = pb::PublishEventRequest {
            pubsub_name: "kafka".into(),
            topic: topic.into(),
            data: b"0:0".to_vec(),
            data_content_type: "text/plain".into(),
            metadata: HashMap::from([("partitionKey".to_string(), key_name(0))]),
        };
        let mut c = c.clone();
        async move { c.publish_event(req).await }
    };
    let err = tokio::time::timeout(Duration::from_secs(30), publish(&mut c, &topic))
        .await
        .expect("a publish with no broker answers within publishTimeout and a margin")
        .expect_err("no broker: the publish fails");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("pubsub 'kafka'"), "{err}");

    broker.start().expect("start the broker");
    wait_for_health(&w, "kafka", true, Duration::from_secs(60)).await;
    let rec = Recorder::new(&[1], true);
    let sub = subscribe(
        c.clone(),
        0,
        "kafka",
        &topic,
        &[],
        None,
        rec.clone(),
        ack_all(),
    )
    .await;
    // The first publishes after the broker appeared may still meet a
    // reconnecting producer; they fail naming the component, never succeed
    // without delivering.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match publish(&mut c, &topic).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
                assert!(
                    Instant::now() < deadline,
                    "no publish succeeded within 60 s of the broker starting: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    wait_until(
        "late broker: delivered",
        Duration::from_secs(60),
        &rec,
        &[&w],
        || rec.seen() >= 1,
    )
    .await;
    rec.assert_complete("late broker");

    let bad = publish(&mut c, "no spaces allowed here")
        .await
        .expect_err("bad topic");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
    assert!(
        bad.message().contains("no spaces allowed here"),
        "names the topic: {bad}"
    );
    assert!(w.is_running(), "{}", w.logs());
    sub.close().await;
}

/// Reads `weft_pubsub_consumer_<what>` for `topic` and `partition` from the
/// runtime's `/metrics`.
async fn consumer_gauge(w: &Weft, what: &str, topic: &str, partition: usize) -> Option<i64> {
    let (_, body) = weft_tests::http_get(w.http_port, "/metrics", &[]).await?;
    let want = format!("partition=\"{partition}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("weft_pubsub_consumer_{what}{{")))
        .find(|l| l.contains(&format!("topic=\"{topic}\"")) && l.contains(&want))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A subscriber that stops acking one key (its partition stuck, strict
/// delivery): the runtime holds at most `maxBufferedMessages` of that
/// partition and pauses it (in `/metrics`), its memory stays bounded while
/// 48 MB more are published to the stuck partition, every other partition
/// of the topic and another subscription keep flowing, and when the app
/// disconnects and subscribes again it gets the stuck partition's events
/// again, in order, with nothing lost.
#[cfg_attr(
    weft_no_kafka,
    ignore = "needs Kafka: scripts/services.sh start kafka; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stuck_subscriber_is_bounded_and_the_rest_flows() {
    let brokers = kafka_brokers();
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (max_msgs, max_bytes) = (100, 256 << 10);
    write_component(
        dir.path(),
        "kafka",
        "pubsub.kafka",
        &[
            ("brokers", &brokers),
            ("partitions", "8"),
            ("maxBufferedMessages", &max_msgs.to_string()),
            ("maxBufferedBytes", &max_bytes.to_string()),
        ],
    );
    let app = unique("stuck");
    let (topic, other_topic) = (unique("stuck"), unique("flowing"));
    let w = start(&app, Some(dir.path())).await;
    let publisher = start(&format!("{app}-pub"), Some(dir.path())).await;

    // Key 0 is stuck; so is every key sharing its partition.
    let keys = 64u32;
    let part =
        |k: u32| weft_components::pubsub::embedded::partition_for_key(key_name(k).as_bytes(), 8);
    let stuck = part(0);
    let (big, per_key) = (3000u32, 20u32);
    let mut counts = vec![per_key; keys as usize];
    counts[0] = big;
    let rec = Recorder::new(&counts, true);
    let hold_key0: Policy = Box::new(|o: &Obs| {
        if o.key == 0 {
            Decision::Hold
        } else {
            Decision::Reply(Status::Success)
        }
    });
    let sub = subscribe(
        w.client().await,
        0,
        "kafka",
        &topic,
        &[],
        None,
        rec.clone(),
        hold_key0,
    )
    .await;
    let other_plan = Plan::round_robin(16, 40);
    let other_rec = Recorder::new(&other_plan.counts, true);
    let other = subscribe(
        w.client().await,
        1,
        "kafka",
        &other_topic,
        &[],
        None,
        other_rec.clone(),
        ack_all(),
    )
    .await;

    let mut pc = publisher.client().await;
    publish(&mut pc, "kafka", &other_topic, &other_plan.msgs[..320], 80).await;
    wait_until(
        "stuck: warm-up",
        Duration::from_secs(120),
        &other_rec,
        &[&w],
        || other_rec.seen() >= 320,
    )
    .await;
    let rss_before = weft_tests::procfs::status_kb(w.pid(), "VmRSS:");

    // 48 MB for the stuck key (16 KiB each), small events for the others.
    let pad = "x".repeat(16 << 10);
    for chunk in (0..big).collect::<Vec<_>>().chunks(100) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| pb::BulkPublishRequestEntry {
                entry_id: i.to_string(),
                event: format!("0:{s}:{pad}").into_bytes(),
                content_type: "text/plain".into(),
                metadata: HashMap::from([("partitionKey".to_string(), key_name(0))]),
            })
            .collect();
        let resp = pc
            .bulk_publish_event(pb::BulkPublishRequest {
                pubsub_name: "kafka".into(),
                topic: topic.clone(),
                entries,
                metadata: HashMap::new(),
            })
            .await
            .expect("publish the stuck key's events")
            .into_inner();
        assert!(
            resp.failed_entries.is_empty(),
            "{:?}",
            resp.failed_entries.first()
        );
    }
    let rest: Vec<(u32, u32)> = Plan::round_robin(keys, per_key)
        .msgs
        .into_iter()
        .filter(|(k, _)| *k != 0)
        .collect();
    publish(&mut pc, "kafka", &topic, &rest, 200).await;
    publish(&mut pc, "kafka", &other_topic, &other_plan.msgs[320..], 80).await;

    // Every partition but the stuck one delivers all; the other
    // subscription too.
    let flowing: usize = (1..keys)
        .filter(|k| part(*k) != stuck)
        .map(|_| per_key as usize)
        .sum();
    let flowing_seen = || {
        rec.log()
            .iter()
            .filter(|o| o.partition as usize != stuck && o.seq + 1 == per_key)
            .count()
    };
    let flowing_keys = (1..keys).filter(|k| part(*k) != stuck).count();
    wait_until(
        "stuck: other partitions",
        Duration::from_secs(120),
        &rec,
        &[&w],
        || flowing_seen() >= flowing_keys,
    )
    .await;
    wait_until(
        "stuck: other subscription",
        Duration::from_secs(120),
        &other_rec,
        &[&w],
        || other_rec.seen() >= other_plan.total(),
    )
    .await;
    other_rec.assert_complete("the subscription beside the stuck one");
    // The stuck partition: paused, holding no more than its limit (plus
    // what one poll may add), one event out.
    let start_wait = Instant::now();
    let (held, paused) = loop {
        let held = consumer_gauge(&w, "held", &topic, stuck).await;
        let paused = consumer_gauge(&w, "paused", &topic, stuck).await;
        if paused == Some(1) || start_wait.elapsed() > Duration::from_secs(30) {
            break (held, paused);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        paused,
        Some(1),
        "the stuck partition {stuck} is paused (held {held:?})"
    );
    let held = held.expect("held gauge");
    // The stuck key's 16 KiB events reach maxBufferedBytes first.
    let by_bytes = (max_bytes / (16 << 10)) as i64;
    assert!(
        held >= by_bytes / 4 && held <= 2 * by_bytes && held <= max_msgs as i64,
        "the stuck partition holds about maxBufferedBytes ({max_bytes} B = {by_bytes} events): {held}"
    );
    let rss_after = weft_tests::procfs::status_kb(w.pid(), "VmRSS:");
    let growth_mb = (rss_after as f64 - rss_before as f64) / 1024.0;
    eprintln!(
        "stuck partition {stuck}: held {held}, paused; {flowing} events of the other partitions delivered; runtime RSS {} -> {} kB ({growth_mb:+.1} MB) while 48 MB waited for it",
        rss_before, rss_after
    );
    assert!(
        growth_mb < 24.0,
        "memory stays bounded while a subscriber is stuck: RSS grew {growth_mb:.1} MB"
    );
    let held_seen: Vec<Obs> = rec.log().into_iter().filter(|o| o.key == 0).collect();
    assert_eq!(
        held_seen.len(),
        1,
        "strict delivery: one event of the stuck key out: {held_seen:?}"
    );

    // The app drops its stream and subscribes again: the stuck partition
    // starts over from its committed position, in order, nothing lost.
    sub.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = subscribe(
        w.client().await,
        2,
        "kafka",
        &topic,
        &[],
        None,
        rec.clone(),
        ack_all(),
    )
    .await;
    wait_until(
        "stuck: after reconnecting",
        Duration::from_secs(180),
        &rec,
        &[&w],
        || rec.seen() >= rec.lock().total,
    )
    .await;
    rec.assert_complete("a stuck subscriber that reconnected");
    let log = rec.log();
    assert!(
        log.iter().any(|o| o.key == 0 && o.seq == 0 && o.sub == 2),
        "the held event came again after the reconnect"
    );
    again.close().await;
    other.close().await;
}
