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

use super::envelope::to_event;
use super::{
    check_topic, Inner, SubscriptionKind, SubscriptionRequest, CONSUMER_GROUP, GROUP_INSTANCE_ID,
    MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_PARTITION, RETRY_BACKOFF, REVOKE_TIMEOUT,
};
use crate::error::BlockError;

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

    pub(super) fn id(&self) -> u64 {
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
