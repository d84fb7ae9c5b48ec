//! Helpers of the Dubbo tests: finding the test ZooKeeper, unique names,
//! bounded waits, a TCP relay that can cut a client off, and the Apache
//! Dubbo test programs ([`java`]).

pub mod java;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const ZK_ENV: &str = "WEFT_TEST_ZK_SERVERS";
/// Bound on every wait (a guard against hanging, not a latency check).
pub const WAIT: Duration = Duration::from_secs(30);

/// The test ZooKeeper's address. Tests that call this are ignored when the
/// build saw none (components/build/services.rs), so here it must be set.
pub fn zk_servers(test: &str) -> String {
    match std::env::var(ZK_ENV) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => panic!(
            "{test}: {ZK_ENV} is not set: start ZooKeeper (scripts/services.sh start zookeeper) and export its environment (scripts/services.sh env)"
        ),
    }
}

/// The first `ip:port` of a connect string.
pub fn first_server(servers: &str) -> SocketAddr {
    servers
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{ZK_ENV} must start with an ip:port: {servers}"))
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{:x}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub use crate::free_port;

/// Polls `check` until it returns `Some`, at most [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay to one upstream; `set_up(false)` drops every relayed
/// connection and refuses new ones until `set_up(true)`.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(watch::channel(true).0);
        let up_tx = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut up_rx = up_tx.subscribe();
                if !*up_rx.borrow_and_update() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up_rx.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        Relay { addr, up, task }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.up.send_replace(false);
        self.task.abort();
    }
}
