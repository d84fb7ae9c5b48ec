//! `state.sqlite`: a state store in an embedded SQLite database.
//!
//! Metadata:
//!
//! * `databasePath` (optional): the database file, created if missing.
//!   Defaults to `<data dir>/state-<component name>.db`. The special value
//!   `:memory:` keeps the data in memory for the life of the store. A
//!   relative path is relative to the runtime's working directory.
//! * `tableName` (optional, default `state`): a plain SQL identifier
//!   (letters, digits and `_`, not starting with a digit or `sqlite_`).
//! * `busyTimeout` (optional duration, default `5s`): how long a statement
//!   waits for another connection's write lock before failing with
//!   [`StateError::Unavailable`].
//!
//! The database runs in WAL mode. The table is created when the store opens:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "state" (
//!     key        TEXT    NOT NULL PRIMARY KEY,
//!     value      BLOB    NOT NULL,
//!     etag       TEXT    NOT NULL,
//!     expires_at INTEGER NULL,     -- unix milliseconds; NULL = never
//!     updated_at INTEGER NOT NULL  -- unix milliseconds
//! );
//! CREATE INDEX IF NOT EXISTS "state_expires_at" ON "state" (expires_at);
//! ```
//!
//! Expired rows are invisible to every statement (each one compares
//! `expires_at` with the current time), are overwritten by the next write
//! of their key, and are deleted by an occasional sweep. Conditional writes
//! are single statements whose `rows_affected` tells whether the condition
//! held; transactions run in one `BEGIN IMMEDIATE` transaction.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::SqliteConnection;

use super::memory::{new_etag, Condition};
use super::{
    Consistency, DeleteRequest, Feature, Operation, SetRequest, StateEntry, StateError, StateStore,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

const DEFAULT_TABLE: &str = "state";
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: u32 = 8;
/// How often expired rows are deleted, at most.
const SWEEP_INTERVAL_MS: i64 = 60_000;

/// The `state.sqlite` store.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    table: String,
    sql: Statements,
    /// Unix milliseconds of the last sweep of expired rows.
    last_sweep_ms: AtomicI64,
}

/// The SQL of every operation, with the table name filled in.
#[derive(Debug)]
struct Statements {
    get: String,
    upsert: String,
    insert_if_absent: String,
    update_if_etag: String,
    delete: String,
    delete_if_etag: String,
    sweep: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        let t = format!("\"{table}\"");
        let upsert = format!(
            "INSERT INTO {t} (key, value, etag, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, etag = excluded.etag, \
             expires_at = excluded.expires_at, updated_at = excluded.updated_at"
        );
        Self {
            get: format!(
                "SELECT value, etag, expires_at FROM {t} \
                 WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)"
            ),
            // Succeeds when the key is missing or only an expired row holds it.
            insert_if_absent: format!(
                "{upsert} WHERE {t}.expires_at IS NOT NULL AND {t}.expires_at <= ?5"
            ),
            upsert,
            update_if_etag: format!(
                "UPDATE {t} SET value = ?2, etag = ?3, expires_at = ?4, updated_at = ?5 \
                 WHERE key = ?1 AND etag = ?6 AND (expires_at IS NULL OR expires_at > ?5)"
            ),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            delete_if_etag: format!(
                "DELETE FROM {t} \
                 WHERE key = ?1 AND etag = ?2 AND (expires_at IS NULL OR expires_at > ?3)"
            ),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?1"),
        }
    }
}

/// Whether `name` is a plain SQL identifier: an ASCII letter or `_`, then
/// letters, digits or `_`, at most 63 characters.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && name.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a transaction did not commit.
enum TxFailure {
    Mismatch(String),
    Db(&'static str, sqlx::Error),
}

impl SqliteStore {
    /// Opens (creating if needed) the database and table described by `md`.
    pub async fn from_metadata(md: &Metadata, ctx: &InitContext) -> Result<Self, ComponentError> {
        let table = md.get("tableName").map_or(DEFAULT_TABLE, str::trim);
        if !is_identifier(table) || table.to_ascii_lowercase().starts_with("sqlite_") {
            return Err(md.invalid(
                "tableName",
                format!(
                    "'{table}' is not a valid table name (use letters, digits and '_', \
                     starting with a letter or '_', at most 63 characters, not 'sqlite_…')"
                ),
            ));
        }
        let busy_timeout = md.duration("busyTimeout")?.unwrap_or(DEFAULT_BUSY_TIMEOUT);

        let path = md.get("databasePath").map(str::trim);
        let (options, pool_options, shown_path) = if path == Some(":memory:") {
            // Every connection to `:memory:` would get its own database, so
            // keep exactly one connection open for the life of the store.
            let options = SqliteConnectOptions::from_str("sqlite::memory:")
                .map_err(|e| md.invalid("databasePath", e.to_string()))?;
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            (options, pool, ":memory:".to_string())
        } else {
            let file = match path {
                Some(p) => PathBuf::from(p),
                None => ctx
                    .data_dir
                    .join(format!("state-{}.db", file_stem(md.component()))),
            };
            let options = SqliteConnectOptions::new()
                .filename(&file)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS);
            (options, pool, file.display().to_string())
        };
        let options = options.busy_timeout(busy_timeout);
        let pool = pool_options
            .acquire_timeout(busy_timeout + Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| {
                md.invalid(
                    "databasePath",
                    format!("cannot open SQLite database '{shown_path}': {e}"),
                )
            })?;

        let store = Self {
            pool,
            table: table.to_string(),
            sql: Statements::new(table),
            last_sweep_ms: AtomicI64::new(now_ms()),
        };
        store.create_table().await.map_err(|e| {
            md.init_error(format!(
                "cannot create table '{table}' in SQLite database '{shown_path}': {e}"
            ))
        })?;
        Ok(store)
    }

    async fn create_table(&self) -> Result<(), sqlx::Error> {
        let table = &self.table;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" (\
                 key TEXT NOT NULL PRIMARY KEY, \
                 value BLOB NOT NULL, \
                 etag TEXT NOT NULL, \
                 expires_at INTEGER NULL, \
                 updated_at INTEGER NOT NULL)"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS \"{table}_expires_at\" ON \"{table}\" (expires_at)"
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A [`StateError`] for `err`, naming the table and the operation.
    fn error(&self, what: &str, err: sqlx::Error) -> StateError {
        let message = format!("SQLite table '{}': {what}: {err}", self.table);
        if is_unavailable(&err) {
            StateError::Unavailable(message)
        } else {
            StateError::Internal(message)
        }
    }

    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, StateError> {
        self.pool
            .acquire()
            .await
            .map_err(|e| self.error("acquire a connection", e))
    }

    /// Deletes expired rows in the background when the last sweep is old.
    fn sweep_if_due(&self, now: i64) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now - last < SWEEP_INTERVAL_MS
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.pool.clone();
        let sql = self.sql.sweep.clone();
        let table = self.table.clone();
        runtime.spawn(async move {
            match sqlx::query(&sql).bind(now).execute(&pool).await {
                Ok(done) => tracing::debug!(
                    table,
                    deleted = done.rows_affected(),
                    "swept expired state rows"
                ),
                Err(error) => {
                    tracing::debug!(table, %error, "sweeping expired state rows failed")
                }
            }
        });
    }

    /// Runs a write; `Ok(false)` when its etag condition did not hold.
    async fn apply_set(
        &self,
        conn: &mut SqliteConnection,
        req: &SetRequest,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let expires_at = req.ttl.map(|ttl| expiry_ms(now, ttl));
        let etag = new_etag();
        let done = match Condition::for_set(req) {
            Condition::Always => {
                sqlx::query(&self.sql.upsert)
                    .bind(&req.key)
                    .bind(&req.value)
                    .bind(&etag)
                    .bind(expires_at)
                    .bind(now)
                    .execute(conn)
                    .await?
            }
            Condition::Absent => {
                sqlx::query(&self.sql.insert_if_absent)
                    .bind(&req.key)
                    .bind(&req.value)
                    .bind(&etag)
                    .bind(expires_at)
                    .bind(now)
                    .execute(conn)
                    .await?
            }
            Condition::EtagEquals(expected) => {
                sqlx::query(&self.sql.update_if_etag)
                    .bind(&req.key)
                    .bind(&req.value)
                    .bind(&etag)
                    .bind(expires_at)
                    .bind(now)
                    .bind(expected)
                    .execute(conn)
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }

    /// Runs a delete; `Ok(false)` when its etag condition did not hold.
    async fn apply_delete(
        &self,
        conn: &mut SqliteConnection,
        req: &DeleteRequest,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        match Condition::for_delete(req) {
            Condition::EtagEquals(expected) => {
                let done = sqlx::query(&self.sql.delete_if_etag)
                    .bind(&req.key)
                    .bind(expected)
                    .bind(now)
                    .execute(conn)
                    .await?;
                Ok(done.rows_affected() > 0)
            }
            Condition::Always | Condition::Absent => {
                sqlx::query(&self.sql.delete)
                    .bind(&req.key)
                    .execute(conn)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn try_transact(&self, ops: &[Operation], now: i64) -> Result<(), TxFailure> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| TxFailure::Db("begin a transaction", e))?;
        for op in ops {
            let applied = match op {
                Operation::Set(req) => self.apply_set(&mut tx, req, now).await,
                Operation::Delete(req) => self.apply_delete(&mut tx, req, now).await,
            };
            match applied {
                Ok(true) => {}
                // Dropping `tx` rolls the transaction back.
                Ok(false) => return Err(TxFailure::Mismatch(op.key().to_string())),
                Err(e) => return Err(TxFailure::Db("transaction", e)),
            }
        }
        tx.commit()
            .await
            .map_err(|e| TxFailure::Db("commit a transaction", e))
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Etag, Feature::Transactional, Feature::Ttl]
    }

    async fn get(
        &self,
        key: &str,
        _consistency: Consistency,
    ) -> Result<Option<StateEntry>, StateError> {
        let now = now_ms();
        self.sweep_if_due(now);
        let row: Option<(Vec<u8>, String, Option<i64>)> = sqlx::query_as(&self.sql.get)
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(&format!("get key '{key}'"), e))?;
        Ok(row.map(|(value, etag, expires_at)| StateEntry {
            value,
            etag,
            expires_at: expires_at.map(from_ms),
        }))
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let now = now_ms();
        self.sweep_if_due(now);
        let mut conn = self.acquire().await?;
        match self.apply_set(&mut conn, &req, now).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StateError::EtagMismatch { key: req.key }),
            Err(e) => Err(self.error(&format!("set key '{}'", req.key), e)),
        }
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let now = now_ms();
        self.sweep_if_due(now);
        let mut conn = self.acquire().await?;
        match self.apply_delete(&mut conn, &req, now).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StateError::EtagMismatch { key: req.key }),
            Err(e) => Err(self.error(&format!("delete key '{}'", req.key), e)),
        }
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.sweep_if_due(now);
        match self.try_transact(&ops, now).await {
            Ok(()) => Ok(()),
            Err(TxFailure::Mismatch(key)) => Err(StateError::EtagMismatch { key }),
            Err(TxFailure::Db(what, e)) => Err(self.error(what, e)),
        }
    }

    async fn ping(&self) -> Result<(), StateError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| self.error("ping", e))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether `err` is worth retrying later: the database is busy or locked,
/// the file cannot be read or written, or the pool is exhausted or closed.
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // Extended result codes keep the primary code in the low byte.
            let primary = db
                .code()
                .and_then(|code| code.parse::<i64>().ok())
                .map(|code| code & 0xff);
            // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_CANTOPEN.
            matches!(primary, Some(5 | 6 | 10 | 14))
        }
        _ => false,
    }
}

/// A component name made safe for a file name.
fn file_stem(component: &str) -> String {
    component
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `now` plus `ttl`, in unix milliseconds, saturating.
fn expiry_ms(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// Unix milliseconds as a time, clamped to 1970..=9999 so that every
/// platform's `SystemTime` can hold it.
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    const YEAR_9999_MS: u64 = 253_402_300_799_000;
    let ms = u64::try_from(ms).unwrap_or(0).min(YEAR_9999_MS);
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("state"));
        assert!(is_identifier("_State_2"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("2state"));
        assert!(!is_identifier("state; DROP TABLE x"));
        assert!(!is_identifier("a.b"));
        assert!(!is_identifier(&"a".repeat(64)));
    }

    #[test]
    fn file_stems() {
        assert_eq!(file_stem("my-store.v1"), "my-store.v1");
        assert_eq!(file_stem("../x y"), ".._x_y");
    }
}
