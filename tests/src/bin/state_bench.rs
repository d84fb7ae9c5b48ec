//! State API benchmark: per-call latency (p50, p99), throughput and resident
//! memory of a release `weft`, printed as markdown.
//!
//! ```text
//! cargo build --release -p weft -p weft-tests
//! target/release/state_bench [--markdown FILE] [--duration-secs 2] ...
//! ```
//!
//! One `weft` process per runtime flavour (`--threads 1`: tokio
//! current_thread; `--threads 2`: multi-thread), each with two state stores
//! (`memstore`: `state.in-memory`; `sqlstore`: `state.sqlite` in a temporary
//! directory) and a Unix socket. Every cell of transport (TCP, UDS) × store ×
//! operation (Get of an existing 100-byte value, Save of a 100-byte value to
//! a fixed key set) × concurrency (1, 16 clients, each on its own HTTP/2
//! connection) is warmed up and then measured for a fixed duration (or op
//! count), alternating between the flavours so that drift on a noisy host
//! hits both alike. Resident memory comes from `/proc/<pid>/status`.
//!
//! The clients run in this process on a tokio current_thread runtime by
//! default (`--client-threads N` for a multi-thread one).
//!
//! This is a measuring tool, not a test: it asserts nothing about timings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::sync::Barrier;
use tonic::transport::Channel;
use weft_proto::common::StateItem;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_proto::runtime::{GetStateRequest, SaveStateRequest};
use weft_tests::{write_component, Weft, WeftOptions};

/// Size of every value read or written.
const VALUE_LEN: usize = 100;
/// Number of distinct keys the operations cycle through.
const KEYS: usize = 100;
/// Goal: Get p50 over UDS (one client), in nanoseconds.
const GOAL_GET_UDS_P50_NS: u64 = 100_000;
/// Goal: resident memory when idle after start, in kB.
const GOAL_IDLE_RSS_KB: u64 = 15 * 1024;

const USAGE: &str = "\
state_bench: latency, throughput and memory of weft's state API

usage: state_bench [options]

  --markdown FILE        also write the report to FILE
  --duration-secs S      measured time per cell (default 2; fractions allowed)
  --ops N                measure a fixed number of ops per cell instead of a duration
  --warmup-ops N         warm-up ops per cell, shared by its clients (default 2000)
  --warmup-secs S        cap on the warm-up time per cell (default 1)
  --threads LIST         runtime flavours, weft --threads values (default 1,2)
  --clients LIST         concurrency levels (default 1,16)
  --transports LIST      tcp,uds (default both)
  --stores LIST          memory,sqlite (default both)
  --operations LIST      get,save (default both)
  --client-threads N     1 (default): clients on a tokio current_thread runtime;
                         N > 1: multi-thread runtime with N workers
  --db-dir DIR           where the SQLite database goes (default: the temp dir)
  --settle-secs S        idle time after start before reading idle RSS (default 1)
  --floor-rounds N       round trips of the socket ping-pong floor (default 10000; 0: skip)

The weft binary is $WEFT_BIN, or else target/release/weft next to this binary's
target directory (build it with `cargo build --release -p weft`).
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Transport {
    Tcp,
    Uds,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Uds => "UDS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Store {
    Memory,
    Sqlite,
}

impl Store {
    fn component(self) -> &'static str {
        match self {
            Store::Memory => "memstore",
            Store::Sqlite => "sqlstore",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Store::Memory => "in-memory",
            Store::Sqlite => "SQLite",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Get,
    Save,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "Get",
            Op::Save => "Save",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    markdown: Option<PathBuf>,
    duration: Duration,
    ops: Option<u64>,
    warmup_ops: u64,
    warmup_max: Duration,
    flavours: Vec<u16>,
    clients: Vec<usize>,
    transports: Vec<Transport>,
    stores: Vec<Store>,
    operations: Vec<Op>,
    client_threads: usize,
    db_dir: Option<PathBuf>,
    settle: Duration,
    floor_rounds: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            markdown: None,
            duration: Duration::from_secs(2),
            ops: None,
            warmup_ops: 2000,
            warmup_max: Duration::from_secs(1),
            flavours: vec![1, 2],
            clients: vec![1, 16],
            transports: vec![Transport::Tcp, Transport::Uds],
            stores: vec![Store::Memory, Store::Sqlite],
            operations: vec![Op::Get, Op::Save],
            client_threads: 1,
            db_dir: None,
            settle: Duration::from_secs(1),
            floor_rounds: 10_000,
        }
    }
}

/// Parses the flags; `Ok(None)` after printing `--help`.
fn parse_args(args: &[String]) -> anyhow::Result<Option<Config>> {
    fn list<T>(v: &str, flag: &str, f: impl Fn(&str) -> Option<T>) -> anyhow::Result<Vec<T>> {
        let items = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| f(s).ok_or_else(|| anyhow!("{flag}: '{s}' is not a valid value")))
            .collect::<anyhow::Result<Vec<T>>>()?;
        if items.is_empty() {
            bail!("{flag}: the list is empty");
        }
        Ok(items)
    }
    fn secs(v: &str, flag: &str) -> anyhow::Result<Duration> {
        let s: f64 = v
            .parse()
            .with_context(|| format!("{flag}: '{v}' is not a number"))?;
        Duration::try_from_secs_f64(s).map_err(|_| anyhow!("{flag}: '{v}' is not a valid duration"))
    }

    let mut cfg = Config::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            return Ok(None);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{name} needs a value")),
            }
        };
        match name {
            "--markdown" => cfg.markdown = Some(PathBuf::from(value()?)),
            "--duration-secs" => cfg.duration = secs(&value()?, name)?,
            "--ops" => {
                let v = value()?;
                let n: u64 = v
                    .parse()
                    .with_context(|| format!("--ops: '{v}' is not a count"))?;
                if n == 0 {
                    bail!("--ops must be at least 1");
                }
                cfg.ops = Some(n);
            }
            "--warmup-ops" => {
                let v = value()?;
                cfg.warmup_ops = v
                    .parse()
                    .with_context(|| format!("--warmup-ops: '{v}' is not a count"))?;
            }
            "--warmup-secs" => cfg.warmup_max = secs(&value()?, name)?,
            "--threads" => {
                cfg.flavours = list(&value()?, name, |s| {
                    s.parse::<u16>().ok().filter(|n| *n >= 1)
                })?;
            }
            "--clients" => {
                cfg.clients = list(&value()?, name, |s| {
                    s.parse::<usize>().ok().filter(|n| *n >= 1)
                })?
            }
            "--transports" => {
                cfg.transports = list(&value()?, name, |s| match s.to_ascii_lowercase().as_str() {
                    "tcp" => Some(Transport::Tcp),
                    "uds" => Some(Transport::Uds),
                    _ => None,
                })?
            }
            "--stores" => {
                cfg.stores = list(&value()?, name, |s| match s.to_ascii_lowercase().as_str() {
                    "memory" | "in-memory" | "memstore" => Some(Store::Memory),
                    "sqlite" | "sqlstore" => Some(Store::Sqlite),
                    _ => None,
                })?
            }
            "--operations" => {
                cfg.operations = list(&value()?, name, |s| match s.to_ascii_lowercase().as_str() {
                    "get" => Some(Op::Get),
                    "save" => Some(Op::Save),
                    _ => None,
                })?
            }
            "--client-threads" => {
                let v = value()?;
                cfg.client_threads =
                    v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        anyhow!("--client-threads: '{v}' is not a positive count")
                    })?;
            }
            "--db-dir" => cfg.db_dir = Some(PathBuf::from(value()?)),
            "--settle-secs" => cfg.settle = secs(&value()?, name)?,
            "--floor-rounds" => {
                let v = value()?;
                cfg.floor_rounds = v
                    .parse()
                    .with_context(|| format!("--floor-rounds: '{v}' is not a count"))?;
            }
            other => bail!("unknown flag '{other}' (see --help)"),
        }
    }
    Ok(Some(cfg))
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("state_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let Some(cfg) = parse_args(&argv[1..])? else {
        return Ok(());
    };
    let bin = resolve_weft_bin()?;
    // The harness reads WEFT_BIN; set it before any thread exists.
    std::env::set_var("WEFT_BIN", &bin);
    if cfg!(debug_assertions) {
        eprintln!("state_bench: warning: this benchmark is a debug build; client-side overhead inflates the figures");
    }
    let floor = if cfg.floor_rounds > 0 {
        eprintln!("state_bench: measuring the socket round-trip floor");
        Some(socket_floor(cfg.floor_rounds)?)
    } else {
        None
    };
    let rt = if cfg.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.client_threads)
            .enable_all()
            .build()?
    };
    let command = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let report = rt.block_on(run(cfg.clone(), bin, command, floor))?;
    print!("{report}");
    if let Some(path) = &cfg.markdown {
        std::fs::write(path, &report)
            .with_context(|| format!("cannot write --markdown {}", path.display()))?;
        eprintln!("state_bench: report written to {}", path.display());
    }
    Ok(())
}

/// `$WEFT_BIN`, or `<target>/release/weft` where `<target>` is the target
/// directory this binary was built into.
fn resolve_weft_bin() -> anyhow::Result<PathBuf> {
    let from_env = std::env::var_os("WEFT_BIN");
    let bin = match &from_env {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().context("cannot locate this executable")?;
            // <target>/<profile>/state_bench → <target>/release/weft
            let target = exe
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("release").join("weft")
        }
    };
    if !bin.is_file() && from_env.is_some() {
        bail!("WEFT_BIN is {}, which is not a file: run cargo build --release -p weft, or fix WEFT_BIN", bin.display());
    }
    if !bin.is_file() {
        bail!(
            "the release weft binary is missing at {}: run cargo build --release -p weft (or point WEFT_BIN at a weft binary)",
            bin.display()
        );
    }
    if bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!(
            "state_bench: warning: WEFT_BIN {} looks like a debug build; figures will not be representative",
            bin.display()
        );
    }
    Ok(std::fs::canonicalize(&bin).unwrap_or(bin))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// === /proc ===

/// Memory figures of a process, in kB as `/proc/<pid>/status` reports them.
#[derive(Debug, Clone, Copy, Default)]
struct ProcMem {
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
}

fn proc_mem(pid: u32) -> anyhow::Result<ProcMem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let mut m = ProcMem::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let n = || {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match k {
            "VmRSS" => m.rss_kb = n(),
            "VmHWM" => m.hwm_kb = n(),
            "Threads" => m.threads = n(),
            _ => {}
        }
    }
    if m.rss_kb == 0 {
        bail!("no VmRSS in {path}");
    }
    Ok(m)
}

/// User + system CPU time of a process (`self` or a pid), in clock ticks.
fn proc_cpu_ticks(pid: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
    field(11) + field(12)
}

/// Busy time of all CPUs (user, nice, system, irq, softirq, steal) from
/// the `cpu` line of `/proc/stat`, in clock ticks.
fn host_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum()
}

fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(100)
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

// === machine facts ===

/// p50 and p99 (ns) of a `VALUE_LEN`-byte ping-pong between two threads
/// over a Unix socket pair and over loopback TCP, with blocking I/O: what a
/// round trip costs on this machine before any protocol or runtime.
fn socket_floor(rounds: usize) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    fn ping_pong<S: Read + Write + Send + 'static>(
        mut a: S,
        mut b: S,
        rounds: usize,
    ) -> std::io::Result<(u64, u64)> {
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; VALUE_LEN];
            while b.read_exact(&mut buf).is_ok() && b.write_all(&buf).is_ok() {}
        });
        let msg = [b'p'; VALUE_LEN];
        let mut buf = [0u8; VALUE_LEN];
        let warm = rounds / 10;
        let mut lat = Vec::with_capacity(rounds);
        for i in 0..warm + rounds {
            let t0 = Instant::now();
            a.write_all(&msg)?;
            a.read_exact(&mut buf)?;
            if i >= warm {
                lat.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
        }
        drop(a);
        let _ = echo.join();
        lat.sort_unstable();
        Ok((percentile(&lat, 50.0), percentile(&lat, 99.0)))
    }
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    let (u50, u99) = ping_pong(a, b, rounds)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let (t50, t99) = ping_pong(a, b, rounds)?;
    Ok(format!(
        "UDS p50 {} µs, p99 {} µs; TCP loopback p50 {} µs, p99 {} µs ({rounds} round trips of {VALUE_LEN} bytes between two threads, blocking sockets)",
        us(u50),
        us(u99),
        us(t50),
        us(t99)
    ))
}

fn machine_facts(db_dir: &Path) -> Vec<(&'static str, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "Model" | "cpu model").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = format!(
        "{} {}",
        read("/proc/sys/kernel/ostype").trim(),
        read("/proc/sys/kernel/osrelease").trim()
    );
    let mem_total = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let mem_total = mem_total
        .split_whitespace()
        .next()
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let load = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        ("nproc", nproc),
        ("CPU", cpu),
        ("kernel", kernel),
        ("memory", mem_total),
        ("load average at start (1/5/15 min)", load),
        ("SQLite database filesystem", filesystem_of(db_dir)),
    ]
}

/// The filesystem type of the mount holding `dir`, from `/proc/mounts`.
fn filesystem_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            let mnt = mnt.replace("\\040", " ");
            dir.starts_with(&mnt).then(|| (mnt.len(), fs.to_string()))
        })
        .max()
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown".into())
}

// === the runtime under test ===

/// One `weft` process and the client connections to it.
struct Flavour {
    threads: u16,
    weft: Weft,
    idle: ProcMem,
    conns: BTreeMap<Transport, Vec<DaprClient<Channel>>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn start_flavour(threads: u16, cfg: &Config) -> anyhow::Result<Flavour> {
    let dir = tempfile::Builder::new().prefix("weft-bench-").tempdir()?;
    let db = match &cfg.db_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("weft-bench-db-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("weft-bench-db-")
            .tempdir()?,
    };
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources)?;
    let db_path = db.path().join("state.db");
    write_component(&resources, "memstore", "state.in-memory", &[]);
    write_component(
        &resources,
        "sqlstore",
        "state.sqlite",
        &[(
            "databasePath",
            db_path.to_str().context("database path is not UTF-8")?,
        )],
    );
    let sock = dir.path().join("weft.sock");
    let weft = Weft::start(
        WeftOptions::new(&format!("bench-t{threads}"))
            .resources(&resources)
            .data_dir(&dir.path().join("data"))
            .uds(&sock)
            .arg("--threads")
            .arg(&threads.to_string()),
    )
    .await
    .with_context(|| format!("cannot start weft --threads {threads}"))?;
    Ok(Flavour {
        threads,
        weft,
        idle: ProcMem::default(),
        conns: BTreeMap::new(),
        _dirs: (dir, db),
    })
}

/// Opens `n` connections per transport.
async fn connect(f: &mut Flavour, transports: &[Transport], n: usize) {
    for &t in transports {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(match t {
                Transport::Tcp => f.weft.client().await,
                Transport::Uds => f.weft.uds_client().await,
            });
        }
        f.conns.insert(t, v);
    }
}

fn key(i: usize) -> String {
    format!("bench-{:03}", i % KEYS)
}

async fn seed(client: &mut DaprClient<Channel>, store: Store) -> anyhow::Result<()> {
    let states = (0..KEYS)
        .map(|i| StateItem {
            key: key(i),
            value: vec![b'v'; VALUE_LEN],
            ..Default::default()
        })
        .collect();
    client
        .save_state(SaveStateRequest {
            store_name: store.component().into(),
            states,
        })
        .await
        .with_context(|| format!("cannot seed {}", store.component()))?;
    Ok(())
}

async fn one_op(
    client: &mut DaprClient<Channel>,
    store: Store,
    op: Op,
    key: &str,
    value: &[u8],
) -> anyhow::Result<()> {
    match op {
        Op::Get => {
            let r = client
                .get_state(GetStateRequest {
                    store_name: store.component().into(),
                    key: key.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if r.data.len() != VALUE_LEN {
                bail!(
                    "Get of '{key}' returned {} bytes, expected {VALUE_LEN}",
                    r.data.len()
                );
            }
        }
        Op::Save => {
            client
                .save_state(SaveStateRequest {
                    store_name: store.component().into(),
                    states: vec![StateItem {
                        key: key.into(),
                        value: value.to_vec(),
                        ..Default::default()
                    }],
                })
                .await?;
        }
    }
    Ok(())
}

// === one cell ===

#[derive(Debug, Clone)]
struct CellResult {
    ops: u64,
    wall: Duration,
    p50_ns: u64,
    p99_ns: u64,
    /// CPU time the runtime process used during the measured window.
    server_cpu: Duration,
    /// CPU time this (client) process used during the measured window.
    client_cpu: Duration,
    /// CPU time every other process on the host used (busy time of all
    /// CPUs in /proc/stat minus the two above): noise from neighbours.
    other_cpu: Duration,
}

impl CellResult {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }
    fn server_cpu_pct(&self) -> f64 {
        100.0 * self.server_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn client_cpu_pct(&self) -> f64 {
        100.0 * self.client_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn other_cpu_pct(&self) -> f64 {
        100.0 * self.other_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn server_cpu_us_per_op(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run_cell(
    f: &Flavour,
    transport: Transport,
    store: Store,
    op: Op,
    clients: usize,
    cfg: &Config,
    tick: Duration,
) -> anyhow::Result<CellResult> {
    let conns = &f.conns[&transport];
    let warm_left = Arc::new(AtomicI64::new(
        i64::try_from(cfg.warmup_ops).unwrap_or(i64::MAX),
    ));
    let ops_left = Arc::new(AtomicI64::new(
        cfg.ops
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX)),
    ));
    let warm_deadline = Instant::now() + cfg.warmup_max;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let duration = cfg.duration;
    let fixed_count = cfg.ops.is_some();
    let mut tasks = Vec::with_capacity(clients);
    for (i, conn) in conns.iter().take(clients).enumerate() {
        let mut client = conn.clone();
        let (warm_left, ops_left, barrier) = (warm_left.clone(), ops_left.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let keys: Vec<String> = (0..KEYS).map(key).collect();
            let value = vec![b'w'; VALUE_LEN];
            // Clients start at different keys and walk the key set.
            let mut k = i * 7;
            let warm = async {
                while warm_left.fetch_sub(1, Ordering::Relaxed) > 0
                    && Instant::now() < warm_deadline
                {
                    one_op(&mut client, store, op, &keys[k % KEYS], &value).await?;
                    k += 1;
                }
                anyhow::Ok(())
            }
            .await;
            // Everyone warmed up; then the main task reads CPU counters and lets go.
            barrier.wait().await;
            barrier.wait().await;
            warm?;
            let mut lat = Vec::with_capacity(1 << 16);
            let end = Instant::now() + duration;
            loop {
                if fixed_count {
                    if ops_left.fetch_sub(1, Ordering::Relaxed) <= 0 {
                        break;
                    }
                } else if Instant::now() >= end {
                    break;
                }
                let t0 = Instant::now();
                one_op(&mut client, store, op, &keys[k % KEYS], &value).await?;
                lat.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
                k += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let pid = f.weft.pid().to_string();
    let (srv0, cli0, host0) = (
        proc_cpu_ticks(&pid),
        proc_cpu_ticks("self"),
        host_busy_ticks(),
    );
    let t0 = Instant::now();
    barrier.wait().await;
    let mut all = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(lat)) => all.extend(lat),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(anyhow!("client task failed: {e}"))),
        }
    }
    let wall = t0.elapsed();
    let (srv1, cli1, host1) = (
        proc_cpu_ticks(&pid),
        proc_cpu_ticks("self"),
        host_busy_ticks(),
    );
    let (srv, cli) = (srv1.saturating_sub(srv0), cli1.saturating_sub(cli0));
    let other = host1.saturating_sub(host0).saturating_sub(srv + cli);
    if let Some(e) = first_err {
        return Err(e.context(format!(
            "weft --threads {}: {} {} {} with {clients} clients",
            f.threads,
            transport.name(),
            store.label(),
            op.name()
        )));
    }
    all.sort_unstable();
    Ok(CellResult {
        ops: all.len() as u64,
        wall,
        p50_ns: percentile(&all, 50.0),
        p99_ns: percentile(&all, 99.0),
        server_cpu: tick * u32::try_from(srv).unwrap_or(u32::MAX),
        client_cpu: tick * u32::try_from(cli).unwrap_or(u32::MAX),
        other_cpu: tick * u32::try_from(other).unwrap_or(u32::MAX),
    })
}

// === the run ===

type CellKey = (Transport, Store, Op, usize);

async fn run(
    cfg: Config,
    bin: PathBuf,
    command: String,
    floor: Option<String>,
) -> anyhow::Result<String> {
    let max_clients = cfg.clients.iter().copied().max().unwrap_or(1);
    let db_dir = cfg.db_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut facts = machine_facts(&db_dir);
    if let Some(floor) = floor {
        facts.push(("socket round-trip floor", floor));
    }
    let tick = Duration::from_secs(1) / u32::try_from(clock_ticks_per_sec()).unwrap_or(100);

    // Start every flavour and read its idle memory before any API call.
    let mut flavours = Vec::new();
    for &threads in &cfg.flavours {
        eprintln!("state_bench: starting weft --threads {threads}");
        flavours.push(start_flavour(threads, &cfg).await?);
    }
    tokio::time::sleep(cfg.settle).await;
    for f in &mut flavours {
        f.idle = proc_mem(f.weft.pid())?;
    }
    for f in &mut flavours {
        connect(f, &cfg.transports, max_clients).await;
        let first = cfg.transports[0];
        for &store in &cfg.stores {
            seed(&mut f.conns.get_mut(&first).expect("connected")[0], store).await?;
        }
    }

    let mut results: BTreeMap<(CellKey, u16), CellResult> = BTreeMap::new();
    let mut cells: Vec<CellKey> = Vec::new();
    for &t in &cfg.transports {
        for &s in &cfg.stores {
            for &o in &cfg.operations {
                for &c in &cfg.clients {
                    cells.push((t, s, o, c));
                }
            }
        }
    }
    let total = cells.len() * flavours.len();
    let mut done = 0;
    let started = Instant::now();
    for &cell in &cells {
        let (t, s, o, c) = cell;
        for f in &flavours {
            let r = run_cell(f, t, s, o, c, &cfg, tick).await?;
            done += 1;
            eprintln!(
                "state_bench: [{done}/{total}] --threads {} {} {} {} x{c}: p50 {} µs, p99 {} µs, {:.0} ops/s, weft CPU {:.0}%, others {:.0}%",
                f.threads,
                t.name(),
                s.label(),
                o.name(),
                us(r.p50_ns),
                us(r.p99_ns),
                r.ops_per_sec(),
                r.server_cpu_pct(),
                r.other_cpu_pct()
            );
            results.insert((cell, f.threads), r);
        }
    }
    let elapsed = started.elapsed();
    let mut after = BTreeMap::new();
    for f in &flavours {
        after.insert(f.threads, proc_mem(f.weft.pid())?);
    }

    Ok(render(
        &cfg, &bin, &command, &facts, &flavours, &cells, &results, &after, elapsed,
    ))
}

fn us(ns: u64) -> String {
    let us = ns as f64 / 1000.0;
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    cfg: &Config,
    bin: &Path,
    command: &str,
    facts: &[(&str, String)],
    flavours: &[Flavour],
    cells: &[CellKey],
    results: &BTreeMap<(CellKey, u16), CellResult>,
    after: &BTreeMap<u16, ProcMem>,
    elapsed: Duration,
) -> String {
    let mut o = String::new();
    let fl = |t: u16| format!("t{t}");
    let _ = writeln!(o, "### Run\n");
    let _ = writeln!(o, "- command: `{command}`");
    let _ = writeln!(o, "- weft binary: `{}`", bin.display());
    for (k, v) in facts {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let client_rt = if cfg.client_threads <= 1 {
        "tokio current_thread runtime".to_string()
    } else {
        format!("tokio multi-thread runtime, {} workers", cfg.client_threads)
    };
    let _ = writeln!(
        o,
        "- clients: in the benchmark process on a {client_rt}; each client has its own connection (tonic `Channel`), one call in flight per client"
    );
    let measure = match cfg.ops {
        Some(n) => format!("{n} ops"),
        None => format!("{:.1} s", cfg.duration.as_secs_f64()),
    };
    let _ = writeln!(
        o,
        "- per cell: warm-up {} ops (at most {:.1} s), then {measure} measured; {VALUE_LEN}-byte values over {KEYS} keys; latency = one unary call as the client sees it",
        cfg.warmup_ops,
        cfg.warmup_max.as_secs_f64()
    );
    let names: Vec<String> = flavours
        .iter()
        .map(|f| {
            let kind = if f.threads <= 1 {
                "current_thread"
            } else {
                "multi-thread"
            };
            format!("t{} = `weft --threads {}` ({kind})", f.threads, f.threads)
        })
        .collect();
    let _ = writeln!(
        o,
        "- flavours: {} — one process each, cells alternate between them",
        names.join("; ")
    );
    let _ = writeln!(o, "- measuring took {:.0} s\n", elapsed.as_secs_f64());

    // Latency and throughput, flavours side by side.
    let _ = writeln!(o, "### Latency and throughput\n");
    let mut head = String::from("| transport | store | op | clients |");
    let mut rule = String::from("|---|---|---|---:|");
    for f in flavours {
        let t = fl(f.threads);
        let _ = write!(head, " {t} p50 µs | {t} p99 µs | {t} ops/s |");
        rule.push_str("---:|---:|---:|");
    }
    head.push_str(" goal |");
    rule.push_str("---|");
    let _ = writeln!(o, "{head}\n{rule}");
    for &cell in cells {
        let (t, s, op, c) = cell;
        let _ = write!(o, "| {} | {} | {} | {c} |", t.name(), s.label(), op.name());
        let mut goal = Vec::new();
        for f in flavours {
            match results.get(&(cell, f.threads)) {
                Some(r) => {
                    let _ = write!(
                        o,
                        " {} | {} | {:.0} |",
                        us(r.p50_ns),
                        us(r.p99_ns),
                        r.ops_per_sec()
                    );
                    if t == Transport::Uds && op == Op::Get && c == 1 {
                        let verdict = if r.p50_ns < GOAL_GET_UDS_P50_NS {
                            "met"
                        } else {
                            "missed"
                        };
                        goal.push(format!("{} {verdict}", fl(f.threads)));
                    }
                }
                None => o.push_str(" – | – | – |"),
            }
        }
        if goal.is_empty() {
            o.push_str(" |\n");
        } else {
            let _ = writeln!(o, " p50 < 100 µs: {} |", goal.join(", "));
        }
    }

    // CPU.
    let _ = writeln!(o, "\n### CPU during the measured window\n");
    let _ = writeln!(
        o,
        "weft CPU % = user+system time of the runtime process / wall time (100 % = one core); client CPU % likewise for the benchmark process; others CPU % = busy time of the whole host (/proc/stat, steal included) minus both, i.e. load from neighbours during the cell.\n"
    );
    let mut head = String::from("| transport | store | op | clients |");
    let mut rule = String::from("|---|---|---|---:|");
    for f in flavours {
        let t = fl(f.threads);
        let _ = write!(
            head,
            " {t} weft CPU % | {t} weft CPU µs/op | {t} client CPU % | {t} others CPU % |"
        );
        rule.push_str("---:|---:|---:|---:|");
    }
    let _ = writeln!(o, "{head}\n{rule}");
    for &cell in cells {
        let (t, s, op, c) = cell;
        let _ = write!(o, "| {} | {} | {} | {c} |", t.name(), s.label(), op.name());
        for f in flavours {
            match results.get(&(cell, f.threads)) {
                Some(r) => {
                    let _ = write!(
                        o,
                        " {:.0} | {:.1} | {:.0} | {:.0} |",
                        r.server_cpu_pct(),
                        r.server_cpu_us_per_op(),
                        r.client_cpu_pct(),
                        r.other_cpu_pct()
                    );
                }
                None => o.push_str(" – | – | – | – |"),
            }
        }
        o.push('\n');
    }

    // Memory.
    let _ = writeln!(
        o,
        "\n### Resident memory of the runtime (MB = 1024 kB, from /proc/<pid>/status)\n"
    );
    let _ = writeln!(
        o,
        "| flavour | idle VmRSS | idle VmHWM | after load VmRSS | after load VmHWM | threads after load | goal: idle RSS < 15 MB |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|");
    for f in flavours {
        let a = after.get(&f.threads).copied().unwrap_or_default();
        let verdict = if f.idle.rss_kb < GOAL_IDLE_RSS_KB {
            "met"
        } else {
            "missed"
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {verdict} |",
            fl(f.threads),
            mb(f.idle.rss_kb),
            mb(f.idle.hwm_kb),
            mb(a.rss_kb),
            mb(a.hwm_kb),
            a.threads
        );
    }

    // Goals summary.
    let _ = writeln!(o, "\n### Goals\n");
    for f in flavours {
        for &store in &cfg.stores {
            if let Some(r) = results.get(&((Transport::Uds, store, Op::Get, 1), f.threads)) {
                let verdict = if r.p50_ns < GOAL_GET_UDS_P50_NS {
                    "met"
                } else {
                    "MISSED"
                };
                let _ = writeln!(
                    o,
                    "- Get p50 over UDS < 100 µs ({}, {}, 1 client): {} µs — {verdict}",
                    fl(f.threads),
                    store.label(),
                    us(r.p50_ns)
                );
            }
        }
        let verdict = if f.idle.rss_kb < GOAL_IDLE_RSS_KB {
            "met"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            o,
            "- idle RSS < 15 MB ({}): {} MB — {verdict}",
            fl(f.threads),
            mb(f.idle.rss_kb)
        );
    }
    o
}
