//! `state.postgresql`: a state store in a PostgreSQL table.
//!
//! Metadata:
//!
//! * `connectionString` (required): a `postgres://user:password@host:port/db`
//!   URL or a libpq-style `host=… port=… user=… password=… dbname=…` string.
//!   TLS is not available in this build (`sslmode=require` fails to connect).
//! * `tableName` (optional, default `weft_state`): an identifier, optionally
//!   schema-qualified (`myschema.state`). Like unquoted SQL names it is
//!   case-insensitive (folded to lower case).
//! * `maxConns` (optional, default 10): the size of the connection pool.
//! * `timeout` (optional duration, default `20s`): the limit of each
//!   operation, including waiting for a connection.
//!
//! Start-up never waits for the server: connections are opened on demand,
//! a call that cannot get one within a few seconds fails with
//! [`StateError::Unavailable`], and the pool reconnects once the server is
//! back. The table is created on first use (retried until it succeeds):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS weft_state (
//!     key        TEXT        NOT NULL PRIMARY KEY,
//!     value      BYTEA       NOT NULL,
//!     etag       TEXT        NOT NULL,
//!     expires_at TIMESTAMPTZ NULL,                   -- NULL = never
//!     updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
//! );
//! CREATE INDEX IF NOT EXISTS weft_state_expires_at ON weft_state (expires_at);
//! ```
//!
//! Expiry uses the server's clock. Expired rows are invisible to every
//! statement, are overwritten by the next write of their key, and are
//! deleted by an occasional sweep. Conditional writes are single statements
//! whose `rows_affected` tells whether the condition held; transactions run
//! in one database transaction (retried a few times on deadlock or
//! serialization failure).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::PgConnection;
use tokio::sync::OnceCell;

use super::memory::{new_etag, Condition};
use super::sqlite::{from_ms, is_identifier, now_ms};
use super::{
    Consistency, DeleteRequest, Feature, Operation, SetRequest, StateEntry, StateError, StateStore,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

const DEFAULT_TABLE: &str = "weft_state";
const DEFAULT_MAX_CONNS: u32 = 10;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a call waits for a connection (so a down server answers fast).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often expired rows are deleted, at most.
const SWEEP_INTERVAL_MS: i64 = 60_000;
/// TTLs are capped at about 1000 years.
const MAX_TTL_SECS: f64 = 1000.0 * 365.0 * 86_400.0;
/// Attempts of a transaction that hits a deadlock or serialization failure.
const TRANSACTION_ATTEMPTS: u32 = 3;

/// The `state.postgresql` store.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// The table as written in SQL (each part quoted).
    table: String,
    /// The table as the user named it, folded to lower case, for messages.
    shown_table: String,
    /// The unqualified table name, for naming its index.
    table_stem: String,
    timeout: Duration,
    sql: Statements,
    /// Set once the table exists; an error leaves it unset for a retry.
    table_ready: OnceCell<()>,
    /// Unix milliseconds of the last sweep of expired rows.
    last_sweep_ms: AtomicI64,
}

/// The SQL of every operation, with the table name filled in.
///
/// TTLs are bound as seconds (`FLOAT8`, or NULL for none):
/// `now() + NULL * INTERVAL '1 second'` is NULL, i.e. no expiry.
#[derive(Debug)]
struct Statements {
    get: String,
    bulk_get: String,
    upsert: String,
    insert_if_absent: String,
    update_if_etag: String,
    delete: String,
    delete_if_etag: String,
    sweep: String,
}

impl Statements {
    fn new(t: &str) -> Self {
        let columns = "value, etag, (EXTRACT(EPOCH FROM expires_at) * 1000)::BIGINT";
        let live = "(expires_at IS NULL OR expires_at > now())";
        let upsert = format!(
            "INSERT INTO {t} AS s (key, value, etag, expires_at) \
             VALUES ($1, $2, $3, now() + $4 * INTERVAL '1 second') \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, etag = EXCLUDED.etag, \
             expires_at = EXCLUDED.expires_at, updated_at = now()"
        );
        Self {
            get: format!("SELECT {columns} FROM {t} WHERE key = $1 AND {live}"),
            bulk_get: format!("SELECT key, {columns} FROM {t} WHERE key = ANY($1) AND {live}"),
            // Succeeds when the key is missing or only an expired row holds it.
            insert_if_absent: format!(
                "{upsert} WHERE s.expires_at IS NOT NULL AND s.expires_at <= now()"
            ),
            upsert,
            update_if_etag: format!(
                "UPDATE {t} SET value = $2, etag = $3, \
                 expires_at = now() + $4 * INTERVAL '1 second', updated_at = now() \
                 WHERE key = $1 AND etag = $5 AND {live}"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            delete_if_etag: format!("DELETE FROM {t} WHERE key = $1 AND etag = $2 AND {live}"),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= now()"),
        }
    }
}

/// Why a transaction did not commit.
enum TxFailure {
    Mismatch(String),
    Db(&'static str, sqlx::Error),
}

impl PostgresStore {
    /// Builds the store from `md`. Does not connect: a server that is down
    /// makes calls fail with [`StateError::Unavailable`] until it is back.
    pub fn from_metadata(md: &Metadata, _ctx: &InitContext) -> Result<Self, ComponentError> {
        let options = parse_connection_string(md.required("connectionString")?.trim())
            .map_err(|reason| md.invalid("connectionString", reason))?;

        let shown_table = md
            .get("tableName")
            .map_or(DEFAULT_TABLE, str::trim)
            .to_ascii_lowercase();
        let parts: Vec<&str> = shown_table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|part| is_identifier(part)) {
            return Err(md.invalid(
                "tableName",
                format!(
                    "'{shown_table}' is not a valid table name (use letters, digits and '_', \
                     starting with a letter or '_', optionally as 'schema.table')"
                ),
            ));
        }
        let table = parts
            .iter()
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".");
        let table_stem = parts.last().copied().unwrap_or(DEFAULT_TABLE).to_string();

        let max_conns = md.parse::<u32>("maxConns")?.unwrap_or(DEFAULT_MAX_CONNS);
        if max_conns == 0 {
            return Err(md.invalid("maxConns", "must be at least 1"));
        }
        let timeout = md.duration("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(md.invalid("timeout", "must be more than 0"));
        }

        // The pool's maintenance task needs a Tokio runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(md.init_error("must be created inside a Tokio runtime"));
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_conns)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT.min(timeout))
            .test_before_acquire(true)
            .connect_lazy_with(options);

        Ok(Self {
            pool,
            sql: Statements::new(&table),
            table,
            shown_table,
            table_stem,
            timeout,
            table_ready: OnceCell::new(),
            last_sweep_ms: AtomicI64::new(now_ms()),
        })
    }

    /// A [`StateError`] for `err`, naming the table and the operation.
    fn error(&self, what: &str, err: sqlx::Error) -> StateError {
        let detail = match &err {
            sqlx::Error::PoolTimedOut => format!(
                "no connection to the server within {:?} (is it running and reachable?)",
                ACQUIRE_TIMEOUT.min(self.timeout)
            ),
            other => other.to_string(),
        };
        let message = format!("PostgreSQL table '{}': {what}: {detail}", self.shown_table);
        if is_unavailable(&err) {
            StateError::Unavailable(message)
        } else {
            StateError::Internal(message)
        }
    }

    /// Runs `op` within the per-operation timeout, after making sure the
    /// table exists.
    async fn run<T>(
        &self,
        what: impl FnOnce() -> String,
        op: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let work = async {
            self.ensure_table().await?;
            self.sweep_if_due();
            op.await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StateError::Unavailable(format!(
                "PostgreSQL table '{}': {} did not finish within {:?}",
                self.shown_table,
                what(),
                self.timeout
            ))),
        }
    }

    async fn ensure_table(&self) -> Result<(), StateError> {
        self.table_ready
            .get_or_try_init(|| async {
                // Two processes creating the table at once can make one of
                // them fail on a catalog entry of the other's (see
                // `create_table` below); the second attempt sees the table.
                match self.create_table().await {
                    Err(sqlx::Error::Database(db))
                        if matches!(db.code().as_deref(), Some("23505" | "42P07" | "42710")) =>
                    {
                        self.create_table().await
                    }
                    other => other,
                }
                .map_err(|e| self.error("create the table", e))
            })
            .await
            .map(|_| ())
    }

    async fn create_table(&self) -> Result<(), sqlx::Error> {
        let t = &self.table;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
                 key TEXT NOT NULL PRIMARY KEY, \
                 value BYTEA NOT NULL, \
                 etag TEXT NOT NULL, \
                 expires_at TIMESTAMPTZ NULL, \
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS \"{}_expires_at\" ON {t} (expires_at)",
            self.table_stem
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes expired rows in the background when the last sweep is old.
    fn sweep_if_due(&self) {
        let now = now_ms();
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
        let table = self.shown_table.clone();
        let timeout = self.timeout;
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, sqlx::query(&sql).execute(&pool)).await {
                Ok(Ok(done)) => tracing::debug!(
                    table,
                    deleted = done.rows_affected(),
                    "swept expired state rows"
                ),
                Ok(Err(error)) => {
                    tracing::debug!(table, %error, "sweeping expired state rows failed")
                }
                Err(_) => tracing::debug!(table, "sweeping expired state rows timed out"),
            }
        });
    }

    /// Runs a write; `Ok(false)` when its etag condition did not hold.
    async fn apply_set(
        &self,
        conn: &mut PgConnection,
        req: &SetRequest,
    ) -> Result<bool, sqlx::Error> {
        // Far beyond any useful TTL, and within PostgreSQL's timestamp range.
        let ttl_secs = req.ttl.map(|ttl| ttl.as_secs_f64().min(MAX_TTL_SECS));
        let etag = new_etag();
        let done = match Condition::for_set(req) {
            Condition::Always => {
                sqlx::query(&self.sql.upsert)
                    .bind(&req.key)
                    .bind(&req.value)
                    .bind(&etag)
                    .bind(ttl_secs)
                    .execute(conn)
                    .await?
            }
            Condition::Absent => {
                sqlx::query(&self.sql.insert_if_absent)
                    .bind(&req.key)
                    .bind(&req.value)
                    .bind(&etag)
                    .bind(ttl_secs)
                    .execute(conn)
                    .await?
            }
            Condition::EtagEquals(expected) => {
                sqlx::query(&self.sql.update_if_etag)
                    .bind(&req.key)
                    .bind(&req.value)
                    .bind(&etag)
                    .bind(ttl_secs)
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
        conn: &mut PgConnection,
        req: &DeleteRequest,
    ) -> Result<bool, sqlx::Error> {
        match Condition::for_delete(req) {
            Condition::EtagEquals(expected) => {
                let done = sqlx::query(&self.sql.delete_if_etag)
                    .bind(&req.key)
                    .bind(expected)
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

    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StateError> {
        self.pool
            .acquire()
            .await
            .map_err(|e| self.error("acquire a connection", e))
    }

    async fn try_transact(&self, ops: &[Operation]) -> Result<(), TxFailure> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| TxFailure::Db("begin a transaction", e))?;
        for op in ops {
            let applied = match op {
                Operation::Set(req) => self.apply_set(&mut tx, req).await,
                Operation::Delete(req) => self.apply_delete(&mut tx, req).await,
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
impl StateStore for PostgresStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Etag, Feature::Transactional, Feature::Ttl]
    }

    async fn get(
        &self,
        key: &str,
        _consistency: Consistency,
    ) -> Result<Option<StateEntry>, StateError> {
        let what = || format!("get key '{key}'");
        self.run(what, async {
            let row: Option<(Vec<u8>, String, Option<i64>)> = sqlx::query_as(&self.sql.get)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(&what(), e))?;
            Ok(row.map(|(value, etag, expires_at)| StateEntry {
                value,
                etag,
                expires_at: expires_at.map(from_ms),
            }))
        })
        .await
    }

    async fn bulk_get(&self, keys: &[String]) -> Result<Vec<Option<StateEntry>>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let what = || format!("bulk get of {} keys", keys.len());
        self.run(what, async {
            let rows: Vec<(String, Vec<u8>, String, Option<i64>)> =
                sqlx::query_as(&self.sql.bulk_get)
                    .bind(keys)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| self.error(&what(), e))?;
            let mut found: HashMap<String, StateEntry> = rows
                .into_iter()
                .map(|(key, value, etag, expires_at)| {
                    let entry = StateEntry {
                        value,
                        etag,
                        expires_at: expires_at.map(from_ms),
                    };
                    (key, entry)
                })
                .collect();
            // A key asked for twice gets the entry twice.
            let mut out = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                let repeated = keys[i + 1..].contains(key);
                out.push(if repeated {
                    found.get(key).cloned()
                } else {
                    found.remove(key)
                });
            }
            Ok(out)
        })
        .await
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let what = || format!("set key '{}'", req.key);
        self.run(what, async {
            let mut conn = self.acquire().await?;
            match self.apply_set(&mut conn, &req).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(StateError::EtagMismatch {
                    key: req.key.clone(),
                }),
                Err(e) => Err(self.error(&what(), e)),
            }
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let what = || format!("delete key '{}'", req.key);
        self.run(what, async {
            let mut conn = self.acquire().await?;
            match self.apply_delete(&mut conn, &req).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(StateError::EtagMismatch {
                    key: req.key.clone(),
                }),
                Err(e) => Err(self.error(&what(), e)),
            }
        })
        .await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        let what = || format!("transaction of {} operations", ops.len());
        self.run(what, async {
            let mut attempt = 1;
            loop {
                match self.try_transact(&ops).await {
                    Ok(()) => return Ok(()),
                    Err(TxFailure::Mismatch(key)) => return Err(StateError::EtagMismatch { key }),
                    Err(TxFailure::Db(_, e)) if attempt < TRANSACTION_ATTEMPTS && is_retryable(&e) => {
                        tracing::debug!(table = %self.shown_table, error = %e, attempt, "retrying state transaction");
                        attempt += 1;
                    }
                    Err(TxFailure::Db(what, e)) => return Err(self.error(what, e)),
                }
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        let what = || "ping".to_string();
        let ping = async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| self.error("ping", e))
        };
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(result) => result,
            Err(_) => Err(StateError::Unavailable(format!(
                "PostgreSQL table '{}': {} did not finish within {:?}",
                self.shown_table,
                what(),
                self.timeout
            ))),
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether `err` means the server cannot be reached right now: connection
/// and pool failures, SQLSTATE class 08 (connection exception), 57P01-57P03
/// (server shutting down or starting up) and class 53 (out of resources,
/// e.g. too many connections).
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether a transaction failing with `err` may succeed if run again:
/// serialization failure or deadlock.
fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40001" | "40P01")),
        _ => false,
    }
}

/// The settings every table-backed PostgreSQL store reads
/// (`connectionString`, `tableName` defaulting to `default_table`,
/// `timeout` per operation, default 5 s): a lazily connecting pool, the
/// checked table name and the timeout.
pub(crate) fn table_settings(
    md: &Metadata,
    default_table: &str,
) -> Result<(PgPool, String, Duration), ComponentError> {
    let options = parse_connection_string(md.required("connectionString")?.trim())
        .map_err(|reason| md.invalid("connectionString", reason))?;
    let table = md
        .get("tableName")
        .map_or(default_table, str::trim)
        .to_ascii_lowercase();
    if !crate::state::sqlite::is_identifier(&table) {
        return Err(md.invalid(
            "tableName",
            format!("'{table}' is not a valid table name (letters, digits and '_', starting with a letter or '_')"),
        ));
    }
    let timeout = md.duration("timeout")?.unwrap_or(Duration::from_secs(5));
    if timeout.is_zero() {
        return Err(md.invalid("timeout", "must be more than 0"));
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(md.init_error("must be created inside a Tokio runtime"));
    }
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .min_connections(0)
        .acquire_timeout(timeout)
        .connect_lazy_with(options);
    Ok((pool, table, timeout))
}

/// `CREATE TABLE IF NOT EXISTS table (columns)`, where another runtime
/// creating it at the same moment counts as done. Both pass IF NOT EXISTS,
/// and the one that commits second fails on a catalog entry the first one
/// made: the table's name (42P07), its row type's name (42710, "type …
/// already exists") or the unique index under either (23505). Those count
/// when the table is there afterwards (not when, say, a type of that name
/// was all there was).
pub(crate) async fn create_table(
    pool: &PgPool,
    table: &str,
    columns: &str,
) -> Result<(), sqlx::Error> {
    match sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {table} ({columns})"))
        .execute(pool)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = e.as_database_error().and_then(|d| d.code());
            if !matches!(code.as_deref(), Some("23505" | "42P07" | "42710")) {
                return Err(e);
            }
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(pool)
                .await?;
            if exists {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Parses a `postgres://` URL or a libpq `key=value` connection string.
/// Messages never repeat the string (it may hold a password).
pub(crate) fn parse_connection_string(raw: &str) -> Result<PgConnectOptions, String> {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        return PgConnectOptions::from_str(raw)
            .map_err(|e| format!("not a valid postgres:// URL: {e}"));
    }
    if !raw.contains('=') {
        return Err(
            "expected a postgres:// URL or a 'host=… user=… dbname=…' connection string"
                .to_string(),
        );
    }
    let mut options = PgConnectOptions::new_without_pgpass();
    for (key, value) in parse_key_values(raw)? {
        options = match key.as_str() {
            "host" | "hostaddr" if value.starts_with('/') => options.socket(&value),
            "host" | "hostaddr" => options.host(&value),
            "port" => options.port(
                value
                    .parse()
                    .map_err(|_| format!("'port' must be a port number, not '{value}'"))?,
            ),
            "user" => options.username(&value),
            "password" => options.password(&value),
            "dbname" | "database" => options.database(&value),
            "sslmode" => options.ssl_mode(
                PgSslMode::from_str(&value)
                    .map_err(|_| format!("'sslmode' has an unknown value '{value}'"))?,
            ),
            "sslrootcert" => options.ssl_root_cert(&value),
            "sslcert" => options.ssl_client_cert(&value),
            "sslkey" => options.ssl_client_key(&value),
            "application_name" => options.application_name(&value),
            // Accepted for compatibility with pgx/libpq strings; the pool is
            // configured by `maxConns` and `timeout` instead.
            "connect_timeout" => options,
            k if k.starts_with("pool_") => options,
            other => return Err(format!("unsupported connection parameter '{other}'")),
        };
    }
    Ok(options)
}

/// Splits `key=value key2='quoted value'` (libpq syntax: spaces around `=`
/// allowed, values optionally single-quoted, `\` escapes the next character).
fn parse_key_values(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = raw.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected '=' after '{key}'"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of '{key}'")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key.to_ascii_lowercase(), value));
    }
}

/// `state.postgresql` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "state.postgresql",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::State(Arc::new(PostgresStore::from_metadata(
                md, ctx,
            )?)))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings() {
        let pairs = parse_key_values(r"host=db port = 5433 password='a b\'c' user=x\ y").unwrap();
        let expected = [
            ("host", "db"),
            ("port", "5433"),
            ("password", "a b'c"),
            ("user", "x y"),
        ];
        assert_eq!(
            pairs,
            expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(parse_key_values("host").is_err());
        assert!(parse_key_values("password='open").is_err());
    }

    #[test]
    fn connection_strings() {
        let o =
            parse_connection_string("host=db port=6000 user=u dbname=d connect_timeout=3").unwrap();
        assert_eq!(o.get_host(), "db");
        assert_eq!(o.get_port(), 6000);
        assert_eq!(o.get_username(), "u");
        assert_eq!(o.get_database(), Some("d"));
        let o = parse_connection_string("postgres://u:pw@h:7000/d").unwrap();
        assert_eq!((o.get_host(), o.get_port()), ("h", 7000));
        let err = parse_connection_string("host=db bogus=1").unwrap_err();
        assert!(err.contains("'bogus'"), "{err}");
        let err = parse_connection_string("port=abc password=secret").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(parse_connection_string("just-a-host").is_err());
    }

    /// Runtimes starting together create their table at the same moment:
    /// every one of them must succeed (the losers of that race fail on
    /// catalog entries the winner made; see `create_table`). Sixteen warm
    /// connections create one fresh table at once, twenty times.
    #[cfg_attr(
        weft_no_pg,
        ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tables_created_at_the_same_moment() {
        const AT_ONCE: usize = 16;
        let url = std::env::var("WEFT_TEST_PG_URL").expect(
            "WEFT_TEST_PG_URL is not set: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\"",
        );
        let pool = PgPoolOptions::new()
            .max_connections(AT_ONCE as u32)
            .connect(&url)
            .await
            .expect("connect to the test server");
        let mut warm = Vec::new();
        for _ in 0..AT_ONCE {
            warm.push(pool.acquire().await.expect("a connection"));
        }
        drop(warm);
        for round in 0..20 {
            let table = format!("weft_race_{}", uuid::Uuid::new_v4().simple());
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(AT_ONCE));
            let tasks: Vec<_> = (0..AT_ONCE)
                .map(|_| {
                    let (pool, table, start) = (pool.clone(), table.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        create_table(&pool, &table, "k TEXT PRIMARY KEY").await
                    })
                })
                .collect();
            for t in tasks {
                if let Err(e) = t.await.expect("task") {
                    panic!("round {round}: {e}");
                }
            }
            sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&pool)
                .await
                .expect("drop the table");
        }
        pool.close().await;
    }
}
