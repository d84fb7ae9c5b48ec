//! Pub/sub benchmark (issue 4, item 9): end-to-end publish → deliver → ack
//! through a release `weft`, over the streaming gRPC subscription
//! (`SubscribeTopicEventsAlpha1`), on the embedded broker and on Kafka
//! (`WEFT_TEST_KAFKA_BROKERS`), 8 partitions, in one run — and the same
//! runs over the shared-memory transport (docs/shm-protocol.md): publishing
//! with BulkPublishEvent / PublishEvent over shm, subscribing with
//! SubscribeTopicEventsAlpha1 as an shm bidirectional call (method 12, acks
//! as MORE records). Each shm client is blocking and single-owner, so each
//! lives on its own thread.
//!
//! Per backend and transport (gRPC, shm):
//!
//! * **throughput**: `--messages` messages over `--keys` keys, published by
//!   `--lanes` concurrent BulkPublishEvent loops (disjoint key sets, batches
//!   of `--batch`, so per-key publish order is defined) while one streaming
//!   subscription acks every event as soon as it arrives. Reported: delivered
//!   messages per second (first publish to last delivery), latency from the
//!   publish time in the payload to the delivery (saturated: mostly queueing),
//!   and a check that every key arrived complete and in order. Each run is
//!   made strict (one event per partition out to the app at a time) and,
//!   unless `--in-flight-per-partition 1`, pipelined (subscription metadata
//!   `maxInFlightPerPartition`).
//! * **latency**: one PublishEvent at a time, waiting for its delivery
//!   (ping-pong), `--latency-msgs` times; p50/p99 of publish → delivery.
//! * **baseline**: the same ping-pong against the same component type
//!   created in this process (no runtime, no gRPC). The difference of the
//!   p50s is the runtime's per-message overhead (publish RPC, envelope,
//!   building block, streaming delivery and ack).
//!
//! Plus the floors: p50 of a unary GetMetadata round trip over gRPC and
//! over shm, and of a `weft.Echo` over shm (the transport alone).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use weft_components::metadata::{InitContext, Metadata};
use weft_components::pubsub::{self, Ack, PublishRequest, SubscribeOptions};
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_shm::method as shm_method;
use weft_tests::procfs;
use weft_tests::subscribe::ShmSubscription;
use weft_tests::{write_component, Weft, WeftOptions};

type Client = DaprClient<Channel>;

const HELP: &str = "pubsub_bench: end-to-end pub/sub throughput and latency through a release weft

usage: pubsub_bench [options]
  --messages N        messages of the embedded throughput run (default 200000)
  --kafka-messages N  messages of the Kafka throughput run (default 100000)
  --keys N            partition keys (default 1000)
  --batch N           entries per BulkPublishEvent (default 500)
  --lanes N           concurrent publishers, disjoint keys (default 4)
  --latency-msgs N    ping-pong messages per latency run (default 2000)
  --in-flight-per-partition N
                      pipelined throughput rows with this many events per
                      partition out to the app (maxInFlightPerPartition),
                      beside the strict rows; 1: strict rows only (default 32)
  --transport T       grpc, shm or both (default both)
  --shm-idle I        how shm clients wait: default (spin 50 µs, yield 50 µs,
                      then sleep), sleep (at once) or spin (never sleep)
  --no-kafka          embedded broker only
  --markdown FILE     also write the report there

Kafka: WEFT_TEST_KAFKA_BROKERS (scripts/services.sh env). The weft binary is
$WEFT_BIN, or else target/release/weft next to this binary's directory.";

#[derive(Clone)]
struct Config {
    messages: usize,
    kafka_messages: usize,
    keys: u32,
    batch: usize,
    lanes: usize,
    latency_msgs: usize,
    per_partition: usize,
    transports: Vec<Transport>,
    shm_idle: weft_shm::IdleConfig,
    kafka: Option<String>,
    markdown: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> anyhow::Result<Option<Config>> {
    let mut c = Config {
        messages: 200_000,
        kafka_messages: 100_000,
        keys: 1000,
        batch: 500,
        lanes: 4,
        latency_msgs: 2000,
        per_partition: 32,
        transports: vec![Transport::Grpc, Transport::Shm],
        shm_idle: weft_shm::IdleConfig::default(),
        kafka: std::env::var("WEFT_TEST_KAFKA_BROKERS")
            .ok()
            .filter(|b| !b.trim().is_empty()),
        markdown: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(None);
            }
            "--messages" => c.messages = val()?.parse()?,
            "--kafka-messages" => c.kafka_messages = val()?.parse()?,
            "--keys" => c.keys = val()?.parse()?,
            "--batch" => c.batch = val()?.parse()?,
            "--lanes" => c.lanes = val()?.parse()?,
            "--latency-msgs" => c.latency_msgs = val()?.parse()?,
            "--in-flight-per-partition" => c.per_partition = val()?.parse()?,
            "--transport" => {
                c.transports = match val()?.as_str() {
                    "grpc" => vec![Transport::Grpc],
                    "shm" => vec![Transport::Shm],
                    "both" => vec![Transport::Grpc, Transport::Shm],
                    other => bail!("--transport: grpc, shm or both, not {other}"),
                }
            }
            "--shm-idle" => {
                c.shm_idle = match val()?.as_str() {
                    "default" => weft_shm::IdleConfig::default(),
                    "sleep" => weft_shm::IdleConfig::SLEEP,
                    "spin" => weft_shm::IdleConfig {
                        spin: Duration::from_secs(3600),
                        yield_for: Duration::ZERO,
                    },
                    other => bail!("--shm-idle: default, sleep or spin, not {other}"),
                }
            }
            "--no-kafka" => c.kafka = None,
            "--markdown" => c.markdown = Some(PathBuf::from(val()?)),
            other => bail!("unknown argument {other}\n\n{HELP}"),
        }
    }
    if c.keys == 0 || c.batch == 0 || c.lanes == 0 || c.per_partition == 0 {
        bail!("--keys, --batch, --lanes and --in-flight-per-partition must be positive");
    }
    Ok(Some(c))
}

/// How the benchmark talks to the runtime.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Grpc,
    Shm,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "gRPC",
            Transport::Shm => "shm",
        }
    }
}

/// The runtime under test: its gRPC side and its shared-memory socket.
struct Target {
    weft: Weft,
    shm_socket: PathBuf,
    app: String,
    shm_idle: weft_shm::IdleConfig,
}

impl Target {
    /// A new shm session (blocking, single-owner: keep it on one thread).
    fn shm_client(&self) -> anyhow::Result<weft_shm::Client> {
        shm_connect(&self.shm_socket, &self.app, self.shm_idle)
    }
}

fn shm_connect(
    socket: &Path,
    app: &str,
    idle: weft_shm::IdleConfig,
) -> anyhow::Result<weft_shm::Client> {
    let mut o = weft_shm::ClientOptions::new(app);
    o.idle = idle;
    o.call_timeout = Duration::from_secs(60);
    o.reconnect = false;
    weft_shm::Client::connect(socket, o).map_err(|e| anyhow::anyhow!("shm connect: {e}"))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        now_ns() % 1_000_000_000_000
    )
}

/// Nearest-rank percentile of sorted microseconds.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

// === the app side: one streaming subscription ===

/// A delivery: payload `key:seq:publish_ns`, received at `at_ns`.
struct Got {
    key: u32,
    seq: u32,
    sent_ns: u64,
    at_ns: u64,
}

fn parse_payload(data: &[u8]) -> Option<(u32, u32, u64)> {
    let s = std::str::from_utf8(data).ok()?;
    let mut p = s.split(':');
    Some((
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
    ))
}

/// Subscription metadata: pipelined when `per_partition` > 1.
fn sub_metadata(per_partition: usize) -> HashMap<String, String> {
    if per_partition > 1 {
        HashMap::from([(
            "maxInFlightPerPartition".to_string(),
            per_partition.to_string(),
        )])
    } else {
        HashMap::new()
    }
}

/// Subscribes and acks every event as soon as it arrives; deliveries go to `out`.
async fn subscribe(
    client: Client,
    pubsub: &str,
    topic: &str,
    per_partition: usize,
    out: mpsc::UnboundedSender<Vec<Got>>,
) -> anyhow::Result<()> {
    weft_tests::subscribe::grpc(
        client,
        pubsub,
        topic,
        sub_metadata(per_partition),
        move |ev| {
            let at_ns = now_ns();
            if let Some((key, seq, sent_ns)) = parse_payload(&ev.data) {
                let _ = out.send(vec![Got {
                    key,
                    seq,
                    sent_ns,
                    at_ns,
                }]);
            }
        },
    )
    .await?;
    Ok(())
}

/// A SubscribeTopicEventsAlpha1 call over shared memory whose events are
/// this benchmark's payloads.
struct ShmSub(ShmSubscription);

impl ShmSub {
    /// Opens the call on `c` and waits for its initial response.
    fn open(
        c: weft_shm::Client,
        pubsub: &str,
        topic: &str,
        per_partition: usize,
    ) -> anyhow::Result<Self> {
        ShmSubscription::open(c, pubsub, topic, sub_metadata(per_partition)).map(Self)
    }

    /// The next event, acked with SUCCESS as soon as it arrives (before it
    /// is parsed, like the gRPC subscriber); `None` when nothing came within
    /// `within`.
    fn next(&mut self, within: Duration) -> anyhow::Result<Option<Got>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(ev) = self.0.next_event(left)? else {
                return Ok(None);
            };
            let at_ns = now_ns();
            self.0.ack(ev.id)?;
            if let Some((key, seq, sent_ns)) = parse_payload(&ev.data) {
                return Ok(Some(Got {
                    key,
                    seq,
                    sent_ns,
                    at_ns,
                }));
            }
        }
    }
}

/// The shm twin of [`subscribe`]: a dedicated thread owns one shm session
/// with one subscription, acks every event at once and forwards the
/// deliveries to `out` until `out` is closed, in batches (up to
/// `HANDOFF_BATCH`, or what arrived before a 1 ms pause): handing each
/// delivery over alone woke the checking thread once per event, which on
/// two vCPUs took CPU from the runtime and the subscriber themselves.
async fn subscribe_shm(
    target: &Target,
    pubsub: &str,
    topic: &str,
    per_partition: usize,
    out: mpsc::UnboundedSender<Vec<Got>>,
) -> anyhow::Result<()> {
    const HANDOFF_BATCH: usize = 64;
    let (socket, app, idle) = (
        target.shm_socket.clone(),
        target.app.clone(),
        target.shm_idle,
    );
    let (pubsub, topic) = (pubsub.to_string(), topic.to_string());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shm-subscriber".into())
        .spawn(move || {
            let sub = shm_connect(&socket, &app, idle)
                .and_then(|c| ShmSub::open(c, &pubsub, &topic, per_partition));
            let mut sub = match sub {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut batch = Vec::with_capacity(HANDOFF_BATCH);
            while !out.is_closed() {
                let within = if batch.is_empty() {
                    Duration::from_millis(200)
                } else {
                    Duration::from_millis(1)
                };
                match sub.next(within) {
                    Ok(Some(g)) => {
                        batch.push(g);
                        if batch.len() >= HANDOFF_BATCH
                            && out.send(std::mem::take(&mut batch)).is_err()
                        {
                            break;
                        }
                    }
                    Ok(None) => {
                        if !batch.is_empty() && out.send(std::mem::take(&mut batch)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("pubsub_bench: {e:#}");
                        return;
                    }
                }
            }
            sub.0.cancel();
        })?;
    ready_rx.await.context("the shm subscriber thread died")?
}

fn bulk_entries(chunk: &[(u32, u32)], t: u64) -> Vec<pb::BulkPublishRequestEntry> {
    chunk
        .iter()
        .enumerate()
        .map(|(i, (k, s))| pb::BulkPublishRequestEntry {
            entry_id: i.to_string(),
            event: format!("{k}:{s}:{t}").into_bytes(),
            content_type: "text/plain".into(),
            metadata: HashMap::from([("partitionKey".to_string(), format!("key-{k}"))]),
        })
        .collect()
}

fn check_bulk(r: &pb::BulkPublishResponse) -> anyhow::Result<()> {
    if !r.failed_entries.is_empty() {
        bail!(
            "{} entries failed: {:?}",
            r.failed_entries.len(),
            r.failed_entries.first()
        );
    }
    Ok(())
}

// === runs ===

struct Throughput {
    messages: usize,
    secs: f64,
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    out_of_order: usize,
    duplicates: usize,
}

async fn throughput(
    target: &Target,
    transport: Transport,
    pubsub: &'static str,
    cfg: &Config,
    n: usize,
    per_partition: usize,
) -> anyhow::Result<Throughput> {
    let weft = &target.weft;
    let topic = unique("bench");
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    match transport {
        Transport::Grpc => {
            subscribe(weft.client().await, pubsub, &topic, per_partition, out_tx).await?
        }
        Transport::Shm => subscribe_shm(target, pubsub, &topic, per_partition, out_tx).await?,
    }
    // Per key: the sequence numbers to publish, split into lanes by key.
    let mut lanes: Vec<Vec<(u32, u32)>> = vec![Vec::new(); cfg.lanes];
    let mut counts = vec![0u32; cfg.keys as usize];
    for i in 0..n {
        let k = ((i as u64).wrapping_mul(2654435761) % u64::from(cfg.keys)) as u32;
        lanes[k as usize % cfg.lanes].push((k, counts[k as usize]));
        counts[k as usize] += 1;
    }
    let start = Instant::now();
    let mut pubs: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
    for lane in lanes {
        let topic = topic.clone();
        let batch = cfg.batch;
        match transport {
            Transport::Grpc => {
                let mut client = weft.client().await;
                pubs.push(tokio::spawn(async move {
                    for chunk in lane.chunks(batch) {
                        let r = client
                            .bulk_publish_event(pb::BulkPublishRequest {
                                pubsub_name: pubsub.into(),
                                topic: topic.clone(),
                                entries: bulk_entries(chunk, now_ns()),
                                metadata: HashMap::new(),
                            })
                            .await?
                            .into_inner();
                        check_bulk(&r)?;
                    }
                    Ok(())
                }));
            }
            Transport::Shm => {
                // One blocking shm session per publisher lane, on its own thread.
                let mut client = target.shm_client()?;
                pubs.push(tokio::task::spawn_blocking(move || {
                    for chunk in lane.chunks(batch) {
                        let r: pb::BulkPublishResponse = client
                            .unary(
                                shm_method::BULK_PUBLISH_EVENT,
                                &pb::BulkPublishRequest {
                                    pubsub_name: pubsub.into(),
                                    topic: topic.clone(),
                                    entries: bulk_entries(chunk, now_ns()),
                                    metadata: HashMap::new(),
                                },
                            )
                            .map_err(|e| anyhow::anyhow!("shm bulk publish: {e}"))?;
                        check_bulk(&r)?;
                    }
                    Ok(())
                }));
            }
        }
    }
    let mut next = vec![0u32; cfg.keys as usize];
    let (mut out_of_order, mut duplicates, mut got) = (0, 0, 0);
    let mut lat = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n {
        let batch = tokio::time::timeout_at(deadline.into(), out_rx.recv())
            .await
            .with_context(|| format!("only {got} of {n} delivered within 600 s"))?
            .context("subscription ended")?;
        for g in batch {
            let k = g.key as usize;
            if g.seq == next[k] {
                next[k] += 1;
                got += 1;
            } else if g.seq < next[k] {
                duplicates += 1;
            } else {
                out_of_order += 1;
                next[k] = g.seq + 1;
                got += 1;
            }
            lat.push(g.at_ns.saturating_sub(g.sent_ns) as f64 / 1000.0);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(out_rx); // ends an shm subscriber thread
    for p in pubs {
        p.await??;
    }
    let lat = sorted(lat);
    Ok(Throughput {
        messages: n,
        secs,
        per_sec: n as f64 / secs,
        p50_us: pct(&lat, 50.0),
        p99_us: pct(&lat, 99.0),
        out_of_order,
        duplicates,
    })
}

/// Ping-pong through the runtime: PublishEvent, wait for the delivery.
async fn latency(
    target: &Target,
    transport: Transport,
    pubsub: &'static str,
    msgs: usize,
) -> anyhow::Result<Vec<f64>> {
    match transport {
        Transport::Grpc => latency_grpc(&target.weft, pubsub, msgs).await,
        Transport::Shm => {
            // Both sessions on one dedicated thread: publish on one, wait
            // for the delivery on the other.
            let (mut publisher, sub) = (target.shm_client()?, target.shm_client()?);
            tokio::task::spawn_blocking(move || {
                let topic = unique("lat-shm");
                let mut sub = ShmSub::open(sub, pubsub, &topic, 1)?;
                let mut lat = Vec::with_capacity(msgs);
                for i in 0..msgs + msgs / 10 {
                    let t = now_ns();
                    let req = pb::PublishEventRequest {
                        pubsub_name: pubsub.into(),
                        topic: topic.clone(),
                        data: format!("{}:{i}:{t}", i % 8).into_bytes(),
                        data_content_type: "text/plain".into(),
                        metadata: HashMap::from([(
                            "partitionKey".to_string(),
                            format!("key-{}", i % 8),
                        )]),
                    };
                    publisher
                        .unary::<_, ()>(shm_method::PUBLISH_EVENT, &req)
                        .map_err(|e| anyhow::anyhow!("shm publish: {e}"))?;
                    let g = sub
                        .next(Duration::from_secs(30))?
                        .context("no delivery within 30 s")?;
                    if i >= msgs / 10 {
                        lat.push((g.at_ns - g.sent_ns) as f64 / 1000.0);
                    }
                }
                sub.0.cancel();
                Ok(sorted(lat))
            })
            .await?
        }
    }
}

async fn latency_grpc(weft: &Weft, pubsub: &'static str, msgs: usize) -> anyhow::Result<Vec<f64>> {
    let topic = unique("lat");
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    subscribe(weft.client().await, pubsub, &topic, 1, out_tx).await?;
    let mut client = weft.client().await;
    let mut lat = Vec::with_capacity(msgs);
    for i in 0..msgs + msgs / 10 {
        let t = now_ns();
        client
            .publish_event(pb::PublishEventRequest {
                pubsub_name: pubsub.into(),
                topic: topic.clone(),
                data: format!("{}:{i}:{t}", i % 8).into_bytes(),
                data_content_type: "text/plain".into(),
                metadata: HashMap::from([("partitionKey".to_string(), format!("key-{}", i % 8))]),
            })
            .await?;
        let g = tokio::time::timeout(Duration::from_secs(30), out_rx.recv())
            .await
            .context("no delivery within 30 s")?
            .context("subscription ended")?
            .pop()
            .context("an empty batch of deliveries")?;
        if i >= msgs / 10 {
            lat.push((g.at_ns - g.sent_ns) as f64 / 1000.0);
        }
    }
    Ok(sorted(lat))
}

/// The same ping-pong against the component in this process.
async fn baseline(kind: &str, brokers: Option<&str>, msgs: usize) -> anyhow::Result<Vec<f64>> {
    let mut values = vec![("partitions".to_string(), "8".to_string())];
    if let Some(b) = brokers {
        values.push(("brokers".to_string(), b.to_string()));
    }
    let md = Metadata::new("baseline", kind, values);
    let dir = tempfile::tempdir()?;
    let ctx = InitContext {
        data_dir: dir.path().to_path_buf(),
        app_id: "bench".into(),
    };
    let ps = pubsub::create(&md, &ctx)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let topic = unique("base");
    let mut rx = ps
        .subscribe(SubscribeOptions::new(topic.clone(), unique("base-group")))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lat = Vec::with_capacity(msgs);
    for i in 0..msgs + msgs / 10 {
        let t = Instant::now();
        ps.publish(PublishRequest {
            topic: topic.clone(),
            key: Some(format!("key-{}", i % 8)),
            data: format!("{}:{i}", i % 8).into_bytes(),
            headers: HashMap::new(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let d = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("no delivery within 30 s")?
            .context("subscription ended")?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        d.ack(Ack::Success);
        if i >= msgs / 10 {
            lat.push(us);
        }
    }
    drop(rx);
    ps.close().await;
    Ok(sorted(lat))
}

/// Throughput of the component alone, in this process: publish `n`
/// messages (bulk, 8 keys per partition spread), ack each delivery at once.
async fn baseline_throughput(
    kind: &str,
    brokers: Option<&str>,
    n: usize,
    keys: u32,
    batch: usize,
    per_partition: usize,
) -> anyhow::Result<f64> {
    let mut values = vec![("partitions".to_string(), "8".to_string())];
    if let Some(b) = brokers {
        values.push(("brokers".to_string(), b.to_string()));
    }
    let md = Metadata::new("baseline", kind, values);
    let dir = tempfile::tempdir()?;
    let ctx = InitContext {
        data_dir: dir.path().to_path_buf(),
        app_id: "bench".into(),
    };
    let ps = pubsub::create(&md, &ctx)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let topic = unique("base-tp");
    let mut options = SubscribeOptions::new(topic.clone(), unique("base-group"));
    options.max_in_flight_per_partition = per_partition;
    let mut rx = ps
        .subscribe(options)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let publisher = {
        let ps = ps.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let msgs: Vec<PublishRequest> = (0..n)
                .map(|i| PublishRequest {
                    topic: topic.clone(),
                    key: Some(format!("key-{}", i as u32 % keys)),
                    data: format!("{i}").into_bytes(),
                    headers: HashMap::new(),
                })
                .collect();
            for chunk in msgs.chunks(batch) {
                for r in ps.publish_bulk(chunk.to_vec()).await {
                    r.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            anyhow::Ok(())
        })
    };
    for got in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .with_context(|| format!("in-process: only {got} of {n} delivered"))?
            .context("subscription ended")?;
        d.ack(Ack::Success);
    }
    let secs = start.elapsed().as_secs_f64();
    publisher.await??;
    drop(rx);
    ps.close().await;
    Ok(n as f64 / secs)
}

async fn grpc_floor(weft: &Weft, n: usize) -> anyhow::Result<f64> {
    let mut c = weft.client().await;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.get_metadata(pb::GetMetadataRequest {}).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(pct(&sorted(lat), 50.0))
}

/// p50s of a GetMetadata round trip and of a `weft.Echo` (8 bytes, the
/// transport alone) over shm.
async fn shm_floor(target: &Target, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut c = target.shm_client()?;
    tokio::task::spawn_blocking(move || {
        let (mut md, mut echo) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let t = Instant::now();
            let _: pb::GetMetadataResponse = c
                .unary(shm_method::GET_METADATA, &pb::GetMetadataRequest {})
                .map_err(|e| anyhow::anyhow!("shm GetMetadata: {e}"))?;
            md.push(t.elapsed().as_secs_f64() * 1e6);
        }
        for _ in 0..n {
            let t = Instant::now();
            c.call(shm_method::WEFT_ECHO, b"pingpong")
                .map_err(|e| anyhow::anyhow!("shm echo: {e}"))?;
            echo.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok((pct(&sorted(md), 50.0), pct(&sorted(echo), 50.0)))
    })
    .await?
}

async fn run(cfg: Config, command: String) -> anyhow::Result<String> {
    let res = tempfile::tempdir()?;
    write_component(
        res.path(),
        "pubsub",
        "pubsub.embedded",
        &[("partitions", "8")],
    );
    if let Some(b) = &cfg.kafka {
        write_component(
            res.path(),
            "kafka",
            "pubsub.kafka",
            &[("brokers", b), ("partitions", "8")],
        );
    }
    let app = unique("bench");
    let shm_socket = res.path().join("shm.sock");
    let weft = Weft::start(
        WeftOptions::new(&app)
            .resources(res.path())
            .arg("--shm-socket")
            .arg(shm_socket.to_str().context("temp path is not UTF-8")?),
    )
    .await?;
    let target = Target {
        weft,
        shm_socket,
        app,
        shm_idle: cfg.shm_idle,
    };
    let mut backends: Vec<(&'static str, &'static str, usize)> =
        vec![("embedded", "pubsub", cfg.messages)];
    if cfg.kafka.is_some() {
        backends.push(("kafka", "kafka", cfg.kafka_messages));
    }
    let floor = grpc_floor(&target.weft, 2000).await?;
    let (shm_md, shm_echo) = shm_floor(&target, 2000).await?;
    let mut out = String::new();
    out.push_str(&format!("command: `{command}`\n\n"));
    out.push_str(&format!(
        "gRPC floor (unary GetMetadata round trip, p50): {floor:.0} µs; \
         over shm: GetMetadata {shm_md:.1} µs, weft.Echo {shm_echo:.1} µs\n\n"
    ));
    out.push_str("Throughput (publish and subscribe over the transport named; in flight/partition 1 = strict, more = pipelined):\n\n| backend | transport | in flight/partition | messages | wall s | deliveries/s | sat. p50 ms | sat. p99 ms | out of order | dup | runtime CPU s | bench CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut modes = vec![1];
    if cfg.per_partition > 1 {
        modes.push(cfg.per_partition);
    }
    let mut lat_rows = String::new();
    let mut base_rows = String::new();
    let tick = procfs::ticks_per_sec();
    for (name, pubsub, n) in backends {
        let mut via = Vec::new();
        for &tr in &cfg.transports {
            for &mode in &modes {
                eprintln!(
                    "pubsub_bench: {name} over {}, {mode} in flight per partition: throughput, {n} messages",
                    tr.name()
                );
                let (c0, b0) = (
                    procfs::cpu_ticks(target.weft.pid()),
                    procfs::cpu_ticks(std::process::id()),
                );
                let t = throughput(&target, tr, pubsub, &cfg, n, mode).await?;
                let cpu = (procfs::cpu_ticks(target.weft.pid()) - c0) as f64 / tick;
                let bench_cpu = (procfs::cpu_ticks(std::process::id()) - b0) as f64 / tick;
                eprintln!(
                    "pubsub_bench: {name} over {}, {mode} in flight per partition: {:.0} deliveries/s",
                    tr.name(),
                    t.per_sec
                );
                out.push_str(&format!(
                    "| {name} | {} | {mode} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} |\n",
                    tr.name(),
                    t.messages,
                    t.secs,
                    t.per_sec,
                    t.p50_us / 1000.0,
                    t.p99_us / 1000.0,
                    t.out_of_order,
                    t.duplicates,
                    cpu,
                    bench_cpu
                ));
                via.push((tr, mode, t.per_sec));
            }
        }
        let mut lats = Vec::new();
        for &tr in &cfg.transports {
            eprintln!(
                "pubsub_bench: {name} over {}: ping-pong latency, {} messages",
                tr.name(),
                cfg.latency_msgs
            );
            lats.push((tr, latency(&target, tr, pubsub, cfg.latency_msgs).await?));
        }
        let kind = if name == "kafka" {
            "pubsub.kafka"
        } else {
            "pubsub.embedded"
        };
        let b = baseline(kind, cfg.kafka.as_deref(), cfg.latency_msgs).await?;
        for &mode in &modes {
            eprintln!("pubsub_bench: {name}: in-process component throughput, {mode} in flight per partition");
            let bt = baseline_throughput(kind, cfg.kafka.as_deref(), n, cfg.keys, cfg.batch, mode)
                .await?;
            let via_cell = |want: Transport| {
                via.iter()
                    .find(|(tr, m, _)| *tr == want && *m == mode)
                    .map(|(_, _, v)| format!("{v:.0}"))
                    .unwrap_or_else(|| "–".into())
            };
            base_rows.push_str(&format!(
                "| {name} | {mode} | {n} | {bt:.0} | {} | {} |\n",
                via_cell(Transport::Grpc),
                via_cell(Transport::Shm)
            ));
        }
        for (tr, l) in lats {
            lat_rows.push_str(&format!(
                "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                tr.name(),
                pct(&l, 50.0),
                pct(&l, 99.0),
                pct(&b, 50.0),
                pct(&b, 99.0),
                pct(&l, 50.0) - pct(&b, 50.0)
            ));
        }
    }
    out.push_str("\nPing-pong (one message in flight), µs:\n\n| backend | transport | via weft p50 | via weft p99 | in-process component p50 | in-process p99 | runtime overhead p50 |\n|---|---|---|---|---|---|---|\n");
    out.push_str(&lat_rows);
    out.push_str("\nThroughput of the component alone (in this process, no runtime, no gRPC; ack at once):\n\n| backend | in flight/partition | messages | in-process deliveries/s | via weft gRPC deliveries/s | via weft shm deliveries/s |\n|---|---|---|---|---|---|\n");
    out.push_str(&base_rows);
    Ok(out)
}

fn resolve_weft_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("release").join("weft");
    if !bin.is_file() {
        bail!(
            "the release weft binary is missing at {}: run cargo build --release -p weft",
            bin.display()
        );
    }
    Ok(bin)
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let result = (|| -> anyhow::Result<()> {
        let Some(cfg) = parse_args(&argv[1..])? else {
            return Ok(());
        };
        let bin = resolve_weft_bin()?;
        // The harness reads WEFT_BIN; set it before any thread exists.
        std::env::set_var("WEFT_BIN", &bin);
        if cfg!(debug_assertions) {
            eprintln!("pubsub_bench: warning: this benchmark is a debug build");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let report = rt.block_on(run(cfg.clone(), argv.join(" ")))?;
        print!("{report}");
        if let Some(p) = &cfg.markdown {
            std::fs::write(p, &report)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pubsub_bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
