//! `lock.zookeeper`: locks as ephemeral sequential znodes in Apache
//! ZooKeeper, for runtimes on many machines. A lock lives only as long as
//! the ZooKeeper session of the runtime that took it: a holder that
//! crashes loses its locks when its session ends (at most
//! `sessionTimeout` after its death; at once when it closes cleanly).
//!
//! # Metadata
//!
//! * `servers` (required): the ensemble, `host:port` entries separated by
//!   commas, as for `nameresolution.zookeeper`.
//! * `root` (optional, default `/weft-locks`): the znode under which
//!   resources live.
//! * `sessionTimeout` (optional duration, default `10s`): the session
//!   timeout asked of ZooKeeper; how long a crashed holder keeps its locks.
//! * `requestTimeout` (optional duration, default `5s`): per operation.
//!
//! # Layout and algorithm
//!
//! A resource is the container node `<root>/<resource>` (the resource id
//! with `/`, `.` and other bytes outside `[A-Za-z0-9_|:@-]` written `%XX`).
//! A TryLock creates the ephemeral sequential child `n-<sequence>` whose
//! data is `<lease in ms>\n<owner>`, then lists the children: the caller
//! holds the lock when no child with a lower sequence holds a live lease;
//! otherwise it deletes its node and answers `false`. The lowest live node
//! is the holder. Unlock deletes the holder's node when its owner asks.
//!
//! # Expiry by ZooKeeper's clock
//!
//! A lease is live while `ctime + lease > now`, where `ctime` is the
//! node's creation time and `now` the time of a write made for the check
//! — the contender's own fresh node for TryLock, a `setData` on the
//! resource node for Unlock. ZooKeeper stamps both with the time of the
//! leader that ordered the write, so no runtime's clock takes part and
//! every runtime judges a lease against the same clock. (After a leader
//! change, leases stretch or shrink by the clock skew between the old and
//! new leader.) An expired holder's node is deleted by the contender that
//! finds it, guarded by the node's version.
//!
//! ZooKeeper removes a resource node once its last child is gone, so
//! unlocked resources leave nothing behind.
//!
//! # Sessions
//!
//! One session per store, opened on first use (the runtime starts while
//! ZooKeeper is down; calls answer `Unavailable` until it is back) and
//! opened again when it ends. A session that expires — a runtime cut off
//! from ZooKeeper for longer than `sessionTimeout` — takes that runtime's
//! locks with it, as the crash of its holder would.

use std::time::Duration;

use async_trait::async_trait;
use zookeeper_client::{Client, Error as ZkError};

use super::{LockError, LockStore, UnlockStatus};
use crate::zk::{self, Session, ZkFailure};
use crate::{ComponentError, Metadata};

/// Default znode under which resources live.
pub const DEFAULT_ROOT: &str = "/weft-locks";

const PREFIX: &str = "n-";

/// Locks in ZooKeeper.
pub struct ZookeeperLockStore {
    session: Session,
}

impl std::fmt::Debug for ZookeeperLockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZookeeperLockStore")
            .field("servers", &self.session.cfg.servers)
            .field("root", &self.session.cfg.root)
            .finish()
    }
}

/// One contender or holder node.
struct Node {
    path: String,
    version: i32,
    ctime: i64,
    lease_ms: i64,
    owner: String,
}

impl ZookeeperLockStore {
    /// Builds the store; connects on first use.
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        Ok(Self {
            session: Session::new(zk::config(md, DEFAULT_ROOT)?),
        })
    }

    fn dir(&self, resource: &str) -> String {
        format!("{}/{}", self.session.cfg.root, zk::node_name(resource))
    }

    /// Children of `dir` by sequence, lowest first (`None`: no such node).
    async fn contenders(
        client: &Client,
        dir: &str,
    ) -> Result<Option<Vec<(i64, String)>>, ZkFailure> {
        let names = match client.list_children(dir).await {
            Ok(n) => n,
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => return Err(ZkFailure::of(&format!("list {dir}"), e)),
        };
        let mut seqs: Vec<(i64, String)> = names
            .into_iter()
            .filter_map(|n| {
                let seq = n.strip_prefix(PREFIX)?.parse().ok()?;
                Some((seq, format!("{dir}/{n}")))
            })
            .collect();
        seqs.sort_unstable();
        Ok(Some(seqs))
    }

    /// Reads one node (`None`: gone meanwhile).
    async fn read(client: &Client, path: String) -> Result<Option<Node>, ZkFailure> {
        let (data, stat) = match client.get_data(&path).await {
            Ok(r) => r,
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => return Err(ZkFailure::of(&format!("read {path}"), e)),
        };
        let text = String::from_utf8_lossy(&data);
        let (lease, owner) = text.split_once('\n').unwrap_or((&text, ""));
        Ok(Some(Node {
            lease_ms: lease.parse().unwrap_or(0),
            owner: owner.to_string(),
            version: stat.version,
            ctime: stat.ctime,
            path,
        }))
    }

    /// Deletes an expired holder's node, unless it changed meanwhile.
    async fn remove_expired(client: &Client, node: &Node) -> Result<(), ZkFailure> {
        match client.delete(&node.path, Some(node.version)).await {
            Ok(()) | Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(()),
            Err(e) => Err(ZkFailure::of(&format!("delete {}", node.path), e)),
        }
    }

    async fn try_lock_zk(
        &self,
        resource: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, ZkFailure> {
        let client = self.session.client().await?;
        let dir = self.dir(resource);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        let data = format!("{lease_ms}\n{owner}");
        let prefix = format!("{dir}/{PREFIX}");
        let mut attempt = 0;
        let (mine, seq) = loop {
            match client
                .create(&prefix, data.as_bytes(), &zk::EPHEMERAL_SEQUENTIAL)
                .await
            {
                Ok((stat, seq)) => break (stat, seq),
                // The resource node is missing (first use, or removed by
                // ZooKeeper as its last child went): create it and retry.
                Err(ZkError::NoNode) if attempt < zk::ATTEMPTS => {
                    zk::ensure_dir(&client, &dir).await?;
                    attempt += 1;
                }
                Err(e) => return Err(ZkFailure::of(&format!("create under {dir}"), e)),
            }
        };
        let my_path = format!("{prefix}{seq}");
        let seq = seq.into_i64();
        // Our node's creation time is ZooKeeper's "now" for this attempt.
        let now = mine.ctime;
        let before = Self::contenders(&client, &dir).await?.unwrap_or_default();
        for (_, path) in before.into_iter().take_while(|(s, _)| *s < seq) {
            let Some(node) = Self::read(&client, path).await? else {
                continue;
            };
            if node.ctime.saturating_add(node.lease_ms) > now {
                // Held (or about to be, by an earlier contender).
                match client.delete(&my_path, None).await {
                    Ok(()) | Err(ZkError::NoNode) => {}
                    Err(e) => return Err(ZkFailure::of(&format!("delete {my_path}"), e)),
                }
                return Ok(false);
            }
            Self::remove_expired(&client, &node).await?;
        }
        Ok(true)
    }

    async fn unlock_zk(&self, resource: &str, owner: &str) -> Result<UnlockStatus, ZkFailure> {
        let client = self.session.client().await?;
        let dir = self.dir(resource);
        // A write for ZooKeeper's "now" (the resource node's mtime).
        let now = match client.set_data(&dir, &[], None).await {
            Ok(stat) => stat.mtime,
            Err(ZkError::NoNode) => return Ok(UnlockStatus::LockDoesNotExist),
            Err(e) => return Err(ZkFailure::of(&format!("touch {dir}"), e)),
        };
        let nodes = Self::contenders(&client, &dir).await?.unwrap_or_default();
        for (_, path) in nodes {
            let Some(node) = Self::read(&client, path).await? else {
                continue;
            };
            if node.ctime.saturating_add(node.lease_ms) <= now {
                continue;
            }
            if node.owner != owner {
                return Ok(UnlockStatus::LockBelongsToOthers);
            }
            return match client.delete(&node.path, Some(node.version)).await {
                Ok(()) => Ok(UnlockStatus::Success),
                Err(ZkError::NoNode) | Err(ZkError::BadVersion) => {
                    Ok(UnlockStatus::LockDoesNotExist)
                }
                Err(e) => Err(ZkFailure::of(&format!("delete {}", node.path), e)),
            };
        }
        Ok(UnlockStatus::LockDoesNotExist)
    }
}

fn to_lock_error(e: ZkFailure) -> LockError {
    match e {
        ZkFailure::Unavailable(m) => LockError::Unavailable(m),
        ZkFailure::Internal(m) => LockError::Internal(m),
    }
}

#[async_trait]
impl LockStore for ZookeeperLockStore {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LockError> {
        self.session
            .timed(self.try_lock_zk(resource, owner, lease))
            .await
            .map_err(to_lock_error)
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        self.session
            .timed(self.unlock_zk(resource, owner))
            .await
            .map_err(to_lock_error)
    }

    fn releases_on_close(&self) -> bool {
        true
    }

    async fn close(&self) {
        self.session.close().await;
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "lock.zookeeper",
    build: |md, _ctx| {
        Box::pin(async move {
            let store = ZookeeperLockStore::from_metadata(md)?;
            Ok(crate::registry::Component::Lock(std::sync::Arc::new(store)))
        })
    },
};
