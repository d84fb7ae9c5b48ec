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
//! * Within a partition a subscription receives message n+1 only after
//!   message n was acked with [`Ack::Success`] or [`Ack::Drop`]. Different
//!   partitions are delivered concurrently, up to `options.max_in_flight`
//!   partitions at once.
//! * [`Ack::Retry`] redelivers the same message, after `options.retry_backoff`,
//!   before anything later in its partition; other partitions go on.
//! * The committed position of a partition only ever moves past acked
//!   messages. Whatever was delivered but not acked when a subscription ends
//!   (receiver dropped, process killed, partition revoked) is delivered again
//!   to the partition's next owner.
//! * On revocation the backend stops handing out that partition's messages,
//!   waits up to `options.revoke_timeout` for in-flight acks, commits, then
//!   releases the partition.
//! * Dropping a [`Delivery`] without acking it counts as [`Ack::Retry`].

pub mod conformance;
pub mod embedded;
pub mod kafka;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::metadata::{ComponentError, InitContext, Metadata};

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
    /// Wait before redelivering a message acked with [`Ack::Retry`].
    pub retry_backoff: Duration,
    /// How long a revoked partition waits for in-flight acks.
    pub revoke_timeout: Duration,
    /// Static membership id (`group.instance.id`), if the backend supports it.
    pub instance_id: Option<String>,
}

impl SubscribeOptions {
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            max_in_flight: 64,
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

/// A message handed to a subscriber, with the means to ack it.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    ack: Option<oneshot::Sender<Ack>>,
}

impl Delivery {
    /// Creates a delivery and the receiver on which the backend learns its ack.
    pub fn new(message: Message) -> (Self, oneshot::Receiver<Ack>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                message,
                ack: Some(tx),
            },
            rx,
        )
    }

    /// Acks the message.
    pub fn ack(mut self, ack: Ack) {
        if let Some(tx) = self.ack.take() {
            let _ = tx.send(ack);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(tx) = self.ack.take() {
            let _ = tx.send(Ack::Retry);
        }
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

    /// Leaves every group and releases connections.
    async fn close(&self) {}
}

/// Component types this block can build.
pub const TYPES: &[&str] = &["pubsub.embedded", "pubsub.kafka"];

/// Builds a pub/sub backend from its component definition.
pub async fn create(md: &Metadata, ctx: &InitContext) -> Result<Arc<dyn PubSub>, ComponentError> {
    match md.kind() {
        "pubsub.embedded" => Ok(Arc::new(embedded::EmbeddedBroker::from_metadata(md, ctx)?)),
        "pubsub.kafka" => Ok(Arc::new(kafka::KafkaPubSub::from_metadata(md, ctx)?)),
        other => Err(ComponentError::UnknownType {
            component: md.component().to_string(),
            kind: other.to_string(),
            known: TYPES.join(", "),
        }),
    }
}
