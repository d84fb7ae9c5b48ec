//! What the ZooKeeper backends of the lock and sequencer blocks share: one
//! session per store, opened on first use and opened again after it ends,
//! node names for arbitrary keys, and error mapping.
//!
//! (`nameresolution.zookeeper` keeps its own supervised session: it must
//! re-create registrations and re-arm watches when a session ends, which
//! these stores do not need.)

use std::time::Duration;

use tokio::sync::Mutex;
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, Error as ZkError};

use crate::nameresolution::zookeeper::ZookeeperConfig;
use crate::{ComponentError, Metadata};

pub const PERSISTENT: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
pub const CONTAINER: CreateOptions<'static> = CreateMode::Container.with_acls(Acls::anyone_all());
pub const EPHEMERAL_SEQUENTIAL: CreateOptions<'static> =
    CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());

/// Reads `servers`, `root` (default `default_root`), `sessionTimeout` and
/// `requestTimeout` as `nameresolution.zookeeper` does.
pub fn config(md: &Metadata, default_root: &str) -> Result<ZookeeperConfig, ComponentError> {
    let mut cfg = ZookeeperConfig::from_metadata(md)?;
    if md.get("root").is_none() {
        cfg.root = default_root.to_string();
    }
    Ok(cfg)
}

/// A session opened on first use; a session that ended (expired, closed)
/// is replaced by a new one on the next call.
pub struct Session {
    pub cfg: ZookeeperConfig,
    client: Mutex<Option<Client>>,
}

impl Session {
    pub fn new(cfg: ZookeeperConfig) -> Self {
        Self {
            cfg,
            client: Mutex::new(None),
        }
    }

    /// The live session, opening one if there is none.
    pub async fn client(&self) -> Result<Client, ZkFailure> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let connect = async {
            let mut connector = Client::connector();
            connector.session_timeout(self.cfg.session_timeout);
            connector.fail_eagerly();
            connector.connect(&self.cfg.servers).await
        };
        let client = match tokio::time::timeout(self.cfg.request_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(ZkFailure::Unavailable(format!(
                    "cannot open a ZooKeeper session with {}: {e}",
                    self.cfg.servers
                )))
            }
            Err(_) => {
                return Err(ZkFailure::Unavailable(format!(
                    "no ZooKeeper session with {} within {:?}",
                    self.cfg.servers, self.cfg.request_timeout
                )))
            }
        };
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Ends the session (its ephemeral nodes go with it).
    pub async fn close(&self) {
        // Dropping the last handle sends CloseSession.
        self.client.lock().await.take();
    }

    /// Runs `f` within the request timeout.
    pub async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, ZkFailure>>,
    ) -> Result<T, ZkFailure> {
        match tokio::time::timeout(self.cfg.request_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(ZkFailure::Unavailable(format!(
                "ZooKeeper {} gave no answer within {:?}",
                self.cfg.servers, self.cfg.request_timeout
            ))),
        }
    }
}

/// A failed ZooKeeper call, sorted by whether a retry may help.
#[derive(Debug, Clone)]
pub enum ZkFailure {
    Unavailable(String),
    Internal(String),
}

impl ZkFailure {
    /// `what` failed with `e`.
    pub fn of(what: &str, e: ZkError) -> Self {
        let text = format!("ZooKeeper: {what}: {e}");
        match e {
            ZkError::ConnectionLoss
            | ZkError::SessionExpired
            | ZkError::ClientClosed
            | ZkError::Timeout
            | ZkError::SessionMoved
            | ZkError::Throttled
            | ZkError::NoHosts => ZkFailure::Unavailable(text),
            _ => ZkFailure::Internal(text),
        }
    }
}

/// A node name for any key: bytes outside `[A-Za-z0-9_|:@-]` (`.` included) are
/// written `%XX`, so that `/`, `.` and `..` never reach ZooKeeper as path
/// syntax and two keys never share a name.
pub fn node_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Creates `path` and its missing parents as container nodes (ZooKeeper
/// removes each once its last child is gone).
pub async fn ensure_dir(client: &Client, path: &str) -> Result<(), ZkFailure> {
    client
        .mkdir(path, &CONTAINER)
        .await
        .map_err(|e| ZkFailure::of(&format!("create {path}"), e))
}

/// Bounded attempts for operations that race with other runtimes (a
/// container removed under us, a version moved on).
pub const ATTEMPTS: usize = 64;

/// A short pause between contended attempts.
pub async fn pause(attempt: usize) {
    tokio::time::sleep(Duration::from_millis(1 + (attempt as u64 % 8))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_hold_no_path_syntax() {
        assert_eq!(node_name("app||orders"), "app||orders");
        assert_eq!(node_name("a/b"), "a%2Fb");
        assert_eq!(node_name(".."), "%2E%2E");
        assert_eq!(node_name("%2F"), "%252F");
        assert_eq!(node_name("é"), "%C3%A9");
    }
}
