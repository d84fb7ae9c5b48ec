//! `sequencer.zookeeper`: sequences as persistent znodes in Apache
//! ZooKeeper, for runtimes on many machines.
//!
//! # Metadata
//!
//! * `servers` (required): the ensemble, `host:port` entries separated by
//!   commas, as for `nameresolution.zookeeper`.
//! * `root` (optional, default `/weft-sequences`): the znode under which
//!   sequences live.
//! * `sessionTimeout` (optional duration, default `10s`).
//! * `requestTimeout` (optional duration, default `5s`): per operation
//!   (all attempts of a contended reservation together).
//!
//! # Layout and algorithm
//!
//! A key is the persistent node `<root>/<key>` (bytes outside
//! `[A-Za-z0-9_|:@-]` written `%XX`) whose data is the next id to reserve,
//! in decimal. A reservation reads the node and writes the moved-on value
//! with `setData` conditional on the version it read: of two runtimes
//! reserving at once one write fails (`BadVersion`) and that runtime reads
//! again. ZooKeeper commits each write on a quorum before answering, so a
//! reservation survives the loss of the leader; a read served by a lagging
//! follower only costs a retry. The first reservation creates the node.
//! Nothing is ephemeral: sequences outlive every session.

use async_trait::async_trait;
use zookeeper_client::Error as ZkError;

use super::{SequencerError, SequencerStore};
use crate::zk::{self, Session, ZkFailure};
use crate::{ComponentError, Metadata};

/// Default znode under which sequences live.
pub const DEFAULT_ROOT: &str = "/weft-sequences";

/// Sequences in ZooKeeper.
pub struct ZookeeperSequencer {
    session: Session,
}

impl std::fmt::Debug for ZookeeperSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZookeeperSequencer")
            .field("servers", &self.session.cfg.servers)
            .field("root", &self.session.cfg.root)
            .finish()
    }
}

impl ZookeeperSequencer {
    /// Builds the store; connects on first use.
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        Ok(Self {
            session: Session::new(zk::config(md, DEFAULT_ROOT)?),
        })
    }

    async fn reserve_zk(&self, key: &str, count: i64) -> Result<i64, ZkFailure> {
        let client = self.session.client().await?;
        let root = &self.session.cfg.root;
        let path = format!("{root}/{}", zk::node_name(key));
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            match client.get_data(&path).await {
                Ok((data, stat)) => {
                    let text = String::from_utf8_lossy(&data);
                    let next: i64 = text.trim().parse().map_err(|_| {
                        ZkFailure::Internal(format!(
                            "ZooKeeper node {path} holds '{text}', not a number"
                        ))
                    })?;
                    let moved = next.checked_add(count).ok_or_else(|| {
                        ZkFailure::Internal(format!("sequence {path} is exhausted"))
                    })?;
                    match client
                        .set_data(&path, moved.to_string().as_bytes(), Some(stat.version))
                        .await
                    {
                        Ok(_) => return Ok(next),
                        Err(ZkError::BadVersion) | Err(ZkError::NoNode) => {}
                        Err(e) => return Err(ZkFailure::of(&format!("write {path}"), e)),
                    }
                }
                Err(ZkError::NoNode) => {
                    if root != "/" && !root.is_empty() {
                        client
                            .mkdir(root, &zk::PERSISTENT)
                            .await
                            .map_err(|e| ZkFailure::of(&format!("create {root}"), e))?;
                    }
                    let first = (1 + count).to_string();
                    match client
                        .create(&path, first.as_bytes(), &zk::PERSISTENT)
                        .await
                    {
                        Ok(_) => return Ok(1),
                        Err(ZkError::NodeExists) => {}
                        Err(e) => return Err(ZkFailure::of(&format!("create {path}"), e)),
                    }
                }
                Err(e) => return Err(ZkFailure::of(&format!("read {path}"), e)),
            }
            // Another runtime moved the sequence first: read it again,
            // pausing a little once contention lasts.
            if attempt > 4 {
                zk::pause(attempt).await;
            }
        }
    }
}

#[async_trait]
impl SequencerStore for ZookeeperSequencer {
    async fn reserve(&self, key: &str, count: u64) -> Result<i64, SequencerError> {
        let count = i64::try_from(count.max(1))
            .map_err(|_| SequencerError::InvalidRequest(format!("cannot reserve {count} ids")))?;
        self.session
            .timed(self.reserve_zk(key, count))
            .await
            .map_err(|e| match e {
                ZkFailure::Unavailable(m) => SequencerError::Unavailable(m),
                ZkFailure::Internal(m) => SequencerError::Internal(m),
            })
    }

    async fn close(&self) {
        self.session.close().await;
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "sequencer.zookeeper",
    build: |md, _ctx| {
        Box::pin(async move {
            let store = ZookeeperSequencer::from_metadata(md)?;
            Ok(crate::registry::Component::Sequencer(std::sync::Arc::new(
                store,
            )))
        })
    },
};
