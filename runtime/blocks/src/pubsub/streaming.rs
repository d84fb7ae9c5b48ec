//! The streaming subscription (`SubscribeTopicEventsAlpha1`): the app
//! opens a stream, the runtime sends each event on it and the app acks each
//! one on the same stream. One code path for gRPC and shared memory.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use weft_proto::runtime as pb;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;

use super::subscription::PendingEvent;
use super::{EventStream, Inner, PubSubBlock, SubscriptionKind, SubscriptionRequest};
use crate::context::CallContext;
use crate::error::{BlockError, Code};
use crate::shutdown::stopping;

/// Responses queued on a streaming subscription before it waits for the app.
const STREAM_BUFFER: usize = 256;
/// Events taken from the broker while the stream's queue is full.
const OUTBOX: usize = 64;

impl PubSubBlock {
    /// The streaming subscription (`SubscribeTopicEventsAlpha1`), independent
    /// of the transport: `requests` are the app's messages, the result the
    /// runtime's. The first request must be `initial_request`; the stream
    /// ends with an error naming what was wrong, or when the app's side ends
    /// (then unacked events go to the group's other members).
    pub fn subscribe_topic_events<S>(&self, ctx: &CallContext, requests: S) -> EventStream
    where
        S: Stream<Item = Result<pb::SubscribeTopicEventsRequestAlpha1, BlockError>>
            + Send
            + Unpin
            + 'static,
    {
        let (rx, run) = self.topic_events(ctx, requests);
        tokio::spawn(run);
        rx
    }

    /// [`PubSubBlock::subscribe_topic_events`] for a transport that runs
    /// the subscription itself (the shared-memory session thread, which
    /// then hands acks to it and writes its events without a thread hop):
    /// the stream and the future that serves it, which the caller polls to
    /// completion (dropping it ends the subscription as the app leaving
    /// would). It needs a tokio runtime context (timers) when polled.
    ///
    /// `F` is the form the responses take: the message itself, or
    /// [`EncodedResponse`] for a transport that writes them as protobuf
    /// bytes (events are then written straight from the broker's message,
    /// with no message built in between).
    pub fn topic_events<F: ResponseForm, S>(
        &self,
        _ctx: &CallContext,
        requests: S,
    ) -> (
        EventStream<F>,
        impl std::future::Future<Output = ()> + Send + 'static,
    )
    where
        S: Stream<Item = Result<pb::SubscribeTopicEventsRequestAlpha1, BlockError>>
            + Send
            + Unpin
            + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let inner = self.inner.clone();
        let run = async move {
            if let Err(e) = run_stream(inner, requests, &tx).await {
                tracing::debug!(error = %e, "topic subscription stream closed with an error");
                let _ = tx.send(Err(e)).await;
            }
        };
        (rx, run)
    }
}

async fn run_stream<F: ResponseForm, S>(
    inner: Arc<Inner>,
    mut requests: S,
    tx: &StreamTx<F>,
) -> Result<(), BlockError>
where
    S: Stream<Item = Result<pb::SubscribeTopicEventsRequestAlpha1, BlockError>>
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
        _ = &mut stop => return Err(shutting_down()),
    };
    let initial = match first {
        None | Some(Err(_)) => return Ok(()),
        Some(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(ReqType::InitialRequest(i)),
        })) => i,
        Some(Ok(_)) => {
            return Err(BlockError::invalid_argument(
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
    if tx.send(Ok(F::initial())).await.is_err() {
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
            _ = &mut stop => return Err(shutting_down()),
            req = requests.next() => {
                let processed = match req {
                    None | Some(Err(_)) => return Ok(()), // the app is gone: unacked events are redelivered
                    Some(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
                        subscribe_topic_events_request_type: Some(ReqType::EventProcessed(p)),
                    })) => p,
                    Some(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
                        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(_)),
                    })) => {
                        return Err(BlockError::invalid_argument(
                            "initial_request may only be sent once, as the first message of the stream",
                        ))
                    }
                    Some(Ok(_)) => {
                        return Err(BlockError::invalid_argument(
                            "empty message on the topic subscription stream: send event_processed",
                        ))
                    }
                };
                let Some(event) = out.take(&processed.id) else {
                    return Err(BlockError::invalid_argument(format!(
                        "event_processed.id '{}' is not an event in flight on this subscription (pub/sub '{}', topic '{}')",
                        processed.id, sub.pubsub_name(), sub.topic()
                    )));
                };
                let Some(status) = processed.status else {
                    return Err(BlockError::missing_field("event_processed.status"));
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
                    return Err(BlockError::new(
                        Code::Unavailable,
                        format!("pub/sub '{}' ended the subscription to topic '{}'", sub.pubsub_name(), sub.topic()),
                    ))
                }
            },
        }
    }
}

type StreamTx<F> = mpsc::Sender<Result<F, BlockError>>;

/// The form of a streaming subscription's responses.
pub trait ResponseForm: Send + 'static + Sized {
    /// The response to `initial_request`.
    fn initial() -> Self;
    /// The response carrying `event`, under the delivery id `id`.
    fn event(event: &mut PendingEvent, id: &str) -> Self;
}

fn initial_response() -> pb::SubscribeTopicEventsResponseAlpha1 {
    pb::SubscribeTopicEventsResponseAlpha1 {
        subscribe_topic_events_response_type: Some(RespType::InitialResponse(
            pb::SubscribeTopicEventsResponseInitialAlpha1 {},
        )),
    }
}

impl ResponseForm for pb::SubscribeTopicEventsResponseAlpha1 {
    fn initial() -> Self {
        initial_response()
    }

    fn event(event: &mut PendingEvent, id: &str) -> Self {
        pb::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(RespType::EventMessage(
                event.to_event(Some(id.to_string())),
            )),
        }
    }
}

/// A `SubscribeTopicEventsResponseAlpha1` in protobuf form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse(pub Vec<u8>);

impl ResponseForm for EncodedResponse {
    fn initial() -> Self {
        EncodedResponse(prost::Message::encode_to_vec(&initial_response()))
    }

    fn event(event: &mut PendingEvent, id: &str) -> Self {
        EncodedResponse(event.encode_event(id))
    }
}

/// The events of a streaming subscription: those out to the app (by the
/// number in their id, `<subscription>-<n>`) and those waiting for room on
/// the stream.
struct Outbox<F> {
    prefix: String,
    next: u64,
    /// Events out to the app by number (foldhash: the numbers are ours,
    /// not the app's, so SipHash is not needed).
    pending: HashMap<u64, PendingEvent, foldhash::fast::RandomState>,
    backlog: VecDeque<F>,
    /// The id of the event being queued (reused).
    id: String,
}

impl<F: ResponseForm> Outbox<F> {
    fn new(subscription: u64) -> Self {
        Self {
            prefix: format!("{subscription}-"),
            next: 0,
            pending: HashMap::default(),
            backlog: VecDeque::new(),
            id: String::new(),
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
    fn push(&mut self, mut event: PendingEvent, tx: &StreamTx<F>) -> bool {
        let n = self.next;
        self.next += 1;
        self.id.clear();
        self.id.push_str(&self.prefix);
        let _ = write!(self.id, "{n}");
        let msg = F::event(&mut event, &self.id);
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
    fn flush(&mut self, permit: mpsc::Permit<'_, Result<F, BlockError>>, tx: &StreamTx<F>) -> bool {
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

/// How a subscription stream ends when the runtime stops: the app is told
/// why, and that nothing it left unacknowledged was committed.
fn shutting_down() -> BlockError {
    BlockError::Unavailable(
        "the runtime is shutting down: events not acknowledged on this stream were not committed (a durable broker delivers them again to the group)".into(),
    )
}
