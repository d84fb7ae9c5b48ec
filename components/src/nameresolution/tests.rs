//! The conformance suite run for every resolver, and the checks particular
//! to one: killed holders (a child process killed with SIGKILL), ZooKeeper
//! session expiry and outages, ZooKeeper down at start.
//!
//! ZooKeeper tests need a server (`scripts/services.sh start zookeeper`,
//! address in `WEFT_TEST_ZK_SERVERS`); built without it they are reported
//! as ignored with the reason, unless `CI` or `WEFT_REQUIRE_SERVICES` is
//! set, where they run and fail. Every run uses fresh
//! namespaces. Waits are bounded; nothing asserts on timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::conformance::{addr, wait_for, Harness, WAIT};
use super::local::LocalResolver;
use super::zookeeper::{ZookeeperConfig, ZookeeperResolver};
use super::{build, NameResolver, Registration, ResolveError};
use crate::metadata::{ComponentError, InitContext, Metadata};

const ZK_ENV: &str = "WEFT_TEST_ZK_SERVERS";
/// Root znode of every test (namespaces below it are unique per run).
const ZK_ROOT: &str = "/weft-test";

fn ctx() -> InitContext {
    InitContext {
        data_dir: std::env::temp_dir(),
        app_id: "nameresolution-test".into(),
    }
}

fn md(component: &str, kind: &str, fields: &[(&str, &str)]) -> Metadata {
    Metadata::new(
        component,
        kind,
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn unique_ns(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

// === local ===

struct LocalHarness {
    dir: tempfile::TempDir,
}

#[async_trait]
impl Harness for LocalHarness {
    async fn resolver(&self) -> Arc<dyn NameResolver> {
        Arc::new(LocalResolver::new("names", self.dir.path()).unwrap())
    }

    fn bad_metadata(&self) -> Vec<(Metadata, &'static str)> {
        let file = self.dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        vec![(
            md(
                "names",
                "nameresolution.local",
                &[("dir", &file.join("sub").display().to_string())],
            ),
            "dir",
        )]
    }
}

crate::nameresolution_conformance!(
    local,
    LocalHarness {
        dir: tempfile::tempdir().unwrap(),
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_killed_holder_disappears() {
    let dir = tempfile::tempdir().unwrap();
    let observer = LocalResolver::new("names", dir.path()).unwrap();
    let ns = unique_ns("kill");
    let child = ChildHolder::spawn("local", &dir.path().display().to_string(), &ns, 41101).await;
    wait_for(&observer, "held", &ns, &[addr(41101)], "local-kill").await;
    child.kill().await;
    wait_for(&observer, "held", &ns, &[], "local-kill").await;
    // The stale file was removed, not just ignored.
    let entry = dir.path().join(&ns).join("held").join("child-1");
    assert!(
        !entry.exists(),
        "stale entry {} left behind",
        entry.display()
    );
    observer.close().await;
}

// === static ===

struct StaticHarness;

#[async_trait]
impl Harness for StaticHarness {
    async fn resolver(&self) -> Arc<dyn NameResolver> {
        let md = md(
            "peers",
            "nameresolution.static",
            &[("apps", "known=127.0.0.1:1")],
        );
        build(&md, &ctx()).await.unwrap()
    }

    fn bad_metadata(&self) -> Vec<(Metadata, &'static str)> {
        vec![
            (md("peers", "nameresolution.static", &[]), "apps"),
            (
                md("peers", "nameresolution.static", &[("apps", "b=nowhere")]),
                "apps",
            ),
        ]
    }

    fn dynamic(&self) -> bool {
        false
    }
}

crate::nameresolution_conformance!(static_resolver, StaticHarness, static);

#[tokio::test]
async fn build_dispatches_on_the_type() {
    let err = build(&md("x", "nameresolution.dns", &[]), &ctx())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, ComponentError::UnknownType { known, .. } if known.contains("nameresolution.zookeeper")),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let local = md(
        "names",
        "nameresolution.local",
        &[("dir", &dir.path().display().to_string())],
    );
    let r = build(&local, &ctx()).await.unwrap();
    r.register(&Registration::new("a", "default", "i", addr(5)))
        .await
        .unwrap();
    assert_eq!(r.resolve("a", "default").await.unwrap(), vec![addr(5)]);
    r.close().await;
}

// === zookeeper ===

/// The test server's addresses. Tests that call this are ignored when the
/// build saw no server (build/services.rs), so here they must be set.
fn zk_servers(test: &str) -> String {
    match std::env::var(ZK_ENV) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => panic!(
            "{test}: {ZK_ENV} is not set: start ZooKeeper (scripts/services.sh start zookeeper) and export its environment (scripts/services.sh env)"
        ),
    }
}

fn zk_config(servers: &str, session_timeout: Duration) -> ZookeeperConfig {
    ZookeeperConfig {
        servers: servers.to_string(),
        root: ZK_ROOT.to_string(),
        session_timeout,
        request_timeout: Duration::from_secs(10),
    }
}

struct ZkHarness {
    servers: String,
}

#[async_trait]
impl Harness for ZkHarness {
    async fn resolver(&self) -> Arc<dyn NameResolver> {
        Arc::new(ZookeeperResolver::new(
            "registry",
            zk_config(&self.servers, Duration::from_secs(4)),
        ))
    }

    fn bad_metadata(&self) -> Vec<(Metadata, &'static str)> {
        let kind = "nameresolution.zookeeper";
        vec![
            (md("registry", kind, &[]), "servers"),
            (
                md("registry", kind, &[("servers", "127.0.0.1:x")]),
                "servers",
            ),
            (
                md(
                    "registry",
                    kind,
                    &[("servers", &self.servers), ("root", "weft")],
                ),
                "root",
            ),
            (
                md(
                    "registry",
                    kind,
                    &[("servers", &self.servers), ("sessionTimeout", "a while")],
                ),
                "sessionTimeout",
            ),
        ]
    }
}

crate::nameresolution_conformance!(
    #[cfg_attr(
        weft_no_zk,
        ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
    )]
    zookeeper_resolver,
    ZkHarness {
        servers: zk_servers("zookeeper conformance")
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_down_at_start_is_unavailable_not_a_hang() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let servers = format!("127.0.0.1:{port}");
    let cfg = ZookeeperConfig {
        servers: servers.clone(),
        root: ZK_ROOT.to_string(),
        session_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    };
    let r = ZookeeperResolver::new("registry", cfg);
    let checks = async {
        let me = Registration::new("app", "default", "i-1", addr(1));
        match r.register(&me).await {
            Err(e @ ResolveError::Unavailable { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&servers) && msg.contains("'registry'"),
                    "{msg}"
                );
            }
            other => panic!("register with ZooKeeper down: expected Unavailable, got {other:?}"),
        }
        for _ in 0..2 {
            match r.resolve("other", "default").await {
                Err(e @ ResolveError::Unavailable { .. }) => {
                    assert!(e.to_string().contains(&servers), "{e}");
                }
                other => panic!("resolve with ZooKeeper down: expected Unavailable, got {other:?}"),
            }
        }
        r.close().await;
    };
    // A guard against hanging, not a latency requirement.
    tokio::time::timeout(Duration::from_secs(60), checks)
        .await
        .expect("the resolver hung while ZooKeeper was down");
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_killed_holder_disappears_after_the_session_timeout() {
    let servers = zk_servers("zookeeper_killed_holder");
    let observer = ZookeeperResolver::new("registry", zk_config(&servers, Duration::from_secs(4)));
    let ns = unique_ns("kill");
    let child = ChildHolder::spawn("zookeeper", &servers, &ns, 41201).await;
    wait_for(&observer, "held", &ns, &[addr(41201)], "zk-kill").await;
    child.kill().await;
    // The child asked for a 2 s session: its ephemeral node goes when the
    // server expires the session.
    wait_for(&observer, "held", &ns, &[], "zk-kill").await;
    observer.close().await;
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_session_expiry_reregisters_and_keeps_serving() {
    let servers = zk_servers("zookeeper_session_expiry");
    let check = "zk-expiry";
    let ns = unique_ns("expiry");
    // `r` reaches ZooKeeper through a relay, so that it can be kept away
    // while its session is taken over and closed.
    let proxy = Proxy::start(first_server(&servers)).await;
    let r = ZookeeperResolver::new(
        "registry",
        zk_config(&proxy.addr.to_string(), Duration::from_secs(4)),
    );
    let observer = ZookeeperResolver::new("registry", zk_config(&servers, Duration::from_secs(4)));
    r.register(&Registration::new("me", &ns, "i-1", addr(41301)))
        .await
        .unwrap();
    observer
        .register(&Registration::new("peer", &ns, "p-1", addr(41302)))
        .await
        .unwrap();
    wait_for(&observer, "me", &ns, &[addr(41301)], check).await;
    wait_for(&r, "peer", &ns, &[addr(41302)], check).await;

    // Cut r off, take its session over with its id and password, and close
    // it: the server ends the session (and deletes its ephemeral node) at
    // once, without waiting for the timeout.
    let old = r.session().expect("no session");
    let old_id = old.id();
    proxy.set_up(false);
    let mut connector = zookeeper_client::Client::connector();
    connector
        .session(old)
        .session_timeout(Duration::from_secs(4))
        .fail_eagerly();
    let taken = tokio::time::timeout(WAIT, connector.connect(&servers))
        .await
        .expect("taking the session over hung")
        .expect("cannot take the session over");
    drop(taken);
    wait_for(&observer, "me", &ns, &[], check).await;
    assert_eq!(
        r.resolve("peer", &ns).await.unwrap(),
        vec![addr(41302)],
        "[{check}] cached instances were not served while the session was gone"
    );
    proxy.set_up(true);

    // r finds its session expired, opens a new one and registers again.
    wait_for(&observer, "me", &ns, &[addr(41301)], check).await;
    let new = r.session().expect("no session after expiry").id();
    assert_ne!(new, old_id, "[{check}] the session was not replaced");
    let probe = zookeeper_client::Client::connect(&servers).await.unwrap();
    let path = format!("{ZK_ROOT}/{ns}/me/i-1");
    let (_, stat) = probe.get_data(&path).await.unwrap();
    assert_eq!(
        stat.ephemeral_owner, new.0,
        "[{check}] {path} is not owned by the new session {new}"
    );
    // Watches were re-armed on the new session.
    observer
        .register(&Registration::new("peer", &ns, "p-2", addr(41303)))
        .await
        .unwrap();
    wait_for(&r, "peer", &ns, &[addr(41302), addr(41303)], check).await;
    r.close().await;
    wait_for(&observer, "me", &ns, &[], check).await;
    observer.close().await;
}

/// The first `ip:port` of a connect string.
fn first_server(servers: &str) -> SocketAddr {
    servers
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{ZK_ENV} must start with an ip:port for this test: {servers}"))
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_outage_serves_the_cache_and_recovers() {
    let servers = zk_servers("zookeeper_outage");
    let check = "zk-outage";
    let proxy = Proxy::start(first_server(&servers)).await;
    let ns = unique_ns("outage");
    // `r` reaches ZooKeeper only through the proxy; its session is short so
    // that an outage expires it.
    let r = ZookeeperResolver::new(
        "registry",
        zk_config(&proxy.addr.to_string(), Duration::from_secs(2)),
    );
    let observer = ZookeeperResolver::new("registry", zk_config(&servers, Duration::from_secs(4)));
    r.register(&Registration::new("me", &ns, "i-1", addr(41401)))
        .await
        .unwrap();
    observer
        .register(&Registration::new("peer", &ns, "p-1", addr(41402)))
        .await
        .unwrap();
    wait_for(&r, "peer", &ns, &[addr(41402)], check).await;
    wait_for(&observer, "me", &ns, &[addr(41401)], check).await;

    proxy.set_up(false);
    // The server expires r's session: its instance disappears for others.
    // Meanwhile r keeps answering from its cache.
    let deadline = Instant::now() + WAIT;
    loop {
        assert_eq!(
            r.resolve("peer", &ns).await.unwrap(),
            vec![addr(41402)],
            "[{check}] cached instances were not served during the outage"
        );
        if observer
            .resolve("me", &ns)
            .await
            .is_err_and(|e| e.is_not_found())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{check}] r's instance outlived its session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A change during the outage...
    observer
        .register(&Registration::new("peer", &ns, "p-2", addr(41403)))
        .await
        .unwrap();
    proxy.set_up(true);
    // ...is seen once r has a new session, and r registers again.
    wait_for(&observer, "me", &ns, &[addr(41401)], check).await;
    wait_for(&r, "peer", &ns, &[addr(41402), addr(41403)], check).await;
    r.close().await;
    wait_for(&observer, "me", &ns, &[], check).await;
    observer.close().await;
}

/// A TCP relay to ZooKeeper that can be cut (every connection closed, new
/// ones refused) and restored.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                if !*up_rx.borrow() {
                    drop(conn);
                    continue;
                }
                let mut up_rx = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut conn, &mut server) => {}
                        _ = up_rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, task }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.up.send_replace(false);
    }
}

// === killed holders: a child process registers, then gets SIGKILL ===

const CHILD_ENV: &str = "WEFT_NR_TEST_CHILD";
const CHILD_READY: &str = "WEFT-NR-CHILD-READY";

/// A copy of this test binary running only [`child_holder`].
struct ChildHolder {
    child: tokio::process::Child,
}

impl ChildHolder {
    /// Starts the child: it registers `held` / `child-1` at `127.0.0.1:port`
    /// in namespace `ns` with resolver `kind` on `target` (a directory or
    /// ZooKeeper servers), prints a marker and waits to be killed.
    async fn spawn(kind: &str, target: &str, ns: &str, port: u16) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--exact",
                "nameresolution::tests::child_holder",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{kind}|{target}|{ns}|{port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = async {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(CHILD_READY) {
                    return true;
                }
            }
            false
        };
        let ok = tokio::time::timeout(WAIT, ready).await.unwrap_or(false);
        assert!(ok, "the child process did not register");
        Self { child }
    }

    /// SIGKILL: no close(), no destructors.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Entry point of [`ChildHolder`]; does nothing in a normal test run.
#[test]
fn child_holder() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [kind, target, ns, port] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let port: u16 = port.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r: Arc<dyn NameResolver> = match kind {
            "local" => Arc::new(LocalResolver::new("names", target).unwrap()),
            "zookeeper" => Arc::new(ZookeeperResolver::new(
                "registry",
                zk_config(target, Duration::from_secs(2)),
            )),
            other => panic!("unknown resolver kind {other}"),
        };
        r.register(&Registration::new("held", ns, "child-1", addr(port)))
            .await
            .unwrap();
        println!("{CHILD_READY}");
        // Bounded: the parent kills us long before this.
        tokio::time::sleep(Duration::from_secs(120)).await;
        // Leave without close(), like a crash would.
        std::process::exit(0);
    });
}
