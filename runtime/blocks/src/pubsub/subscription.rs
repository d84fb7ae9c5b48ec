//! Joining a consumer group, and the events of a subscription as every
//! subscription path sees them: [`TopicSubscription`] yields
//! [`PendingEvent`]s, each waiting for the app's verdict.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use weft_components::metadata::parse_duration;
use weft_components::pubsub::{
    Ack, Delivery, Message, PubSub, PublishRequest, SubscribeOptions,
    MAX_IN_FLIGHT_PER_PARTITION as MAX_PER_PARTITION,
};
use weft_proto::runtime as pb;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as Status;

use super::envelope::{encode_event, to_event};
use super::{
    check_topic, Inner, SubscriptionKind, SubscriptionRequest, CONSUMER_GROUP, GROUP_INSTANCE_ID,
    MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_PARTITION, RETRY_BACKOFF, REVOKE_TIMEOUT,
};
use crate::context::{TRACEPARENT, TRACESTATE};
use crate::error::BlockError;
use crate::telemetry::{self, Metrics, Telemetry};
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::KeyValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

impl Inner {
    pub(super) async fn subscribe(
        self: Arc<Self>,
        req: SubscriptionRequest,
        kind: SubscriptionKind,
    ) -> Result<TopicSubscription, BlockError> {
        let ps = self.component(&req.pubsub_name)?.clone();
        check_topic(&req.topic)?;
        let options = subscribe_options(&req, &self.app_id)?;
        let dead_letter_topic = req.dead_letter_topic.clone().filter(|t| !t.is_empty());
        let rx = ps
            .subscribe(options.clone())
            .await
            .map_err(|e| BlockError::from_pubsub(&req.pubsub_name, e))?;
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
        let labels = Metrics::topic_labels(&req.pubsub_name, &req.topic);
        let m = &self.telemetry.metrics;
        let ctx = Arc::new(SubscriptionContext {
            pubsub: ps,
            kind: self.kind_of(&req.pubsub_name),
            group: options.group.clone(),
            deliveries: m.pubsub_deliveries.get_or_create(&labels).clone(),
            redeliveries: m.pubsub_redeliveries.get_or_create(&labels).clone(),
            dead_lettered: m.pubsub_dead_lettered.get_or_create(&labels).clone(),
            in_flight: m.pubsub_in_flight.get_or_create(&labels).clone(),
            telemetry: self.telemetry.clone(),
            pubsub_name: req.pubsub_name,
            topic: req.topic,
            dead_letter_topic,
            path: req.path,
            policies: self.policies.get().cloned(),
        });
        Ok(TopicSubscription {
            rx,
            ctx,
            registration: Registration { inner: self, id },
        })
    }
}

/// Consumer options from a subscription's metadata.
pub(super) fn subscribe_options(
    req: &SubscriptionRequest,
    app_id: &str,
) -> Result<SubscribeOptions, BlockError> {
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
            BlockError::invalid_argument(format!(
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
                BlockError::invalid_argument(format!(
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
                BlockError::invalid_argument(format!(
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
    /// The component's type and the consumer group (span attributes).
    kind: String,
    group: String,
    deliveries: Counter,
    redeliveries: Counter,
    dead_lettered: Counter,
    in_flight: Gauge,
    telemetry: Arc<Telemetry>,
    pubsub_name: String,
    topic: String,
    dead_letter_topic: Option<String>,
    path: String,
    /// Flow rules that pace this subscription's deliveries.
    policies: Option<Arc<crate::resiliency::Policies>>,
}

impl SubscriptionContext {
    /// The policies, when a rule covers this subscription's component.
    fn paced(&self) -> Option<Arc<crate::resiliency::Resiliency>> {
        let target = crate::resiliency::Target::ComponentInbound(&self.pubsub_name);
        self.policies
            .as_ref()?
            .active()
            .filter(|r| r.covers(target))
    }
}

/// A live subscription; dropping it leaves the consumer group.
pub struct TopicSubscription {
    rx: mpsc::Receiver<Delivery>,
    ctx: Arc<SubscriptionContext>,
    registration: Registration,
}

impl TopicSubscription {
    /// The next event; `None` when the component ended the subscription.
    /// Under a FlowControl rate rule the event is held until the rule lets
    /// it through: a subscription is slowed, never dropped.
    pub async fn next(&mut self) -> Option<PendingEvent> {
        let delivery = self.rx.recv().await?;
        if let Some(r) = self.ctx.paced() {
            r.pace_inbound(&self.ctx.pubsub_name, &self.ctx.topic).await;
        }
        Some(PendingEvent::new(delivery, &self.ctx))
    }

    /// The next event if one is waiting (never under a pacing rule: then
    /// events come one by one through [`next`](Self::next)).
    pub fn try_next(&mut self) -> Option<PendingEvent> {
        if self.ctx.paced().is_some() {
            return None;
        }
        let delivery = self.rx.try_recv().ok()?;
        Some(PendingEvent::new(delivery, &self.ctx))
    }

    pub fn pubsub_name(&self) -> &str {
        &self.ctx.pubsub_name
    }

    pub fn topic(&self) -> &str {
        &self.ctx.topic
    }

    pub(super) fn id(&self) -> u64 {
        self.registration.id
    }
}

/// A delivered event waiting for the app's verdict. Dropping it without
/// [`complete`](Self::complete) means RETRY.
pub struct PendingEvent {
    delivery: Delivery,
    ctx: Arc<SubscriptionContext>,
    /// The consumer span, from handing the event out to the app's verdict
    /// (traced runtimes only).
    span: Option<opentelemetry::Context>,
    _in_flight: InFlight,
}

/// Counts an event as in flight while it lives.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl PendingEvent {
    fn new(delivery: Delivery, ctx: &Arc<SubscriptionContext>) -> Self {
        ctx.deliveries.inc();
        if delivery.message.attempt > 0 {
            ctx.redeliveries.inc();
        }
        ctx.in_flight.inc();
        Self {
            delivery,
            ctx: ctx.clone(),
            span: None,
            _in_flight: InFlight(ctx.in_flight.clone()),
        }
    }

    /// The broker message.
    pub fn message(&self) -> &Message {
        &self.delivery.message
    }

    /// The event as Dapr delivers it. `id` replaces the CloudEvent's id when
    /// given (the streaming API needs an id unique per delivery); the
    /// envelope's own id is then in the `cloudEventId` extension.
    ///
    /// In a traced runtime this starts the consumer span, a child of the
    /// trace context the event carries (its `traceparent`), and the event
    /// handed to the app carries the consumer span's context instead, so
    /// the app's work joins the trace (also on a redelivery).
    pub fn to_event(&mut self, id: Option<String>) -> pb::TopicEventRequest {
        let mut ev = to_event(
            &self.delivery.message,
            &self.ctx.pubsub_name,
            &self.ctx.path,
            id,
        );
        if self.ctx.telemetry.tracing() {
            self.trace_delivery(&mut ev);
        }
        ev
    }

    /// [`to_event`](Self::to_event) with delivery id `id`, as the
    /// `SubscribeTopicEventsResponseAlpha1` carrying it in protobuf form,
    /// written straight from the broker's message (a traced runtime builds
    /// the message, as its consumer span changes the trace context).
    pub fn encode_event(&mut self, id: &str) -> Vec<u8> {
        if self.ctx.telemetry.tracing() {
            let ev = self.to_event(Some(id.to_string()));
            return prost::Message::encode_to_vec(&pb::SubscribeTopicEventsResponseAlpha1 {
                subscribe_topic_events_response_type: Some(
                    pb::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType::EventMessage(ev),
                ),
            });
        }
        let mut out = Vec::new();
        encode_event(
            &self.delivery.message,
            &self.ctx.pubsub_name,
            &self.ctx.path,
            id,
            &mut out,
        );
        out
    }

    fn trace_delivery(&mut self, ev: &mut pb::TopicEventRequest) {
        let ext = |ev: &pb::TopicEventRequest, k: &str| -> Option<String> {
            match ev.extensions.as_ref()?.fields.get(k)?.kind.as_ref()? {
                prost_types::value::Kind::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        };
        let m = &self.delivery.message;
        let span = self.ctx.telemetry.start_from(
            ext(ev, TRACEPARENT).as_deref(),
            ext(ev, TRACESTATE).as_deref(),
            SpanKind::Consumer,
            || {
                let system = telemetry::messaging_system(&self.ctx.kind);
                let mut attributes = vec![
                    KeyValue::new("messaging.destination.name", self.ctx.topic.clone()),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.consumer.group.name", self.ctx.group.clone()),
                    KeyValue::new(
                        "messaging.destination.partition.id",
                        m.partition.to_string(),
                    ),
                    KeyValue::new("weft.delivery.attempt", i64::from(m.attempt)),
                    KeyValue::new("weft.component", self.ctx.pubsub_name.clone()),
                ];
                if system == "kafka" {
                    attributes.push(KeyValue::new(
                        "messaging.kafka.partition",
                        i64::from(m.partition),
                    ));
                    attributes.push(KeyValue::new("messaging.kafka.offset", m.offset));
                } else {
                    attributes.push(KeyValue::new("weft.delivery.offset", m.offset));
                }
                attributes.push(KeyValue::new("messaging.system", system));
                (format!("process {}", self.ctx.topic).into(), attributes)
            },
        );
        if let Some((tp, ts)) = span.as_ref().and_then(telemetry::traceparent) {
            let fields = &mut ev.extensions.get_or_insert_with(Default::default).fields;
            let text = |s: String| prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(s)),
            };
            fields.insert(TRACEPARENT.into(), text(tp));
            if let Some(ts) = ts {
                fields.insert(TRACESTATE.into(), text(ts));
            }
        }
        self.span = span;
    }

    /// Applies the app's status: SUCCESS acks, RETRY redelivers, DROP
    /// dead-letters (when configured) and moves on. Unknown values retry.
    pub async fn complete(mut self, status: i32) {
        let ack = match Status::try_from(status) {
            Ok(Status::Success) => Ack::Success,
            Ok(Status::Retry) => Ack::Retry,
            Ok(Status::Drop) => self.dead_letter().await,
            Err(_) => {
                tracing::warn!(component = %self.ctx.pubsub_name, topic = %self.ctx.topic, status, "unknown event status from the app; retrying");
                Ack::Retry
            }
        };
        if let Some(cx) = self.span.take() {
            cx.span().set_attribute(KeyValue::new(
                "weft.delivery.outcome",
                match ack {
                    Ack::Success => "success",
                    Ack::Retry => "retry",
                    Ack::Drop => "drop",
                },
            ));
            Telemetry::end(Some(cx), Ok(()));
        }
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
            Ok(()) => {
                self.ctx.dead_lettered.inc();
                Ack::Drop
            }
            Err(e) => {
                tracing::warn!(component = %self.ctx.pubsub_name, topic = %self.ctx.topic, dead_letter_topic = %dlt, error = %e,
                    "could not publish to the dead-letter topic; retrying the message");
                Ack::Retry
            }
        }
    }
}
