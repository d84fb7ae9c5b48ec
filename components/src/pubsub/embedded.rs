//! `pubsub.embedded`: an in-process broker for one machine.
//!
//! Topics are created on first use with `partitions` partitions (metadata
//! `partitions`, default 8). A message with a key goes to partition
//! `murmur2(key) mod partitions`, the hash Kafka's default partitioner uses,
//! so a key lands in the same partition number on both backends; messages
//! without a key are spread round robin.
//!
//! Consumer groups span the subscriptions attached to this broker (one
//! runtime process). Each (group, topic) keeps a committed offset per
//! partition and assigns partitions among its live members, sticky and
//! balanced: when a member joins or leaves only the partitions that must
//! move are revoked. A revoked partition stops handing out messages, waits up
//! to `revoke_timeout` for the ack of its in-flight message, commits, and
//! only then goes to its new owner, which starts at the committed offset —
//! so whatever was not acked is delivered again.
//!
//! A new group starts at the oldest message the partition still holds.
//! `instance_id` (static membership) is accepted and ignored: members live
//! in this process, so there is no restart to ride out.
//!
//! Memory is bounded per partition by `maxMessagesPerPartition` (default
//! 1 000 000) and `maxBytesPerPartition` (default 64 MiB, counting payload,
//! key and headers). A partition drops the messages that every group known
//! to the topic has committed; nothing else is ever discarded. When a
//! partition is full, publishing to it fails with
//! [`PubSubError::ResourceExhausted`] naming the topic and partition, until
//! the groups consume. (A group that subscribed once keeps its claim on the
//! messages after its members leave, as a Kafka group's offsets would.)
//! Messages live in memory only: they do not survive a restart.
//!
//! Delivery never polls: partition workers sleep on a [`Notify`] until a
//! message is published, on the subscription's bounded channel when the
//! consumer is slow, and on the ack of their in-flight message.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use super::{
    Ack, Delivery, Feature, Message, PubSub, PubSubError, PublishRequest, SubscribeOptions,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

/// Partitions per topic unless `partitions` says otherwise.
pub const DEFAULT_PARTITIONS: usize = 8;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: usize = 1024;
/// Default `maxMessagesPerPartition`.
pub const DEFAULT_MAX_MESSAGES_PER_PARTITION: usize = 1_000_000;
/// Default `maxBytesPerPartition`.
pub const DEFAULT_MAX_BYTES_PER_PARTITION: usize = 64 << 20;

/// Ids of members and partition workers.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The embedded broker.
pub struct EmbeddedBroker {
    inner: Arc<Broker>,
}

struct Broker {
    name: String,
    partitions: usize,
    max_messages: usize,
    max_bytes: usize,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    closed: AtomicBool,
    closed_tx: watch::Sender<bool>,
}

struct Topic {
    name: String,
    /// Per partition: woken when a message is published.
    published: Vec<Notify>,
    round_robin: AtomicUsize,
    state: Mutex<TopicState>,
}

struct TopicState {
    logs: Vec<Log>,
    groups: HashMap<String, Group>,
}

#[derive(Clone)]
struct Stored {
    key: Option<String>,
    data: Vec<u8>,
    headers: HashMap<String, String>,
}

impl Stored {
    fn size(&self) -> usize {
        self.data.len()
            + self.key.as_ref().map_or(0, String::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

#[derive(Default)]
struct Log {
    /// Offset of `entries[0]`.
    base: i64,
    entries: VecDeque<Stored>,
    bytes: usize,
}

impl Log {
    fn end(&self) -> i64 {
        self.base + self.entries.len() as i64
    }

    fn get(&self, offset: i64) -> Option<&Stored> {
        let idx = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.entries.get(idx)
    }
}

struct Group {
    /// Next offset to deliver, per partition.
    committed: Vec<i64>,
    /// Live members in join order.
    members: Vec<u64>,
    member_state: HashMap<u64, Member>,
    /// Who should own each partition.
    target: Vec<Option<u64>>,
    /// The worker currently delivering each partition.
    active: Vec<Option<Active>>,
}

struct Member {
    tx: mpsc::Sender<Delivery>,
    permits: Arc<Semaphore>,
    options: SubscribeOptions,
}

struct Active {
    worker: u64,
    member: u64,
    revoke: watch::Sender<bool>,
}

// === impl EmbeddedBroker ===

impl EmbeddedBroker {
    /// Builds the broker from its metadata: `partitions`,
    /// `maxMessagesPerPartition`, `maxBytesPerPartition`.
    pub fn from_metadata(md: &Metadata, _ctx: &InitContext) -> Result<Self, ComponentError> {
        let partitions = md
            .parse::<usize>("partitions")?
            .unwrap_or(DEFAULT_PARTITIONS);
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(md.invalid(
                "partitions",
                format!("{partitions} is out of range: use 1 to {MAX_PARTITIONS}"),
            ));
        }
        let max_messages = md
            .parse::<usize>("maxMessagesPerPartition")?
            .unwrap_or(DEFAULT_MAX_MESSAGES_PER_PARTITION);
        if max_messages == 0 {
            return Err(md.invalid("maxMessagesPerPartition", "must be at least 1"));
        }
        let max_bytes = md
            .parse::<usize>("maxBytesPerPartition")?
            .unwrap_or(DEFAULT_MAX_BYTES_PER_PARTITION);
        if max_bytes == 0 {
            return Err(md.invalid("maxBytesPerPartition", "must be at least 1 (bytes)"));
        }
        Ok(Self::new(
            md.component(),
            partitions,
            max_messages,
            max_bytes,
        ))
    }

    /// A broker with explicit limits.
    pub fn new(name: &str, partitions: usize, max_messages: usize, max_bytes: usize) -> Self {
        let (closed_tx, _) = watch::channel(false);
        Self {
            inner: Arc::new(Broker {
                name: name.to_string(),
                partitions: partitions.clamp(1, MAX_PARTITIONS),
                max_messages: max_messages.max(1),
                max_bytes: max_bytes.max(1),
                topics: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                closed_tx,
            }),
        }
    }

    /// Partitions per topic.
    pub fn partitions(&self) -> usize {
        self.inner.partitions
    }

    /// Messages retained in a partition (for tests and metrics).
    pub fn retained(&self, topic: &str, partition: usize) -> usize {
        let topics = lock(&self.inner.topics);
        topics
            .get(topic)
            .and_then(|t| lock(&t.state).logs.get(partition).map(|l| l.entries.len()))
            .unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    fn check_open(&self) -> Result<(), PubSubError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PubSubError::Unavailable(format!(
                "embedded broker '{}' is closed",
                self.name
            )));
        }
        Ok(())
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.topics);
        topics
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Topic {
                    name: name.to_string(),
                    published: (0..self.partitions).map(|_| Notify::new()).collect(),
                    round_robin: AtomicUsize::new(0),
                    state: Mutex::new(TopicState {
                        logs: (0..self.partitions).map(|_| Log::default()).collect(),
                        groups: HashMap::new(),
                    }),
                })
            })
            .clone()
    }

    /// Appends under the topic lock; returns the partition.
    fn append(
        &self,
        topic: &Topic,
        st: &mut TopicState,
        req: PublishRequest,
    ) -> Result<usize, PubSubError> {
        let n = st.logs.len();
        let partition = match &req.key {
            Some(key) => partition_for_key(key.as_bytes(), n),
            None => topic.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        };
        let stored = Stored {
            key: req.key,
            data: req.data,
            headers: req.headers,
        };
        let size = stored.size();
        if size > self.max_bytes {
            return Err(PubSubError::InvalidRequest(format!(
                "message of {size} bytes is larger than maxBytesPerPartition ({}) of pub/sub '{}'",
                self.max_bytes, self.name
            )));
        }
        let log = &mut st.logs[partition];
        if log.entries.len() >= self.max_messages || log.bytes + size > self.max_bytes {
            return Err(PubSubError::ResourceExhausted(format!(
                "topic '{}' partition {partition} of embedded pub/sub '{}' is full ({} messages, {} bytes retained; \
                 limits maxMessagesPerPartition={}, maxBytesPerPartition={}): its consumer groups have not consumed them yet",
                topic.name,
                self.name,
                log.entries.len(),
                log.bytes,
                self.max_messages,
                self.max_bytes
            )));
        }
        log.bytes += size;
        log.entries.push_back(stored);
        Ok(partition)
    }
}

/// Kafka's default partitioner: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

/// MurmurHash2 as Kafka's `Utils.murmur2` computes it (seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[async_trait]
impl PubSub for EmbeddedBroker {
    fn features(&self) -> &'static [Feature] {
        &[]
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        self.publish_bulk(vec![req])
            .await
            .pop()
            .unwrap_or_else(|| Err(PubSubError::Internal("no publish result".into())))
    }

    async fn publish_bulk(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        let broker = &self.inner;
        let mut out = Vec::with_capacity(reqs.len());
        let mut by_topic: Vec<(Arc<Topic>, Vec<bool>)> = Vec::new();
        for req in reqs {
            if let Err(e) = broker.check_open() {
                out.push(Err(e));
                continue;
            }
            if req.topic.is_empty() {
                out.push(Err(PubSubError::InvalidRequest(
                    "topic is required and was empty".into(),
                )));
                continue;
            }
            let topic = match by_topic.iter().find(|(t, _)| t.name == req.topic) {
                Some((t, _)) => t.clone(),
                None => {
                    let t = broker.topic(&req.topic);
                    by_topic.push((t.clone(), vec![false; broker.partitions]));
                    t
                }
            };
            let res = {
                let mut st = lock(&topic.state);
                broker.append(&topic, &mut st, req)
            };
            match res {
                Ok(p) => {
                    if let Some((_, touched)) =
                        by_topic.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &topic))
                    {
                        touched[p] = true;
                    }
                    out.push(Ok(()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        for (topic, touched) in by_topic {
            for (p, t) in touched.into_iter().enumerate() {
                if t {
                    topic.published[p].notify_waiters();
                }
            }
        }
        out
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<mpsc::Receiver<Delivery>, PubSubError> {
        let broker = &self.inner;
        broker.check_open()?;
        if options.topic.is_empty() {
            return Err(PubSubError::InvalidRequest(
                "topic is required and was empty".into(),
            ));
        }
        if options.group.is_empty() {
            return Err(PubSubError::InvalidRequest(
                "consumer group is required and was empty".into(),
            ));
        }
        if options.max_in_flight == 0 {
            return Err(PubSubError::InvalidRequest(
                "max_in_flight must be at least 1".into(),
            ));
        }
        let topic = broker.topic(&options.topic);
        let id = next_id();
        let cap = options.max_in_flight.min(broker.partitions).max(1);
        let (tx, rx) = mpsc::channel(cap);
        let watcher_tx = tx.clone();
        let group_name = options.group.clone();
        {
            let mut st = lock(&topic.state);
            let bases: Vec<i64> = st.logs.iter().map(|l| l.base).collect();
            let n = bases.len();
            let group = st
                .groups
                .entry(group_name.clone())
                .or_insert_with(|| Group {
                    committed: bases,
                    members: Vec::new(),
                    member_state: HashMap::new(),
                    target: vec![None; n],
                    active: (0..n).map(|_| None).collect(),
                });
            group.members.push(id);
            group.member_state.insert(
                id,
                Member {
                    tx,
                    permits: Arc::new(Semaphore::new(
                        options.max_in_flight.min(Semaphore::MAX_PERMITS),
                    )),
                    options,
                },
            );
            rebalance(&topic, &group_name, group);
        }
        tracing::debug!(component = %broker.name, topic = %topic.name, group = %group_name, member = id, "member joined");
        // Leave the group when the subscriber drops its receiver or the broker closes.
        let mut closed = broker.closed_tx.subscribe();
        let name = broker.name.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = watcher_tx.closed() => {}
                _ = closed.wait_for(|c| *c) => {}
            }
            drop(watcher_tx);
            let mut st = lock(&topic.state);
            if let Some(group) = st.groups.get_mut(&group_name) {
                group.members.retain(|m| *m != id);
                group.member_state.remove(&id);
                rebalance(&topic, &group_name, group);
            }
            tracing::debug!(component = %name, topic = %topic.name, group = %group_name, member = id, "member left");
        });
        Ok(rx)
    }

    async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.closed_tx.send_replace(true);
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        for topic in topics {
            let mut st = lock(&topic.state);
            for (name, group) in st.groups.iter_mut() {
                group.members.clear();
                group.member_state.clear();
                rebalance(&topic, name, group);
            }
        }
    }
}

// === group management (called with the topic lock held) ===

/// Recomputes the target assignment and starts or revokes workers.
fn rebalance(topic: &Arc<Topic>, group_name: &str, group: &mut Group) {
    group.target = assign(&group.target, &group.members);
    reconcile(topic, group_name, group);
}

/// Sticky balanced assignment: members (in join order) get `n / m`
/// partitions, the first `n % m` one more; a partition keeps its owner when
/// the owner is alive and within its quota.
fn assign(prev: &[Option<u64>], members: &[u64]) -> Vec<Option<u64>> {
    let n = prev.len();
    let m = members.len();
    if m == 0 {
        return vec![None; n];
    }
    let quota = |i: usize| n / m + usize::from(i < n % m);
    let mut counts = vec![0usize; m];
    let mut out = vec![None; n];
    for (p, owner) in prev.iter().enumerate() {
        if let Some(i) = owner.and_then(|o| members.iter().position(|x| *x == o)) {
            if counts[i] < quota(i) {
                counts[i] += 1;
                out[p] = Some(members[i]);
            }
        }
    }
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        if let Some(i) = (0..m).find(|&i| counts[i] < quota(i)) {
            counts[i] += 1;
            *slot = Some(members[i]);
        }
    }
    out
}

/// Revokes partitions whose worker is not the target's, and starts workers
/// for partitions that have a target and no worker.
fn reconcile(topic: &Arc<Topic>, group_name: &str, group: &mut Group) {
    for p in 0..group.target.len() {
        let target = group.target[p];
        match &group.active[p] {
            Some(a) if target != Some(a.member) => {
                a.revoke.send_replace(true);
            }
            Some(_) => {}
            None => {
                let Some(member_id) = target else { continue };
                let Some(member) = group.member_state.get(&member_id) else {
                    continue;
                };
                if member.tx.is_closed() {
                    continue; // leaving: its watcher removes it and rebalances
                }
                let Ok(handle) = tokio::runtime::Handle::try_current() else {
                    tracing::error!(topic = %topic.name, "embedded broker used outside a Tokio runtime");
                    continue;
                };
                let (revoke_tx, revoke_rx) = watch::channel(false);
                let worker = Worker {
                    topic: topic.clone(),
                    group: group_name.to_string(),
                    partition: p,
                    id: next_id(),
                    pos: group.committed[p],
                    tx: member.tx.clone(),
                    permits: member.permits.clone(),
                    retry_backoff: member.options.retry_backoff,
                    revoke_timeout: member.options.revoke_timeout,
                    revoke: revoke_rx,
                };
                group.active[p] = Some(Active {
                    worker: worker.id,
                    member: member_id,
                    revoke: revoke_tx,
                });
                handle.spawn(worker.run());
            }
        }
    }
}

/// Drops the messages of `partition` that every group has committed.
fn trim(st: &mut TopicState, partition: usize) {
    let Some(min) = st
        .groups
        .values()
        .filter_map(|g| g.committed.get(partition))
        .min()
        .copied()
    else {
        return;
    };
    let log = &mut st.logs[partition];
    while log.base < min {
        match log.entries.pop_front() {
            Some(s) => {
                log.bytes -= s.size();
                log.base += 1;
            }
            None => break,
        }
    }
}

// === impl Worker ===

/// Delivers one partition to one member, one message at a time.
struct Worker {
    topic: Arc<Topic>,
    group: String,
    partition: usize,
    id: u64,
    /// Offset of the next message to deliver.
    pos: i64,
    tx: mpsc::Sender<Delivery>,
    permits: Arc<Semaphore>,
    retry_backoff: Duration,
    revoke_timeout: Duration,
    revoke: watch::Receiver<bool>,
}

/// Resolves once the worker is revoked (or its group state is gone).
async fn revoked(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|r| *r).await;
}

impl Worker {
    async fn run(mut self) {
        self.deliver().await;
        // Release: hand the partition to its target owner.
        let mut st = lock(&self.topic.state);
        if let Some(group) = st.groups.get_mut(&self.group) {
            if matches!(&group.active[self.partition], Some(a) if a.worker == self.id) {
                group.active[self.partition] = None;
            }
            reconcile(&self.topic, &self.group, group);
        }
    }

    /// Delivers until revoked or the subscriber is gone.
    async fn deliver(&mut self) {
        let mut attempt = 0u32;
        loop {
            let Some(stored) = self.next_message().await else {
                return;
            };
            let permit = tokio::select! {
                biased;
                _ = revoked(&mut self.revoke) => return,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (delivery, mut ack_rx) = Delivery::new(Message {
                topic: self.topic.name.clone(),
                partition: self.partition as i32,
                offset: self.pos,
                key: stored.key,
                data: stored.data,
                headers: stored.headers,
                attempt,
            });
            tokio::select! {
                biased;
                _ = revoked(&mut self.revoke) => return,
                sent = self.tx.send(delivery) => if sent.is_err() { return },
            }
            let mut revoking = false;
            let ack = tokio::select! {
                a = &mut ack_rx => a.unwrap_or(Ack::Retry),
                _ = revoked(&mut self.revoke) => {
                    revoking = true;
                    match tokio::time::timeout(self.revoke_timeout, &mut ack_rx).await {
                        Ok(Ok(a)) => a,
                        _ => Ack::Retry,
                    }
                }
            };
            drop(permit);
            match ack {
                Ack::Success | Ack::Drop => {
                    self.pos += 1;
                    attempt = 0;
                    self.commit();
                }
                Ack::Retry if revoking => return,
                Ack::Retry => {
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        biased;
                        _ = revoked(&mut self.revoke) => return,
                        _ = tokio::time::sleep(self.retry_backoff) => {}
                    }
                }
            }
            if revoking {
                return;
            }
        }
    }

    /// Waits for the message at `pos`; `None` when revoked first.
    async fn next_message(&mut self) -> Option<Stored> {
        loop {
            let notified = self.topic.published[self.partition].notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = lock(&self.topic.state);
                let log = &st.logs[self.partition];
                if self.pos < log.base {
                    // Cannot happen (trimming stops at every group's commit); be safe.
                    self.pos = log.base;
                }
                if let Some(s) = log.get(self.pos) {
                    return Some(s.clone());
                }
                debug_assert!(self.pos >= log.end());
            }
            tokio::select! {
                biased;
                _ = revoked(&mut self.revoke) => return None,
                _ = notified => {}
            }
        }
    }

    fn commit(&self) {
        let mut st = lock(&self.topic.state);
        if let Some(group) = st.groups.get_mut(&self.group) {
            let c = &mut group.committed[self.partition];
            *c = (*c).max(self.pos);
        }
        trim(&mut st, self.partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{:?}",
                std::str::from_utf8(key)
            );
        }
    }

    #[test]
    fn assignment_is_balanced_and_sticky() {
        let a = assign(&[None; 8], &[1]);
        assert!(a.iter().all(|o| *o == Some(1)));
        let b = assign(&a, &[1, 2]);
        assert_eq!(b.iter().filter(|o| **o == Some(1)).count(), 4);
        assert_eq!(b.iter().filter(|o| **o == Some(2)).count(), 4);
        let c = assign(&b, &[1, 2, 3]);
        for p in 0..8 {
            if c[p] != Some(3) {
                assert_eq!(c[p], b[p], "partition {p} moved between surviving members");
            }
        }
        let d = assign(&c, &[2, 3]);
        assert!(d.iter().all(|o| o.is_some()));
        assert_eq!(assign(&d, &[]), vec![None; 8]);
    }

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        Metadata::new(
            "ps",
            "pubsub.embedded",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn ctx() -> InitContext {
        InitContext {
            data_dir: std::env::temp_dir(),
            app_id: "t".into(),
        }
    }

    #[test]
    fn bad_metadata_names_the_field() {
        for (field, value) in [
            ("partitions", "0"),
            ("partitions", "x"),
            ("partitions", "5000"),
            ("maxMessagesPerPartition", "0"),
            ("maxBytesPerPartition", "-1"),
        ] {
            let err = EmbeddedBroker::from_metadata(&md(&[(field, value)]), &ctx())
                .err()
                .unwrap();
            assert!(err.to_string().contains(&format!("'{field}'")), "{err}");
        }
        let ok = EmbeddedBroker::from_metadata(&md(&[("partitions", "3")]), &ctx()).unwrap();
        assert_eq!(ok.partitions(), 3);
    }

    #[tokio::test]
    async fn full_partition_refuses_then_trims_after_commit() {
        let broker = EmbeddedBroker::new("ps", 1, 3, 1 << 20);
        let msg = |i: u8| PublishRequest {
            topic: "t".into(),
            data: vec![i],
            ..Default::default()
        };
        let mut rx = broker
            .subscribe(SubscribeOptions::new("t", "g"))
            .await
            .unwrap();
        for i in 0..3 {
            broker.publish(msg(i)).await.unwrap();
        }
        let err = broker.publish(msg(3)).await.unwrap_err();
        assert!(matches!(err, PubSubError::ResourceExhausted(_)), "{err:?}");
        assert!(err.to_string().contains("topic 't' partition 0"), "{err}");
        for i in 0..3u8 {
            let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(d.message.data, vec![i]);
            d.ack(Ack::Success);
        }
        // The last commit happens after the ack; wait for the trim (bounded).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while broker.retained("t", 0) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "committed messages were not trimmed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        broker.publish(msg(3)).await.unwrap();
    }

    #[tokio::test]
    async fn closed_broker_is_unavailable_and_ends_subscriptions() {
        let broker = EmbeddedBroker::new("ps", 2, 10, 1 << 20);
        let mut rx = broker
            .subscribe(SubscribeOptions::new("t", "g"))
            .await
            .unwrap();
        broker.close().await;
        let end = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(end.is_none());
        let err = broker
            .publish(PublishRequest {
                topic: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, PubSubError::Unavailable(_)));
    }
}
