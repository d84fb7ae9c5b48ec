//! `lock.sqlite`: locks in one SQLite database file that every runtime of
//! a machine opens, so they exclude each other (the embedded default
//! `lockstore`). Leases are timed by SQLite's clock, read inside each
//! statement, so every runtime sharing the file sees one time.
//!
//! # Metadata
//!
//! * `databasePath` (optional): the file, created (mode 0600) if missing.
//!   Defaults to `<local registry dir>.locks.db` beside the local name
//!   resolution registry (`WEFT_LOCAL_REGISTRY_DIR`, else
//!   `$XDG_RUNTIME_DIR/weft/registry`, else `/tmp/weft-registry-<uid>`), so
//!   runtimes that find each other also share their locks. An existing
//!   file owned by another user is refused.
//! * `busyTimeout` (optional duration, default `5s`): how long a statement
//!   waits for another process's write before failing with `Unavailable`.
//!
//! Rows of expired leases are taken over in place, so the table holds at
//! most one row per resource ever locked; unlocked rows are deleted.
//!
//! Commits are not fsynced one by one (WAL with `synchronous=NORMAL`): a
//! lock is shared by the runtimes of one machine, and a power loss that
//! forgets the last locks also ended every holder. A process crash loses
//! nothing. This made a TryLock+Unlock pair about 3.5× cheaper
//! (docs/benchmarks.md, "Distributed lock").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};

use super::{LockError, LockStore, UnlockStatus};
use crate::{shared_sqlite, ComponentError, Metadata};

/// SQLite's clock in milliseconds since the Unix epoch.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// Locks in a shared SQLite file.
pub struct SqliteLockStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteLockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLockStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "PRAGMA journal_mode=WAL;
     PRAGMA synchronous=NORMAL;
     CREATE TABLE IF NOT EXISTS locks (
         resource TEXT PRIMARY KEY,
         owner TEXT NOT NULL,
         expires_ms INTEGER NOT NULL
     );";

/// The default database file: beside the local registry directory.
pub fn default_path() -> PathBuf {
    shared_sqlite::beside_registry(".locks.db")
}

impl SqliteLockStore {
    pub fn open(md: &Metadata) -> Result<Self, ComponentError> {
        let (conn, path) = shared_sqlite::open_from(md, default_path, SCHEMA)?;
        Ok(Self::with(conn, path))
    }

    /// Opens (creating) the database at `path`.
    pub fn open_at(path: &Path, busy: Duration) -> Result<Self, String> {
        let conn = shared_sqlite::open(path, busy, SCHEMA)?;
        Ok(Self::with(conn, path.to_path_buf()))
    }

    fn with(conn: Connection, path: PathBuf) -> Self {
        Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LockError> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn).map_err(|e| match e {
                e if shared_sqlite::is_busy(&e) => {
                    LockError::Unavailable(format!("{} is busy: {e}", path.display()))
                }
                e => LockError::Internal(format!("{}: {e}", path.display())),
            })
        })
        .await
        .map_err(|e| LockError::Internal(format!("lock task failed: {e}")))?
    }
}

#[async_trait]
impl LockStore for SqliteLockStore {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LockError> {
        let (resource, owner) = (resource.to_string(), owner.to_string());
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        self.run(move |c| {
            let changed = c.execute(
                &format!(
                    "INSERT INTO locks (resource, owner, expires_ms) VALUES (?1, ?2, {NOW_MS} + ?3)
                     ON CONFLICT (resource) DO UPDATE
                       SET owner = excluded.owner, expires_ms = excluded.expires_ms
                       WHERE locks.expires_ms <= {NOW_MS}"
                ),
                rusqlite::params![resource, owner, lease_ms],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        let (resource, owner) = (resource.to_string(), owner.to_string());
        self.run(move |c| {
            let deleted = c.execute(
                &format!(
                    "DELETE FROM locks WHERE resource = ?1 AND owner = ?2 AND expires_ms > {NOW_MS}"
                ),
                rusqlite::params![resource, owner],
            )?;
            if deleted == 1 {
                return Ok(UnlockStatus::Success);
            }
            let holder: Option<String> = c
                .query_row(
                    &format!(
                        "SELECT owner FROM locks WHERE resource = ?1 AND expires_ms > {NOW_MS}"
                    ),
                    [&resource],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(match holder {
                Some(_) => UnlockStatus::LockBelongsToOthers,
                None => UnlockStatus::LockDoesNotExist,
            })
        })
        .await
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "lock.sqlite",
    build: |md, _ctx| {
        Box::pin(async move {
            let store = SqliteLockStore::open(md)?;
            Ok(crate::registry::Component::Lock(Arc::new(store)))
        })
    },
};
