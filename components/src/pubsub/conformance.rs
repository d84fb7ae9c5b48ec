//! Conformance suite every pub/sub backend runs (from its tests).
//!
//! [`run_all`] runs every check; each check is also public. Checks publish
//! to fresh topics named `<topic_prefix><check>-<random>`, so they can share
//! a broker with each other and with other runs. A failing check panics with
//! a message naming the check and what differed.
//!
//! Assumptions about the backend, beyond the contract in the module docs:
//!
//! * a topic exists (or is created) when first published to or subscribed
//!   to, with more than one partition if the backend has partitions;
//! * a new consumer group starts at the oldest message of a fresh topic
//!   (Kafka: `auto.offset.reset=earliest`), so nothing published right after
//!   subscribing is skipped while the group is still forming.
//!
//! Timing: nothing asserts that an operation is fast. Every wait is bounded
//! by [`Settings::timeout`] so a broken backend fails instead of hanging;
//! [`Settings::settle`] gives a networked group time to finish a rebalance
//! before a check publishes; [`Settings::quiet`] is how long a check waits
//! to conclude that nothing more arrives.
//!
//! Ordering checks accept redelivery: for each key the processed sequence
//! numbers must each be the previous one plus one, or a step back to one
//! already seen (a redelivered suffix). A gap — which a reordering always
//! produces — fails the check.
//!
//! The `pipelined_*` checks subscribe with `max_in_flight_per_partition > 1`
//! and pin what pipelining promises: order per key, no loss, a full window
//! and no more, commits only over the acked prefix (a new member starts at
//! the first unacked message, repeating later acked ones), and a RETRY in
//! the middle of a window redelivering the retried message and then the
//! rest in order.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Ack, Delivery, Message, PubSub, PubSubError, PublishRequest, SubscribeOptions};

/// How the suite waits on a backend.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prepended to every topic name the checks create.
    pub topic_prefix: String,
    /// Upper bound for any wait on an expected delivery.
    pub timeout: Duration,
    /// Wait after subscribing and before publishing, for a group to settle.
    pub settle: Duration,
    /// How long to wait before concluding that nothing (more) arrives.
    pub quiet: Duration,
    /// `retry_backoff` of the checks' subscriptions.
    pub retry_backoff: Duration,
    /// `revoke_timeout` of the checks' subscriptions.
    pub revoke_timeout: Duration,
}

impl Settings {
    /// For an in-process broker, whose group assignment is immediate.
    pub fn in_process() -> Self {
        Self {
            topic_prefix: "conformance-".into(),
            timeout: Duration::from_secs(30),
            settle: Duration::from_millis(50),
            quiet: Duration::from_millis(300),
            retry_backoff: Duration::from_millis(50),
            revoke_timeout: Duration::from_secs(2),
        }
    }

    /// For a networked broker such as Kafka, where rebalances take seconds.
    pub fn networked() -> Self {
        Self {
            topic_prefix: "conformance-".into(),
            timeout: Duration::from_secs(120),
            settle: Duration::from_secs(10),
            quiet: Duration::from_secs(3),
            retry_backoff: Duration::from_millis(200),
            revoke_timeout: Duration::from_secs(5),
        }
    }
}

/// How many messages of a partition a check's subscriptions have out at
/// once: the checks that hold for both are written once and run for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// One at a time (`max_in_flight_per_partition = 1`, the default).
    Strict,
    /// Up to this many (pipelining).
    Pipelined(usize),
}

impl Window {
    fn options(self, s: &Settings, topic: &str, group: &str) -> SubscribeOptions {
        match self {
            Window::Strict => options(s, topic, group),
            Window::Pipelined(n) => pipelined(s, topic, group, n),
        }
    }

    /// The check's name for this window: `strict` or `pipelined`.
    fn name(self, strict: &'static str, pipelined: &'static str) -> &'static str {
        match self {
            Window::Strict => strict,
            Window::Pipelined(_) => pipelined,
        }
    }
}

/// What one conformance test runs its check on, how it waits, and what to
/// undo afterwards.
#[async_trait::async_trait]
pub trait PubSubFixture: Send + Sync + Sized {
    fn pubsub(&self) -> &dyn PubSub;
    fn settings(&self) -> &Settings;
    async fn finish(self);
}

/// A backend and its settings.
#[async_trait::async_trait]
impl PubSubFixture for (Arc<dyn PubSub>, Settings) {
    fn pubsub(&self) -> &dyn PubSub {
        self.0.as_ref()
    }

    fn settings(&self) -> &Settings {
        &self.1
    }

    async fn finish(self) {
        self.0.close().await;
    }
}

/// Writes one `#[tokio::test]` per check (the windowed ones once strict,
/// once pipelined) for a backend, in a module named after it:
/// `pubsub_conformance!(embedded, setup())`, where the second argument is
/// an expression giving a future of a [`PubSubFixture`]. Attributes
/// before the name go on every test; `current_thread` after the setup runs
/// the tests on a one-thread runtime.
#[macro_export]
macro_rules! pubsub_conformance {
    ($(#[$attr:meta])* $backend:ident, $setup:expr $(, $flavor:ident)?) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::pubsub_conformance!(@tests [$(#[$attr])*] [$($flavor)?] $setup;
                empty_topic_is_invalid, publish_bulk_results, retry_keeps_order, drop_moves_on,
                max_in_flight_limits_partitions, members_split_partitions,
                new_member_resumes_from_committed, groups_each_see_everything,
                pipelined_window_commits_only_the_acked_prefix,
                pipelined_retry_redelivers_the_rest_in_order, pipelined_drop_keeps_order);
            $crate::pubsub_conformance!(@windowed [$(#[$attr])*] [$($flavor)?] $setup;
                per_key_order_no_loss, unacked_go_to_other_member);
        }
    };
    (@tests $attrs:tt $flavor:tt $setup:expr; $check:ident $(, $rest:ident)*) => {
        $crate::pubsub_conformance!(@one $attrs $flavor $setup; $check, $check, ());
        $crate::pubsub_conformance!(@tests $attrs $flavor $setup; $($rest),*);
    };
    (@tests $attrs:tt $flavor:tt $setup:expr;) => {};
    (@windowed $attrs:tt $flavor:tt $setup:expr; $check:ident $(, $rest:ident)*) => {
        mod $check {
            #[allow(unused_imports)]
            use super::*;
            $crate::pubsub_conformance!(@one $attrs $flavor $setup; strict, $check,
                ($crate::pubsub::conformance::Window::Strict));
            $crate::pubsub_conformance!(@one $attrs $flavor $setup; pipelined, $check,
                ($crate::pubsub::conformance::Window::Pipelined(8)));
        }
        $crate::pubsub_conformance!(@windowed $attrs $flavor $setup; $($rest),*);
    };
    (@windowed $attrs:tt $flavor:tt $setup:expr;) => {};
    (@one [$(#[$attr:meta])*] [] $setup:expr; $test:ident, $check:ident, ($($window:expr)?)) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $test() {
            $crate::pubsub_conformance!(@body $setup; $check, ($($window)?));
        }
    };
    (@one [$(#[$attr:meta])*] [current_thread] $setup:expr; $test:ident, $check:ident, ($($window:expr)?)) => {
        $(#[$attr])*
        #[tokio::test(flavor = "current_thread")]
        async fn $test() {
            $crate::pubsub_conformance!(@body $setup; $check, ($($window)?));
        }
    };
    (@body $setup:expr; $check:ident, ($($window:expr)?)) => {{
        use $crate::pubsub::conformance::PubSubFixture as _;
        let fixture = $setup.await;
        $crate::pubsub::conformance::$check(fixture.pubsub(), fixture.settings() $(, $window)?).await;
        fixture.finish().await;
    }};
}

/// Runs every check on `ps`.
pub async fn run_all(ps: &dyn PubSub, s: &Settings) {
    empty_topic_is_invalid(ps, s).await;
    publish_bulk_results(ps, s).await;
    for w in [Window::Strict, Window::Pipelined(16)] {
        per_key_order_no_loss(ps, s, w).await;
    }
    retry_keeps_order(ps, s).await;
    drop_moves_on(ps, s).await;
    max_in_flight_limits_partitions(ps, s).await;
    members_split_partitions(ps, s).await;
    for w in [Window::Strict, Window::Pipelined(8)] {
        unacked_go_to_other_member(ps, s, w).await;
    }
    new_member_resumes_from_committed(ps, s).await;
    groups_each_see_everything(ps, s).await;
    pipelined_window_commits_only_the_acked_prefix(ps, s).await;
    pipelined_retry_redelivers_the_rest_in_order(ps, s).await;
    pipelined_drop_keeps_order(ps, s).await;
}

// === helpers ===

fn topic(s: &Settings, check: &str) -> String {
    format!(
        "{}{check}-{}",
        s.topic_prefix,
        uuid::Uuid::new_v4().simple()
    )
}

fn group(check: &str) -> String {
    format!("conformance-{check}-{}", uuid::Uuid::new_v4().simple())
}

fn options(s: &Settings, topic: &str, group: &str) -> SubscribeOptions {
    let mut o = SubscribeOptions::new(topic, group);
    o.retry_backoff = s.retry_backoff;
    o.revoke_timeout = s.revoke_timeout;
    o
}

/// [`options`] with up to `window` messages per partition in flight.
fn pipelined(s: &Settings, topic: &str, group: &str, window: usize) -> SubscribeOptions {
    let mut o = options(s, topic, group);
    o.max_in_flight_per_partition = window;
    o
}

/// Receives `n` deliveries and checks their (seq, attempt) in order.
async fn recv_seqs(
    check: &str,
    s: &Settings,
    rx: &mut mpsc::Receiver<Delivery>,
    expected: &[(u64, u32)],
    what: &str,
) -> Vec<Delivery> {
    let mut got = Vec::with_capacity(expected.len());
    for i in 0..expected.len() {
        got.push(recv(check, s, rx, &format!("{what}: delivery {i}")).await);
    }
    let seen: Vec<(u64, u32)> = got
        .iter()
        .map(|d| (parse(check, &d.message).1, d.message.attempt))
        .collect();
    assert_eq!(seen, expected, "{check}: {what}: (seq, attempt) in order");
    got
}

fn msg(topic: &str, key: &str, seq: u64) -> PublishRequest {
    PublishRequest {
        topic: topic.to_string(),
        key: Some(key.to_string()),
        data: format!("{key}|{seq}").into_bytes(),
        headers: HashMap::from([("seq".to_string(), seq.to_string())]),
    }
}

/// `keys` keys × `per_key` messages, interleaved (seq 0 of every key, then seq 1, …).
fn batch(topic: &str, keys: usize, per_key: u64) -> Vec<PublishRequest> {
    (0..per_key)
        .flat_map(|seq| (0..keys).map(move |k| (k, seq)))
        .map(|(k, seq)| msg(topic, &format!("key-{k}"), seq))
        .collect()
}

fn parse(check: &str, m: &Message) -> (String, u64) {
    let text = String::from_utf8_lossy(&m.data);
    let parsed = text
        .split_once('|')
        .and_then(|(k, s)| Some((k.to_string(), s.parse().ok()?)));
    match parsed {
        Some(p) => p,
        None => panic!("{check}: unexpected payload {text:?}"),
    }
}

async fn publish_all(check: &str, ps: &dyn PubSub, reqs: Vec<PublishRequest>) {
    for chunk in reqs.chunks(500) {
        for (i, r) in ps
            .publish_bulk(chunk.to_vec())
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = r {
                panic!("{check}: publishing message {i} of a bulk failed: {e}");
            }
        }
    }
}

async fn subscribe(check: &str, ps: &dyn PubSub, o: SubscribeOptions) -> mpsc::Receiver<Delivery> {
    match ps.subscribe(o).await {
        Ok(rx) => rx,
        Err(e) => panic!("{check}: subscribe failed: {e}"),
    }
}

async fn recv(
    check: &str,
    s: &Settings,
    rx: &mut mpsc::Receiver<Delivery>,
    what: &str,
) -> Delivery {
    match tokio::time::timeout(s.timeout, rx.recv()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("{check}: subscription ended while waiting for {what}"),
        Err(_) => panic!("{check}: {what} not delivered within {:?}", s.timeout),
    }
}

async fn expect_nothing(check: &str, s: &Settings, rx: &mut mpsc::Receiver<Delivery>, why: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(s.quiet, rx.recv()).await {
        panic!(
            "{check}: {why}, but got {:?} (partition {}, offset {}, attempt {})",
            String::from_utf8_lossy(&d.message.data),
            d.message.partition,
            d.message.offset,
            d.message.attempt
        );
    }
}

/// What a group processed, in processing order, checked as it goes.
#[derive(Default)]
struct Processed {
    /// key → processed sequence numbers.
    seqs: HashMap<String, Vec<u64>>,
    /// key → partition it was seen on.
    partitions: HashMap<String, i32>,
    /// member → partitions it processed.
    by_member: HashMap<usize, BTreeSet<i32>>,
    total: usize,
    errors: Vec<String>,
}

impl Processed {
    fn record(&mut self, member: usize, m: &Message, key: String, seq: u64) {
        self.total += 1;
        self.by_member
            .entry(member)
            .or_default()
            .insert(m.partition);
        if let Some(p) = self.partitions.insert(key.clone(), m.partition) {
            if p != m.partition && self.errors.len() < 10 {
                self.errors.push(format!(
                    "key {key} seen on partitions {p} and {}",
                    m.partition
                ));
            }
        }
        let seqs = self.seqs.entry(key.clone()).or_default();
        let ok = match seqs.last() {
            None => seq == 0,
            Some(&last) => seq == last + 1 || seq <= last,
        };
        if !ok && self.errors.len() < 10 {
            self.errors.push(format!(
                "key {key}: processed seq {seq} after {:?} (a gap: lost or reordered)",
                seqs.iter().rev().take(5).rev().collect::<Vec<_>>()
            ));
        }
        seqs.push(seq);
    }

    /// Whether every key has reached `per_key - 1` (with no gap, as checked).
    fn complete(&self, keys: usize, per_key: u64) -> bool {
        self.seqs.len() == keys
            && self
                .seqs
                .values()
                .all(|v| v.iter().max() == Some(&(per_key - 1)))
    }

    fn summary(&self, keys: usize, per_key: u64) -> String {
        let missing: Vec<String> = (0..keys)
            .map(|k| format!("key-{k}"))
            .filter_map(|k| {
                let max = self.seqs.get(&k).and_then(|v| v.iter().max().copied());
                (max != Some(per_key - 1)).then(|| format!("{k} up to {max:?}"))
            })
            .take(10)
            .collect();
        format!(
            "{} processed; incomplete keys (first 10): {missing:?}; errors: {:?}",
            self.total, self.errors
        )
    }
}

type Shared = (Arc<Mutex<Processed>>, watch::Sender<usize>);

fn shared() -> Shared {
    (Arc::default(), watch::channel(0).0)
}

/// Processes (records, then acks `Success`) every delivery until the
/// receiver ends or the task is aborted.
fn consume(
    check: &'static str,
    member: usize,
    mut rx: mpsc::Receiver<Delivery>,
    sh: &Shared,
) -> JoinHandle<()> {
    let (log, progress) = (sh.0.clone(), sh.1.clone());
    tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            let (key, seq) = parse(check, &d.message);
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(member, &d.message, key, seq);
            d.ack(Ack::Success);
            progress.send_modify(|n| *n += 1);
        }
    })
}

/// Waits (bounded) until every key is complete; panics with a summary if not.
async fn wait_complete(check: &str, s: &Settings, sh: &Shared, keys: usize, per_key: u64) {
    let mut progress = sh.1.subscribe();
    let log = sh.0.clone();
    let done = tokio::time::timeout(s.timeout, async {
        loop {
            if log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .complete(keys, per_key)
            {
                return;
            }
            if progress.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    let p = sh.0.lock().unwrap_or_else(|e| e.into_inner());
    if done.is_err() || !p.complete(keys, per_key) {
        panic!(
            "{check}: not everything was processed within {:?}: {}",
            s.timeout,
            p.summary(keys, per_key)
        );
    }
    if !p.errors.is_empty() {
        panic!("{check}: {}", p.summary(keys, per_key));
    }
}

// === checks ===

/// Publishing or subscribing with an empty topic is `InvalidRequest`.
pub async fn empty_topic_is_invalid(ps: &dyn PubSub, s: &Settings) {
    let check = "empty_topic_is_invalid";
    let r = ps.publish(msg("", "k", 0)).await;
    assert!(
        matches!(r, Err(PubSubError::InvalidRequest(_))),
        "{check}: publish: {r:?}"
    );
    let r = ps.subscribe(options(s, "", &group(check))).await;
    assert!(
        matches!(r, Err(PubSubError::InvalidRequest(_))),
        "{check}: subscribe: {:?}",
        r.err()
    );
}

/// `publish_bulk` answers one result per message, in order, and the
/// messages arrive in order.
pub async fn publish_bulk_results(ps: &dyn PubSub, s: &Settings) {
    let check = "publish_bulk_results";
    assert!(
        ps.publish_bulk(Vec::new()).await.is_empty(),
        "{check}: empty bulk"
    );
    let t = topic(s, check);
    let mut rx = subscribe(check, ps, options(s, &t, &group(check))).await;
    tokio::time::sleep(s.settle).await;
    let reqs: Vec<_> = (0..10).map(|i| msg(&t, "k", i)).collect();
    let results = ps.publish_bulk(reqs).await;
    assert_eq!(results.len(), 10, "{check}: one result per message");
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "{check}: message {i}: {r:?}");
    }
    for i in 0..10 {
        let d = recv(check, s, &mut rx, &format!("message {i}")).await;
        assert_eq!(parse(check, &d.message), ("k".to_string(), i), "{check}");
        assert_eq!(d.message.topic, t, "{check}: topic");
        assert_eq!(d.message.key.as_deref(), Some("k"), "{check}: key");
        assert_eq!(
            d.message.headers.get("seq"),
            Some(&i.to_string()),
            "{check}: headers"
        );
        assert_eq!(d.message.attempt, 0, "{check}: attempt");
        d.ack(Ack::Success);
    }
}

/// One subscription sees every message of many keys, each key in publish
/// order and always on the same partition, each message once when all are
/// acked — with one message of a partition out at a time, or a window.
pub async fn per_key_order_no_loss(ps: &dyn PubSub, s: &Settings, w: Window) {
    let check = w.name("per_key_order_no_loss", "pipelined_per_key_order_no_loss");
    let (keys, per_key) = (50, 40);
    let t = topic(s, check);
    let rx = subscribe(check, ps, w.options(s, &t, &group(check))).await;
    tokio::time::sleep(s.settle).await;
    let sh = shared();
    let task = consume(check, 0, rx, &sh);
    publish_all(check, ps, batch(&t, keys, per_key)).await;
    wait_complete(check, s, &sh, keys, per_key).await;
    task.abort();
    let p = sh.0.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        p.total,
        keys * per_key as usize,
        "{check}: a single member all-acking sees each message once"
    );
}

/// `Retry` redelivers the same message (attempt + 1) before later ones.
pub async fn retry_keeps_order(ps: &dyn PubSub, s: &Settings) {
    let check = "retry_keeps_order";
    let t = topic(s, check);
    let mut rx = subscribe(check, ps, options(s, &t, &group(check))).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, (0..6).map(|i| msg(&t, "k", i)).collect()).await;
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let d = recv(check, s, &mut rx, &format!("delivery {}", seen.len())).await;
        let (_, seq) = parse(check, &d.message);
        seen.push((seq, d.message.attempt));
        let ack = if seq == 2 && d.message.attempt < 2 {
            Ack::Retry
        } else {
            Ack::Success
        };
        d.ack(ack);
    }
    let expected = vec![
        (0, 0),
        (1, 0),
        (2, 0),
        (2, 1),
        (2, 2),
        (3, 0),
        (4, 0),
        (5, 0),
    ];
    assert_eq!(seen, expected, "{check}: (seq, attempt) in delivery order");
    expect_nothing(check, s, &mut rx, "everything was acked").await;
}

/// `Drop` moves on and commits: a later member of the group starts after it.
pub async fn drop_moves_on(ps: &dyn PubSub, s: &Settings) {
    let check = "drop_moves_on";
    let t = topic(s, check);
    let g = group(check);
    let mut rx = subscribe(check, ps, options(s, &t, &g)).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, (0..4).map(|i| msg(&t, "k", i)).collect()).await;
    let mut seen = Vec::new();
    for i in 0..4 {
        let d = recv(check, s, &mut rx, &format!("delivery {i}")).await;
        let (_, seq) = parse(check, &d.message);
        seen.push((seq, d.message.attempt));
        d.ack(if seq == 1 { Ack::Drop } else { Ack::Success });
    }
    assert_eq!(seen, vec![(0, 0), (1, 0), (2, 0), (3, 0)], "{check}");
    expect_nothing(check, s, &mut rx, "a dropped message is not redelivered").await;
    drop(rx);
    let mut rx = subscribe(check, ps, options(s, &t, &g)).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, vec![msg(&t, "k", 4)]).await;
    let d = recv(check, s, &mut rx, "the message after the committed ones").await;
    assert_eq!(
        parse(check, &d.message).1,
        4,
        "{check}: the new member resumes after the dropped and acked messages"
    );
    d.ack(Ack::Success);
}

/// With `max_in_flight = 1` a second message (of any partition) waits for
/// the first one's ack.
pub async fn max_in_flight_limits_partitions(ps: &dyn PubSub, s: &Settings) {
    let check = "max_in_flight_limits_partitions";
    let t = topic(s, check);
    let mut o = options(s, &t, &group(check));
    o.max_in_flight = 1;
    let mut rx = subscribe(check, ps, o).await;
    tokio::time::sleep(s.settle).await;
    publish_all(
        check,
        ps,
        (0..5).map(|k| msg(&t, &format!("key-{k}"), 0)).collect(),
    )
    .await;
    let mut keys = BTreeSet::new();
    for i in 0..5 {
        let d = recv(check, s, &mut rx, &format!("message {i}")).await;
        keys.insert(parse(check, &d.message).0);
        if i < 4 {
            expect_nothing(
                check,
                s,
                &mut rx,
                "max_in_flight is 1 and a message is unacked",
            )
            .await;
        }
        d.ack(Ack::Success);
    }
    assert_eq!(keys.len(), 5, "{check}: every key once");
}

/// Two members of a group split the partitions and, all acking, together
/// process every message exactly once.
pub async fn members_split_partitions(ps: &dyn PubSub, s: &Settings) {
    let check = "members_split_partitions";
    let (keys, per_key) = (40, 25);
    let t = topic(s, check);
    let g = group(check);
    let a = subscribe(check, ps, options(s, &t, &g)).await;
    let b = subscribe(check, ps, options(s, &t, &g)).await;
    tokio::time::sleep(s.settle).await;
    let sh = shared();
    let tasks = [consume(check, 0, a, &sh), consume(check, 1, b, &sh)];
    publish_all(check, ps, batch(&t, keys, per_key)).await;
    wait_complete(check, s, &sh, keys, per_key).await;
    tokio::time::sleep(s.quiet).await;
    for task in tasks {
        task.abort();
    }
    let p = sh.0.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        p.total,
        keys * per_key as usize,
        "{check}: exactly once: {}",
        p.summary(keys, per_key)
    );
    let (pa, pb) = (
        p.by_member.get(&0).cloned().unwrap_or_default(),
        p.by_member.get(&1).cloned().unwrap_or_default(),
    );
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "{check}: both members get partitions: {pa:?} / {pb:?}"
    );
    assert!(
        pa.is_disjoint(&pb),
        "{check}: a partition has one owner: {pa:?} / {pb:?}"
    );
}

/// A member that leaves with unacked messages (one per partition, or a
/// window's worth): the other member gets them (possibly repeating a
/// suffix, never out of order), nothing is lost.
pub async fn unacked_go_to_other_member(ps: &dyn PubSub, s: &Settings, w: Window) {
    let check = w.name(
        "unacked_go_to_other_member",
        "pipelined_unacked_go_to_other_member",
    );
    let (keys, per_key) = (40, 25);
    // How many messages member A takes and leaves unacked, and the fewest
    // that show it held what its window allows.
    let (hold, at_least) = match w {
        Window::Strict => (4, 1),
        Window::Pipelined(_) => (12, 2),
    };
    let t = topic(s, check);
    let g = group(check);
    let mut a = subscribe(check, ps, w.options(s, &t, &g)).await;
    let b = subscribe(check, ps, w.options(s, &t, &g)).await;
    tokio::time::sleep(s.settle).await;
    let sh = shared();
    let task_b = consume(check, 1, b, &sh);
    publish_all(check, ps, batch(&t, keys, per_key)).await;
    // Member A processes 20 messages, then takes some more without acking and leaves.
    for i in 0..20 {
        let d = recv(check, s, &mut a, &format!("member A's message {i}")).await;
        let (key, seq) = parse(check, &d.message);
        sh.0.lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(0, &d.message, key, seq);
        d.ack(Ack::Success);
        sh.1.send_modify(|n| *n += 1);
    }
    let mut held = Vec::new();
    while held.len() < hold {
        match tokio::time::timeout(s.quiet, a.recv()).await {
            Ok(Some(d)) => held.push(d),
            _ => break,
        }
    }
    assert!(
        held.len() >= at_least,
        "{check}: member A got {} messages to leave unacked, expected at least {at_least}",
        held.len()
    );
    drop(a);
    drop(held);
    wait_complete(check, s, &sh, keys, per_key).await;
    task_b.abort();
}

/// A new member of a group starts at the committed offsets.
pub async fn new_member_resumes_from_committed(ps: &dyn PubSub, s: &Settings) {
    let check = "new_member_resumes_from_committed";
    let t = topic(s, check);
    let g = group(check);
    let mut a = subscribe(check, ps, options(s, &t, &g)).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, (0..10).map(|i| msg(&t, "k", i)).collect()).await;
    for i in 0..5 {
        let d = recv(check, s, &mut a, &format!("message {i}")).await;
        assert_eq!(parse(check, &d.message).1, i, "{check}");
        d.ack(Ack::Success);
    }
    let unacked = recv(check, s, &mut a, "message 5").await;
    assert_eq!(parse(check, &unacked.message).1, 5, "{check}");
    drop(a);
    drop(unacked);
    let mut b = subscribe(check, ps, options(s, &t, &g)).await;
    for i in 5..10 {
        let d = recv(check, s, &mut b, &format!("message {i} on the new member")).await;
        assert_eq!(
            parse(check, &d.message).1,
            i,
            "{check}: the new member resumes at the first unacked message"
        );
        d.ack(Ack::Success);
    }
    expect_nothing(check, s, &mut b, "everything was acked").await;
}

/// Each group sees every message.
pub async fn groups_each_see_everything(ps: &dyn PubSub, s: &Settings) {
    let check = "groups_each_see_everything";
    let (keys, per_key) = (10, 20);
    let t = topic(s, check);
    let a = subscribe(check, ps, options(s, &t, &group(check))).await;
    let b = subscribe(check, ps, options(s, &t, &group(check))).await;
    tokio::time::sleep(s.settle).await;
    let (sa, sb) = (shared(), shared());
    let tasks = [consume(check, 0, a, &sa), consume(check, 0, b, &sb)];
    publish_all(check, ps, batch(&t, keys, per_key)).await;
    wait_complete(check, s, &sa, keys, per_key).await;
    wait_complete(check, s, &sb, keys, per_key).await;
    for task in tasks {
        task.abort();
    }
}

// === pipelining (max_in_flight_per_partition > 1) ===

/// A window of 4 on one partition: 4 messages arrive without acks and no
/// more; acks of later ones do not move it while the first is unacked; once
/// it is, the next 4 come. A member leaving with one unacked message: the
/// next member starts exactly there, repeating the later (acked) ones.
pub async fn pipelined_window_commits_only_the_acked_prefix(ps: &dyn PubSub, s: &Settings) {
    let check = "pipelined_window_commits_only_the_acked_prefix";
    let t = topic(s, check);
    let g = group(check);
    let mut a = subscribe(check, ps, pipelined(s, &t, &g, 4)).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, (0..10).map(|i| msg(&t, "k", i)).collect()).await;
    let mut first = recv_seqs(
        check,
        s,
        &mut a,
        &[(0, 0), (1, 0), (2, 0), (3, 0)],
        "a full window",
    )
    .await;
    expect_nothing(check, s, &mut a, "the window of 4 is full").await;
    let m0 = first.remove(0);
    for d in first {
        d.ack(Ack::Success);
    }
    expect_nothing(
        check,
        s,
        &mut a,
        "messages 1-3 are acked but 0 is not: the window does not move",
    )
    .await;
    m0.ack(Ack::Success);
    let mut second = recv_seqs(
        check,
        s,
        &mut a,
        &[(4, 0), (5, 0), (6, 0), (7, 0)],
        "the next window",
    )
    .await;
    // Ack 5 and 7, keep 4 and 6 unacked, leave.
    let m7 = second.remove(3);
    let m5 = second.remove(1);
    m5.ack(Ack::Success);
    m7.ack(Ack::Success);
    drop(a);
    drop(second);
    let mut b = subscribe(check, ps, pipelined(s, &t, &g, 4)).await;
    let rest = recv_seqs(
        check,
        s,
        &mut b,
        &[(4, 0), (5, 0), (6, 0), (7, 0)],
        "the new member: from the first unacked message (4), acked 5 and 7 again",
    )
    .await;
    for d in rest {
        d.ack(Ack::Success);
    }
    for d in recv_seqs(check, s, &mut b, &[(8, 0), (9, 0)], "the rest").await {
        d.ack(Ack::Success);
    }
    expect_nothing(check, s, &mut b, "everything was acked").await;
}

/// RETRY of the second message of a window: it comes again (attempt 1),
/// then everything after it in order — the later message that was already
/// acked too; acks of hand-outs after it that were made before the RETRY
/// count for nothing, the ack of the message before it does.
pub async fn pipelined_retry_redelivers_the_rest_in_order(ps: &dyn PubSub, s: &Settings) {
    let check = "pipelined_retry_redelivers_the_rest_in_order";
    let t = topic(s, check);
    let g = group(check);
    let mut a = subscribe(check, ps, pipelined(s, &t, &g, 4)).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, (0..8).map(|i| msg(&t, "k", i)).collect()).await;
    let mut w = recv_seqs(
        check,
        s,
        &mut a,
        &[(0, 0), (1, 0), (2, 0), (3, 0)],
        "a full window",
    )
    .await;
    let m3 = w.pop().expect("4 deliveries");
    let m2 = w.pop().expect("4 deliveries");
    let m1 = w.pop().expect("4 deliveries");
    let m0 = w.pop().expect("4 deliveries");
    m2.ack(Ack::Success);
    m1.ack(Ack::Retry);
    // 0 came before the retried message: its ack counts (and commits 0).
    m0.ack(Ack::Success);
    // 3 was handed out before the RETRY of 1: its ack no longer counts.
    m3.ack(Ack::Success);
    let again = recv_seqs(
        check,
        s,
        &mut a,
        &[(1, 1), (2, 0), (3, 0), (4, 0)],
        "after the RETRY of 1: 1 again, then 2, 3 (already acked) and 4 in order",
    )
    .await;
    expect_nothing(check, s, &mut a, "the window of 4 is full again").await;
    // Leave without acking: only 0 was committed.
    drop(a);
    drop(again);
    let mut b = subscribe(check, ps, pipelined(s, &t, &g, 4)).await;
    let mut expected_seq = 1;
    while expected_seq < 8 {
        let d = recv(
            check,
            s,
            &mut b,
            &format!("message {expected_seq} on the new member"),
        )
        .await;
        assert_eq!(
            parse(check, &d.message).1,
            expected_seq,
            "{check}: the new member resumes at 1 (the only commit was 0) and goes on in order"
        );
        expected_seq += 1;
        d.ack(Ack::Success);
    }
    expect_nothing(check, s, &mut b, "everything was acked").await;
}

/// DROP in the middle of a window counts as acked: the rest stays in order,
/// nothing is redelivered, and the commit moves past the dropped message.
pub async fn pipelined_drop_keeps_order(ps: &dyn PubSub, s: &Settings) {
    let check = "pipelined_drop_keeps_order";
    let t = topic(s, check);
    let g = group(check);
    let mut a = subscribe(check, ps, pipelined(s, &t, &g, 4)).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, (0..6).map(|i| msg(&t, "k", i)).collect()).await;
    let w = recv_seqs(
        check,
        s,
        &mut a,
        &[(0, 0), (1, 0), (2, 0), (3, 0)],
        "a full window",
    )
    .await;
    for d in w {
        let drop = parse(check, &d.message).1 == 1;
        d.ack(if drop { Ack::Drop } else { Ack::Success });
    }
    for d in recv_seqs(check, s, &mut a, &[(4, 0), (5, 0)], "the rest").await {
        d.ack(Ack::Success);
    }
    expect_nothing(check, s, &mut a, "a dropped message is not redelivered").await;
    drop(a);
    let mut b = subscribe(check, ps, pipelined(s, &t, &g, 4)).await;
    tokio::time::sleep(s.settle).await;
    publish_all(check, ps, vec![msg(&t, "k", 6)]).await;
    let d = recv(check, s, &mut b, "the message after the committed ones").await;
    assert_eq!(
        parse(check, &d.message).1,
        6,
        "{check}: the new member resumes after the dropped and acked messages"
    );
    d.ack(Ack::Success);
}
