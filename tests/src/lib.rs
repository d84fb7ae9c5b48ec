//! Harness for end-to-end tests: starts real `weft` processes on free ports,
//! waits for them to be healthy, and hands out gRPC clients.
//!
//! The `weft` binary is taken from `$WEFT_BIN`, or else from the workspace's
//! target directory (`cargo build -p weft` first; `scripts/test.sh` does).

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tonic::transport::{Channel, Endpoint, Uri};
use weft_proto::runtime::dapr_client::DaprClient;

pub mod dubbo;
pub mod invoke_app;
pub mod mesh;
pub mod otlp;
pub mod procfs;
pub mod prometheus;
pub mod relay_floor;
pub mod services;
pub mod subscribe;

/// `impl AppCallback for $app { ... }` with the methods given, plus those
/// no test app serves: input bindings (none listed, events UNIMPLEMENTED),
/// bulk topic events and jobs (UNIMPLEMENTED).
#[macro_export]
macro_rules! app_callback {
    ($app:ty { $($methods:tt)* }) => {
        #[::tonic::async_trait]
        impl ::weft_proto::runtime::app_callback_server::AppCallback for $app {
            $($methods)*

            async fn list_input_bindings(
                &self,
                _: ::tonic::Request<()>,
            ) -> ::std::result::Result<
                ::tonic::Response<::weft_proto::runtime::ListInputBindingsResponse>,
                ::tonic::Status,
            > {
                Ok(::tonic::Response::new(Default::default()))
            }

            async fn on_binding_event(
                &self,
                _: ::tonic::Request<::weft_proto::runtime::BindingEventRequest>,
            ) -> ::std::result::Result<
                ::tonic::Response<::weft_proto::runtime::BindingEventResponse>,
                ::tonic::Status,
            > {
                Err(::tonic::Status::unimplemented("this app has no bindings"))
            }

            async fn on_bulk_topic_event(
                &self,
                _: ::tonic::Request<::weft_proto::runtime::TopicEventBulkRequest>,
            ) -> ::std::result::Result<
                ::tonic::Response<::weft_proto::runtime::TopicEventBulkResponse>,
                ::tonic::Status,
            > {
                Err(::tonic::Status::unimplemented("this app takes no bulk topic events"))
            }

            async fn on_job_event(
                &self,
                _: ::tonic::Request<::weft_proto::runtime::JobEventRequest>,
            ) -> ::std::result::Result<
                ::tonic::Response<::weft_proto::runtime::JobEventResponse>,
                ::tonic::Status,
            > {
                Err(::tonic::Status::unimplemented("this app has no jobs"))
            }
        }
    };
}

/// Path of the `weft` binary under test.
pub fn weft_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/weft");
    assert!(
        bin.exists(),
        "weft binary not found at {}: run `cargo build -p weft` first or set WEFT_BIN",
        bin.display()
    );
    bin
}

/// For benchmarks: unless `$WEFT_BIN` is set, points it at the `weft`
/// beside the running binary (the release one for a release benchmark).
/// `Err` says what to build when there is none.
pub fn use_weft_beside_this_binary() -> Result<(), String> {
    if std::env::var_os("WEFT_BIN").is_some() {
        return Ok(());
    }
    match std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("weft")))
    {
        Some(p) if p.is_file() => {
            std::env::set_var("WEFT_BIN", p);
            Ok(())
        }
        _ => Err(
            "no weft binary beside this one: run cargo build --release -p weft, or set WEFT_BIN"
                .into(),
        ),
    }
}

/// A free TCP port on 127.0.0.1 (released before returning; the race with
/// other processes is acceptable for tests).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` different free TCP ports on 127.0.0.1: each is held until all are
/// picked, so two picks cannot return the same port (the kernel may hand a
/// just-released port out again).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("no free port on 127.0.0.1"))
        .collect();
    std::array::from_fn(|i| {
        held[i]
            .local_addr()
            .expect("a bound listener has an address")
            .port()
    })
}

/// Writes a component file into `dir`.
pub fn write_component(dir: &Path, name: &str, kind: &str, metadata: &[(&str, &str)]) {
    let mut text = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n"
    );
    for (k, v) in metadata {
        text.push_str(&format!("    - name: {k}\n      value: \"{v}\"\n"));
    }
    if metadata.is_empty() {
        text.push_str("    []\n");
    }
    std::fs::write(dir.join(format!("{name}.yaml")), text).expect("write component file");
}

/// How to start a runtime.
#[derive(Debug, Clone)]
pub struct WeftOptions {
    pub app_id: String,
    pub resources: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub uds: Option<PathBuf>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl WeftOptions {
    pub fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_string(),
            resources: None,
            data_dir: None,
            uds: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn resources(mut self, dir: &Path) -> Self {
        self.resources = Some(dir.to_path_buf());
        self
    }

    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    pub fn uds(mut self, path: &Path) -> Self {
        self.uds = Some(path.to_path_buf());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
}

/// A running `weft` process; terminated when dropped.
pub struct Weft {
    child: Option<Child>,
    pub grpc_port: u16,
    pub http_port: u16,
    pub uds: Option<PathBuf>,
    log: tempfile::NamedTempFile,
    _data: Option<tempfile::TempDir>,
}

impl Weft {
    /// Starts a runtime and waits (at most 30 s) until its health endpoint answers.
    ///
    /// Its gRPC and HTTP ports are free ports picked here; if another
    /// process took one between the pick and the runtime's bind (tests run
    /// in parallel), the start is tried again on new ports (three times).
    pub async fn start(opts: WeftOptions) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            let [grpc_port, http_port] = free_ports();
            match Self::start_on(&opts, grpc_port, http_port).await {
                Err(e)
                    if attempt < 3
                        && e.to_string().contains("Address already in use")
                        && (e.to_string().contains("(--grpc-port)")
                            || e.to_string().contains("(--http-port)")) =>
                {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn start_on(opts: &WeftOptions, grpc_port: u16, http_port: u16) -> anyhow::Result<Self> {
        let (data_dir, data_guard) = match &opts.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let log = tempfile::NamedTempFile::new()?;
        let mut cmd = Command::new(weft_bin());
        cmd.arg("run")
            .args(["--app-id", &opts.app_id])
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&opts.extra_args)
            .env_remove("DAPR_API_TOKEN")
            .env_remove("WEFT_API_TOKEN")
            .env("WEFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?);
        if let Some(r) = &opts.resources {
            cmd.arg("--resources-path").arg(r);
        }
        if let Some(u) = &opts.uds {
            cmd.arg("--uds").arg(u);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawn weft")?;
        let mut weft = Weft {
            child: Some(child),
            grpc_port,
            http_port,
            uds: opts.uds.clone(),
            log,
            _data: data_guard,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = weft
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "weft exited during start-up with {status}:\n{}",
                    weft.logs()
                );
            }
            if http_status(http_port, "/v1.0/healthz").await == Some(204) {
                return Ok(weft);
            }
            if Instant::now() > deadline {
                bail!("weft did not become healthy within 30 s:\n{}", weft.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC client on the TCP port.
    pub async fn client(&self) -> DaprClient<Channel> {
        DaprClient::new(self.channel().await)
    }

    /// A connection to the gRPC port (for Weft's own services too).
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://127.0.0.1:{}", self.grpc_port))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to weft gRPC")
    }

    /// A gRPC client on the Unix socket.
    pub async fn uds_client(&self) -> DaprClient<Channel> {
        let path = self.uds.clone().expect("runtime was started without --uds");
        DaprClient::new(uds_channel(&path).await.expect("connect to weft over UDS"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends a signal (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("already reaped"))?;
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("weft did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = self.log.reopen() {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A gRPC channel over a Unix domain socket.
pub async fn uds_channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    Ok(Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?)
}

/// Runs `weft` with `args` to completion (at most 30 s); returns the exit
/// status and everything it printed. For start-up failure tests.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(weft_bin())
        .args(args)
        .env_remove("DAPR_GRPC_PORT")
        .env_remove("DAPR_HTTP_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait for weft");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Minimal HTTP/1.1 GET returning the status code, or `None` when the
/// server does not answer.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path, &[]).await.map(|(s, _)| s)
}

/// Minimal HTTP/1.1 GET returning status and body.
pub async fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    http_request(port, "GET", path, headers, "").await
}

/// Minimal HTTP/1.1 request (Connection: close) returning status and body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// PostgreSQL for tests: `WEFT_TEST_PG_URL`. Tests that need it are marked
/// `#[cfg_attr(weft_no_pg, ignore = "...")]`: ignored, with the reason,
/// when the build saw no server, and run (failing here) when `CI` or
/// `WEFT_REQUIRE_SERVICES` is set (components/build/services.rs).
pub fn pg_url() -> String {
    match std::env::var("WEFT_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "WEFT_TEST_PG_URL is not set: start PostgreSQL (scripts/services.sh start postgres) and export its environment (scripts/services.sh env)"
        ),
    }
}

/// Runs the command in `WEFT_TEST_PG_CTL` (e.g. `scripts/pgctl.sh`) with
/// `stop` or `start`, to take the test PostgreSQL down and back up.
pub fn pg_ctl(action: &str) -> anyhow::Result<()> {
    let ctl = std::env::var("WEFT_TEST_PG_CTL").context("WEFT_TEST_PG_CTL is not set")?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{ctl} {action}"))
        .status()?;
    if !status.success() {
        bail!("`{ctl} {action}` failed with {status}");
    }
    Ok(())
}

/// Checks per-key delivery order for pub/sub tests.
pub mod order {
    use std::collections::HashMap;

    /// Per-key processing log: each sequence number must follow the previous
    /// one or step back to one already seen (a redelivered suffix); it must
    /// never skip ahead.
    #[derive(Default)]
    pub struct Log {
        pub seqs: HashMap<String, Vec<u64>>,
        pub errors: Vec<String>,
        pub total: usize,
    }

    impl Log {
        /// Records a delivery of `seq` for `key`.
        pub fn record(&mut self, key: String, seq: u64) {
            self.total += 1;
            let v = self.seqs.entry(key.clone()).or_default();
            let ok = match v.last() {
                None => seq == 0,
                Some(&last) => seq == last + 1 || seq <= last,
            };
            if !ok && self.errors.len() < 10 {
                self.errors.push(format!(
                    "key {key}: seq {seq} after {:?}",
                    v.iter().rev().take(5).collect::<Vec<_>>()
                ));
            }
            v.push(seq);
        }

        /// Whether all `keys` keys reached sequence `per_key - 1`.
        pub fn complete(&self, keys: usize, per_key: u64) -> bool {
            self.seqs.len() == keys
                && self
                    .seqs
                    .values()
                    .all(|v| v.iter().max() == Some(&(per_key - 1)))
        }
    }
}

/// Certificates made with the real `weft ca` commands.
pub mod certs {
    use std::path::{Path, PathBuf};

    /// `weft ca init --dir <dir> --trust-domain <td>`.
    pub fn ca_init(dir: &Path, trust_domain: &str) {
        let d = dir.to_string_lossy();
        let (status, out) =
            super::run_to_exit(&["ca", "init", "--dir", &d, "--trust-domain", trust_domain]);
        assert!(status.success(), "weft ca init failed: {out}");
    }

    /// `weft ca issue` for `app_id` into `out`; returns `(cert, key, bundle)`.
    pub fn ca_issue(ca: &Path, app_id: &str, out: &Path, ttl: &str) -> (PathBuf, PathBuf, PathBuf) {
        let (c, o) = (ca.to_string_lossy(), out.to_string_lossy());
        let (status, text) = super::run_to_exit(&[
            "ca", "issue", "--ca-dir", &c, "--app-id", app_id, "--out", &o, "--ttl", ttl,
        ]);
        assert!(status.success(), "weft ca issue failed: {text}");
        (
            out.join("cert.pem"),
            out.join("key.pem"),
            out.join("ca.pem"),
        )
    }

    /// The `weft run` flags for a certificate set.
    pub fn flags(set: &(PathBuf, PathBuf, PathBuf)) -> Vec<String> {
        vec![
            "--mtls-cert".into(),
            set.0.to_string_lossy().into_owned(),
            "--mtls-key".into(),
            set.1.to_string_lossy().into_owned(),
            "--mtls-trust-bundle".into(),
            set.2.to_string_lossy().into_owned(),
        ]
    }
}
