//! Pub/sub building block: Dapr's publish semantics (CloudEvents envelope,
//! raw payloads, bulk publish) and the runtime side of every subscription
//! path — the streaming `SubscribeTopicEventsAlpha1`, the app-callback model
//! (through an [`AppChannel`]) and, later, shared memory — all built on
//! [`PubSubBlock::subscribe`].
//!
//! Publishing:
//!
//! * by default the data is wrapped in a CloudEvents 1.0 JSON envelope (id,
//!   source = app id, type `com.dapr.event.sent`, specversion, datacontenttype
//!   — `text/plain` when the request gives none, as in Dapr —, topic,
//!   pubsubname, time); JSON data is embedded as JSON, text as a string,
//!   anything else (or data that is not UTF-8) as `data_base64`;
//! * `data_content_type: application/cloudevents+json` passes the app's own
//!   envelope through, filling missing id/source/type/specversion and setting
//!   topic and pubsubname;
//! * request metadata `rawPayload=true` publishes the data as is;
//!   `partitionKey` becomes the message key; `cloudevent.id`,
//!   `cloudevent.source`, `cloudevent.type` and `cloudevent.subject`
//!   override envelope fields; every other entry travels as a message header.
//!
//! Subscribing: the consumer group is the app id unless the subscription's
//! metadata says `consumerGroup`; `groupInstanceId` (static membership),
//! `maxInFlightPartitions`, `maxInFlightPerPartition`, `retryBackoff` and
//! `revokeTimeout` tune it. Every delivered event carries `partition`,
//! `offset`, `partitionKey`, `attempt` and the message headers in its
//! extensions. SUCCESS acks, RETRY redelivers after the backoff, DROP
//! publishes the original message to the dead-letter topic (when one is set;
//! if that fails the message is retried) and moves on.
//!
//! `maxInFlightPerPartition` (default 1) is the pipelining option: with N > 1
//! up to N events of a partition are out to the app at once, in order, and
//! commits advance only over the acked prefix; a RETRY of event n delivers n
//! again and then everything after it again, in order (see
//! `weft_components::pubsub` for the contract). Every subscription path —
//! streaming over gRPC and shared memory, and the callback model — is this
//! one block code path. In the callback model the N events of a window are N
//! concurrent `OnTopicEvent` calls, started in order; an app server that
//! runs calls concurrently may process them concurrently.

mod callback;
mod envelope;
mod publish;
mod streaming;
mod subscription;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use weft_components::pubsub::{PartitionLag, PubSub};
use weft_proto::runtime as pb;

use crate::error::BlockError;
use crate::telemetry::{OpMetrics, Telemetry};

pub use streaming::{EncodedResponse, ResponseForm};
pub use subscription::{PendingEvent, TopicSubscription};

/// Request metadata: publish the data without a CloudEvents envelope.
pub const RAW_PAYLOAD: &str = "rawPayload";
/// Request metadata: the message key (Kafka key; selects the partition).
pub const PARTITION_KEY: &str = "partitionKey";
/// Subscription metadata: consumer group (default: the app id).
pub const CONSUMER_GROUP: &str = "consumerGroup";
/// Subscription metadata: static membership id.
pub const GROUP_INSTANCE_ID: &str = "groupInstanceId";
/// Subscription metadata: most partitions with a message in flight.
pub const MAX_IN_FLIGHT: &str = "maxInFlightPartitions";
/// Subscription metadata: most events of one partition out to the app at
/// once (1, the default: strict; more: pipelined).
pub const MAX_IN_FLIGHT_PER_PARTITION: &str = "maxInFlightPerPartition";
/// Subscription metadata: wait before redelivering after RETRY.
pub const RETRY_BACKOFF: &str = "retryBackoff";
/// Subscription metadata: how long a revoked partition waits for acks.
pub const REVOKE_TIMEOUT: &str = "revokeTimeout";

/// CloudEvents `type` of published events, as in Dapr.
pub const EVENT_TYPE: &str = "com.dapr.event.sent";
/// Content type of a CloudEvents JSON envelope.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// Responses of a streaming subscription.
pub type EventStream<F = pb::SubscribeTopicEventsResponseAlpha1> =
    mpsc::Receiver<Result<F, BlockError>>;

/// How a subscription was made (reported by GetMetadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    Streaming,
    Programmatic,
}

/// A subscription as the transports ask for it.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionRequest {
    pub pubsub_name: String,
    pub topic: String,
    pub metadata: HashMap<String, String>,
    pub dead_letter_topic: Option<String>,
    /// Route (`TopicEventRequest.path`) of the callback model.
    pub path: String,
}

/// The pub/sub building block. Cheap to clone.
#[derive(Clone)]
pub struct PubSubBlock {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    app_id: String,
    components: BTreeMap<String, Arc<dyn PubSub>>,
    /// Component types by name (span and metric labels).
    kinds: BTreeMap<String, String>,
    publish_ops: BTreeMap<String, OpMetrics>,
    telemetry: Arc<Telemetry>,
    active: Mutex<HashMap<u64, pb::PubsubSubscription>>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// Flow rules pacing deliveries (FlowControl rules on subscriptions).
    policies: std::sync::OnceLock<Arc<crate::resiliency::Policies>>,
}

impl PubSubBlock {
    /// Paces deliveries by the FlowControl rules on subscriptions.
    pub fn with_resiliency(self, policies: Arc<crate::resiliency::Policies>) -> Self {
        let _ = self.inner.policies.set(policies);
        self
    }

    /// A block over `components` without tracing (tests, tools).
    pub fn new(
        app_id: &str,
        components: BTreeMap<String, Arc<dyn PubSub>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let components = components
            .into_iter()
            .map(|(n, ps)| (n, ("pubsub".to_string(), ps)))
            .collect();
        Self::with_telemetry(app_id, components, shutdown, Telemetry::disabled(app_id))
    }

    /// A block over `components` (name → type and component), recording
    /// into `telemetry`: publish metrics, delivery metrics, consumer lag.
    pub fn with_telemetry(
        app_id: &str,
        components: BTreeMap<String, (String, Arc<dyn PubSub>)>,
        shutdown: watch::Receiver<bool>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let kinds: BTreeMap<String, String> = components
            .iter()
            .map(|(n, (k, _))| (n.clone(), k.clone()))
            .collect();
        let publish_ops = components
            .iter()
            .map(|(n, (k, _))| (n.clone(), telemetry.metrics.op(n, k, "publish")))
            .collect();
        let components: BTreeMap<String, Arc<dyn PubSub>> =
            components.into_iter().map(|(n, (_, ps))| (n, ps)).collect();
        telemetry.metrics.register_collector(Box::new(LagCollector {
            components: components.clone(),
        }));
        Self {
            inner: Arc::new(Inner {
                app_id: app_id.to_string(),
                components,
                kinds,
                publish_ops,
                telemetry,
                active: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutdown,
                policies: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Names of the configured pub/sub components.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.components.keys().map(String::as_str)
    }

    /// Active subscriptions, for GetMetadata.
    pub fn subscriptions(&self) -> Vec<pb::PubsubSubscription> {
        let mut subs: Vec<_> = self
            .inner
            .active
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default();
        subs.sort_by(|a: &pb::PubsubSubscription, b| {
            (&a.pubsub_name, &a.topic).cmp(&(&b.pubsub_name, &b.topic))
        });
        subs
    }

    /// Closes every component (ending their subscriptions).
    pub async fn close(&self) {
        for (name, ps) in &self.inner.components {
            tracing::debug!(component = %name, "closing pub/sub");
            ps.close().await;
        }
    }

    fn component(&self, name: &str) -> Result<&Arc<dyn PubSub>, BlockError> {
        self.inner.component(name)
    }

    // === subscribing ===

    /// Joins the subscription's consumer group. Shared by every subscription
    /// path; the returned subscription leaves the group when dropped.
    pub async fn subscribe(
        &self,
        req: SubscriptionRequest,
        kind: SubscriptionKind,
    ) -> Result<TopicSubscription, BlockError> {
        self.inner.clone().subscribe(req, kind).await
    }
}

// === impl Inner ===

impl Inner {
    /// The component type of `pubsub` (`pubsub.kafka`, …).
    fn kind_of(&self, pubsub: &str) -> String {
        self.kinds.get(pubsub).cloned().unwrap_or_default()
    }

    /// Records one publish call to `pubsub`.
    fn record_publish(&self, pubsub: &str, ok: bool, started: Option<std::time::Instant>) {
        if let Some(m) = self.publish_ops.get(pubsub) {
            m.record(ok, started);
        }
    }

    fn component(&self, name: &str) -> Result<&Arc<dyn PubSub>, BlockError> {
        BlockError::find_component(&self.components, name, "pubsub_name", "pub/sub")
    }
}

fn check_topic(topic: &str) -> Result<(), BlockError> {
    if topic.is_empty() {
        return Err(BlockError::missing_field("topic"));
    }
    Ok(())
}

/// Reads every component's consumer lag at scrape time
/// (`weft_pubsub_consumer_lag`).
struct LagCollector {
    components: BTreeMap<String, Arc<dyn PubSub>>,
}

impl std::fmt::Debug for LagCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.components.keys()).finish()
    }
}

impl prometheus_client::collector::Collector for LagCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut lag = encoder.encode_descriptor(
            "pubsub_consumer_lag",
            "Messages published after a consumer group's committed position, per partition",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let lags: Vec<(crate::telemetry::Labels, PartitionLag)> = self
            .components
            .iter()
            .flat_map(|(name, ps)| {
                ps.lag().into_iter().map(move |l| {
                    let labels: crate::telemetry::Labels = vec![
                        ("component", name.clone()),
                        ("topic", l.topic.clone()),
                        ("group", l.group.clone()),
                        ("partition", l.partition.to_string()),
                    ];
                    (labels, l)
                })
            })
            .collect();
        for (labels, l) in &lags {
            let g = prometheus_client::metrics::gauge::ConstGauge::new(l.lag);
            g.encode(lag.encode_family(labels)?)?;
        }
        let mut held = encoder.encode_descriptor(
            "pubsub_consumer_held",
            "Messages the runtime fetched and holds for a partition (handed out to the app or waiting)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, l) in &lags {
            if let Some(h) = l.held {
                let g = prometheus_client::metrics::gauge::ConstGauge::new(h as i64);
                g.encode(held.encode_family(labels)?)?;
            }
        }
        let mut paused = encoder.encode_descriptor(
            "pubsub_consumer_paused",
            "1 while fetching for a partition is paused because its buffer is full (a slow or stuck subscriber)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, l) in lags.iter().filter(|(_, l)| l.held.is_some()) {
            let g = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(l.paused));
            g.encode(paused.encode_family(labels)?)?;
        }
        Ok(())
    }
}
