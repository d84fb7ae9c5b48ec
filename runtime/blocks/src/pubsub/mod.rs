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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use weft_components::metadata::parse_duration;
use weft_components::pubsub::{
    Ack, Delivery, Message, PubSub, PublishRequest, SubscribeOptions,
    MAX_IN_FLIGHT_PER_PARTITION as MAX_PER_PARTITION,
};
use weft_proto::runtime as pb;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as Status;

use super::time::rfc3339;
use crate::error::ApiError;
use crate::shutdown::stopping;

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

/// Responses queued on a streaming subscription before it waits for the app.
const STREAM_BUFFER: usize = 256;
/// Events taken from the broker while the stream's queue is full.
const OUTBOX: usize = 64;

/// Responses of a streaming subscription.
pub type EventStream = mpsc::Receiver<Result<pb::SubscribeTopicEventsResponseAlpha1, ApiError>>;

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

struct Inner {
    app_id: String,
    components: BTreeMap<String, Arc<dyn PubSub>>,
    active: Mutex<HashMap<u64, pb::PubsubSubscription>>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl PubSubBlock {
    pub fn new(
        app_id: &str,
        components: BTreeMap<String, Arc<dyn PubSub>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                app_id: app_id.to_string(),
                components,
                active: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutdown,
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

    fn component(&self, name: &str) -> Result<&Arc<dyn PubSub>, ApiError> {
        self.inner.component(name)
    }

    // === publishing ===

    pub async fn publish_event(&self, req: pb::PublishEventRequest) -> Result<(), ApiError> {
        let ps = self.component(&req.pubsub_name)?;
        check_topic(&req.topic)?;
        let msg = self.inner.message(
            &req.pubsub_name,
            &req.topic,
            req.data,
            &req.data_content_type,
            Md::from(&req.metadata),
            None,
            &now_rfc3339(),
        )?;
        let published = ps
            .publish(msg)
            .await
            .map_err(|e| ApiError::from_pubsub(&req.pubsub_name, e));
        deliver_first().await;
        published
    }

    pub async fn bulk_publish_event(
        &self,
        req: pb::BulkPublishRequest,
    ) -> Result<pb::BulkPublishResponse, ApiError> {
        let ps = self.component(&req.pubsub_name)?;
        check_topic(&req.topic)?;
        let mut ids = std::collections::HashSet::with_capacity(req.entries.len());
        for (i, e) in req.entries.iter().enumerate() {
            if e.entry_id.is_empty() {
                return Err(ApiError::missing_field(&format!("entries[{i}].entry_id")));
            }
            if !ids.insert(e.entry_id.as_str()) {
                return Err(ApiError::invalid_argument(format!(
                    "entries[{i}].entry_id '{}' is used by more than one entry; entry ids must be unique",
                    e.entry_id
                )));
            }
        }
        drop(ids);
        let now = now_rfc3339();
        let mut entry_ids = Vec::with_capacity(req.entries.len());
        let mut msgs = Vec::with_capacity(req.entries.len());
        for (i, mut e) in req.entries.into_iter().enumerate() {
            msgs.push(self.inner.message(
                &req.pubsub_name,
                &req.topic,
                std::mem::take(&mut e.event),
                &e.content_type,
                Md {
                    base: &req.metadata,
                    entry: Some(&e.metadata),
                },
                Some(i),
                &now,
            )?);
            entry_ids.push(e.entry_id);
        }
        let results = ps.publish_bulk(msgs).await;
        deliver_first().await;
        let failed_entries = entry_ids
            .into_iter()
            .zip(results)
            .filter_map(|(entry_id, r)| {
                r.err().map(|err| pb::BulkPublishResponseFailedEntry {
                    entry_id,
                    error: ApiError::from_pubsub(&req.pubsub_name, err).message,
                })
            })
            .collect();
        Ok(pb::BulkPublishResponse { failed_entries })
    }

    // === subscribing ===

    /// Joins the subscription's consumer group. Shared by every subscription
    /// path; the returned subscription leaves the group when dropped.
    pub async fn subscribe(
        &self,
        req: SubscriptionRequest,
        kind: SubscriptionKind,
    ) -> Result<TopicSubscription, ApiError> {
        self.inner.clone().subscribe(req, kind).await
    }

    /// The streaming subscription (`SubscribeTopicEventsAlpha1`), independent
    /// of the transport: `requests` are the app's messages, the result the
    /// runtime's. The first request must be `initial_request`; the stream
    /// ends with an error naming what was wrong, or when the app's side ends
    /// (then unacked events go to the group's other members).
    pub fn subscribe_topic_events<S>(&self, requests: S) -> EventStream
    where
        S: Stream<Item = Result<pb::SubscribeTopicEventsRequestAlpha1, ApiError>>
            + Send
            + Unpin
            + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = run_stream(inner, requests, &tx).await {
                tracing::debug!(error = %e, "topic subscription stream closed with an error");
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    /// The callback model: asks the app for its subscriptions (retrying while
    /// it is not up) and delivers each one's events with `OnTopicEvent`.
    pub fn start_app_subscriptions(&self, channel: Arc<dyn AppChannel>) {
        let inner = self.inner.clone();
        tokio::spawn(async move { run_app_subscriptions(inner, channel).await });
    }
}

/// Lets the subscriptions a publish handed messages to (the embedded broker
/// hands them over during the call) write them to their streams before the
/// publisher's answer is written, so on a one-thread runtime the event
/// leaves first. Costs one task switch; the gain measured end to end is
/// small and within the noise of a busy host (docs/benchmarks.md).
async fn deliver_first() {
    tokio::task::yield_now().await;
}

// === impl Inner ===

impl Inner {
    fn component(&self, name: &str) -> Result<&Arc<dyn PubSub>, ApiError> {
        if name.is_empty() {
            return Err(ApiError::missing_field("pubsub_name"));
        }
        self.components.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.components.keys().map(String::as_str).collect();
            ApiError::invalid_argument(if known.is_empty() {
                format!("pub/sub '{name}' is not found: no pub/sub components are configured")
            } else {
                format!(
                    "pub/sub '{name}' is not found; configured pub/subs: {}",
                    known.join(", ")
                )
            })
        })
    }

    /// The message to publish for one event; `entry` is its index in a
    /// bulk request (named in errors); `now` the envelope's `time`.
    #[allow(clippy::too_many_arguments)]
    fn message(
        &self,
        pubsub: &str,
        topic: &str,
        data: Vec<u8>,
        content_type: &str,
        metadata: Md<'_>,
        entry: Option<usize>,
        now: &str,
    ) -> Result<PublishRequest, ApiError> {
        let at = || entry.map(|i| format!("entries[{i}].")).unwrap_or_default();
        let raw = match metadata
            .get(RAW_PAYLOAD)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => false,
            Some(v) if v.is_empty() || v == "false" => false,
            Some(v) if v == "true" => true,
            Some(v) => {
                return Err(ApiError::invalid_argument(format!(
                    "{}metadata.{RAW_PAYLOAD} must be true or false, got '{v}'",
                    at()
                )))
            }
        };
        let key = metadata
            .get(PARTITION_KEY)
            .filter(|k| !k.is_empty())
            .cloned();
        let mut headers: HashMap<String, String> = metadata
            .iter()
            .filter(|(k, _)| {
                k.as_str() != RAW_PAYLOAD
                    && k.as_str() != PARTITION_KEY
                    && !k.starts_with("cloudevent.")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let data = if raw {
            if !content_type.is_empty() {
                headers.insert("content-type".into(), content_type.to_string());
            }
            data
        } else if is_cloudevent(content_type) {
            let mut ce: Map<String, Value> = serde_json::from_slice(&data).map_err(|e| {
                ApiError::invalid_argument(format!(
                    "{}data is not a CloudEvents JSON object (data_content_type is {CLOUDEVENTS_JSON}): {e}",
                    at()
                ))
            })?;
            self.fill_envelope(&mut ce, pubsub, topic, metadata, now);
            serde_json::to_vec(&ce)
                .map_err(|e| ApiError::new(tonic::Code::Internal, e.to_string()))?
        } else {
            self.envelope(pubsub, topic, data, content_type, metadata, now)
        };
        Ok(PublishRequest {
            topic: topic.to_string(),
            key,
            data,
            headers,
        })
    }

    /// The CloudEvents envelope of `data`, written straight to JSON (the
    /// fields of [`fill_envelope`](Self::fill_envelope), in the same order).
    fn envelope(
        &self,
        pubsub: &str,
        topic: &str,
        data: Vec<u8>,
        content_type: &str,
        metadata: Md<'_>,
        now: &str,
    ) -> Vec<u8> {
        let ct = if content_type.trim().is_empty() {
            "text/plain"
        } else {
            content_type
        };
        let over = |field: &str| metadata.get(field).filter(|v| !v.is_empty());
        let mut out = Vec::with_capacity(data.len() + 256);
        let (field, value) = embed_data(ct, data);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        json_write(&mut out, &value);
        out.extend_from_slice(b",\"datacontenttype\":");
        json_write(&mut out, ct);
        out.extend_from_slice(b",\"id\":");
        match over("cloudevent.id") {
            Some(id) => json_write(&mut out, id.as_str()),
            None => {
                out.push(b'"');
                out.extend_from_slice(new_event_id().as_bytes());
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"pubsubname\":");
        json_write(&mut out, pubsub);
        out.extend_from_slice(b",\"source\":");
        json_write(
            &mut out,
            over("cloudevent.source").map_or(self.app_id.as_str(), String::as_str),
        );
        out.extend_from_slice(b",\"specversion\":\"1.0\"");
        if let Some(subject) = over("cloudevent.subject") {
            out.extend_from_slice(b",\"subject\":");
            json_write(&mut out, subject.as_str());
        }
        out.extend_from_slice(b",\"time\":");
        json_write(&mut out, now);
        out.extend_from_slice(b",\"topic\":");
        json_write(&mut out, topic);
        out.extend_from_slice(b",\"type\":");
        json_write(
            &mut out,
            over("cloudevent.type").map_or(EVENT_TYPE, String::as_str),
        );
        out.push(b'}');
        out
    }

    fn fill_envelope(
        &self,
        ce: &mut Map<String, Value>,
        pubsub: &str,
        topic: &str,
        metadata: Md<'_>,
        now: &str,
    ) {
        let fields = [
            ("id", "cloudevent.id"),
            ("source", "cloudevent.source"),
            ("type", "cloudevent.type"),
            ("specversion", "cloudevent.specversion"),
        ];
        for (field, key) in fields {
            let over = metadata.get(key).filter(|v| !v.is_empty());
            match over {
                Some(v) if field != "specversion" => {
                    ce.insert(field.into(), v.clone().into());
                }
                _ => {
                    if !matches!(ce.get(field), Some(Value::String(s)) if !s.is_empty()) {
                        let default = match field {
                            "id" => new_event_id(),
                            "source" => self.app_id.clone(),
                            "type" => EVENT_TYPE.to_string(),
                            _ => "1.0".to_string(),
                        };
                        ce.insert(field.into(), default.into());
                    }
                }
            }
        }
        if let Some(s) = metadata.get("cloudevent.subject").filter(|v| !v.is_empty()) {
            ce.insert("subject".into(), s.clone().into());
        }
        ce.insert("topic".into(), topic.into());
        ce.insert("pubsubname".into(), pubsub.into());
        if !ce.contains_key("time") {
            ce.insert("time".into(), now.into());
        }
    }

    async fn subscribe(
        self: Arc<Self>,
        req: SubscriptionRequest,
        kind: SubscriptionKind,
    ) -> Result<TopicSubscription, ApiError> {
        let ps = self.component(&req.pubsub_name)?.clone();
        check_topic(&req.topic)?;
        let options = subscribe_options(&req, &self.app_id)?;
        let dead_letter_topic = req.dead_letter_topic.clone().filter(|t| !t.is_empty());
        let rx = ps
            .subscribe(options.clone())
            .await
            .map_err(|e| ApiError::from_pubsub(&req.pubsub_name, e))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut active) = self.active.lock() {
            active.insert(
                id,
                pb::PubsubSubscription {
                    pubsub_name: req.pubsub_name.clone(),
                    topic: req.topic.clone(),
                    metadata: req.metadata.clone(),
                    rules: None,
                    dead_letter_topic: dead_letter_topic.clone().unwrap_or_default(),
                    r#type: match kind {
                        SubscriptionKind::Streaming => pb::PubsubSubscriptionType::Streaming,
                        SubscriptionKind::Programmatic => pb::PubsubSubscriptionType::Programmatic,
                    } as i32,
                },
            );
        }
        tracing::info!(component = %req.pubsub_name, topic = %req.topic, group = %options.group, kind = ?kind, "subscribed");
        Ok(TopicSubscription {
            rx,
            ctx: Arc::new(SubscriptionContext {
                pubsub: ps,
                pubsub_name: req.pubsub_name,
                topic: req.topic,
                dead_letter_topic,
                path: req.path,
            }),
            registration: Registration { inner: self, id },
        })
    }
}

fn check_topic(topic: &str) -> Result<(), ApiError> {
    if topic.is_empty() {
        return Err(ApiError::missing_field("topic"));
    }
    Ok(())
}

/// Consumer options from a subscription's metadata.
fn subscribe_options(
    req: &SubscriptionRequest,
    app_id: &str,
) -> Result<SubscribeOptions, ApiError> {
    let md = |k: &str| {
        req.metadata
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let group = md(CONSUMER_GROUP).unwrap_or(app_id);
    let mut o = SubscribeOptions::new(req.topic.clone(), group);
    o.instance_id = md(GROUP_INSTANCE_ID).map(str::to_string);
    if let Some(v) = md(MAX_IN_FLIGHT) {
        o.max_in_flight = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "metadata.{MAX_IN_FLIGHT}: '{v}' is not a positive integer"
            ))
        })?;
    }
    if let Some(v) = md(MAX_IN_FLIGHT_PER_PARTITION) {
        o.max_in_flight_per_partition = v
            .parse()
            .ok()
            .filter(|n| (1..=MAX_PER_PARTITION).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_argument(format!(
                    "metadata.{MAX_IN_FLIGHT_PER_PARTITION}: '{v}' is not an integer from 1 to {MAX_PER_PARTITION}"
                ))
            })?;
    }
    for (field, slot) in [
        (RETRY_BACKOFF, &mut o.retry_backoff),
        (REVOKE_TIMEOUT, &mut o.revoke_timeout),
    ] {
        if let Some(v) = md(field) {
            *slot = parse_duration(v).ok_or_else(|| {
                ApiError::invalid_argument(format!(
                    "metadata.{field}: '{v}' is not a duration (e.g. 500ms, 5s)"
                ))
            })?;
        }
    }
    Ok(o)
}

/// Removes a subscription from the registry when dropped.
struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut active) = self.inner.active.lock() {
            active.remove(&self.id);
        }
    }
}

struct SubscriptionContext {
    pubsub: Arc<dyn PubSub>,
    pubsub_name: String,
    topic: String,
    dead_letter_topic: Option<String>,
    path: String,
}

/// A live subscription; dropping it leaves the consumer group.
pub struct TopicSubscription {
    rx: mpsc::Receiver<Delivery>,
    ctx: Arc<SubscriptionContext>,
    registration: Registration,
}

impl TopicSubscription {
    /// The next event; `None` when the component ended the subscription.
    pub async fn next(&mut self) -> Option<PendingEvent> {
        let delivery = self.rx.recv().await?;
        Some(PendingEvent {
            delivery,
            ctx: self.ctx.clone(),
        })
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<PendingEvent> {
        let delivery = self.rx.try_recv().ok()?;
        Some(PendingEvent {
            delivery,
            ctx: self.ctx.clone(),
        })
    }

    pub fn pubsub_name(&self) -> &str {
        &self.ctx.pubsub_name
    }

    pub fn topic(&self) -> &str {
        &self.ctx.topic
    }

    fn id(&self) -> u64 {
        self.registration.id
    }
}

/// A delivered event waiting for the app's verdict. Dropping it without
/// [`complete`](Self::complete) means RETRY.
pub struct PendingEvent {
    delivery: Delivery,
    ctx: Arc<SubscriptionContext>,
}

impl PendingEvent {
    /// The broker message.
    pub fn message(&self) -> &Message {
        &self.delivery.message
    }

    /// The event as Dapr delivers it. `id` replaces the CloudEvent's id when
    /// given (the streaming API needs an id unique per delivery); the
    /// envelope's own id is then in the `cloudEventId` extension.
    pub fn to_event(&self, id: Option<String>) -> pb::TopicEventRequest {
        to_event(
            &self.delivery.message,
            &self.ctx.pubsub_name,
            &self.ctx.path,
            id,
        )
    }

    /// Applies the app's status: SUCCESS acks, RETRY redelivers, DROP
    /// dead-letters (when configured) and moves on. Unknown values retry.
    pub async fn complete(self, status: i32) {
        let ack = match Status::try_from(status) {
            Ok(Status::Success) => Ack::Success,
            Ok(Status::Retry) => Ack::Retry,
            Ok(Status::Drop) => self.dead_letter().await,
            Err(_) => {
                tracing::warn!(component = %self.ctx.pubsub_name, topic = %self.ctx.topic, status, "unknown event status from the app; retrying");
                Ack::Retry
            }
        };
        self.delivery.ack(ack);
    }

    async fn dead_letter(&self) -> Ack {
        let Some(dlt) = &self.ctx.dead_letter_topic else {
            return Ack::Drop;
        };
        let m = &self.delivery.message;
        let req = PublishRequest {
            topic: dlt.clone(),
            key: m.key.clone(),
            data: m.data.clone(),
            headers: m.headers.clone(),
        };
        match self.ctx.pubsub.publish(req).await {
            Ok(()) => Ack::Drop,
            Err(e) => {
                tracing::warn!(component = %self.ctx.pubsub_name, topic = %self.ctx.topic, dead_letter_topic = %dlt, error = %e,
                    "could not publish to the dead-letter topic; retrying the message");
                Ack::Retry
            }
        }
    }
}

// === the streaming subscription ===

async fn run_stream<S>(
    inner: Arc<Inner>,
    mut requests: S,
    tx: &mpsc::Sender<Result<pb::SubscribeTopicEventsResponseAlpha1, ApiError>>,
) -> Result<(), ApiError>
where
    S: Stream<Item = Result<pb::SubscribeTopicEventsRequestAlpha1, ApiError>>
        + Send
        + Unpin
        + 'static,
{
    let mut shutdown = inner.shutdown.clone();
    let stop = stopping(&mut shutdown);
    tokio::pin!(stop);
    let first = tokio::select! {
        r = requests.next() => r,
        _ = tx.closed() => return Ok(()),
        _ = &mut stop => return Ok(()),
    };
    let initial = match first {
        None | Some(Err(_)) => return Ok(()),
        Some(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(ReqType::InitialRequest(i)),
        })) => i,
        Some(Ok(_)) => {
            return Err(ApiError::invalid_argument(
                "the first message on a topic subscription stream must be initial_request (with pubsub_name and topic)",
            ))
        }
    };
    let mut sub = inner
        .clone()
        .subscribe(
            SubscriptionRequest {
                pubsub_name: initial.pubsub_name,
                topic: initial.topic,
                metadata: initial.metadata,
                dead_letter_topic: initial.dead_letter_topic,
                path: String::new(),
            },
            SubscriptionKind::Streaming,
        )
        .await?;
    let initial_response = pb::SubscribeTopicEventsResponseAlpha1 {
        subscribe_topic_events_response_type: Some(RespType::InitialResponse(
            pb::SubscribeTopicEventsResponseInitialAlpha1 {},
        )),
    };
    if tx.send(Ok(initial_response)).await.is_err() {
        return Ok(());
    }
    let mut out = Outbox::new(sub.id());
    loop {
        // Everything that is ready is handled before waiting: the acks the
        // app sent, each of which may hand out the next event of its
        // partition at once, and every event the broker handed out — all
        // queued on the stream together, so the transport writes them in
        // one go.
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            req = requests.next() => {
                let processed = match req {
                    None | Some(Err(_)) => return Ok(()), // the app is gone: unacked events are redelivered
                    Some(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
                        subscribe_topic_events_request_type: Some(ReqType::EventProcessed(p)),
                    })) => p,
                    Some(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
                        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(_)),
                    })) => {
                        return Err(ApiError::invalid_argument(
                            "initial_request may only be sent once, as the first message of the stream",
                        ))
                    }
                    Some(Ok(_)) => {
                        return Err(ApiError::invalid_argument(
                            "empty message on the topic subscription stream: send event_processed",
                        ))
                    }
                };
                let Some(event) = out.take(&processed.id) else {
                    return Err(ApiError::invalid_argument(format!(
                        "event_processed.id '{}' is not an event in flight on this subscription (pub/sub '{}', topic '{}')",
                        processed.id, sub.pubsub_name(), sub.topic()
                    )));
                };
                let Some(status) = processed.status else {
                    return Err(ApiError::missing_field("event_processed.status"));
                };
                event.complete(status.status).await;
            }
            permit = tx.reserve(), if out.is_backlogged() => {
                let Ok(permit) = permit else { return Ok(()) };
                if !out.flush(permit, tx) {
                    return Ok(());
                }
            }
            next = sub.next(), if out.has_room() => match next {
                Some(event) => {
                    let mut open = out.push(event, tx);
                    while open && out.has_room() {
                        let Some(event) = sub.try_next() else { break };
                        open = out.push(event, tx);
                    }
                    if !open {
                        return Ok(());
                    }
                }
                None => {
                    return Err(ApiError::new(
                        tonic::Code::Unavailable,
                        format!("pub/sub '{}' ended the subscription to topic '{}'", sub.pubsub_name(), sub.topic()),
                    ))
                }
            },
        }
    }
}

type StreamTx = mpsc::Sender<Result<pb::SubscribeTopicEventsResponseAlpha1, ApiError>>;

/// Hashes the sequence numbers of [`Outbox`] (no need for SipHash: they are
/// ours, not the app's).
#[derive(Default)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The events of a streaming subscription: those out to the app (by the
/// number in their id, `<subscription>-<n>`) and those waiting for room on
/// the stream.
struct Outbox {
    prefix: String,
    next: u64,
    pending: HashMap<u64, PendingEvent, std::hash::BuildHasherDefault<SeqHasher>>,
    backlog: VecDeque<pb::SubscribeTopicEventsResponseAlpha1>,
}

impl Outbox {
    fn new(subscription: u64) -> Self {
        Self {
            prefix: format!("{subscription}-"),
            next: 0,
            pending: HashMap::default(),
            backlog: VecDeque::new(),
        }
    }

    fn has_room(&self) -> bool {
        self.backlog.len() < OUTBOX
    }

    fn is_backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Numbers the event, keeps it until its ack and queues it on the
    /// stream; `false` when the stream is closed.
    fn push(&mut self, event: PendingEvent, tx: &StreamTx) -> bool {
        let n = self.next;
        self.next += 1;
        let mut id = String::with_capacity(self.prefix.len() + 20);
        id.push_str(&self.prefix);
        let _ = write!(id, "{n}");
        let msg = pb::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(RespType::EventMessage(
                event.to_event(Some(id)),
            )),
        };
        self.pending.insert(n, event);
        if !self.backlog.is_empty() {
            self.backlog.push_back(msg);
            return true;
        }
        match tx.try_send(Ok(msg)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(Ok(msg))) => {
                self.backlog.push_back(msg);
                true
            }
            Err(_) => false,
        }
    }

    /// Sends the backlog's first event with `permit`, then as many more as
    /// fit; `false` when the stream is closed.
    fn flush(
        &mut self,
        permit: mpsc::Permit<'_, Result<pb::SubscribeTopicEventsResponseAlpha1, ApiError>>,
        tx: &StreamTx,
    ) -> bool {
        if let Some(msg) = self.backlog.pop_front() {
            permit.send(Ok(msg));
        }
        while let Some(msg) = self.backlog.pop_front() {
            match tx.try_send(Ok(msg)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Ok(msg))) => {
                    self.backlog.push_front(msg);
                    break;
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// The event an `event_processed.id` names, if it is out to the app.
    fn take(&mut self, id: &str) -> Option<PendingEvent> {
        let n = id.strip_prefix(self.prefix.as_str())?.parse::<u64>().ok()?;
        self.pending.remove(&n)
    }
}

// === the callback model ===

/// Why a call to the app failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppChannelError {
    /// The app is not reachable (yet).
    Unavailable(String),
    /// The app does not implement the method.
    Unimplemented,
    /// The app answered with an error.
    Failed(String),
}

impl std::fmt::Display for AppChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppChannelError::Unavailable(e) => write!(f, "app unavailable: {e}"),
            AppChannelError::Unimplemented => write!(f, "not implemented by the app"),
            AppChannelError::Failed(e) => write!(f, "app error: {e}"),
        }
    }
}

/// The app side of the callback model (implemented by a transport, e.g.
/// `api::app_channel` over gRPC).
pub trait AppChannel: Send + Sync + 'static {
    fn list_topic_subscriptions(
        &self,
    ) -> BoxFuture<'_, Result<Vec<pb::TopicSubscription>, AppChannelError>>;
    fn on_topic_event(
        &self,
        event: pb::TopicEventRequest,
    ) -> BoxFuture<'_, Result<pb::TopicEventResponse, AppChannelError>>;
}

/// Logs at most once per interval.
struct LogLimiter {
    every: Duration,
    last: Mutex<Option<tokio::time::Instant>>,
}

impl LogLimiter {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
        }
    }

    fn allow(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = tokio::time::Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < self.every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

async fn run_app_subscriptions(inner: Arc<Inner>, channel: Arc<dyn AppChannel>) {
    let mut shutdown = inner.shutdown.clone();
    let mut backoff = Duration::from_millis(50);
    let limiter = LogLimiter::new(Duration::from_secs(30));
    let subs = loop {
        match channel.list_topic_subscriptions().await {
            Ok(subs) => break subs,
            Err(AppChannelError::Unimplemented) => {
                tracing::info!("the app does not implement ListTopicSubscriptions: no programmatic subscriptions");
                return;
            }
            Err(e) => {
                if limiter.allow() {
                    tracing::info!(error = %e, "waiting for the app to list its topic subscriptions");
                }
            }
        }
        tokio::select! {
            _ = stopping(&mut shutdown) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    };
    tracing::info!(count = subs.len(), "the app listed its topic subscriptions");
    for s in subs {
        if s.routes.as_ref().is_some_and(|r| !r.rules.is_empty()) {
            tracing::warn!(component = %s.pubsub_name, topic = %s.topic, "routing rules are not supported; using the default route");
        }
        let path = s
            .routes
            .as_ref()
            .map(|r| r.default.clone())
            .unwrap_or_default();
        let req = SubscriptionRequest {
            pubsub_name: s.pubsub_name.clone(),
            topic: s.topic.clone(),
            metadata: s.metadata,
            dead_letter_topic: Some(s.dead_letter_topic),
            path,
        };
        match inner
            .clone()
            .subscribe(req, SubscriptionKind::Programmatic)
            .await
        {
            Ok(sub) => {
                tokio::spawn(deliver_to_app(sub, channel.clone(), inner.shutdown.clone()));
            }
            Err(e) => {
                tracing::error!(component = %s.pubsub_name, topic = %s.topic, error = %e.message,
                "cannot subscribe the app's topic subscription")
            }
        }
    }
}

/// Calls `OnTopicEvent` for each event of `sub`: one call per event out
/// (the broker keeps each partition to its window), all driven by this task
/// and started in delivery order. On shutdown it stops taking events and
/// lets the calls under way finish.
async fn deliver_to_app(
    mut sub: TopicSubscription,
    channel: Arc<dyn AppChannel>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limiter = LogLimiter::new(Duration::from_secs(10));
    let (pubsub, topic) = (sub.pubsub_name().to_string(), sub.topic().to_string());
    let call = |event: PendingEvent| {
        let channel = channel.clone();
        let (limiter, pubsub, topic) = (&limiter, &pubsub, &topic);
        async move {
            let status = match channel.on_topic_event(event.to_event(None)).await {
                Ok(r) => r.status,
                Err(e) => {
                    if limiter.allow() {
                        tracing::warn!(component = %pubsub, topic = %topic, error = %e, "OnTopicEvent failed; retrying the event");
                    }
                    Status::Retry as i32
                }
            };
            event.complete(status).await;
        }
    };
    let mut calls = futures::stream::FuturesUnordered::new();
    let stop = stopping(&mut shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(()) = calls.next(), if !calls.is_empty() => {}
            e = sub.next() => match e {
                Some(e) => {
                    calls.push(call(e));
                    while let Some(e) = sub.try_next() {
                        calls.push(call(e));
                    }
                }
                None => {
                    tracing::warn!(component = %pubsub, topic = %topic, "pub/sub ended the subscription");
                    break;
                }
            },
        }
    }
    while calls.next().await.is_some() {}
}

// === envelopes ===

fn base_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_cloudevent(content_type: &str) -> bool {
    base_type(content_type) == CLOUDEVENTS_JSON
}

fn is_json(content_type: &str) -> bool {
    let t = base_type(content_type);
    t == "application/json" || t == "text/json" || t.ends_with("+json")
}

fn is_binary(content_type: &str) -> bool {
    base_type(content_type) == "application/octet-stream"
}

/// How Dapr embeds data in an envelope: JSON as JSON, binary as base64,
/// text as a string (base64 when it is not UTF-8).
fn embed_data(content_type: &str, data: Vec<u8>) -> (&'static str, Value) {
    if is_json(content_type) {
        if let Ok(v) = serde_json::from_slice::<Value>(&data) {
            return ("data", v);
        }
    }
    if is_binary(content_type) {
        return ("data_base64", base64_encode(&data).into());
    }
    match String::from_utf8(data) {
        Ok(s) => ("data", s.into()),
        Err(e) => ("data_base64", base64_encode(e.as_bytes()).into()),
    }
}

/// Request metadata, with a bulk entry's own metadata over the request's.
#[derive(Clone, Copy)]
struct Md<'a> {
    base: &'a HashMap<String, String>,
    entry: Option<&'a HashMap<String, String>>,
}

impl<'a> From<&'a HashMap<String, String>> for Md<'a> {
    fn from(base: &'a HashMap<String, String>) -> Self {
        Self { base, entry: None }
    }
}

impl<'a> Md<'a> {
    fn get(&self, key: &str) -> Option<&'a String> {
        self.entry
            .and_then(|e| e.get(key))
            .or_else(|| self.base.get(key))
    }

    fn iter(&self) -> impl Iterator<Item = (&'a String, &'a String)> + use<'a> {
        let entry = self.entry;
        entry.into_iter().flatten().chain(
            self.base
                .iter()
                .filter(move |(k, _)| !entry.is_some_and(|e| e.contains_key(*k))),
        )
    }
}

/// Appends `v` as JSON.
fn json_write<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing JSON of strings and values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// The current time as the envelope's `time` (RFC 3339, seconds), formatted
/// once per second per thread.
fn now_rfc3339() -> String {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NOW.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != since.as_secs() {
            *c = (since.as_secs(), rfc3339(since));
        }
        c.1.clone()
    })
}

/// A random (version 4) UUID for a CloudEvent id, from a per-thread pool of
/// OS randomness refilled 4 KiB at a time (one read per 256 ids instead of
/// a system call per id).
fn new_event_id() -> String {
    const POOL: usize = 4096;
    struct Pool {
        bytes: Box<[u8; POOL]>,
        used: usize,
        source: Option<std::fs::File>,
    }
    thread_local! {
        static RANDOM: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool {
            bytes: Box::new([0; POOL]),
            used: POOL,
            source: std::fs::File::open("/dev/urandom").ok(),
        });
    }
    let random = RANDOM.with(|p| {
        let mut p = p.borrow_mut();
        if p.used + 16 > POOL {
            let Pool { bytes, source, .. } = &mut *p;
            let filled = source
                .as_mut()
                .is_some_and(|f| std::io::Read::read_exact(f, &mut bytes[..]).is_ok());
            if !filled {
                return None;
            }
            p.used = 0;
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(&p.bytes[p.used..p.used + 16]);
        p.used += 16;
        Some(b)
    });
    let uuid = match random {
        Some(b) => uuid::Builder::from_random_bytes(b).into_uuid(),
        None => uuid::Uuid::new_v4(),
    };
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut buf).to_string()
}

/// A JSON object key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A CloudEvents JSON envelope taken apart in one pass: the attributes with
/// their own field in `TopicEventRequest`, the data, and the rest (which
/// become extensions). Attributes that are not strings read as empty.
#[derive(Default)]
struct Envelope {
    /// `Some` only when `specversion` is a string (else it is no envelope).
    spec_version: Option<String>,
    id: String,
    source: String,
    r#type: String,
    content_type: String,
    data: Option<Value>,
    data_base64: Option<Value>,
    extensions: Vec<(String, prost_types::Value)>,
}

impl<'de> serde::Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CloudEvents JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Envelope, A::Error> {
                let text = |v: Value| match v {
                    Value::String(s) => s,
                    _ => String::new(),
                };
                let mut e = Envelope::default();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    match &*k {
                        "specversion" => {
                            e.spec_version = match map.next_value::<Value>()? {
                                Value::String(s) => Some(s),
                                _ => None,
                            }
                        }
                        "id" => e.id = text(map.next_value()?),
                        "source" => e.source = text(map.next_value()?),
                        "type" => e.r#type = text(map.next_value()?),
                        "datacontenttype" => e.content_type = text(map.next_value()?),
                        "data" => e.data = Some(map.next_value()?),
                        "data_base64" => e.data_base64 = Some(map.next_value()?),
                        _ => {
                            let v = json_into_prost(map.next_value()?);
                            e.extensions.push((k.into_owned(), v));
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

fn to_event(m: &Message, pubsub: &str, path: &str, id: Option<String>) -> pb::TopicEventRequest {
    let mut ext: BTreeMap<String, prost_types::Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), string_value(v)))
        .collect();
    let envelope = serde_json::from_slice::<Envelope>(&m.data)
        .ok()
        .filter(|ce| ce.spec_version.is_some());
    let mut ev = match envelope {
        Some(ce) => {
            let data = match (ce.data_base64, ce.data) {
                (Some(Value::String(b)), _) => base64_decode(&b).unwrap_or_else(|| b.into_bytes()),
                (_, None | Some(Value::Null)) => Vec::new(),
                (_, Some(Value::String(s))) if !is_json(&ce.content_type) => s.into_bytes(),
                (_, Some(v)) => serde_json::to_vec(&v).unwrap_or_default(),
            };
            ext.extend(ce.extensions);
            let event_id = match id {
                Some(id) => {
                    ext.insert("cloudEventId".into(), string_value(&ce.id));
                    id
                }
                None => ce.id,
            };
            pb::TopicEventRequest {
                id: event_id,
                source: ce.source,
                r#type: ce.r#type,
                spec_version: ce.spec_version.unwrap_or_default(),
                data_content_type: ce.content_type,
                data,
                ..Default::default()
            }
        }
        None => pb::TopicEventRequest {
            id: id.unwrap_or_else(new_event_id),
            r#type: EVENT_TYPE.into(),
            spec_version: "1.0".into(),
            data_content_type: m
                .headers
                .get("content-type")
                .cloned()
                .unwrap_or_else(|| "application/octet-stream".into()),
            data: m.data.clone(),
            ..Default::default()
        },
    };
    ext.insert("partition".into(), number_value(f64::from(m.partition)));
    ext.insert("offset".into(), number_value(m.offset as f64));
    ext.insert("attempt".into(), number_value(f64::from(m.attempt)));
    if let Some(k) = &m.key {
        ext.insert("partitionKey".into(), string_value(k));
    }
    ev.topic = m.topic.clone();
    ev.pubsub_name = pubsub.to_string();
    ev.path = path.to_string();
    ev.extensions = Some(prost_types::Struct { fields: ext });
    ev
}

fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    }
}

fn number_value(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

fn json_into_prost(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_into_prost).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .into_iter()
                .map(|(k, v)| (k, json_into_prost(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let s = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_components::pubsub::embedded::EmbeddedBroker;

    fn block() -> PubSubBlock {
        let (_tx, rx) = watch::channel(false);
        let mut components: BTreeMap<String, Arc<dyn PubSub>> = BTreeMap::new();
        components.insert(
            "pubsub".into(),
            Arc::new(EmbeddedBroker::new("pubsub", 4, 1000, 1 << 20)),
        );
        PubSubBlock::new("app-1", components, rx)
    }

    fn envelope(
        b: &PubSubBlock,
        data: &[u8],
        ct: &str,
        md: &[(&str, &str)],
    ) -> (PublishRequest, Map<String, Value>) {
        let md: HashMap<String, String> = md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let m = b
            .inner
            .message(
                "pubsub",
                "orders",
                data.to_vec(),
                ct,
                (&md).into(),
                None,
                &now_rfc3339(),
            )
            .unwrap();
        let ce = serde_json::from_slice(&m.data).unwrap();
        (m, ce)
    }

    #[test]
    fn json_data_is_embedded_as_json() {
        let (m, ce) = envelope(
            &block(),
            br#"{"a":1}"#,
            "application/json",
            &[("partitionKey", "k1"), ("x", "y")],
        );
        assert_eq!(ce["data"], serde_json::json!({"a": 1}));
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["source"], "app-1");
        assert_eq!(ce["type"], EVENT_TYPE);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["topic"], "orders");
        assert_eq!(ce["pubsubname"], "pubsub");
        assert!(ce["time"].as_str().unwrap().ends_with('Z'));
        assert!(uuid::Uuid::parse_str(ce["id"].as_str().unwrap()).is_ok());
        assert_eq!(m.key.as_deref(), Some("k1"));
        assert_eq!(
            m.headers,
            HashMap::from([("x".to_string(), "y".to_string())])
        );
    }

    #[test]
    fn text_binary_and_default_content_types() {
        let b = block();
        let (_, ce) = envelope(&b, b"hello", "", &[]);
        assert_eq!(
            (ce["data"].as_str(), ce["datacontenttype"].as_str()),
            (Some("hello"), Some("text/plain"))
        );
        let (_, ce) = envelope(&b, b"not json", "application/json", &[]);
        assert_eq!(ce["data"], "not json");
        let (_, ce) = envelope(&b, &[0, 1, 255], "application/octet-stream", &[]);
        assert_eq!(ce["data_base64"], "AAH/");
        assert!(ce.get("data").is_none());
        let (_, ce) = envelope(&b, &[0xff, 0xfe], "text/plain", &[]);
        assert_eq!(ce["data_base64"], "//4=");
    }

    #[test]
    fn cloudevent_passthrough_fills_missing_fields_and_overrides_apply() {
        let b = block();
        let (_, ce) = envelope(
            &b,
            br#"{"id":"mine","data":{"v":2},"myext":"e"}"#,
            "application/cloudevents+json",
            &[],
        );
        assert_eq!(ce["id"], "mine");
        assert_eq!(ce["myext"], "e");
        assert_eq!(ce["source"], "app-1");
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["topic"], "orders");
        let (m, ce) = envelope(
            &b,
            b"x",
            "text/plain",
            &[("cloudevent.id", "fixed"), ("cloudevent.type", "t.x")],
        );
        assert_eq!(
            (ce["id"].as_str(), ce["type"].as_str()),
            (Some("fixed"), Some("t.x"))
        );
        assert!(m.headers.is_empty());
        let md = HashMap::from([("x".to_string(), "y".to_string())]);
        let err = b
            .inner
            .message(
                "pubsub",
                "t",
                b"nope".to_vec(),
                CLOUDEVENTS_JSON,
                (&md).into(),
                None,
                &now_rfc3339(),
            )
            .unwrap_err();
        assert_eq!(err.code, tonic::Code::InvalidArgument);
    }

    #[test]
    fn raw_payload_is_published_as_is() {
        let b = block();
        let md = HashMap::from([(RAW_PAYLOAD.to_string(), "true".to_string())]);
        let m = b
            .inner
            .message(
                "pubsub",
                "t",
                vec![1, 2],
                "application/x",
                (&md).into(),
                None,
                &now_rfc3339(),
            )
            .unwrap();
        assert_eq!(m.data, vec![1, 2]);
        assert_eq!(
            m.headers.get("content-type").map(String::as_str),
            Some("application/x")
        );
        let md = HashMap::from([(RAW_PAYLOAD.to_string(), "maybe".to_string())]);
        let err = b
            .inner
            .message(
                "pubsub",
                "t",
                vec![],
                "",
                (&md).into(),
                Some(3),
                &now_rfc3339(),
            )
            .unwrap_err();
        assert!(
            err.message.contains("entries[3].metadata.rawPayload"),
            "{}",
            err.message
        );
    }

    #[test]
    fn event_decoding_round_trips() {
        let b = block();
        let (m, _) = envelope(
            &b,
            br#"{"a":1}"#,
            "application/json",
            &[("partitionKey", "k"), ("h", "v")],
        );
        let msg = Message {
            topic: "orders".into(),
            partition: 2,
            offset: 7,
            key: m.key,
            data: m.data,
            headers: m.headers,
            attempt: 1,
        };
        let ev = to_event(&msg, "pubsub", "/p", Some("d-1".into()));
        assert_eq!(ev.id, "d-1");
        assert_eq!(ev.data, br#"{"a":1}"#);
        assert_eq!(ev.data_content_type, "application/json");
        assert_eq!(
            (ev.topic.as_str(), ev.pubsub_name.as_str(), ev.path.as_str()),
            ("orders", "pubsub", "/p")
        );
        let ext = ev.extensions.unwrap().fields;
        assert_eq!(ext["partition"], number_value(2.0));
        assert_eq!(ext["offset"], number_value(7.0));
        assert_eq!(ext["partitionKey"], string_value("k"));
        assert_eq!(ext["h"], string_value("v"));
        assert!(ext.contains_key("cloudEventId") && ext.contains_key("time"));

        let raw = Message {
            data: vec![9, 9],
            headers: HashMap::new(),
            key: None,
            ..msg
        };
        let ev = to_event(&raw, "pubsub", "", None);
        assert_eq!(
            (ev.data, ev.data_content_type.as_str()),
            (vec![9, 9], "application/octet-stream")
        );
    }

    /// The envelope as the map-based path builds it (what `envelope`
    /// writes directly).
    fn envelope_via_map(
        b: &PubSubBlock,
        data: &[u8],
        ct: &str,
        md: &HashMap<String, String>,
        now: &str,
    ) -> Value {
        let ct = if ct.trim().is_empty() {
            "text/plain"
        } else {
            ct
        };
        let mut ce = Map::new();
        ce.insert("datacontenttype".into(), ct.into());
        let (field, value) = embed_data(ct, data.to_vec());
        ce.insert(field.into(), value);
        b.inner
            .fill_envelope(&mut ce, "pub\"sub", "tö\\pic", md.into(), now);
        Value::Object(ce)
    }

    #[test]
    fn direct_envelope_matches_the_map_based_one() {
        let b = block();
        let now = now_rfc3339();
        /// Data, content type, request metadata.
        type Case<'a> = (&'a [u8], &'a str, &'a [(&'a str, &'a str)]);
        let cases: [Case; 8] = [
            (b"hello \"world\"\n", "", &[]),
            (br#"{"a":[1,2.5,"x"],"b":null}"#, "application/json", &[]),
            (b"not json", "application/json", &[]),
            (&[0, 1, 255], "application/octet-stream", &[]),
            (&[0xff, 0xfe], "text/plain", &[]),
            (
                b"x",
                "text/plain; charset=utf-8",
                &[("cloudevent.subject", "s\u{e9}")],
            ),
            (
                b"y",
                "text/plain",
                &[
                    ("cloudevent.id", "fixed"),
                    ("cloudevent.source", "src"),
                    ("cloudevent.type", "t.x"),
                    ("cloudevent.specversion", "9.9"),
                ],
            ),
            (b"z", "text/plain", &[("cloudevent.id", ""), ("h", "v")]),
        ];
        for (data, ct, md) in cases {
            let md: HashMap<String, String> = md
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let direct =
                b.inner
                    .envelope("pub\"sub", "tö\\pic", data.to_vec(), ct, (&md).into(), &now);
            let mut direct: Value = serde_json::from_slice(&direct)
                .unwrap_or_else(|e| panic!("{ct}: not JSON: {e}: {direct:?}"));
            let mut expected = envelope_via_map(&b, data, ct, &md, &now);
            let ids = (direct["id"].take(), expected["id"].take());
            match md.get("cloudevent.id").filter(|v| !v.is_empty()) {
                Some(id) => assert_eq!(
                    (ids.0.as_str(), ids.1.as_str()),
                    (Some(id.as_str()), Some(id.as_str()))
                ),
                None => {
                    let id = ids.0.as_str().expect("id is a string");
                    let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
                    assert_eq!(parsed.get_version_num(), 4, "{id}");
                }
            }
            assert_eq!(direct, expected, "{ct} {md:?}");
        }
        // Ids are unique.
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_event_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[tokio::test]
    async fn bulk_entry_metadata_overrides_the_request_metadata() {
        let b = block();
        let base = HashMap::from([
            ("partitionKey".to_string(), "req-key".to_string()),
            ("shared".to_string(), "from-request".to_string()),
            ("only-request".to_string(), "r".to_string()),
        ]);
        let entry = HashMap::from([
            ("partitionKey".to_string(), "entry-key".to_string()),
            ("shared".to_string(), "from-entry".to_string()),
        ]);
        let md = Md {
            base: &base,
            entry: Some(&entry),
        };
        let m = b
            .inner
            .message(
                "pubsub",
                "t",
                b"x".to_vec(),
                "",
                md,
                Some(0),
                &now_rfc3339(),
            )
            .unwrap();
        assert_eq!(m.key.as_deref(), Some("entry-key"));
        assert_eq!(
            m.headers,
            HashMap::from([
                ("shared".to_string(), "from-entry".to_string()),
                ("only-request".to_string(), "r".to_string()),
            ])
        );
    }

    #[test]
    fn in_flight_per_partition_is_validated() {
        let req = |v: &str| SubscriptionRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            metadata: HashMap::from([(MAX_IN_FLIGHT_PER_PARTITION.to_string(), v.to_string())]),
            ..Default::default()
        };
        assert_eq!(
            subscribe_options(&req("16"), "app")
                .unwrap()
                .max_in_flight_per_partition,
            16
        );
        let strict = SubscriptionRequest {
            metadata: HashMap::new(),
            ..req("1")
        };
        assert_eq!(
            subscribe_options(&strict, "app")
                .unwrap()
                .max_in_flight_per_partition,
            1,
            "strict by default"
        );
        for bad in ["0", "-1", "x", "1025"] {
            let err = subscribe_options(&req(bad), "app").unwrap_err();
            assert_eq!(err.code, tonic::Code::InvalidArgument);
            assert!(
                err.message.contains(MAX_IN_FLIGHT_PER_PARTITION) && err.message.contains("1024"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn base64_round_trip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0, 255, 128, 7, 9]] {
            assert_eq!(base64_decode(&base64_encode(data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert!(base64_decode("!!").is_none());
    }

    #[tokio::test]
    async fn validation_names_the_field() {
        let b = block();
        let err = b
            .publish_event(pb::PublishEventRequest {
                pubsub_name: "nope".into(),
                topic: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code, tonic::Code::InvalidArgument);
        assert!(
            err.message
                .contains("pub/sub 'nope' is not found; configured pub/subs: pubsub"),
            "{}",
            err.message
        );
        let err = b
            .publish_event(pb::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(err.message.contains("topic"), "{}", err.message);
        let entry = |id: &str| pb::BulkPublishRequestEntry {
            entry_id: id.into(),
            event: b"x".to_vec(),
            ..Default::default()
        };
        let bulk = |entries| pb::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            entries,
            ..Default::default()
        };
        let err = b
            .bulk_publish_event(bulk(vec![entry("a"), entry("")]))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("entries[1].entry_id"),
            "{}",
            err.message
        );
        let err = b
            .bulk_publish_event(bulk(vec![entry("a"), entry("a")]))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("entries[1].entry_id 'a'"),
            "{}",
            err.message
        );
        let ok = b
            .bulk_publish_event(bulk(vec![entry("a"), entry("b")]))
            .await
            .unwrap();
        assert!(ok.failed_entries.is_empty());
        let req = SubscriptionRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            metadata: HashMap::from([(MAX_IN_FLIGHT.to_string(), "0".to_string())]),
            ..Default::default()
        };
        let err = b
            .subscribe(req, SubscriptionKind::Streaming)
            .await
            .err()
            .unwrap();
        assert!(err.message.contains(MAX_IN_FLIGHT), "{}", err.message);
    }

    #[tokio::test]
    async fn streaming_subscription_acks_and_rejects_unknown_ids() {
        let b = block();
        let (req_tx, req_rx) = mpsc::channel(8);
        let mut out = b.subscribe_topic_events(tokio_stream::wrappers::ReceiverStream::new(req_rx));
        let initial = |topic: &str| pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
                pb::SubscribeTopicEventsRequestInitialAlpha1 {
                    pubsub_name: "pubsub".into(),
                    topic: topic.into(),
                    ..Default::default()
                },
            )),
        };
        req_tx.send(Ok(initial("s"))).await.unwrap();
        let first = out.recv().await.unwrap().unwrap();
        assert!(matches!(
            first.subscribe_topic_events_response_type,
            Some(RespType::InitialResponse(_))
        ));
        assert_eq!(b.subscriptions().len(), 1);
        b.publish_event(pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "s".into(),
            data: b"hi".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let Some(RespType::EventMessage(ev)) = out
            .recv()
            .await
            .unwrap()
            .unwrap()
            .subscribe_topic_events_response_type
        else {
            panic!("expected an event");
        };
        assert_eq!(ev.data, b"hi");
        let processed = |id: &str| pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(ReqType::EventProcessed(
                pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                    id: id.into(),
                    status: Some(pb::TopicEventResponse {
                        status: Status::Success as i32,
                    }),
                },
            )),
        };
        req_tx.send(Ok(processed(&ev.id))).await.unwrap();
        req_tx.send(Ok(processed("bogus"))).await.unwrap();
        let err = out.recv().await.unwrap().unwrap_err();
        assert!(err.message.contains("'bogus'"), "{}", err.message);
        assert!(out.recv().await.is_none());

        // A first message that is not initial_request.
        let (req_tx, req_rx) = mpsc::channel(8);
        let mut out = b.subscribe_topic_events(tokio_stream::wrappers::ReceiverStream::new(req_rx));
        req_tx.send(Ok(processed("x"))).await.unwrap();
        let err = out.recv().await.unwrap().unwrap_err();
        assert!(err.message.contains("initial_request"), "{}", err.message);
    }
}
