//! `sequencer.sqlite`: sequences in one SQLite database file that every
//! runtime of a machine opens (the embedded default `sequencer`).
//!
//! # Metadata
//!
//! * `databasePath` (optional): the file, created (mode 0600) if missing.
//!   Defaults to `<local registry dir>.sequencer.db`, beside the default
//!   lock database (`lock.sqlite`), so the runtimes of one machine share
//!   their sequences. An existing file owned by another user is refused.
//! * `busyTimeout` (optional duration, default `5s`): how long a statement
//!   waits for another process's write before failing with `Unavailable`.
//!
//! One row per key holds the next id to reserve; a reservation is one
//! upsert that moves it on. Unlike the lock database, every commit is
//! synced (`synchronous=FULL`): an id handed out must stay used after a
//! power loss, or it would be handed out again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;

use super::{SequencerError, SequencerStore};
use crate::{ComponentError, Metadata};

/// Sequences in a shared SQLite file.
pub struct SqliteSequencer {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSequencer")
            .field("path", &self.path)
            .finish()
    }
}

/// The default database file: beside the local registry directory (and
/// the default lock database).
pub fn default_path() -> PathBuf {
    let registry = crate::nameresolution::local::default_dir();
    let mut name = registry
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "weft-registry".into());
    name.push(".sequencer.db");
    registry.with_file_name(name)
}

impl SqliteSequencer {
    pub fn open(md: &Metadata) -> Result<Self, ComponentError> {
        let path = md
            .get("databasePath")
            .map(PathBuf::from)
            .unwrap_or_else(default_path);
        let busy = md
            .duration("busyTimeout")?
            .unwrap_or(Duration::from_secs(5));
        Self::open_at(&path, busy).map_err(|reason| md.invalid("databasePath", reason))
    }

    /// Opens (creating) the database at `path`.
    pub fn open_at(path: &Path, busy: Duration) -> Result<Self, String> {
        crate::lock::sqlite::create_shared_file(path)?;
        let conn =
            Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(busy)
            .and_then(|_| {
                conn.execute_batch(
                    "PRAGMA journal_mode=WAL;
                     PRAGMA synchronous=FULL;
                     CREATE TABLE IF NOT EXISTS sequences (
                         key TEXT PRIMARY KEY,
                         next_id INTEGER NOT NULL
                     );",
                )
            })
            .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }
}

#[async_trait]
impl SequencerStore for SqliteSequencer {
    async fn reserve(&self, key: &str, count: u64) -> Result<i64, SequencerError> {
        let count = i64::try_from(count.max(1))
            .map_err(|_| SequencerError::InvalidRequest(format!("cannot reserve {count} ids")))?;
        let key = key.to_string();
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.prepare_cached(
                "INSERT INTO sequences (key, next_id) VALUES (?1, 1 + ?2)
                 ON CONFLICT (key) DO UPDATE SET next_id = next_id + ?2
                 RETURNING next_id - ?2",
            )
            .and_then(|mut st| st.query_row(rusqlite::params![key, count], |r| r.get(0)))
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if matches!(
                        f.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    SequencerError::Unavailable(format!("{} is busy: {e}", path.display()))
                }
                e => SequencerError::Internal(format!("{}: {e}", path.display())),
            })
        })
        .await
        .map_err(|e| SequencerError::Internal(format!("sequencer task failed: {e}")))?
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "sequencer.sqlite",
    build: |md, _ctx| {
        Box::pin(async move {
            let store = SqliteSequencer::open(md)?;
            Ok(crate::registry::Component::Sequencer(Arc::new(store)))
        })
    },
};
