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
use crate::{shared_sqlite, ComponentError, Metadata};

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

const SCHEMA: &str = "PRAGMA journal_mode=WAL;
     PRAGMA synchronous=FULL;
     CREATE TABLE IF NOT EXISTS sequences (
         key TEXT PRIMARY KEY,
         next_id INTEGER NOT NULL
     );";

/// The default database file: beside the local registry directory (and
/// the default lock database).
pub fn default_path() -> PathBuf {
    shared_sqlite::beside_registry(".sequencer.db")
}

impl SqliteSequencer {
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
                e if shared_sqlite::is_busy(&e) => {
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
