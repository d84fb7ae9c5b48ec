//! Soak benchmark: mixed state, publish/subscribe and service-invocation
//! load at a fixed rate through two release runtimes for a long time,
//! sampling their memory, open descriptors and latencies. Run by hand, not
//! in CI.
//!
//! ```text
//! cargo build --release -p weft -p weft-tests --bin soak
//! target/release/soak [--minutes 30] [--warmup-secs 120] [--csv samples.csv]
//! ```
//!
//! Two `weft` processes (`soak-a`, `soak-b`) in a private mTLS mesh
//! (`weft ca init` / `weft ca issue`, a local registry of their own), each
//! with its shared-memory socket and the embedded defaults (`statestore`,
//! `pubsub`). Each runtime's app lives in this process and uses both
//! transports, half the load on each:
//!
//! * **state**: SaveState then GetState of the same key, over a bounded
//!   key set (`--keys` per lane), on `statestore`;
//! * **publish**: PublishEvent on `pubsub`, to a topic the same app
//!   subscribes to with `SubscribeTopicEventsAlpha1` over the other
//!   transport (published over gRPC, delivered over shm, and the reverse);
//!   every delivery is acked at once and counted, and its latency (publish
//!   to delivery) is the `deliver` kind;
//! * **invoke**: InvokeService of `echo` on the other app: app A → weft A →
//!   mesh → weft B → app B and back, and B → A likewise. Each app receives
//!   its invocations over two `ServeInvocations` streams, one over gRPC and
//!   one over shared memory, which the runtime takes in turn.
//!
//! Each rate is the total over both runtimes and transports: four lanes
//! (runtime × transport) share it. A lane is an open loop: operations start
//! on a fixed schedule, each gRPC one in its own task; a shared-memory lane
//! is one blocking shared-memory client on its own thread (its latency runs from the
//! schedule when the previous call overran the slot). Every gRPC call has a
//! 10 s deadline, every shared-memory call 10 s too.
//!
//! Every `--sample-secs` (10) a row: per runtime the resident set (VmRSS,
//! which counts the mapped shared-memory rings, and RssAnon, which does
//! not), open file descriptors and CPU; per kind and transport p50/p99 in
//! µs over the interval; operations and errors in the interval. At the end:
//! memory growth after `--warmup-secs` (last sample minus the first one
//! after warm-up, and max − min over those samples) per runtime, errors per
//! kind, published against delivered per topic. The runtimes' own log lines
//! at WARN or above are counted too.
//!
//! It measures and asserts nothing about timings or memory, but exits
//! non-zero when an operation failed, a delivery is missing, or a runtime
//! died.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tonic::transport::{Channel, Endpoint};
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_shm::method as shm_method;
use weft_tests::certs::{ca_issue, flags};
use weft_tests::invoke_app::InvokeApp;
use weft_tests::mesh::{request, MeshEnv};
use weft_tests::subscribe::{self, ShmSubscription};
use weft_tests::{procfs, Weft};

const USAGE: &str = "\
soak: mixed fixed-rate load through two runtimes for a long time, sampling memory, fds and latency

usage: soak [options]
  --minutes M        length of the run, warm-up included (default 30)
  --warmup-secs S    samples before this are warm-up, left out of the growth (default 120)
  --sample-secs S    sampling interval (default 10)
  --state-rate N     state operations per second, all lanes (default 200)
  --publish-rate N   publishes per second, all lanes (default 200)
  --invoke-rate N    invocations per second, all lanes (default 200)
  --payload N        bytes of a state value, event and invocation body (default 256)
  --keys N           state keys per lane (default 500)
  --csv PATH         also write every sample there
  --drain-secs S     how long to wait for the last deliveries (default 15)

The runtimes inherit the environment (WEFT_SHM_SPIN_MICROS …). The weft
binary is $WEFT_BIN, or else the weft beside this binary.
";

#[derive(Clone)]
struct Config {
    minutes: f64,
    warmup_secs: f64,
    sample_secs: f64,
    state_rate: f64,
    publish_rate: f64,
    invoke_rate: f64,
    payload: usize,
    keys: u64,
    csv: Option<PathBuf>,
    drain_secs: f64,
}

fn parse_args() -> anyhow::Result<Option<Config>> {
    let mut c = Config {
        minutes: 30.0,
        warmup_secs: 120.0,
        sample_secs: 10.0,
        state_rate: 200.0,
        publish_rate: 200.0,
        invoke_rate: 200.0,
        payload: 256,
        keys: 500,
        csv: None,
        drain_secs: 15.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--minutes" => c.minutes = value()?.parse().context("--minutes")?,
            "--warmup-secs" => c.warmup_secs = value()?.parse().context("--warmup-secs")?,
            "--sample-secs" => c.sample_secs = value()?.parse().context("--sample-secs")?,
            "--state-rate" => c.state_rate = value()?.parse().context("--state-rate")?,
            "--publish-rate" => c.publish_rate = value()?.parse().context("--publish-rate")?,
            "--invoke-rate" => c.invoke_rate = value()?.parse().context("--invoke-rate")?,
            "--payload" => c.payload = value()?.parse().context("--payload")?,
            "--keys" => c.keys = value()?.parse().context("--keys")?,
            "--csv" => c.csv = Some(PathBuf::from(value()?)),
            "--drain-secs" => c.drain_secs = value()?.parse().context("--drain-secs")?,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    if c.minutes <= 0.0 || c.sample_secs <= 0.0 || c.keys == 0 || c.payload < 32 {
        bail!("--minutes, --sample-secs and --keys must be positive, --payload at least 32");
    }
    if c.state_rate < 0.0 || c.publish_rate < 0.0 || c.invoke_rate < 0.0 {
        bail!("rates cannot be negative");
    }
    Ok(Some(c))
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = weft_tests::use_weft_beside_this_binary() {
        eprintln!("soak: {e}");
        return ExitCode::from(2);
    }
    if cfg!(debug_assertions) {
        eprintln!("soak: warning: this is a debug build");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(config)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// === what is measured ===

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    State,
    Publish,
    Deliver,
    Invoke,
}

const KINDS: [Kind; 4] = [Kind::State, Kind::Publish, Kind::Deliver, Kind::Invoke];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::State => "state",
            Kind::Publish => "publish",
            Kind::Deliver => "deliver",
            Kind::Invoke => "invoke",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Grpc,
    Shm,
}

const TRANSPORTS: [Transport; 2] = [Transport::Grpc, Transport::Shm];

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Shm => "shm",
        }
    }

    fn other(self) -> Self {
        match self {
            Transport::Grpc => Transport::Shm,
            Transport::Shm => Transport::Grpc,
        }
    }
}

/// Latencies, operations and errors of one kind over one transport.
#[derive(Default)]
struct Meter {
    /// µs, since the last sample.
    lat: Mutex<Vec<u32>>,
    ops: AtomicU64,
    errors: AtomicU64,
    total_ops: AtomicU64,
    total_errors: AtomicU64,
}

impl Meter {
    fn ok(&self, us: u64) {
        self.lat
            .lock()
            .expect("latency lock")
            .push(us.min(u64::from(u32::MAX)) as u32);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.total_ops.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.total_ops.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.total_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The interval's figures: (ops, errors, p50 µs, p99 µs), reset.
    fn take(&self) -> (u64, u64, u64, u64) {
        let mut lat = std::mem::take(&mut *self.lat.lock().expect("latency lock"));
        lat.sort_unstable();
        (
            self.ops.swap(0, Ordering::Relaxed),
            self.errors.swap(0, Ordering::Relaxed),
            pct(&lat, 50.0),
            pct(&lat, 99.0),
        )
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn pct(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    u64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One topic: publishes that succeeded against distinct deliveries.
struct Topic {
    name: String,
    published: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    /// Sequence numbers seen, one bit each.
    seen: Mutex<Vec<u64>>,
}

impl Topic {
    fn new(name: String) -> Self {
        Self {
            name,
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            seen: Mutex::default(),
        }
    }

    fn delivered(&self, seq: u64) {
        let mut seen = self.seen.lock().expect("seen lock");
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & (1 << bit) != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            seen[word] |= 1 << bit;
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Everything the load and the sampler share.
struct Shared {
    /// Indexed by [`Shared::meter`].
    meters: Vec<Meter>,
    /// Set when the load stops: lanes start nothing more.
    stop: AtomicBool,
    /// Set when the run is over: streams ending now are no errors.
    finished: AtomicBool,
    in_flight: AtomicU64,
    /// Error messages printed so far (the first few are).
    printed: AtomicU64,
    started: Instant,
}

const PRINTED_ERRORS: u64 = 20;

impl Shared {
    fn meter(&self, kind: Kind, tr: Transport) -> &Meter {
        let k = KINDS.iter().position(|&k| k == kind).expect("kind");
        let t = TRANSPORTS.iter().position(|&t| t == tr).expect("transport");
        &self.meters[k * TRANSPORTS.len() + t]
    }

    fn error(&self, kind: Kind, tr: Transport, what: &str) {
        self.meter(kind, tr).error();
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED_ERRORS {
            eprintln!(
                "soak: {:.1} s: {} over {}: {what}",
                self.started.elapsed().as_secs_f64(),
                kind.name(),
                tr.name()
            );
        } else if n == PRINTED_ERRORS {
            eprintln!("soak: further errors are counted, not printed");
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// An event's data: `<seq>:<publish time ns>:` padded to `size` bytes.
fn event_data(seq: u64, size: usize) -> Vec<u8> {
    let mut d = format!("{seq}:{}:", now_ns()).into_bytes();
    d.resize(size.max(d.len()), b'.');
    d
}

fn parse_event(data: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(data).ok()?;
    let mut p = s.split(':');
    Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
}

/// A delivery: counted on its topic, its latency on the subscriber's transport.
fn on_delivery(shared: &Shared, topic: &Topic, tr: Transport, data: &[u8]) {
    match parse_event(data) {
        Some((seq, sent_ns)) => {
            topic.delivered(seq);
            shared
                .meter(Kind::Deliver, tr)
                .ok(now_ns().saturating_sub(sent_ns) / 1000);
        }
        None => shared.error(Kind::Deliver, tr, "an event that is not ours"),
    }
}

// === the operations ===

/// What a lane does, the same over both transports.
#[derive(Clone)]
struct Work {
    kind: Kind,
    /// State key prefix, unique per lane.
    prefix: String,
    keys: u64,
    topic: Arc<Topic>,
    /// The app invoked.
    peer: String,
    payload: usize,
}

impl Work {
    fn key(&self, n: u64) -> String {
        format!("{}-{}", self.prefix, (n / 2) % self.keys)
    }

    fn save(&self, n: u64) -> pb::SaveStateRequest {
        let mut value = format!("{n}:").into_bytes();
        value.resize(self.payload, b'v');
        pb::SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![common::StateItem {
                key: self.key(n),
                value,
                ..Default::default()
            }],
        }
    }

    fn get(&self, n: u64) -> pb::GetStateRequest {
        pb::GetStateRequest {
            store_name: "statestore".into(),
            key: self.key(n),
            ..Default::default()
        }
    }

    /// A Get after the first lap must find its key.
    fn check_get(&self, n: u64, r: &pb::GetStateResponse) -> Result<(), String> {
        if n / 2 >= self.keys && r.data.is_empty() {
            return Err(format!("GetState {}: not found", self.key(n)));
        }
        Ok(())
    }

    fn publish(&self, n: u64) -> pb::PublishEventRequest {
        pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: self.topic.name.clone(),
            data: event_data(n, self.payload),
            data_content_type: "text/plain".into(),
            metadata: HashMap::new(),
        }
    }

    fn invoke(&self) -> pb::InvokeServiceRequest {
        request(&self.peer, "echo", &vec![b'i'; self.payload])
    }

    fn check_invoke(&self, r: &common::InvokeResponse) -> Result<(), String> {
        let len = r.data.as_ref().map_or(0, |d| d.value.len());
        if len != self.payload {
            return Err(format!("echo answered {len} bytes, not {}", self.payload));
        }
        Ok(())
    }

    async fn grpc(&self, c: &mut DaprClient<Channel>, n: u64) -> Result<(), String> {
        let e = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        match self.kind {
            Kind::State if n.is_multiple_of(2) => {
                c.save_state(self.save(n)).await.map(|_| ()).map_err(e)
            }
            Kind::State => {
                let r = c.get_state(self.get(n)).await.map_err(e)?;
                self.check_get(n, r.get_ref())
            }
            Kind::Publish => {
                c.publish_event(self.publish(n)).await.map_err(e)?;
                self.topic.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Kind::Invoke => {
                let r = c.invoke_service(self.invoke()).await.map_err(e)?;
                self.check_invoke(r.get_ref())
            }
            Kind::Deliver => unreachable!("deliveries are not sent"),
        }
    }

    fn shm(&self, c: &mut weft_shm::Client, n: u64) -> Result<(), String> {
        let e = |s: weft_shm::Status| s.to_string();
        match self.kind {
            Kind::State if n.is_multiple_of(2) => c
                .unary::<_, ()>(shm_method::SAVE_STATE, &self.save(n))
                .map_err(e),
            Kind::State => {
                let r: pb::GetStateResponse =
                    c.unary(shm_method::GET_STATE, &self.get(n)).map_err(e)?;
                self.check_get(n, &r)
            }
            Kind::Publish => {
                c.unary::<_, ()>(shm_method::PUBLISH_EVENT, &self.publish(n))
                    .map_err(e)?;
                self.topic.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Kind::Invoke => {
                let r: common::InvokeResponse = c
                    .unary(shm_method::INVOKE_SERVICE, &self.invoke())
                    .map_err(e)?;
                self.check_invoke(&r)
            }
            Kind::Deliver => unreachable!("deliveries are not sent"),
        }
    }
}

/// The fixed schedule of one lane: operation `n` starts at
/// `start + n × interval`, until `until`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    interval: Duration,
    until: Instant,
}

impl Schedule {
    fn at(&self, n: u64) -> Option<Instant> {
        let at = self.start + self.interval.mul_f64(n as f64);
        (at < self.until).then_some(at)
    }
}

/// A gRPC lane: a task per operation, so a slow one never delays the next.
async fn grpc_lane(
    shared: Arc<Shared>,
    client: DaprClient<Channel>,
    work: Arc<Work>,
    schedule: Schedule,
) {
    let mut n = 0;
    while let Some(at) = schedule.at(n) {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let (shared, mut client, work) = (shared.clone(), client.clone(), work.clone());
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let sent = Instant::now();
            match work.grpc(&mut client, n).await {
                Ok(()) => shared
                    .meter(work.kind, Transport::Grpc)
                    .ok(sent.elapsed().as_micros() as u64),
                Err(e) => shared.error(work.kind, Transport::Grpc, &e),
            }
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        n += 1;
    }
}

/// A shared-memory lane: one blocking client on this thread. A call's
/// latency runs from its send, or from its slot when the previous call
/// overran it (an open loop would have sent it on time).
fn shm_lane(shared: &Shared, mut client: weft_shm::Client, work: &Work, schedule: Schedule) {
    let mut n = 0;
    let mut previous_end = schedule.start;
    while let Some(at) = schedule.at(n) {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let sent = Instant::now();
        let r = work.shm(&mut client, n);
        let from = if previous_end > at { at } else { sent };
        previous_end = Instant::now();
        match r {
            Ok(()) => shared
                .meter(work.kind, Transport::Shm)
                .ok(previous_end.duration_since(from).as_micros() as u64),
            Err(e) => shared.error(work.kind, Transport::Shm, &e),
        }
        n += 1;
    }
}

// === the runtimes and their apps ===

/// One runtime and where its app reaches it.
struct Side {
    app: String,
    peer: String,
    weft: Weft,
    shm_socket: PathBuf,
}

impl Side {
    /// A shared-memory client of the runtime, as its app.
    fn shm_client(&self) -> anyhow::Result<weft_shm::Client> {
        let mut o = weft_shm::ClientOptions::new(&self.app);
        o.call_timeout = CALL_TIMEOUT;
        weft_shm::Client::connect(&self.shm_socket, o)
            .map_err(|e| anyhow::anyhow!("shm connection to {}: {e}", self.app))
    }

    /// A gRPC channel whose calls have a deadline of [`CALL_TIMEOUT`].
    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(
            Endpoint::from_shared(format!("http://127.0.0.1:{}", self.weft.grpc_port))?
                .tcp_nodelay(true)
                .timeout(CALL_TIMEOUT)
                .connect()
                .await?,
        )
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn start_sides(env: &MeshEnv, ttl: &str) -> anyhow::Result<Vec<Side>> {
    let mut sides = Vec::new();
    for (app, peer) in [("soak-a", "soak-b"), ("soak-b", "soak-a")] {
        let shm_socket = env.path(&format!("shm-{app}.sock"));
        let certs = flags(&ca_issue(
            &env.ca(),
            app,
            &env.path(&format!("certs/{app}")),
            ttl,
        ));
        let mut extra = vec![
            "--shm-socket".to_string(),
            shm_socket.to_string_lossy().into_owned(),
        ];
        extra.extend(certs);
        // Certificates of the run's length: options() would issue 1 h ones.
        let mut opts = weft_tests::WeftOptions::new(app)
            .arg("--mesh-port")
            .arg(&weft_tests::free_port().to_string())
            .env("WEFT_LOCAL_REGISTRY_DIR", &env.registry())
            .env("WEFT_LOG", "warn");
        for a in &extra {
            opts = opts.arg(a);
        }
        sides.push(Side {
            app: app.into(),
            peer: peer.into(),
            weft: Weft::start(opts).await?,
            shm_socket,
        });
    }
    Ok(sides)
}

/// Per runtime sample.
#[derive(Clone, Copy, Default)]
struct Proc {
    rss_kb: u64,
    anon_kb: u64,
    shmem_kb: u64,
    fds: usize,
    cpu_pct: f64,
}

struct Sample {
    t: f64,
    procs: Vec<Proc>,
    /// Per meter: (ops, errors, p50 µs, p99 µs).
    meters: Vec<(u64, u64, u64, u64)>,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

async fn run(c: Config) -> anyhow::Result<bool> {
    let env = MeshEnv::new();
    let ttl = format!("{}m", (c.minutes.ceil() as u64) + 60);
    let mut sides = start_sides(&env, &ttl).await?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        meters: (0..KINDS.len() * TRANSPORTS.len())
            .map(|_| Meter::default())
            .collect(),
        stop: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        in_flight: AtomicU64::new(0),
        printed: AtomicU64::new(0),
        started,
    });

    // The apps: invocations over a gRPC and a shm stream each; the
    // subscriptions, each over the transport its topic is not published on.
    let mut stream_apps = Vec::new();
    let mut topics: Vec<(usize, Transport, Arc<Topic>)> = Vec::new();
    let mut sub_tasks = Vec::new();
    let mut threads = Vec::new();
    for (i, side) in sides.iter().enumerate() {
        let app = InvokeApp::new(&side.app);
        stream_apps.push(
            app.serve_stream(side.weft.channel().await)
                .await
                .map_err(|e| anyhow::anyhow!("ServeInvocations over gRPC: {e}"))?,
        );
        let on_end = {
            let shared = shared.clone();
            move |e: weft_shm::Status| {
                if !shared.finished.load(Ordering::Relaxed) {
                    shared.error(
                        Kind::Invoke,
                        Transport::Shm,
                        &format!("the app's invocation stream ended: {e}"),
                    );
                }
            }
        };
        let mut o = weft_shm::ClientOptions::new(&side.app);
        o.call_timeout = CALL_TIMEOUT;
        let socket = side.shm_socket.clone();
        tokio::task::spawn_blocking(move || {
            weft_tests::invoke_app::serve_shm_echo(&socket, o, on_end)
        })
        .await??;

        for publish_over in TRANSPORTS {
            let topic = Arc::new(Topic::new(format!("{}-{}", side.app, publish_over.name())));
            let deliver_over = publish_over.other();
            match deliver_over {
                Transport::Grpc => {
                    let (shared2, topic2) = (shared.clone(), topic.clone());
                    let task = subscribe::grpc(
                        DaprClient::new(side.weft.channel().await),
                        "pubsub",
                        &topic.name,
                        HashMap::new(),
                        move |ev| on_delivery(&shared2, &topic2, Transport::Grpc, &ev.data),
                    )
                    .await?;
                    sub_tasks.push((topic.clone(), task));
                }
                Transport::Shm => {
                    let sub = ShmSubscription::open(
                        side.shm_client()?,
                        "pubsub",
                        &topic.name,
                        HashMap::new(),
                    )?;
                    let (shared, topic) = (shared.clone(), topic.clone());
                    threads.push(std::thread::spawn(move || {
                        shm_subscriber(&shared, &topic, sub)
                    }));
                }
            }
            topics.push((i, publish_over, topic));
        }
    }

    // The load: per runtime, per kind, one lane per transport.
    let until = started + Duration::from_secs_f64(c.minutes * 60.0);
    let lanes_per_kind = (sides.len() * TRANSPORTS.len()) as f64;
    let mut lane_no = 0u32;
    let mut grpc_lanes = Vec::new();
    for (i, side) in sides.iter().enumerate() {
        let client = DaprClient::new(side.channel().await?);
        for (kind, rate) in [
            (Kind::State, c.state_rate),
            (Kind::Publish, c.publish_rate),
            (Kind::Invoke, c.invoke_rate),
        ] {
            if rate == 0.0 {
                continue;
            }
            for tr in TRANSPORTS {
                let interval = Duration::from_secs_f64(lanes_per_kind / rate);
                // Lanes spread over the first interval, not all at once.
                let start = Instant::now()
                    + Duration::from_millis(100)
                    + interval.mul_f64(f64::from(lane_no % 12) / 12.0);
                lane_no += 1;
                let schedule = Schedule {
                    start,
                    interval,
                    // The lanes run until told to stop, after the last sample.
                    until: until + Duration::from_secs(3600),
                };
                let topic = topics
                    .iter()
                    .find(|(s, p, _)| *s == i && *p == tr)
                    .map(|(_, _, t)| t.clone())
                    .expect("topic");
                let work = Work {
                    kind,
                    prefix: format!("{}-{}", side.app, tr.name()),
                    keys: c.keys,
                    topic,
                    peer: side.peer.clone(),
                    payload: c.payload,
                };
                match tr {
                    Transport::Grpc => grpc_lanes.push(tokio::spawn(grpc_lane(
                        shared.clone(),
                        client.clone(),
                        Arc::new(work),
                        schedule,
                    ))),
                    Transport::Shm => {
                        let shm = side.shm_client()?;
                        let shared = shared.clone();
                        threads.push(std::thread::spawn(move || {
                            shm_lane(&shared, shm, &work, schedule)
                        }));
                    }
                }
            }
        }
    }

    println!(
        "soak: {} min, warm-up {} s; state {}/s, publish {}/s, invoke {}/s in all (a quarter per runtime and transport), {} B payloads, {} keys per state lane",
        c.minutes, c.warmup_secs, c.state_rate, c.publish_rate, c.invoke_rate, c.payload, c.keys
    );
    println!(
        "weft A pid {}, weft B pid {}; MB: RSS = VmRSS, anon = RssAnon, shm = RssShmem (the mapped rings, part of RSS); latencies p50/p99 in µs per interval",
        sides[0].weft.pid(),
        sides[1].weft.pid()
    );
    let mut header =
        String::from("     t |  A RSS  anon   shm fds  cpu% |  B RSS  anon   shm fds  cpu% |");
    for k in KINDS {
        for t in TRANSPORTS {
            header.push_str(&format!(" {:>13} |", format!("{} {}", k.name(), t.name())));
        }
    }
    header.push_str("   ops | err");
    println!("{header}");

    let mut csv = match &c.csv {
        Some(p) => {
            let mut f = std::fs::File::create(p).with_context(|| format!("{}", p.display()))?;
            let mut h = String::from("t_s");
            for s in ["a", "b"] {
                h.push_str(&format!(
                    ",{s}_rss_kb,{s}_anon_kb,{s}_shmem_kb,{s}_fds,{s}_cpu_pct"
                ));
            }
            for k in KINDS {
                for t in TRANSPORTS {
                    let n = format!("{}_{}", k.name(), t.name());
                    h.push_str(&format!(",{n}_ops,{n}_errors,{n}_p50_us,{n}_p99_us"));
                }
            }
            writeln!(f, "{h}")?;
            Some(f)
        }
        None => None,
    };

    let tick = procfs::ticks_per_sec();
    let pids: Vec<u32> = sides.iter().map(|s| s.weft.pid()).collect();
    let mut cpu_before: Vec<u64> = pids.iter().map(|&p| procfs::cpu_ticks(p)).collect();
    let mut last = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = started + Duration::from_secs_f64(c.sample_secs);
    let mut died = false;
    loop {
        tokio::time::sleep_until(next.min(until).into()).await;
        let now = Instant::now();
        let secs = now.duration_since(last).as_secs_f64();
        last = now;
        let procs: Vec<Proc> = pids
            .iter()
            .zip(cpu_before.iter_mut())
            .map(|(&pid, before)| {
                let ticks = procfs::cpu_ticks(pid);
                let cpu = ticks.saturating_sub(*before) as f64 / tick / secs * 100.0;
                *before = ticks;
                Proc {
                    rss_kb: procfs::status_kb(pid, "VmRSS:"),
                    anon_kb: procfs::status_kb(pid, "RssAnon:"),
                    shmem_kb: procfs::status_kb(pid, "RssShmem:"),
                    fds: procfs::open_fds(pid),
                    cpu_pct: cpu,
                }
            })
            .collect();
        let s = Sample {
            t: now.duration_since(started).as_secs_f64(),
            procs,
            meters: shared.meters.iter().map(Meter::take).collect(),
        };
        print_row(&s, c.warmup_secs);
        if let Some(f) = csv.as_mut() {
            let mut line = format!("{:.1}", s.t);
            for p in &s.procs {
                line.push_str(&format!(
                    ",{},{},{},{},{:.1}",
                    p.rss_kb, p.anon_kb, p.shmem_kb, p.fds, p.cpu_pct
                ));
            }
            for m in &s.meters {
                line.push_str(&format!(",{},{},{},{}", m.0, m.1, m.2, m.3));
            }
            writeln!(f, "{line}")?;
            f.flush()?;
        }
        samples.push(s);
        for side in sides.iter_mut() {
            if !side.weft.is_running() {
                eprintln!("soak: weft {} died:\n{}", side.app, side.weft.logs());
                died = true;
            }
        }
        if now >= until || died {
            break;
        }
        next += Duration::from_secs_f64(c.sample_secs);
    }

    // Stop the load, let the calls in flight finish, wait for the last
    // deliveries.
    shared.stop.store(true, Ordering::Relaxed);
    for l in grpc_lanes {
        let _ = l.await;
    }
    let drain = Instant::now() + Duration::from_secs_f64(c.drain_secs);
    while Instant::now() < drain
        && (shared.in_flight.load(Ordering::Relaxed) > 0
            || topics.iter().any(|(_, _, t)| {
                t.delivered.load(Ordering::Relaxed) < t.published.load(Ordering::Relaxed)
            }))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail: Vec<(u64, u64, u64, u64)> = shared.meters.iter().map(Meter::take).collect();
    shared.finished.store(true, Ordering::Relaxed);
    for (topic, task) in &sub_tasks {
        if task.is_finished() {
            shared.error(
                Kind::Deliver,
                Transport::Grpc,
                &format!("the gRPC subscription to {} ended", topic.name),
            );
        }
        task.abort();
    }

    let ok = summary(&c, &sides, &shared, &samples, &tail, &topics, died);
    drop(stream_apps);
    drop(sides);
    for t in threads {
        let _ = t.join();
    }
    Ok(ok)
}

/// The subscriber over shared memory: acks every event at once, until the
/// run is over.
fn shm_subscriber(shared: &Shared, topic: &Topic, mut sub: ShmSubscription) {
    while !shared.finished.load(Ordering::Relaxed) {
        match sub.next_event(Duration::from_millis(200)) {
            Ok(Some(ev)) => {
                on_delivery(shared, topic, Transport::Shm, &ev.data);
                if let Err(e) = sub.ack(ev.id) {
                    shared.error(Kind::Deliver, Transport::Shm, &format!("{e:#}"));
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                if !shared.finished.load(Ordering::Relaxed) {
                    shared.error(Kind::Deliver, Transport::Shm, &format!("{e:#}"));
                }
                return;
            }
        }
    }
    sub.cancel();
}

fn print_row(s: &Sample, warmup_secs: f64) {
    let mut line = format!("{:>6.0}", s.t);
    for p in &s.procs {
        line.push_str(&format!(
            " | {:>6.1} {:>5.1} {:>5.1} {:>3} {:>5.1}",
            mb(p.rss_kb),
            mb(p.anon_kb),
            mb(p.shmem_kb),
            p.fds,
            p.cpu_pct
        ));
    }
    line.push_str(" |");
    for m in &s.meters {
        line.push_str(&format!(" {:>13} |", format!("{}/{}", m.2, m.3)));
    }
    let ops: u64 = s.meters.iter().map(|m| m.0).sum();
    let errors: u64 = s.meters.iter().map(|m| m.1).sum();
    line.push_str(&format!(" {ops:>5} | {errors:>3}"));
    if s.t < warmup_secs {
        line.push_str("  (warm-up)");
    }
    println!("{line}");
}

/// Prints the summary; whether the run was clean.
fn summary(
    c: &Config,
    sides: &[Side],
    shared: &Shared,
    samples: &[Sample],
    tail: &[(u64, u64, u64, u64)],
    topics: &[(usize, Transport, Arc<Topic>)],
    died: bool,
) -> bool {
    println!("\n## Summary\n");
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t >= c.warmup_secs).collect();
    println!(
        "memory after warm-up ({} samples from t = {:.0} s to {:.0} s):\n",
        after.len(),
        after.first().map_or(0.0, |s| s.t),
        after.last().map_or(0.0, |s| s.t)
    );
    println!("| runtime | RSS first → last MB | growth MB | max − min MB | RssAnon first → last MB | growth MB | max − min MB | RssShmem first → last MB | fds first → last (max) | cpu % mean |");
    println!("|---|---|---:|---:|---|---:|---:|---|---|---:|");
    let mut worst_growth = 0f64;
    for (i, side) in sides.iter().enumerate() {
        let (Some(first), Some(last)) = (after.first(), after.last()) else {
            println!(
                "| {} | (no samples after the warm-up) | | | | | | | |",
                side.app
            );
            continue;
        };
        let series = |f: fn(&Proc) -> u64| -> (u64, u64, u64, u64) {
            let v: Vec<u64> = after.iter().map(|s| f(&s.procs[i])).collect();
            (
                f(&first.procs[i]),
                f(&last.procs[i]),
                *v.iter().min().unwrap_or(&0),
                *v.iter().max().unwrap_or(&0),
            )
        };
        let rss = series(|p| p.rss_kb);
        let anon = series(|p| p.anon_kb);
        let shm = series(|p| p.shmem_kb);
        let fds = series(|p| p.fds as u64);
        let cpu = after.iter().map(|s| s.procs[i].cpu_pct).sum::<f64>() / after.len() as f64;
        let growth = |s: (u64, u64, u64, u64)| mb(s.1) - mb(s.0);
        worst_growth = worst_growth.max(growth(rss)).max(growth(anon));
        println!(
            "| {} | {:.1} → {:.1} | {:+.2} | {:.2} | {:.1} → {:.1} | {:+.2} | {:.2} | {:.1} → {:.1} | {} → {} ({}) | {:.1} |",
            side.app,
            mb(rss.0),
            mb(rss.1),
            growth(rss),
            mb(rss.3) - mb(rss.2),
            mb(anon.0),
            mb(anon.1),
            growth(anon),
            mb(anon.3) - mb(anon.2),
            mb(shm.0),
            mb(shm.1),
            fds.0,
            fds.1,
            fds.3,
            cpu
        );
    }

    println!("\n| kind | transport | operations | errors | median p50 µs | median p99 µs | worst p99 µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut errors = 0;
    for (m, meter) in shared.meters.iter().enumerate() {
        let (k, t) = (
            KINDS[m / TRANSPORTS.len()],
            TRANSPORTS[m % TRANSPORTS.len()],
        );
        let mut p50: Vec<u32> = after.iter().map(|s| s.meters[m].2 as u32).collect();
        let mut p99: Vec<u32> = after.iter().map(|s| s.meters[m].3 as u32).collect();
        p50.sort_unstable();
        p99.sort_unstable();
        let e = meter.total_errors.load(Ordering::Relaxed);
        errors += e;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            k.name(),
            t.name(),
            meter.total_ops.load(Ordering::Relaxed),
            e,
            pct(&p50, 50.0),
            pct(&p99, 50.0),
            p99.last().copied().unwrap_or(0)
        );
    }
    let tail_ops: u64 = tail.iter().map(|m| m.0).sum();
    println!("\n(after the last sample, in the drain: {tail_ops} operations and deliveries)");

    println!("\n| topic | published over | delivered over | published | delivered | duplicates | missing |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let mut missing = 0;
    for (_, tr, t) in topics {
        let (p, d) = (
            t.published.load(Ordering::Relaxed),
            t.delivered.load(Ordering::Relaxed),
        );
        missing += p.saturating_sub(d);
        println!(
            "| {} | {} | {} | {p} | {d} | {} | {} |",
            t.name,
            tr.name(),
            tr.other().name(),
            t.duplicates.load(Ordering::Relaxed),
            p.saturating_sub(d)
        );
    }

    let mut log_lines = 0;
    for side in sides {
        let logs = side.weft.logs();
        let bad: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        log_lines += bad.len();
        for l in bad.iter().take(5) {
            println!("weft {} logged: {l}", side.app);
        }
    }
    println!(
        "\nerrors: {errors}; missing deliveries: {missing}; runtime log lines at WARN or above: {log_lines}; runtime died: {died}"
    );
    println!(
        "largest growth after warm-up (RSS or RssAnon, either runtime): {worst_growth:+.2} MB ({} the 2 MB goal)",
        if worst_growth < 2.0 { "within" } else { "over" }
    );
    errors == 0 && missing == 0 && !died
}
