//! `pubsub.kafka`: Apache Kafka through librdkafka (the bundled copy that
//! the `rdkafka` crate builds with cmake).
//!
//! Metadata (`spec.metadata`):
//!
//! | field               | default                  | meaning |
//! |---------------------|--------------------------|---------|
//! | `brokers`           | required                 | bootstrap servers, `host:port[,host:port…]` |
//! | `consumerGroup`     | none                     | group for subscriptions that name none (the block normally passes the app id) |
//! | `clientId`          | `weft-<app id>`          | Kafka `client.id` |
//! | `sessionTimeout`    | `10s`                    | consumer `session.timeout.ms`: how soon a crashed member's partitions move |
//! | `maxPollInterval`   | `300s`                   | consumer `max.poll.interval.ms`; keep it above the subscriptions' `revoke_timeout` |
//! | `initialOffset`     | `oldest`                 | where a group with no committed offset starts: `oldest` or `newest` |
//! | `partitions`        | `8`                      | partitions of the topics this component creates |
//! | `replicationFactor` | broker default           | replication factor of the topics this component creates |
//! | `publishTimeout`    | `15s`                    | bound on a publish (producer `message.timeout.ms`) and on topic creation |
//! | `maxBufferedMessages` | `4096`                 | fetched messages a subscription holds per partition before pausing it |
//! | `maxBufferedBytes`  | `8388608`                | payload bytes a subscription holds per partition before pausing it (also caps librdkafka's prefetch queue, at most 16 MiB) |
//!
//! Topics are created through the admin API the first time this component
//! publishes or subscribes to them (`partitions`, `replicationFactor`); an
//! existing topic is used as it is.
//!
//! Producing is idempotent with `acks=all`; the message key is the partition
//! key, hashed as the Java client does (murmur2), so a key lands in the same
//! partition as from a Java producer or on the embedded broker; `publish`
//! returns once the broker confirmed the write.
//!
//! Consuming: one librdkafka consumer per subscription, driven by its own
//! thread. `cooperative-sticky` assignment, no auto-commit and no automatic
//! offset store. Fetched messages go into a bounded buffer per partition (the
//! partition is paused when the buffer reaches `maxBufferedMessages` or
//! `maxBufferedBytes` and resumed when it drains to a quarter of both), so a
//! subscriber that stops acking costs at most that much memory per
//! partition, while its other partitions and other subscriptions flow;
//! the front of a partition's buffer is its [`Window`]: the messages handed
//! out and not yet committed (one at a time by default, up to
//! `max_in_flight_per_partition` when pipelined). They stay buffered until
//! acked, so a `Retry` hands the retried message and the ones after it out
//! again from the buffer after the backoff. Acks are plain calls
//! ([`AckSink`]) that hand out the next messages at once. The acked prefix
//! of each window is committed every 100 ms, and synchronously when
//! partitions are revoked (after waiting up to `revoke_timeout` for every
//! handed-out message's ack) and when the subscription closes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::window::{Settled, Window};
use super::{
    Ack, AckSink, AckToken, Delivery, Feature, Message, PartitionLag, PubSub, PubSubError,
    PublishRequest, SubscribeOptions,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

/// The component type.
pub const KIND: &str = "pubsub.kafka";

/// Default `maxBufferedMessages` and `maxBufferedBytes`: a partition is
/// paused when this many fetched messages, or this many bytes of them, wait
/// in its buffer, and resumed when a quarter of both are left.
///
/// Pausing makes librdkafka drop the partition's prefetched messages (they
/// are fetched again after the resume), so the defaults are well above what
/// a consumer that keeps up ever holds.
const PAUSE_AT: usize = 4096;
const PAUSE_AT_BYTES: usize = 8 << 20;
/// Most librdkafka may prefetch for a subscription (`queued.max.messages.kbytes`).
const MAX_PREFETCH_KBYTES: usize = 16 << 10;
/// librdkafka's own prefetch per partition (`queued.min.messages`).
const PREFETCH: usize = 1024;
/// How long librdkafka postpones a partition's next fetch when its
/// prefetch queue is over `PREFETCH` (`fetch.queue.backoff.ms`, librdkafka's
/// default is 1 s: with a small prefetch a partition would stall for a
/// second after every batch).
const FETCH_QUEUE_BACKOFF_MS: &str = "5";
/// How long the broker holds a fetch with no new data (`fetch.wait.max.ms`).
const FETCH_WAIT_MAX_MS: &str = "10";
/// How long a consumer thread blocks in one poll.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often acked positions are committed (asynchronously).
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// How long a publish waits for room in a full producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(1);

// === Config ===

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialOffset {
    Oldest,
    Newest,
}

/// Typed `spec.metadata` of a `pubsub.kafka` component (see the module docs).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub consumer_group: Option<String>,
    pub client_id: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
    pub initial_offset: InitialOffset,
    pub partitions: i32,
    /// `-1`: the broker's default.
    pub replication_factor: i32,
    pub publish_timeout: Duration,
    /// A partition's buffer pauses it at this many messages…
    pub max_buffered_messages: usize,
    /// …or this many bytes.
    pub max_buffered_bytes: usize,
}

impl KafkaConfig {
    pub fn from_metadata(md: &Metadata, ctx: &InitContext) -> Result<Self, ComponentError> {
        let brokers = md.required("brokers")?.trim().to_string();
        if brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(md.invalid("brokers", format!("'{brokers}' has an empty entry")));
        }
        let initial_offset = match md
            .get("initialOffset")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => InitialOffset::Oldest,
            Some(v) if v == "oldest" || v == "earliest" => InitialOffset::Oldest,
            Some(v) if v == "newest" || v == "latest" => InitialOffset::Newest,
            Some(v) => {
                return Err(md.invalid(
                    "initialOffset",
                    format!("'{v}' is neither 'oldest' nor 'newest'"),
                ))
            }
        };
        let partitions = md.parse::<i32>("partitions")?.unwrap_or(8);
        if partitions < 1 {
            return Err(md.invalid(
                "partitions",
                format!("{partitions} is not a positive number"),
            ));
        }
        let replication_factor = md.parse::<i32>("replicationFactor")?.unwrap_or(-1);
        if replication_factor < 1 && replication_factor != -1 {
            return Err(md.invalid(
                "replicationFactor",
                format!("{replication_factor} is not a positive number"),
            ));
        }
        let positive = |field: &str, default: usize| -> Result<usize, ComponentError> {
            match md.parse::<usize>(field)? {
                None => Ok(default),
                Some(0) => Err(md.invalid(field, "0 is not a positive number")),
                Some(n) => Ok(n),
            }
        };
        let ms = |field: &str, d: Duration| -> Result<Duration, ComponentError> {
            if d < Duration::from_millis(1) || d.as_millis() > i32::MAX as u128 {
                return Err(md.invalid(field, format!("{d:?} is out of range")));
            }
            Ok(d)
        };
        Ok(Self {
            brokers,
            consumer_group: md.get("consumerGroup").map(|g| g.trim().to_string()),
            client_id: md
                .get("clientId")
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|| format!("weft-{}", ctx.app_id)),
            session_timeout: ms(
                "sessionTimeout",
                md.duration("sessionTimeout")?
                    .unwrap_or(Duration::from_secs(10)),
            )?,
            max_poll_interval: ms(
                "maxPollInterval",
                md.duration("maxPollInterval")?
                    .unwrap_or(Duration::from_secs(300)),
            )?,
            initial_offset,
            partitions,
            replication_factor,
            publish_timeout: ms(
                "publishTimeout",
                md.duration("publishTimeout")?
                    .unwrap_or(Duration::from_secs(15)),
            )?,
            max_buffered_messages: positive("maxBufferedMessages", PAUSE_AT)?,
            max_buffered_bytes: positive("maxBufferedBytes", PAUSE_AT_BYTES)?,
        })
    }
}

// === impl KafkaPubSub ===

/// A pub/sub backend on Apache Kafka.
pub struct KafkaPubSub {
    name: String,
    cfg: KafkaConfig,
    producer: FutureProducer<LogContext>,
    admin: AdminClient<LogContext>,
    /// Topics known to exist (created or found by this component).
    known_topics: Mutex<HashSet<String>>,
    subscriptions: Mutex<Vec<SubscriptionHandle>>,
}

struct SubscriptionHandle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    shared: Arc<SubShared>,
}

impl std::fmt::Debug for KafkaPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPubSub")
            .field("name", &self.name)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl KafkaPubSub {
    /// Builds the component; connects lazily (nothing here needs a broker).
    pub fn from_metadata(md: &Metadata, ctx: &InitContext) -> Result<Self, ComponentError> {
        let cfg = KafkaConfig::from_metadata(md, ctx)?;
        let name = md.component().to_string();
        let log = LogContext {
            component: name.clone(),
        };
        let producer: FutureProducer<LogContext> = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", &cfg.client_id)
            .set("enable.idempotence", "true")
            // The Java client's partitioner: a key goes to the partition a
            // Java producer (and the embedded broker) would choose, so
            // producers of both kinds keep one key in one partition.
            .set("partitioner", "murmur2_random")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                cfg.publish_timeout.as_millis().to_string(),
            )
            .create_with_context(log.clone())
            .map_err(|e| {
                md.init_error(format!(
                    "creating the Kafka producer for brokers '{}': {e}",
                    cfg.brokers
                ))
            })?;
        let admin: AdminClient<LogContext> = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", &cfg.client_id)
            .create_with_context(log)
            .map_err(|e| {
                md.init_error(format!(
                    "creating the Kafka admin client for brokers '{}': {e}",
                    cfg.brokers
                ))
            })?;
        Ok(Self {
            name,
            cfg,
            producer,
            admin,
            known_topics: Mutex::default(),
            subscriptions: Mutex::default(),
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.cfg
    }

    fn error(&self, what: &str, topic: &str, e: &KafkaError) -> PubSubError {
        let text = format!(
            "pubsub '{}' (kafka brokers {}): {what} topic '{topic}': {e}",
            self.name, self.cfg.brokers
        );
        let code = match e {
            KafkaError::AdminOp(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        match code {
            Some(code) => classify(code, text),
            None => match e {
                KafkaError::Canceled => PubSubError::Unavailable(text),
                _ => PubSubError::Internal(text),
            },
        }
    }

    /// Creates `topic` unless this component already knows it exists.
    async fn ensure_topic(&self, topic: &str) -> Result<(), PubSubError> {
        if lock(&self.known_topics).contains(topic) {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.cfg.partitions,
            TopicReplication::Fixed(self.cfg.replication_factor),
        );
        let opts = AdminOptions::new()
            .request_timeout(Some(self.cfg.publish_timeout))
            .operation_timeout(Some(self.cfg.publish_timeout));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| self.error("creating", topic, &e))?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(component = %self.name, topic, partitions = self.cfg.partitions, "created kafka topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    let err = self.error("creating", topic, &KafkaError::AdminOp(code));
                    if matches!(
                        err,
                        PubSubError::Unavailable(_) | PubSubError::InvalidRequest(_)
                    ) {
                        return Err(err);
                    }
                    // Not allowed to create (ACLs, policies)? It may exist or be
                    // auto-created; let the produce or fetch say.
                    tracing::warn!(component = %self.name, topic, error = %err, "could not create kafka topic; using it as it is");
                }
            }
        }
        lock(&self.known_topics).insert(topic.to_string());
        Ok(())
    }

    /// Waits (bounded by `publishTimeout`) until the brokers' metadata lists
    /// `topic` with its partitions, so a new consumer is assigned all of them.
    async fn wait_for_metadata(&self, topic: &str) -> Result<(), PubSubError> {
        let producer = self.producer.clone();
        let t = topic.to_string();
        let timeout = self.cfg.publish_timeout;
        let res = tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let err = match producer
                    .client()
                    .fetch_metadata(Some(&t), left.min(Duration::from_secs(2)))
                {
                    Ok(md) => match md.topics().iter().find(|mt| mt.name() == t) {
                        Some(mt) if mt.error().is_none() && !mt.partitions().is_empty() => {
                            return Ok(())
                        }
                        Some(mt) => mt
                            .error()
                            .map(|e| KafkaError::MetadataFetch(e.into()))
                            .unwrap_or(KafkaError::MetadataFetch(
                                RDKafkaErrorCode::UnknownTopicOrPartition,
                            )),
                        None => {
                            KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)
                        }
                    },
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    return Err(err);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .map_err(|e| PubSubError::Internal(format!("metadata wait task failed: {e}")))?;
        res.map_err(|e| self.error("waiting for the metadata of", topic, &e))
    }

    fn check_topic(&self, what: &str, topic: &str) -> Result<(), PubSubError> {
        if topic.trim().is_empty() {
            return Err(PubSubError::InvalidRequest(format!(
                "pubsub '{}': {what}: the topic is empty",
                self.name
            )));
        }
        Ok(())
    }

    /// Queues one message in the producer, in call order; waits a bounded
    /// time for room when the queue is full.
    async fn enqueue(&self, req: &PublishRequest) -> Result<DeliveryFuture, PubSubError> {
        let deadline = Instant::now() + QUEUE_FULL_WAIT;
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(req.headers.len());
            for (k, v) in &req.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&req.topic)
                .payload(&req.data[..])
                .headers(headers);
            if let Some(key) = &req.key {
                record = record.key(key.as_str());
            }
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.error("publishing to", &req.topic, &e)),
            }
        }
    }

    async fn delivered(&self, topic: &str, f: DeliveryFuture) -> Result<(), PubSubError> {
        match f.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(self.error("publishing to", topic, &e)),
            Err(_) => Err(PubSubError::Unavailable(format!(
                "pubsub '{}' (kafka brokers {}): publishing to topic '{topic}': the producer shut down",
                self.name, self.cfg.brokers
            ))),
        }
    }

    fn consumer_config(&self, group: &str, options: &SubscribeOptions) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.cfg.brokers)
            .set("client.id", &self.cfg.client_id)
            .set("group.id", group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match self.cfg.initial_offset {
                    InitialOffset::Oldest => "earliest",
                    InitialOffset::Newest => "latest",
                },
            )
            .set(
                "session.timeout.ms",
                self.cfg.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.cfg.max_poll_interval.as_millis().to_string(),
            )
            // Bounded prefetch: about this many messages queued per partition
            // inside librdkafka, on top of our own per-partition buffer.
            .set("queued.min.messages", PREFETCH.to_string())
            .set(
                "queued.max.messages.kbytes",
                (self.cfg.max_buffered_bytes >> 10)
                    .clamp(1024, MAX_PREFETCH_KBYTES)
                    .to_string(),
            )
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
            // Consumer lag for monitoring (PubSub::lag).
            .set("statistics.interval.ms", "5000");
        if let Some(id) = options
            .instance_id
            .as_deref()
            .filter(|i| !i.trim().is_empty())
        {
            cc.set("group.instance.id", id);
        }
        cc
    }
}

#[async_trait]
impl PubSub for KafkaPubSub {
    fn features(&self) -> &'static [Feature] {
        &[
            Feature::Durable,
            Feature::DistributedGroups,
            Feature::StaticMembership,
        ]
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        self.check_topic("publish", &req.topic)?;
        self.ensure_topic(&req.topic).await?;
        let f = self.enqueue(&req).await?;
        self.delivered(&req.topic, f).await
    }

    /// Queues every message in order (so a key's messages keep their order),
    /// then waits for all the confirmations.
    async fn publish_bulk(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        let mut failed_topics: HashMap<String, PubSubError> = HashMap::new();
        let mut pending: Vec<Result<DeliveryFuture, PubSubError>> = Vec::with_capacity(reqs.len());
        for req in &reqs {
            if let Err(e) = self.check_topic("publish", &req.topic) {
                pending.push(Err(e));
                continue;
            }
            if let Some(e) = failed_topics.get(&req.topic) {
                pending.push(Err(e.clone()));
                continue;
            }
            if let Err(e) = self.ensure_topic(&req.topic).await {
                failed_topics.insert(req.topic.clone(), e.clone());
                pending.push(Err(e));
                continue;
            }
            pending.push(self.enqueue(req).await);
        }
        let waits = pending.into_iter().zip(&reqs).map(|(p, req)| async move {
            match p {
                Ok(f) => self.delivered(&req.topic, f).await,
                Err(e) => Err(e),
            }
        });
        futures::future::join_all(waits).await
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<mpsc::Receiver<Delivery>, PubSubError> {
        self.check_topic("subscribe", &options.topic)?;
        options.validate()?;
        let group = match (options.group.trim(), &self.cfg.consumer_group) {
            ("", Some(g)) => g.clone(),
            ("", None) => {
                return Err(PubSubError::InvalidRequest(format!(
                    "pubsub '{}': subscribe to topic '{}': no consumer group given and no 'consumerGroup' in the component's metadata",
                    self.name, options.topic
                )))
            }
            (g, _) => g.to_string(),
        };
        self.ensure_topic(&options.topic).await?;
        self.wait_for_metadata(&options.topic).await?;

        let (tx, rx) = mpsc::channel(options.channel_capacity(None));
        let shared = Arc::new_cyclic(|me| SubShared {
            component: self.name.clone(),
            topic: options.topic.clone(),
            group: group.clone(),
            max_in_flight: options.max_in_flight,
            per_partition: options.max_in_flight_per_partition,
            retry_backoff: options.retry_backoff,
            revoke_timeout: options.revoke_timeout,
            pause_at: (self.cfg.max_buffered_messages, self.cfg.max_buffered_bytes),
            rt: tokio::runtime::Handle::current(),
            tx,
            state: Mutex::default(),
            acked: Condvar::new(),
            me: me.clone(),
            lag: Mutex::default(),
        });
        let context = SubContext {
            log: LogContext {
                component: self.name.clone(),
            },
            shared: shared.clone(),
        };
        let consumer: BaseConsumer<SubContext> = self
            .consumer_config(&group, &options)
            .create_with_context(context)
            .map_err(|e| {
                self.error(
                    &format!("creating a consumer (group '{group}') for"),
                    &options.topic,
                    &e,
                )
            })?;
        consumer.subscribe(&[options.topic.as_str()]).map_err(|e| {
            self.error(
                &format!("subscribing (group '{group}') to"),
                &options.topic,
                &e,
            )
        })?;

        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("weft-kafka-sub".into())
            .spawn(move || run_consumer(consumer, thread_shared, thread_stop))
            .map_err(|e| {
                PubSubError::Internal(format!(
                    "pubsub '{}': starting a consumer thread: {e}",
                    self.name
                ))
            })?;
        let mut subs = lock(&self.subscriptions);
        subs.retain(|s| !s.thread.is_finished());
        subs.push(SubscriptionHandle {
            stop,
            thread,
            shared,
        });
        tracing::debug!(component = %self.name, topic = %options.topic, group = %group, "kafka subscription started");
        Ok(rx)
    }

    fn lag(&self) -> Vec<PartitionLag> {
        let subs = lock(&self.subscriptions);
        let mut out = Vec::new();
        for sub in subs.iter().filter(|s| !s.thread.is_finished()) {
            let sh = &sub.shared;
            let lags = lock(&sh.lag).clone();
            let st = sh.lock();
            let mut parts: Vec<i32> = lags.keys().chain(st.parts.keys()).copied().collect();
            parts.sort_unstable();
            parts.dedup();
            for p in parts {
                let part = st.parts.get(&p);
                out.push(PartitionLag {
                    topic: sh.topic.clone(),
                    group: sh.group.clone(),
                    partition: p,
                    // librdkafka's figure (every 5 s); at least what is held.
                    lag: lags
                        .get(&p)
                        .copied()
                        .unwrap_or(0)
                        .max(part.map_or(0, |x| x.buf.len() as i64)),
                    held: Some(part.map_or(0, |x| x.buf.len() as u64)),
                    paused: part.is_some_and(|x| x.paused),
                });
            }
        }
        out
    }

    /// A metadata request to the brokers (any broker answering will do).
    async fn ping(&self, timeout: Duration) -> Result<(), PubSubError> {
        let producer = self.producer.clone();
        let res = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(|_| ())
        })
        .await
        .map_err(|e| PubSubError::Internal(format!("metadata request task failed: {e}")))?;
        res.map_err(|e| {
            let text = format!(
                "pubsub '{}' (kafka brokers {}): no broker answered a metadata request within {timeout:?}: {e}",
                self.name, self.cfg.brokers
            );
            PubSubError::Unavailable(text)
        })
    }

    async fn close(&self) {
        let subs: Vec<SubscriptionHandle> = lock(&self.subscriptions).drain(..).collect();
        for s in &subs {
            s.stop.store(true, Ordering::SeqCst);
        }
        let producer = self.producer.clone();
        let timeout = self.cfg.publish_timeout;
        let _ = tokio::task::spawn_blocking(move || {
            for s in subs {
                let _ = s.thread.join();
            }
            let _ = producer.flush(timeout);
        })
        .await;
    }
}

/// Maps a librdkafka error code onto the block's error kinds.
fn classify(code: RDKafkaErrorCode, text: String) -> PubSubError {
    use RDKafkaErrorCode as C;
    match code {
        C::QueueFull | C::ThrottlingQuotaExceeded | C::KafkaStorageError => {
            PubSubError::ResourceExhausted(text)
        }
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::PolicyViolation => PubSubError::InvalidRequest(text),
        C::MessageTimedOut
        | C::OperationTimedOut
        | C::TimedOutQueue
        | C::RequestTimedOut
        | C::AllBrokersDown
        | C::BrokerTransportFailure
        | C::BrokerNotAvailable
        | C::Resolve
        | C::LeaderNotAvailable
        | C::PreferredLeaderNotAvailable
        | C::NotLeaderForPartition
        | C::NetworkException
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::WaitingForCoordinator
        | C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::BrokerDestroy
        | C::DestroyBroker => PubSubError::Unavailable(text),
        _ => PubSubError::Internal(text),
    }
}

/// What a buffered message counts towards `PAUSE_AT_BYTES`.
fn message_bytes(m: &Message) -> usize {
    m.data.len() + m.key.as_ref().map_or(0, String::len)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl LogContext ===

/// Sends librdkafka's logs and errors to `tracing`, tagged with the component.
#[derive(Clone)]
struct LogContext {
    component: String,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(component = %self.component, facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(component = %self.component, facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(component = %self.component, facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(component = %self.component, facility = fac, "librdkafka: {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(component = %self.component, error = %error, "kafka client error: {reason}");
    }
}

// === Subscriptions ===

/// What a subscription's consumer thread, its rebalance callbacks and the
/// acks (through [`AckSink`]) share.
struct SubShared {
    component: String,
    topic: String,
    group: String,
    max_in_flight: usize,
    per_partition: usize,
    retry_backoff: Duration,
    revoke_timeout: Duration,
    /// `maxBufferedMessages`, `maxBufferedBytes`.
    pause_at: (usize, usize),
    rt: tokio::runtime::Handle,
    tx: mpsc::Sender<Delivery>,
    state: Mutex<SubState>,
    /// Signalled whenever an ack empties a window (revocation waits on it).
    acked: Condvar,
    /// This subscription as the deliveries' ack sink.
    me: Weak<SubShared>,
    /// Consumer lag per partition, from librdkafka's statistics.
    lag: Mutex<HashMap<i32, i64>>,
}

#[derive(Default)]
struct SubState {
    parts: HashMap<i32, Part>,
    /// Partitions that can hand out a message, oldest first: (partition, generation).
    ready: VecDeque<(i32, u64)>,
    /// Partitions with messages handed out and not committed.
    busy: usize,
    generation: u64,
    /// Id of the next hand-out.
    next_id: u64,
    closed: bool,
}

/// One assigned partition.
struct Part {
    /// Changes with every assignment, so timers of an earlier ownership do nothing.
    generation: u64,
    /// Fetched, not yet committed messages; the first `window.len()` are
    /// handed out.
    buf: VecDeque<Message>,
    /// Payload and key bytes in `buf`.
    buf_bytes: usize,
    /// Lowest offset accepted from the fetcher (duplicates after a pause are skipped).
    next_offset: i64,
    window: Window,
    /// A message was retried and waits for the backoff.
    backing_off: bool,
    /// Bumped by every RETRY, so that only the latest backoff ends it.
    backoff_seq: u64,
    /// In `SubState::ready`.
    queued: bool,
    /// Last offset that left the window acked, -1 if none.
    acked: i64,
    /// Offset last sent in a commit (next to consume), -1 if none.
    committed: i64,
    paused: bool,
    revoking: bool,
}

impl Part {
    fn new(generation: u64, per_partition: usize) -> Self {
        Self {
            generation,
            buf: VecDeque::new(),
            buf_bytes: 0,
            next_offset: -1,
            window: Window::new(per_partition),
            backing_off: false,
            backoff_seq: 0,
            queued: false,
            acked: -1,
            committed: -1,
            paused: false,
            revoking: false,
        }
    }

    fn deliverable(&self) -> bool {
        !self.backing_off
            && !self.revoking
            && self.window.has_room()
            && self.window.len() < self.buf.len()
    }
}

impl AckSink for SubShared {
    fn ack(&self, token: AckToken, ack: Ack) {
        if let Some(me) = self.me.upgrade() {
            me.on_ack(token, ack);
        }
    }
}

impl SubShared {
    fn lock(&self) -> MutexGuard<'_, SubState> {
        lock(&self.state)
    }

    fn mark_ready(st: &mut SubState, p: i32) {
        if let Some(part) = st.parts.get_mut(&p) {
            if part.deliverable() && !part.queued {
                part.queued = true;
                st.ready.push_back((p, part.generation));
            }
        }
    }

    /// Hands out the ready partitions' next messages, each up to its window,
    /// while fewer than `max_in_flight` partitions have messages out.
    fn pump(self: &Arc<Self>, st: &mut SubState) {
        while !st.closed {
            let Some(&(p, generation)) = st.ready.front() else {
                break;
            };
            let SubState {
                parts,
                ready,
                busy,
                next_id,
                closed,
                ..
            } = &mut *st;
            let Some(part) = parts.get_mut(&p).filter(|x| x.generation == generation) else {
                ready.pop_front();
                continue;
            };
            if part.window.is_empty() && part.deliverable() && *busy >= self.max_in_flight {
                break; // the oldest ready partition waits for a free slot
            }
            ready.pop_front();
            part.queued = false;
            while part.deliverable() {
                let idx = part.window.len();
                let mut message = part.buf[idx].clone();
                let offset = message.offset;
                message.attempt = part.window.attempt(offset);
                let id = *next_id;
                *next_id += 1;
                let sink: Arc<dyn AckSink> = self.clone();
                let token = AckToken {
                    partition: p,
                    offset,
                    id,
                };
                match self.tx.try_send(Delivery::with_sink(message, sink, token)) {
                    Ok(()) => {
                        if part.window.is_empty() {
                            *busy += 1;
                        }
                        part.window.hand_out(offset, id);
                    }
                    Err(TrySendError::Full(d)) => {
                        // Only while deliveries of a revoked assignment still
                        // sit in the channel; the next ack pumps again.
                        d.disarm();
                        part.queued = true;
                        ready.push_front((p, generation));
                        return;
                    }
                    Err(TrySendError::Closed(d)) => {
                        d.disarm();
                        *closed = true;
                        return;
                    }
                }
            }
        }
    }

    fn on_ack(self: &Arc<Self>, token: AckToken, ack: Ack) {
        let p = token.partition;
        let mut st = self.lock();
        let mut retry = None;
        let mut idle = false;
        if let Some(part) = st.parts.get_mut(&p) {
            let was_busy = !part.window.is_empty();
            match part.window.settle(token.offset, token.id, ack) {
                Settled::Stale => {}
                Settled::Acked { popped, .. } => {
                    for _ in 0..popped {
                        if let Some(m) = part.buf.pop_front() {
                            part.buf_bytes = part.buf_bytes.saturating_sub(message_bytes(&m));
                            part.acked = m.offset;
                        }
                    }
                }
                Settled::Rewound => {
                    if !part.revoking {
                        part.backing_off = true;
                        part.backoff_seq += 1;
                        retry = Some((part.generation, part.backoff_seq));
                    }
                }
            }
            idle = was_busy && part.window.is_empty();
        }
        if idle {
            st.busy -= 1;
        }
        Self::mark_ready(&mut st, p);
        self.pump(&mut st);
        drop(st);
        if idle {
            self.acked.notify_all();
        }
        if let Some((generation, seq)) = retry {
            let me = self.clone();
            let backoff = self.retry_backoff;
            self.rt.spawn(async move {
                tokio::time::sleep(backoff).await;
                let mut st = me.lock();
                if let Some(part) = st.parts.get_mut(&p) {
                    if part.generation == generation && part.backoff_seq == seq {
                        part.backing_off = false;
                        Self::mark_ready(&mut st, p);
                    }
                }
                me.pump(&mut st);
            });
        }
    }

    fn on_fetched(self: &Arc<Self>, m: &BorrowedMessage<'_>) {
        let p = m.partition();
        let offset = m.offset();
        {
            let st = self.lock();
            match st.parts.get(&p) {
                Some(part) if !part.revoking && offset >= part.next_offset => {}
                _ => return,
            }
        }
        let message = Message {
            topic: m.topic().to_string(),
            partition: p,
            offset,
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            data: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            let value = h
                                .value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default();
                            (h.key.to_string(), value)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            attempt: 0,
        };
        let mut st = self.lock();
        let Some(part) = st.parts.get_mut(&p) else {
            return;
        };
        if part.revoking || offset < part.next_offset {
            return;
        }
        part.next_offset = offset + 1;
        part.buf_bytes += message_bytes(&message);
        part.buf.push_back(message);
        Self::mark_ready(&mut st, p);
        self.pump(&mut st);
    }

    /// Pauses partitions whose buffer is full and resumes drained ones.
    fn flow_control(&self, consumer: &BaseConsumer<SubContext>) {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        {
            let mut st = self.lock();
            for (&p, part) in st.parts.iter_mut() {
                let (at, at_bytes) = self.pause_at;
                let full = part.buf.len() >= at || part.buf_bytes >= at_bytes;
                let drained = part.buf.len() <= at / 4 && part.buf_bytes <= at_bytes / 4;
                if !part.paused && !part.revoking && full {
                    part.paused = true;
                    pause.add_partition(&self.topic, p);
                } else if part.paused && drained {
                    part.paused = false;
                    resume.add_partition(&self.topic, p);
                }
            }
        }
        if pause.count() > 0 {
            if let Err(e) = consumer.pause(&pause) {
                tracing::debug!(component = %self.component, topic = %self.topic, error = %e, "pausing partitions");
            }
        }
        if resume.count() > 0 {
            if let Err(e) = consumer.resume(&resume) {
                tracing::debug!(component = %self.component, topic = %self.topic, error = %e, "resuming partitions");
            }
        }
    }

    /// Commits acked positions: those not committed yet, or (`all`) every
    /// acked one; only the given partitions if `only` is set.
    fn commit(
        &self,
        consumer: &BaseConsumer<SubContext>,
        mode: CommitMode,
        only: Option<&[i32]>,
        all: bool,
    ) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut st = self.lock();
            for (&p, part) in st.parts.iter_mut() {
                if only.is_some_and(|o| !o.contains(&p)) || part.acked < 0 {
                    continue;
                }
                let next = part.acked + 1;
                if all || next > part.committed {
                    part.committed = next;
                    if let Err(e) = tpl.add_partition_offset(&self.topic, p, Offset::Offset(next)) {
                        tracing::warn!(component = %self.component, topic = %self.topic, partition = p, error = %e, "commit list");
                    }
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::warn!(
                component = %self.component, topic = %self.topic, group = %self.group, error = %e,
                "committing offsets failed; uncommitted messages will be delivered again"
            );
        }
    }

    fn on_assign(&self, tpl: &TopicPartitionList) {
        let mut st = self.lock();
        st.generation += 1;
        let generation = st.generation;
        for e in tpl.elements() {
            if e.topic() != self.topic {
                continue;
            }
            let part = Part::new(generation, self.per_partition);
            if let Some(old) = st.parts.insert(e.partition(), part) {
                if !old.window.is_empty() {
                    st.busy -= 1;
                }
            }
        }
        tracing::debug!(component = %self.component, topic = %self.topic, group = %self.group, assigned = tpl.count(), "partitions assigned");
    }

    /// Stops handing out the revoked partitions, waits up to `revoke_timeout`
    /// until every message they handed out was acked (or retried), commits
    /// the acked prefix, then forgets them.
    fn on_revoke(self: &Arc<Self>, consumer: &BaseConsumer<SubContext>, tpl: &TopicPartitionList) {
        let revoked: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        let lost = consumer.assignment_lost();
        let deadline = Instant::now() + self.revoke_timeout;
        let mut st = self.lock();
        for p in &revoked {
            if let Some(part) = st.parts.get_mut(p) {
                part.revoking = true;
            }
        }
        loop {
            // A lost assignment already belongs to someone else: no waiting.
            let busy = match lost {
                true => 0,
                false => revoked
                    .iter()
                    .filter(|p| st.parts.get(p).is_some_and(|x| !x.window.is_empty()))
                    .count(),
            };
            if busy == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::info!(
                    component = %self.component, topic = %self.topic, group = %self.group, unacked = busy,
                    "revoke timeout reached; unacked messages go to the partitions' next owner"
                );
                break;
            }
            st = self
                .acked
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        if !lost {
            self.commit(consumer, CommitMode::Sync, Some(&revoked), true);
        }
        let mut st = self.lock();
        for p in &revoked {
            if let Some(part) = st.parts.remove(p) {
                if !part.window.is_empty() {
                    st.busy -= 1;
                }
            }
        }
        self.pump(&mut st);
        tracing::debug!(component = %self.component, topic = %self.topic, group = %self.group, revoked = revoked.len(), lost, "partitions revoked");
    }
}

/// A consumer's context: logging plus the rebalance hooks.
struct SubContext {
    log: LogContext,
    shared: Arc<SubShared>,
}

impl ClientContext for SubContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message)
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): keeps the
    /// consumer lag of the partitions it reports for this topic.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.topic) else {
            return;
        };
        let mut lag = lock(&self.shared.lag);
        lag.clear();
        for (p, part) in &topic.partitions {
            if *p >= 0 && part.consumer_lag >= 0 {
                lag.insert(*p, part.consumer_lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason)
    }
}

impl ConsumerContext for SubContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.on_assign(tpl),
            Rebalance::Revoke(tpl) => self.shared.on_revoke(consumer, tpl),
            Rebalance::Error(e) => tracing::warn!(
                component = %self.shared.component, topic = %self.shared.topic, group = %self.shared.group, error = %e,
                "kafka rebalance error"
            ),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(component = %self.shared.component, topic = %self.shared.topic, error = %e, "async commit failed");
        }
    }
}

/// A subscription's consumer thread: polls, buffers, pauses and resumes,
/// commits; on close commits and leaves the group (dropping the consumer
/// runs the revocation hook for every partition still owned).
fn run_consumer(consumer: BaseConsumer<SubContext>, shared: Arc<SubShared>, stop: Arc<AtomicBool>) {
    let mut last_commit = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) || shared.tx.is_closed() || shared.lock().closed {
            break;
        }
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(m)) => shared.on_fetched(&m),
            Some(Err(e)) => {
                tracing::debug!(component = %shared.component, topic = %shared.topic, error = %e, "kafka consumer")
            }
            None => {}
        }
        shared.flow_control(&consumer);
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            shared.commit(&consumer, CommitMode::Async, None, false);
            last_commit = Instant::now();
        }
    }
    shared.lock().closed = true;
    shared.commit(&consumer, CommitMode::Sync, None, false);
    drop(consumer);
    tracing::debug!(component = %shared.component, topic = %shared.topic, group = %shared.group, "kafka subscription closed");
}

/// `pubsub.kafka` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "pubsub.kafka",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::PubSub(Arc::new(KafkaPubSub::from_metadata(
                md, ctx,
            )?)))
        })
    },
};
