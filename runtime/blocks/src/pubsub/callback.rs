//! The callback model: the runtime asks the app for its subscriptions
//! (`ListTopicSubscriptions`) and delivers each event with `OnTopicEvent`
//! through an [`AppChannel`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as Status;

use super::subscription::{PendingEvent, TopicSubscription};
use super::{Inner, PubSubBlock, SubscriptionKind, SubscriptionRequest};
use crate::app::{AppChannel, AppChannelError};
use crate::shutdown::stopping;

impl PubSubBlock {
    /// The callback model: asks the app for its subscriptions (retrying while
    /// it is not up) and delivers each one's events with `OnTopicEvent`.
    pub fn start_app_subscriptions(&self, channel: Arc<dyn AppChannel>) {
        let inner = self.inner.clone();
        tokio::spawn(async move { run_app_subscriptions(inner, channel).await });
    }
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
                tracing::error!(component = %s.pubsub_name, topic = %s.topic, error = %e.message(),
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
    let call = |mut event: PendingEvent| {
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
