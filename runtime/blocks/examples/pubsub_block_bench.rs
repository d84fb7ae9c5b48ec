//! The pub/sub block alone, without any transport: PublishEvent → the event
//! on a streaming subscription (`SubscribeTopicEventsAlpha1`) → its ack,
//! one message at a time, on the embedded broker (8 partitions), in one
//! process. This is the runtime's own share of the per-message overhead
//! that `pubsub_bench` measures through gRPC and shared memory (publish RPC
//! and streaming delivery included there).
//!
//! `cargo run --release -p weft-blocks --example pubsub_block_bench -- [messages] [threads]`
//! (default 20 000 messages after 2 000 of warm-up, on a current-thread
//! runtime as `weft` runs by default; `threads` > 1 uses a multi-thread
//! runtime with that many workers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_blocks::pubsub::PubSubBlock;
use weft_blocks::CallContext;
use weft_components::pubsub::embedded::EmbeddedBroker;
use weft_components::pubsub::PubSub;
use weft_proto::runtime as pb;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let messages: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let threads: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    let mut lat = rt.block_on(ping_pong(messages))?;
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct =
        |p: f64| lat[((p / 100.0 * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "pub/sub block alone ({} runtime, embedded broker, {messages} messages): publish -> streamed event p50 {:.1} us, p99 {:.1} us",
        if threads <= 1 {
            "current-thread".to_string()
        } else {
            format!("{threads}-thread")
        },
        pct(50.0),
        pct(99.0)
    );
    Ok(())
}

async fn ping_pong(messages: usize) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let mut components: BTreeMap<String, Arc<dyn PubSub>> = BTreeMap::new();
    components.insert(
        "pubsub".into(),
        Arc::new(EmbeddedBroker::new("pubsub", 8, 1_000_000, 64 << 20)),
    );
    let block = PubSubBlock::new("bench", components, shutdown);
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let mut events =
        block.subscribe_topic_events(&CallContext::app(), UnboundedReceiverStream::new(req_rx));
    req_tx.send(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: "bench".into(),
                ..Default::default()
            },
        )),
    }))?;
    events.recv().await.ok_or("no initial response")??;
    let warm_up = 2_000;
    let mut lat = Vec::with_capacity(messages);
    for i in 0..messages + warm_up {
        let t = Instant::now();
        block
            .publish_event(
                &CallContext::app(),
                pb::PublishEventRequest {
                    pubsub_name: "pubsub".into(),
                    topic: "bench".into(),
                    data: format!("{}:{i}:0", i % 8).into_bytes(),
                    data_content_type: "text/plain".into(),
                    metadata: HashMap::from([(
                        "partitionKey".to_string(),
                        format!("key-{}", i % 8),
                    )]),
                },
            )
            .await?;
        let msg = events.recv().await.ok_or("subscription ended")??;
        let us = t.elapsed().as_secs_f64() * 1e6;
        let Some(RespType::EventMessage(ev)) = msg.subscribe_topic_events_response_type else {
            return Err("expected an event".into());
        };
        req_tx.send(Ok(pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(ReqType::EventProcessed(
                pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                    id: ev.id,
                    status: Some(pb::TopicEventResponse { status: 0 }),
                },
            )),
        }))?;
        if i >= warm_up {
            lat.push(us);
        }
    }
    Ok(lat)
}
