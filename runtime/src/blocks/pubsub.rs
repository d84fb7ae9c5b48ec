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
//! `maxInFlightPartitions`, `retryBackoff` and `revokeTimeout` tune it.
//! Every delivered event carries `partition`, `offset`, `partitionKey`,
//! `attempt` and the message headers in its extensions. SUCCESS acks, RETRY
//! redelivers after the backoff, DROP publishes the original message to the
//! dead-letter topic (when one is set; if that fails the message is retried)
//! and moves on.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use weft_components::metadata::parse_duration;
use weft_components::pubsub::{Ack, Delivery, Message, PubSub, PublishRequest, SubscribeOptions};
use weft_proto::runtime as pb;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as Status;

use super::time::rfc3339;
use crate::error::ApiError;

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
/// Subscription metadata: wait before redelivering after RETRY.
pub const RETRY_BACKOFF: &str = "retryBackoff";
/// Subscription metadata: how long a revoked partition waits for acks.
pub const REVOKE_TIMEOUT: &str = "revokeTimeout";

/// CloudEvents `type` of published events, as in Dapr.
pub const EVENT_TYPE: &str = "com.dapr.event.sent";
/// Content type of a CloudEvents JSON envelope.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// Responses queued on a streaming subscription before it waits for the app.
const STREAM_BUFFER: usize = 64;
/// Events taken from the broker but not yet written to the stream.
const OUTBOX: usize = 16;

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
            &req.metadata,
            "",
        )?;
        ps.publish(msg)
            .await
            .map_err(|e| ApiError::from_pubsub(&req.pubsub_name, e))
    }

    pub async fn bulk_publish_event(
        &self,
        req: pb::BulkPublishRequest,
    ) -> Result<pb::BulkPublishResponse, ApiError> {
        let ps = self.component(&req.pubsub_name)?;
        check_topic(&req.topic)?;
        let mut ids = std::collections::HashSet::new();
        let mut msgs = Vec::with_capacity(req.entries.len());
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
            let mut metadata = req.metadata.clone();
            metadata.extend(e.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            msgs.push(self.inner.message(
                &req.pubsub_name,
                &req.topic,
                e.event.clone(),
                &e.content_type,
                &metadata,
                &format!("entries[{i}]."),
            )?);
        }
        let results = ps.publish_bulk(msgs).await;
        let failed_entries = req
            .entries
            .iter()
            .zip(results)
            .filter_map(|(e, r)| {
                r.err().map(|err| pb::BulkPublishResponseFailedEntry {
                    entry_id: e.entry_id.clone(),
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

    /// The message to publish for one event. `at` prefixes field names in errors.
    fn message(
        &self,
        pubsub: &str,
        topic: &str,
        data: Vec<u8>,
        content_type: &str,
        metadata: &HashMap<String, String>,
        at: &str,
    ) -> Result<PublishRequest, ApiError> {
        let raw = match metadata
            .get(RAW_PAYLOAD)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => false,
            Some(v) if v.is_empty() || v == "false" => false,
            Some(v) if v == "true" => true,
            Some(v) => {
                return Err(ApiError::invalid_argument(format!(
                    "{at}metadata.{RAW_PAYLOAD} must be true or false, got '{v}'"
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
                    "{at}data is not a CloudEvents JSON object (data_content_type is {CLOUDEVENTS_JSON}): {e}"
                ))
            })?;
            self.fill_envelope(&mut ce, pubsub, topic, metadata);
            serde_json::to_vec(&ce)
                .map_err(|e| ApiError::new(tonic::Code::Internal, e.to_string()))?
        } else {
            let mut ce = Map::new();
            let ct = if content_type.trim().is_empty() {
                "text/plain"
            } else {
                content_type
            };
            ce.insert("datacontenttype".into(), ct.into());
            let (field, value) = embed_data(ct, data);
            ce.insert(field.into(), value);
            self.fill_envelope(&mut ce, pubsub, topic, metadata);
            serde_json::to_vec(&ce)
                .map_err(|e| ApiError::new(tonic::Code::Internal, e.to_string()))?
        };
        Ok(PublishRequest {
            topic: topic.to_string(),
            key,
            data,
            headers,
        })
    }

    fn fill_envelope(
        &self,
        ce: &mut Map<String, Value>,
        pubsub: &str,
        topic: &str,
        metadata: &HashMap<String, String>,
    ) {
        let fields = [
            ("id", uuid::Uuid::new_v4().to_string()),
            ("source", self.app_id.clone()),
            ("type", EVENT_TYPE.to_string()),
            ("specversion", "1.0".to_string()),
        ];
        for (field, default) in fields {
            let over = metadata
                .get(&format!("cloudevent.{field}"))
                .filter(|v| !v.is_empty());
            match over {
                Some(v) if field != "specversion" => {
                    ce.insert(field.into(), v.clone().into());
                }
                _ => {
                    if !matches!(ce.get(field), Some(Value::String(s)) if !s.is_empty()) {
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
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            ce.insert("time".into(), rfc3339(now).into());
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

/// Resolves when the runtime starts shutting down (never, if the shutdown
/// signal is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

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
    let first = tokio::select! {
        r = requests.next() => r,
        _ = tx.closed() => return Ok(()),
        _ = stopping(&mut shutdown) => return Ok(()),
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
    let mut pending: HashMap<String, PendingEvent> = HashMap::new();
    let mut outbox: VecDeque<pb::TopicEventRequest> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = stopping(&mut shutdown) => return Ok(()),
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
                let Some(event) = pending.remove(&processed.id) else {
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
            permit = tx.reserve(), if !outbox.is_empty() => {
                let Ok(permit) = permit else { return Ok(()) };
                if let Some(ev) = outbox.pop_front() {
                    permit.send(Ok(pb::SubscribeTopicEventsResponseAlpha1 {
                        subscribe_topic_events_response_type: Some(RespType::EventMessage(ev)),
                    }));
                }
            }
            next = sub.next(), if outbox.len() < OUTBOX => match next {
                Some(event) => {
                    let id = format!("{}-{}", sub.id(), uuid::Uuid::new_v4().simple());
                    outbox.push_back(event.to_event(Some(id.clone())));
                    pending.insert(id, event);
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

async fn deliver_to_app(
    mut sub: TopicSubscription,
    channel: Arc<dyn AppChannel>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limiter = Arc::new(LogLimiter::new(Duration::from_secs(10)));
    loop {
        let event = tokio::select! {
            _ = stopping(&mut shutdown) => return,
            e = sub.next() => match e {
                Some(e) => e,
                None => {
                    tracing::warn!(component = %sub.pubsub_name(), topic = %sub.topic(), "pub/sub ended the subscription");
                    return;
                }
            },
        };
        // One call per delivery; the broker keeps each partition to one in flight.
        let channel = channel.clone();
        let limiter = limiter.clone();
        let (pubsub, topic) = (sub.pubsub_name().to_string(), sub.topic().to_string());
        tokio::spawn(async move {
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
        });
    }
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

/// Envelope attributes that have their own field in `TopicEventRequest`.
const CE_FIELDS: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "datacontenttype",
    "data",
    "data_base64",
];

fn to_event(m: &Message, pubsub: &str, path: &str, id: Option<String>) -> pb::TopicEventRequest {
    let mut ext: BTreeMap<String, prost_types::Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), string_value(v)))
        .collect();
    let envelope = serde_json::from_slice::<Map<String, Value>>(&m.data)
        .ok()
        .filter(|ce| ce.get("specversion").is_some_and(Value::is_string));
    let mut ev = match envelope {
        Some(ce) => {
            let text = |k: &str| {
                ce.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let content_type = text("datacontenttype");
            let data = if let Some(b) = ce.get("data_base64").and_then(Value::as_str) {
                base64_decode(b).unwrap_or_else(|| b.as_bytes().to_vec())
            } else {
                match ce.get("data") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::String(s)) if !is_json(&content_type) => s.clone().into_bytes(),
                    Some(v) => serde_json::to_vec(v).unwrap_or_default(),
                }
            };
            for (k, v) in ce.iter().filter(|(k, _)| !CE_FIELDS.contains(&k.as_str())) {
                ext.insert(k.clone(), json_to_prost(v));
            }
            let ce_id = text("id");
            let event_id = match id {
                Some(id) => {
                    ext.insert("cloudEventId".into(), string_value(&ce_id));
                    id
                }
                None => ce_id,
            };
            pb::TopicEventRequest {
                id: event_id,
                source: text("source"),
                r#type: text("type"),
                spec_version: text("specversion"),
                data_content_type: content_type,
                data,
                ..Default::default()
            }
        }
        None => pb::TopicEventRequest {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
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
    ev.extensions = Some(prost_types::Struct {
        fields: ext.into_iter().collect(),
    });
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

fn json_to_prost(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_prost).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_prost(v)))
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
            .message("pubsub", "orders", data.to_vec(), ct, &md, "")
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
            .message("pubsub", "t", b"nope".to_vec(), CLOUDEVENTS_JSON, &md, "")
            .unwrap_err();
        assert_eq!(err.code, tonic::Code::InvalidArgument);
    }

    #[test]
    fn raw_payload_is_published_as_is() {
        let b = block();
        let md = HashMap::from([(RAW_PAYLOAD.to_string(), "true".to_string())]);
        let m = b
            .inner
            .message("pubsub", "t", vec![1, 2], "application/x", &md, "")
            .unwrap();
        assert_eq!(m.data, vec![1, 2]);
        assert_eq!(
            m.headers.get("content-type").map(String::as_str),
            Some("application/x")
        );
        let md = HashMap::from([(RAW_PAYLOAD.to_string(), "maybe".to_string())]);
        let err = b
            .inner
            .message("pubsub", "t", vec![], "", &md, "entries[3].")
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
