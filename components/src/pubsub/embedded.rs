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
//! to `revoke_timeout` for the acks of the messages it has out, commits the
//! acked prefix, and only then goes to its new owner, which starts at the
//! committed offset — so whatever was not committed is delivered again.
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
//! Delivery is pushed, with no task per partition: publishing hands a
//! partition's new messages straight to its owner's channel when the owner
//! has room, and an ack hands out the next ones, both on the caller's
//! thread. Each owned partition keeps a [`Window`] of its handed-out,
//! uncommitted messages (`max_in_flight_per_partition` of them at most);
//! timers exist only for RETRY backoffs and revocation timeouts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

use super::window::{Settled, Window};
use super::{
    Ack, AckSink, AckToken, Delivery, Feature, Message, PartitionLag, PubSub, PubSubError,
    PublishRequest, SubscribeOptions,
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

/// Ids of members, ownerships and hand-outs.
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
    round_robin: AtomicUsize,
    state: Mutex<TopicState>,
}

struct TopicState {
    logs: Vec<Log>,
    /// Never removed (a group keeps its offsets after its members leave), so
    /// an index names a group for good.
    groups: Vec<Group>,
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
    fn get(&self, offset: i64) -> Option<&Stored> {
        let idx = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.entries.get(idx)
    }
}

struct Group {
    name: String,
    /// Committed position (next offset to deliver after a handover), per partition.
    committed: Vec<i64>,
    /// Live members in join order.
    members: Vec<u64>,
    member_state: HashMap<u64, Member>,
    /// Who should own each partition.
    target: Vec<Option<u64>>,
    /// Who delivers each partition now, and what it handed out.
    parts: Vec<Option<Owner>>,
}

struct Member {
    tx: mpsc::Sender<Delivery>,
    sink: Arc<dyn AckSink>,
    max_in_flight: usize,
    per_partition: usize,
    retry_backoff: Duration,
    revoke_timeout: Duration,
    /// Partitions of this member with messages in flight.
    busy: usize,
    /// Partitions held back by `max_in_flight` (or a full channel), oldest first.
    waiting: VecDeque<usize>,
    rt: tokio::runtime::Handle,
}

impl Member {
    fn gone(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A partition's current delivery to one member.
struct Owner {
    member: u64,
    /// Unique per ownership, so that timers of an earlier one do nothing.
    id: u64,
    window: Window,
    backing_off: bool,
    /// Bumped by every RETRY, so that only the latest backoff ends it.
    backoff_seq: u64,
    revoking: bool,
    /// In the member's `waiting` queue.
    waiting: bool,
}

/// Where a member's deliveries report their acks.
struct MemberSink {
    topic: Weak<Topic>,
    group: usize,
    member: u64,
}

impl AckSink for MemberSink {
    fn ack(&self, token: AckToken, ack: Ack) {
        let Some(topic) = self.topic.upgrade() else {
            return;
        };
        let Ok(p) = usize::try_from(token.partition) else {
            return;
        };
        let mut st = lock(&topic.state);
        on_ack(&topic, &mut st, self.group, self.member, p, token, ack);
    }
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
                    round_robin: AtomicUsize::new(0),
                    state: Mutex::new(TopicState {
                        logs: (0..self.partitions).map(|_| Log::default()).collect(),
                        groups: Vec::new(),
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

    /// Appends each run of messages to one topic under one lock, then hands
    /// the new messages to the partitions' owners.
    async fn publish_bulk(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        let broker = &self.inner;
        let mut out = Vec::with_capacity(reqs.len());
        let mut it = reqs.into_iter().peekable();
        while let Some(first) = it.next() {
            if let Err(e) = broker.check_open() {
                out.push(Err(e));
                continue;
            }
            if first.topic.is_empty() {
                out.push(Err(PubSubError::InvalidRequest(
                    "topic is required and was empty".into(),
                )));
                continue;
            }
            let topic = broker.topic(&first.topic);
            let mut st = lock(&topic.state);
            let mut touched = vec![false; st.logs.len()];
            let mut req = first;
            loop {
                match broker.append(&topic, &mut st, req) {
                    Ok(p) => {
                        touched[p] = true;
                        out.push(Ok(()));
                    }
                    Err(e) => out.push(Err(e)),
                }
                match it.next_if(|r| r.topic == topic.name) {
                    Some(r) => req = r,
                    None => break,
                }
            }
            for (p, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
                for g in 0..st.groups.len() {
                    pump(&topic, &mut st, g, p);
                }
            }
        }
        // The subscriptions were handed their messages during this call:
        // let them write them to their streams before the publisher's
        // answer is written, so on a one-thread runtime the event leaves
        // first (one task switch; the gain end to end is small and within
        // the noise of a busy host, docs/benchmarks.md).
        tokio::task::yield_now().await;
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
        options.validate()?;
        let topic = broker.topic(&options.topic);
        let id = next_id();
        let (tx, rx) = mpsc::channel(options.channel_capacity(Some(broker.partitions)));
        let watcher_tx = tx.clone();
        let group_name = options.group.clone();
        let rt = tokio::runtime::Handle::current();
        let g = {
            let mut st = lock(&topic.state);
            let g = match st.groups.iter().position(|g| g.name == group_name) {
                Some(g) => g,
                None => {
                    let committed: Vec<i64> = st.logs.iter().map(|l| l.base).collect();
                    let n = committed.len();
                    st.groups.push(Group {
                        name: group_name.clone(),
                        committed,
                        members: Vec::new(),
                        member_state: HashMap::new(),
                        target: vec![None; n],
                        parts: (0..n).map(|_| None).collect(),
                    });
                    st.groups.len() - 1
                }
            };
            let group = &mut st.groups[g];
            group.members.push(id);
            group.member_state.insert(
                id,
                Member {
                    tx,
                    sink: Arc::new(MemberSink {
                        topic: Arc::downgrade(&topic),
                        group: g,
                        member: id,
                    }),
                    max_in_flight: options.max_in_flight,
                    per_partition: options.max_in_flight_per_partition,
                    retry_backoff: options.retry_backoff,
                    revoke_timeout: options.revoke_timeout,
                    busy: 0,
                    waiting: VecDeque::new(),
                    rt,
                },
            );
            rebalance(&topic, &mut st, g);
            g
        };
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
            let group = &mut st.groups[g];
            group.members.retain(|m| *m != id);
            group.member_state.remove(&id);
            rebalance(&topic, &mut st, g);
            tracing::debug!(component = %name, topic = %topic.name, group = %group_name, member = id, "member left");
        });
        Ok(rx)
    }

    fn lag(&self) -> Vec<PartitionLag> {
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        let mut out = Vec::new();
        for topic in topics {
            let st = lock(&topic.state);
            for g in st.groups.iter().filter(|g| !g.members.is_empty()) {
                for (p, log) in st.logs.iter().enumerate() {
                    let end = log.base + log.entries.len() as i64;
                    let committed = g.committed.get(p).copied().unwrap_or(log.base);
                    out.push(PartitionLag {
                        topic: topic.name.clone(),
                        group: g.name.clone(),
                        partition: p as i32,
                        lag: (end - committed).max(0),
                        held: None,
                        paused: false,
                    });
                }
            }
        }
        out
    }

    async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.closed_tx.send_replace(true);
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        for topic in topics {
            let mut st = lock(&topic.state);
            for g in 0..st.groups.len() {
                let group = &mut st.groups[g];
                group.members.clear();
                group.member_state.clear();
                rebalance(&topic, &mut st, g);
            }
        }
    }
}

// === group management (called with the topic lock held) ===

/// Recomputes the target assignment and starts or revokes ownerships.
fn rebalance(topic: &Arc<Topic>, st: &mut TopicState, g: usize) {
    let group = &mut st.groups[g];
    group.target = assign(&group.target, &group.members);
    reconcile(topic, st, g);
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

/// Revokes partitions whose owner is not their target (releasing at once
/// those with nothing in flight or whose owner is gone, or else after the
/// acks or the owner's `revoke_timeout`), and starts delivering partitions
/// that have a target and no owner.
fn reconcile(topic: &Arc<Topic>, st: &mut TopicState, g: usize) {
    for p in 0..st.groups[g].target.len() {
        let group = &mut st.groups[g];
        let target = group.target[p];
        if let Some(owner) = group.parts[p].as_mut() {
            if Some(owner.member) != target {
                let member = group.member_state.get_mut(&owner.member);
                let gone = member.as_ref().is_none_or(|m| m.gone());
                if !owner.revoking {
                    owner.revoking = true;
                    if let Some(m) = member {
                        if owner.waiting {
                            owner.waiting = false;
                            m.waiting.retain(|x| *x != p);
                        }
                        if !owner.window.is_empty() && !gone {
                            let (topic, owner_id) = (topic.clone(), owner.id);
                            let timeout = m.revoke_timeout;
                            m.rt.spawn(async move {
                                tokio::time::sleep(timeout).await;
                                let mut st = lock(&topic.state);
                                let timed_out = st.groups[g].parts[p]
                                    .as_ref()
                                    .is_some_and(|o| o.id == owner_id && o.revoking);
                                if timed_out {
                                    release(&topic, &mut st, g, p);
                                }
                            });
                        }
                    }
                }
                if owner.window.is_empty() || gone {
                    drop_owner(group, p);
                }
            }
        }
        let group = &mut st.groups[g];
        if group.parts[p].is_none() {
            let Some(member_id) = target else { continue };
            let Some(member) = group.member_state.get(&member_id) else {
                continue;
            };
            if member.gone() {
                continue; // leaving: its watcher removes it and rebalances
            }
            group.parts[p] = Some(Owner {
                member: member_id,
                id: next_id(),
                window: Window::new(member.per_partition),
                backing_off: false,
                backoff_seq: 0,
                revoking: false,
                waiting: false,
            });
            pump(topic, st, g, p);
        }
    }
}

/// Forgets partition `p`'s ownership (what it handed out and did not
/// commit goes to the next owner).
fn drop_owner(group: &mut Group, p: usize) {
    let Some(owner) = group.parts[p].take() else {
        return;
    };
    if let Some(m) = group.member_state.get_mut(&owner.member) {
        if !owner.window.is_empty() {
            m.busy = m.busy.saturating_sub(1);
        }
        if owner.waiting {
            m.waiting.retain(|x| *x != p);
        }
    }
}

/// Ends a revoked ownership and hands the partition to its target.
fn release(topic: &Arc<Topic>, st: &mut TopicState, g: usize, p: usize) {
    let old = st.groups[g].parts[p].as_ref().map(|o| o.member);
    drop_owner(&mut st.groups[g], p);
    reconcile(topic, st, g);
    if let Some(m) = old {
        pump_waiting(topic, st, g, m);
    }
}

/// Hands out partition `p`'s next messages to its owner while its window,
/// the owner's `max_in_flight` and its channel allow.
fn pump(topic: &Arc<Topic>, st: &mut TopicState, g: usize, p: usize) {
    let TopicState { logs, groups } = st;
    let group = &mut groups[g];
    let log = &logs[p];
    loop {
        let Some(owner) = group.parts[p].as_mut() else {
            return;
        };
        if owner.revoking || owner.backing_off || !owner.window.has_room() {
            return;
        }
        let offset = group.committed[p] + owner.window.len() as i64;
        let Some(stored) = log.get(offset) else {
            return;
        };
        let Some(member) = group.member_state.get_mut(&owner.member) else {
            return;
        };
        let idle = owner.window.is_empty();
        if idle && member.busy >= member.max_in_flight {
            if !owner.waiting {
                owner.waiting = true;
                member.waiting.push_back(p);
            }
            return;
        }
        let id = next_id();
        let message = Message {
            topic: topic.name.clone(),
            partition: p as i32,
            offset,
            key: stored.key.clone(),
            data: stored.data.clone(),
            headers: stored.headers.clone(),
            attempt: owner.window.attempt(offset),
        };
        let token = AckToken {
            partition: p as i32,
            offset,
            id,
        };
        match member
            .tx
            .try_send(Delivery::with_sink(message, member.sink.clone(), token))
        {
            Ok(()) => {
                if idle {
                    member.busy += 1;
                }
                owner.window.hand_out(offset, id);
            }
            Err(TrySendError::Full(d)) => {
                // Only while deliveries of a revoked ownership still sit in
                // the channel; the next ack of this member pumps again.
                d.disarm();
                if !owner.waiting {
                    owner.waiting = true;
                    member.waiting.push_back(p);
                }
                return;
            }
            Err(TrySendError::Closed(d)) => {
                // Leaving: its watcher removes it and rebalances.
                d.disarm();
                return;
            }
        }
    }
}

/// Pumps the partitions a member holds back, oldest first, while it has room.
fn pump_waiting(topic: &Arc<Topic>, st: &mut TopicState, g: usize, member_id: u64) {
    loop {
        let group = &mut st.groups[g];
        let Some(member) = group.member_state.get_mut(&member_id) else {
            return;
        };
        if member.busy >= member.max_in_flight {
            return;
        }
        let Some(p) = member.waiting.pop_front() else {
            return;
        };
        match group.parts[p].as_mut() {
            Some(o) if o.member == member_id => o.waiting = false,
            _ => continue,
        }
        pump(topic, st, g, p);
        if st.groups[g].parts[p].as_ref().is_some_and(|o| o.waiting) {
            return; // still held back (a full channel)
        }
    }
}

/// Applies an ack of `member_id`'s delivery of partition `p`.
fn on_ack(
    topic: &Arc<Topic>,
    st: &mut TopicState,
    g: usize,
    member_id: u64,
    p: usize,
    token: AckToken,
    ack: Ack,
) {
    let Some(group) = st.groups.get_mut(g) else {
        return;
    };
    let Some(owner) = group
        .parts
        .get_mut(p)
        .and_then(Option::as_mut)
        .filter(|o| o.member == member_id)
    else {
        // An earlier ownership's delivery: nothing to settle, but the member
        // may have room now.
        pump_waiting(topic, st, g, member_id);
        return;
    };
    let was_busy = !owner.window.is_empty();
    let settled = owner.window.settle(token.offset, token.id, ack);
    let idle = was_busy && owner.window.is_empty();
    let revoking = owner.revoking;
    match settled {
        Settled::Stale => {}
        Settled::Acked { committed, .. } => {
            if let Some(c) = committed {
                let slot = &mut group.committed[p];
                *slot = (*slot).max(c);
                trim(st, p);
            }
        }
        Settled::Rewound if revoking => {}
        Settled::Rewound => {
            owner.backing_off = true;
            owner.backoff_seq += 1;
            let (seq, owner_id) = (owner.backoff_seq, owner.id);
            if let Some(m) = group.member_state.get(&member_id) {
                let (topic, backoff) = (topic.clone(), m.retry_backoff);
                m.rt.spawn(async move {
                    tokio::time::sleep(backoff).await;
                    let mut st = lock(&topic.state);
                    let ended = match st.groups[g].parts[p].as_mut() {
                        Some(o) if o.id == owner_id && o.backoff_seq == seq => {
                            o.backing_off = false;
                            true
                        }
                        _ => false,
                    };
                    if ended {
                        pump(&topic, &mut st, g, p);
                    }
                });
            }
        }
    }
    let group = &mut st.groups[g];
    let mut queued = false;
    if idle {
        if let Some(m) = group.member_state.get_mut(&member_id) {
            m.busy = m.busy.saturating_sub(1);
            // Partitions held back by max_in_flight go first; this one
            // queues behind them.
            if !m.waiting.is_empty() && !revoking {
                if let Some(o) = group.parts[p].as_mut() {
                    if !o.waiting {
                        o.waiting = true;
                        m.waiting.push_back(p);
                    }
                    queued = true;
                }
            }
        }
    }
    if revoking {
        if idle {
            release(topic, st, g, p);
        }
        return;
    }
    if !queued {
        pump(topic, st, g, p);
    }
    pump_waiting(topic, st, g, member_id);
}

/// Drops the messages of `partition` that every group has committed.
fn trim(st: &mut TopicState, partition: usize) {
    let Some(min) = st
        .groups
        .iter()
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

/// `pubsub.embedded` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "pubsub.embedded",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::PubSub(Arc::new(EmbeddedBroker::from_metadata(
                md, ctx,
            )?)))
        })
    },
};

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
