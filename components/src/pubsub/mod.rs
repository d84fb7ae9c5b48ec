//! Pub/sub building block: publish to topics; consume through consumer
//! groups with per-partition ordering and at-least-once delivery.
//!
//! Contract every backend keeps (pinned by `conformance.rs`):
//!
//! * A message with a key always lands in the same partition of its topic
//!   (messages without a key may be spread).
//! * [`PubSub::subscribe`] joins the consumer group `options.group`. The
//!   group's partitions are shared among its live subscriptions (in this
//!   process and, for networked brokers, in others); each partition has one
//!   owner at a time.
//! * Within a partition messages are handed out in offset order. With
//!   `options.max_in_flight_per_partition = 1` (the default, *strict*) a
//!   subscription receives message n+1 only after message n was acked with
//!   [`Ack::Success`] or [`Ack::Drop`]. With N > 1 (*pipelined*) up to N
//!   messages of a partition past its committed position are handed out at
//!   once, still in order. Different partitions are delivered concurrently,
//!   up to `options.max_in_flight` partitions with messages in flight.
//! * [`Ack::Retry`] of message n redelivers n, after `options.retry_backoff`,
//!   before anything later in its partition; other partitions go on. When
//!   pipelined, everything after n that was already handed out is handed out
//!   again after n, in order (acked or not): a suffix repeats, nothing is
//!   reordered. `Message::attempt` counts the retries of that very message.
//! * [`Ack::Drop`] counts as acked for ordering and commits.
//! * The committed position of a partition only ever moves over a
//!   contiguous prefix of acked messages: never past an unacked one, even
//!   when later ones were acked (pipelined). Whatever was not committed when
//!   a subscription ends (receiver dropped, process killed, partition
//!   revoked) is delivered again to the partition's next owner.
//! * On revocation the backend stops handing out that partition's messages,
//!   waits up to `options.revoke_timeout` for the acks of all its handed-out
//!   messages, commits, then releases the partition.
//! * Dropping a [`Delivery`] without acking it counts as [`Ack::Retry`].
//!
//! Acks reach a backend through an [`AckSink`]: a plain call on the acking
//! thread, no channel or task per message. Backends keep each partition's
//! handed-out messages in a [`window::Window`].

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::metadata::{ComponentError, InitContext, Metadata};
use crate::registry::{self, Component};

/// Optional capabilities a pub/sub backend advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Messages survive a restart of the runtime.
    Durable,
    /// Consumer groups span processes (several runtimes of one app).
    DistributedGroups,
    /// Static group membership (`group.instance.id`).
    StaticMembership,
}

impl Feature {
    /// The capability's name in the metadata API.
    pub fn dapr_name(self) -> &'static str {
        match self {
            Feature::Durable => "DURABLE",
            Feature::DistributedGroups => "DISTRIBUTED_GROUPS",
            Feature::StaticMembership => "STATIC_MEMBERSHIP",
        }
    }
}

/// A consumer group's lag on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub group: String,
    pub partition: i32,
    /// Messages after the group's committed position.
    pub lag: i64,
    /// Messages this runtime fetched and holds for the partition (handed
    /// out or waiting), for backends that fetch into the runtime.
    pub held: Option<u64>,
    /// Whether fetching is paused because the partition's buffer is full
    /// (its subscriber is slow or stuck).
    pub paused: bool,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishRequest {
    pub topic: String,
    /// Partition key (the Kafka message key).
    pub key: Option<String>,
    pub data: Vec<u8>,
    /// Carried to subscribers as message headers.
    pub headers: HashMap<String, String>,
}

/// How a subscription consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub topic: String,
    /// Consumer group id.
    pub group: String,
    /// Most partitions with a message in flight at once.
    pub max_in_flight: usize,
    /// Most messages of one partition handed out past its committed
    /// position at once: 1 (default) is strict (n+1 only after n's ack),
    /// up to [`MAX_IN_FLIGHT_PER_PARTITION`].
    pub max_in_flight_per_partition: usize,
    /// Wait before redelivering a message acked with [`Ack::Retry`].
    pub retry_backoff: Duration,
    /// How long a revoked partition waits for in-flight acks.
    pub revoke_timeout: Duration,
    /// Static membership id (`group.instance.id`), if the backend supports it.
    pub instance_id: Option<String>,
}

/// Largest `max_in_flight_per_partition` a backend accepts.
pub const MAX_IN_FLIGHT_PER_PARTITION: usize = 1024;

impl SubscribeOptions {
    /// Checks the limits every backend relies on.
    pub fn validate(&self) -> Result<(), PubSubError> {
        if self.max_in_flight == 0 {
            return Err(PubSubError::InvalidRequest(
                "max_in_flight must be at least 1".into(),
            ));
        }
        if !(1..=MAX_IN_FLIGHT_PER_PARTITION).contains(&self.max_in_flight_per_partition) {
            return Err(PubSubError::InvalidRequest(format!(
                "max_in_flight_per_partition must be 1 to {MAX_IN_FLIGHT_PER_PARTITION}, got {}",
                self.max_in_flight_per_partition
            )));
        }
        Ok(())
    }

    /// Capacity of a subscription's channel: every message that may be in
    /// flight at once, for `partitions` partitions (when known).
    pub fn channel_capacity(&self, partitions: Option<usize>) -> usize {
        let parts = partitions.map_or(self.max_in_flight, |p| p.min(self.max_in_flight));
        parts
            .max(1)
            .saturating_mul(self.max_in_flight_per_partition.max(1))
            .min(1 << 20)
    }

    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            max_in_flight: 64,
            max_in_flight_per_partition: 1,
            retry_backoff: Duration::from_millis(200),
            revoke_timeout: Duration::from_secs(5),
            instance_id: None,
        }
    }
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub data: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// 0 on first delivery to this subscription, then 1, 2, … on retries.
    pub attempt: u32,
}

/// What the consumer decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Processed: commit and move on.
    Success,
    /// Deliver the same message again after the backoff.
    Retry,
    /// Give up on it: commit and move on (the caller has already sent it to
    /// a dead-letter topic if one is configured).
    Drop,
}

/// Identifies one hand-out of a message to the backend that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    pub partition: i32,
    pub offset: i64,
    /// Unique per hand-out (a redelivery gets a new one), so a late ack of
    /// an earlier hand-out is recognised and ignored.
    pub id: u64,
}

/// Where a backend learns the verdicts on its deliveries.
pub trait AckSink: Send + Sync + 'static {
    /// Called exactly once per delivery, on the thread that acks (or drops)
    /// it. Implementations take their own locks; the caller holds none of
    /// the backend's.
    fn ack(&self, token: AckToken, ack: Ack);
}

enum Acker {
    /// Already acked, or disarmed by the backend.
    Done,
    Oneshot(oneshot::Sender<Ack>),
    Sink(Arc<dyn AckSink>, AckToken),
}

/// A message handed to a subscriber, with the means to ack it.
pub struct Delivery {
    pub message: Message,
    acker: Acker,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("acked", &matches!(self.acker, Acker::Done))
            .finish()
    }
}

impl Delivery {
    /// Creates a delivery and the receiver on which the backend learns its ack.
    pub fn new(message: Message) -> (Self, oneshot::Receiver<Ack>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                message,
                acker: Acker::Oneshot(tx),
            },
            rx,
        )
    }

    /// Creates a delivery whose ack is a call to `sink` with `token`.
    pub fn with_sink(message: Message, sink: Arc<dyn AckSink>, token: AckToken) -> Self {
        Self {
            message,
            acker: Acker::Sink(sink, token),
        }
    }

    /// Acks the message.
    pub fn ack(mut self, ack: Ack) {
        self.settle(ack);
    }

    /// Forgets the ack without reporting it (a delivery that never left the
    /// backend, e.g. its channel was closed).
    pub(crate) fn disarm(mut self) {
        self.acker = Acker::Done;
    }

    fn settle(&mut self, ack: Ack) {
        match std::mem::replace(&mut self.acker, Acker::Done) {
            Acker::Done => {}
            Acker::Oneshot(tx) => {
                let _ = tx.send(ack);
            }
            Acker::Sink(sink, token) => sink.ack(token, ack),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.settle(Ack::Retry);
    }
}

/// Why a pub/sub operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubSubError {
    #[error("{0}")]
    InvalidRequest(String),
    /// The broker refused more data for now (a full partition, a quota).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker error: {0}")]
    Internal(String),
}

/// A pub/sub backend.
#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    fn features(&self) -> &'static [Feature];

    /// Publishes one message; returns once the broker has accepted it.
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError>;

    /// Publishes many messages; one result per message, in order.
    async fn publish_bulk(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            out.push(self.publish(r).await);
        }
        out
    }

    /// Joins the consumer group and starts delivering. Dropping the receiver
    /// leaves the group; unacked messages go to the partitions' next owners.
    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<mpsc::Receiver<Delivery>, PubSubError>;

    /// How far each consumer group of this component is behind: per topic
    /// and partition, the messages published after the group's committed
    /// position (what monitoring shows as consumer lag). Backends that
    /// cannot tell answer nothing.
    fn lag(&self) -> Vec<PartitionLag> {
        Vec::new()
    }

    /// Whether the backend answers now (the runtime asks every few
    /// seconds and reports the result in metadata and
    /// `/v1.0/healthz/outbound`). `Err` says what failed; must return
    /// within `timeout`. Backends inside the process are always reachable.
    async fn ping(&self, timeout: std::time::Duration) -> Result<(), PubSubError> {
        let _ = timeout;
        Ok(())
    }

    /// Leaves every group and releases connections.
    async fn close(&self) {}
}

/// Component types this block can build.
/// Builds a pub/sub backend from its component definition (through the
/// [`registry`](crate::registry)).
pub async fn create(md: &Metadata, ctx: &InitContext) -> Result<Arc<dyn PubSub>, ComponentError> {
    match registry::create(md, ctx).await? {
        Component::PubSub(p) => Ok(p),
        _ => Err(registry::unknown_type(md, Some("pubsub"))),
    }
}
