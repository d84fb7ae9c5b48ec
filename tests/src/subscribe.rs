//! Streaming subscriptions (`SubscribeTopicEventsAlpha1`) opened the way
//! an app opens them: over gRPC, or over shared memory (method 12, acks as
//! MORE records on the same call). Every event is acked with SUCCESS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_shm::method as shm_method;

/// The first message of a subscription.
pub fn initial(
    pubsub: &str,
    topic: &str,
    metadata: HashMap<String, String>,
) -> pb::SubscribeTopicEventsRequestAlpha1 {
    pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: pubsub.into(),
                topic: topic.into(),
                metadata,
                dead_letter_topic: None,
            },
        )),
    }
}

/// The SUCCESS ack of event `id`.
pub fn success(id: String) -> pb::SubscribeTopicEventsRequestAlpha1 {
    pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::EventProcessed(
            pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                id,
                status: Some(pb::TopicEventResponse { status: 0 }),
            },
        )),
    }
}

/// Subscribes over gRPC and waits (60 s at most) for the initial response.
/// A task then hands every event to `on_event` and acks it with SUCCESS,
/// until the stream ends or the task is aborted.
pub async fn grpc<F>(
    mut client: DaprClient<Channel>,
    pubsub: &str,
    topic: &str,
    metadata: HashMap<String, String>,
    mut on_event: F,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    F: FnMut(pb::TopicEventRequest) + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<pb::SubscribeTopicEventsRequestAlpha1>();
    tx.send(initial(pubsub, topic, metadata))?;
    let mut stream = client
        .subscribe_topic_events_alpha1(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
        Ok(Ok(Some(pb::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(RespType::InitialResponse(_)),
        }))) => {}
        other => bail!("no initial response: {other:?}"),
    }
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Ok(Some(m)) = stream.message().await {
            let Some(RespType::EventMessage(ev)) = m.subscribe_topic_events_response_type else {
                continue;
            };
            let id = ev.id.clone();
            on_event(ev);
            let _ = tx.send(success(id));
        }
    }))
}

/// A subscription over shared memory: one blocking client, single owner
/// (keep it on one thread).
pub struct ShmSubscription {
    pub client: weft_shm::Client,
    pub corr: u64,
}

impl ShmSubscription {
    /// Opens the call on `client` and waits (60 s at most) for its initial
    /// response.
    pub fn open(
        mut client: weft_shm::Client,
        pubsub: &str,
        topic: &str,
        metadata: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let corr = client
            .open_stream(
                shm_method::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
                &initial(pubsub, topic, metadata).encode_to_vec(),
            )
            .map_err(|e| anyhow::anyhow!("shm subscribe: {e}"))?;
        let mut s = Self { client, corr };
        match s.next_msg(Duration::from_secs(60))? {
            Some(pb::SubscribeTopicEventsResponseAlpha1 {
                subscribe_topic_events_response_type: Some(RespType::InitialResponse(_)),
            }) => Ok(s),
            other => bail!("shm subscribe: no initial response: {other:?}"),
        }
    }

    /// The next message; `None` when nothing came within `within`.
    pub fn next_msg(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<Option<pb::SubscribeTopicEventsResponseAlpha1>> {
        match self.client.next_item(self.corr, within) {
            Ok(Some(body)) => Ok(Some(pb::SubscribeTopicEventsResponseAlpha1::decode(
                &body[..],
            )?)),
            Ok(None) => bail!("the shm subscription ended"),
            Err(e) if e.code == weft_shm::code::DEADLINE_EXCEEDED => Ok(None),
            Err(e) => bail!("the shm subscription failed: {e}"),
        }
    }

    /// The next event (not acked yet: [`Self::ack`]); `None` when nothing
    /// came within `within`.
    pub fn next_event(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<Option<pb::TopicEventRequest>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = self.next_msg(left)? else {
                return Ok(None);
            };
            if let Some(RespType::EventMessage(ev)) = m.subscribe_topic_events_response_type {
                return Ok(Some(ev));
            }
        }
    }

    /// Acks event `id` with SUCCESS.
    pub fn ack(&mut self, id: String) -> anyhow::Result<()> {
        self.client
            .send_more(
                shm_method::SUBSCRIBE_TOPIC_EVENTS_ALPHA1,
                self.corr,
                &success(id).encode_to_vec(),
            )
            .map_err(|e| anyhow::anyhow!("shm ack: {e}"))
    }

    /// Ends the subscription.
    pub fn cancel(&mut self) {
        let _ = self.client.cancel(self.corr);
    }
}
