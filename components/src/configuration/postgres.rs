//! `configuration.postgresql`: configuration items in a PostgreSQL table,
//! with changes pushed through `LISTEN`/`NOTIFY`.
//!
//! # Metadata
//!
//! * `connectionString` (required): a `postgres://` URL or key/value string.
//! * `table` (optional, default `weft_configuration`): `name` or
//!   `schema.name`; each part a SQL identifier (letters, digits, `_`, not
//!   starting with a digit, at most 50 characters). Names are folded to
//!   lower case, as PostgreSQL does for unquoted names.
//! * `channel` (optional, default `weft_config_<table>` with characters
//!   other than letters, digits and `_` replaced by `_`): the `NOTIFY`
//!   channel. Every runtime sharing a table must use the same channel.
//! * `maxConns` (optional, default 5): size of the query pool. Change
//!   notifications use one extra, dedicated connection while the store has
//!   been subscribed to.
//!
//! Building the store never touches the server. The schema is created (if
//! missing) on first use; a server that is down or unreachable makes
//! operations fail with [`ConfigurationError::Unavailable`] after at most
//! about 5 seconds.
//!
//! # Schema
//!
//! Created on first use if missing, under an advisory lock so concurrent
//! runtimes do not race (`t` is the table, `s` its optional schema):
//!
//! ```sql
//! CREATE SEQUENCE IF NOT EXISTS s.t_version_seq;
//! CREATE TABLE IF NOT EXISTS s.t (
//!     key      TEXT  PRIMARY KEY,
//!     value    TEXT  NOT NULL,
//!     version  TEXT  NOT NULL DEFAULT nextval('s.t_version_seq')::text,
//!     metadata JSONB NOT NULL DEFAULT '{}'
//! );
//! -- BEFORE INSERT OR UPDATE trigger t_weft_version (function s.t_weft_version()):
//! --   on insert with an empty version, and on an update that changes
//! --   value or metadata without setting version, sets
//! --   version = nextval('s.t_version_seq')::text.
//! -- AFTER INSERT OR UPDATE OR DELETE trigger t_weft_notify and AFTER
//! -- TRUNCATE trigger t_weft_trunc (function s.t_weft_notify()):
//! --   pg_notify(<channel>, '{"op":"UPDATE","key":"<key>"}'); the key is
//! --   left out when longer than 4000 bytes, and for TRUNCATE, which makes
//! --   listeners re-read everything they watch.
//! ```
//!
//! Versions are therefore strictly increasing numbers (as text) that change
//! whenever a value changes; an operator may also write an explicit
//! version. The notification only names the key: listeners re-read the
//! row, so NOTIFY's 8000-byte payload limit never applies to values.
//!
//! # Writing values
//!
//! ```sql
//! INSERT INTO weft_configuration (key, value) VALUES ('greeting', 'hello')
//!   ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
//! INSERT INTO weft_configuration (key, value, metadata)
//!   VALUES ('feature-x', 'on', '{"owner": "team-a"}')
//!   ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, metadata = EXCLUDED.metadata;
//! DELETE FROM weft_configuration WHERE key = 'greeting';
//! ```
//!
//! Metadata values that are not JSON strings are returned as their JSON
//! text.
//!
//! # Subscriptions
//!
//! A background task holds a dedicated connection that `LISTEN`s on the
//! channel (no polling). It keeps a snapshot of the keys subscribers watch
//! (every row when someone subscribed to all keys); on a notification it
//! re-reads the named rows, diffs them against the snapshot and pushes the
//! differences. When the connection drops (for example a server restart)
//! it reconnects with exponential backoff (100 ms doubling to 5 s), then
//! `LISTEN`s again and re-reads every watched key, pushing whatever changed
//! while it was disconnected. Fan-out to subscribers is described in
//! [`super::file::hub`].

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, watch, OnceCell};

use super::file::{deleted_item, diff};
use super::hub::{Hub, Scope};
use super::{ConfigurationError, ConfigurationItem, ConfigurationStore, Feature, Items};
use crate::metadata::{ComponentError, InitContext, Metadata};

/// Default table name.
pub const DEFAULT_TABLE: &str = "weft_configuration";
/// Longest accepted table (or schema) name part.
const MAX_NAME_LEN: usize = 50;
/// Longest PostgreSQL identifier (NOTIFY channels are identifiers too).
const MAX_IDENT_LEN: usize = 63;
/// Default query pool size.
const DEFAULT_MAX_CONNS: u32 = 5;
/// How long an operation waits for a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A configuration store backed by a PostgreSQL table.
pub struct PostgresStore {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
}

struct Inner {
    pool: PgPool,
    /// One connection, for the listener.
    listen_pool: PgPool,
    /// `host:port`, for error messages.
    server: String,
    /// The table as configured (lower case), for messages.
    table: String,
    channel: String,
    ddl: String,
    /// (table, trigger names, notify function) for the up-to-date check.
    schema_probe: (String, Vec<String>, String),
    select_all: String,
    select_keys: String,
    schema: OnceCell<()>,
    hub: Hub,
    /// Watched keys' last known items.
    snapshot: tokio::sync::Mutex<Items>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    state: watch::Sender<ListenState>,
    shutdown: watch::Receiver<bool>,
}

#[derive(Debug, Clone, Default)]
struct ListenState {
    listening: bool,
    last_error: Option<String>,
}

impl PostgresStore {
    /// Builds the store without connecting. Must be called within a Tokio
    /// runtime (the pool's maintenance tasks are spawned on it).
    pub fn from_metadata(md: &Metadata, _ctx: &InitContext) -> Result<Self, ComponentError> {
        let conn = md.required("connectionString")?;
        if let Some((scheme, _)) = conn.trim().split_once("://") {
            if !scheme.eq_ignore_ascii_case("postgres")
                && !scheme.eq_ignore_ascii_case("postgresql")
            {
                return Err(md.invalid(
                    "connectionString",
                    format!(
                        "unsupported scheme '{scheme}' (expected postgres:// or postgresql://)"
                    ),
                ));
            }
        }
        let options = PgConnectOptions::from_str(conn.trim())
            .map_err(|e| md.invalid("connectionString", format!("cannot be parsed: {e}")))?;
        let (schema, name) = match md.get("table") {
            None => (None, DEFAULT_TABLE.to_string()),
            Some(raw) => parse_table(raw.trim()).map_err(|e| md.invalid("table", e))?,
        };
        let table = match &schema {
            Some(s) => format!("{s}.{name}"),
            None => name.clone(),
        };
        let channel = match md.get("channel") {
            None => default_channel(&table),
            Some(raw) => {
                let raw = raw.trim();
                validate_channel(raw).map_err(|e| md.invalid("channel", e))?;
                raw.to_string()
            }
        };
        let max_conns = md.parse::<u32>("maxConns")?.unwrap_or(DEFAULT_MAX_CONNS);
        if max_conns == 0 {
            return Err(md.invalid("maxConns", "must be at least 1"));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(md.init_error("the store must be created inside a Tokio runtime"));
        }

        let server = format!("{}:{}", options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(max_conns)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);

        let q = |n: &str| match &schema {
            Some(s) => format!("\"{s}\".\"{n}\""),
            None => format!("\"{n}\""),
        };
        let qtable = q(&name);
        let seq = q(&format!("{name}_version_seq"));
        let version_fn = q(&format!("{name}_weft_version"));
        let notify_fn = q(&format!("{name}_weft_notify"));
        let ddl = schema_ddl(
            &table,
            &qtable,
            &seq,
            &version_fn,
            &notify_fn,
            &name,
            &channel,
        );
        let schema_probe = (
            qtable.clone(),
            ["version", "notify", "trunc"]
                .iter()
                .map(|t| format!("{name}_weft_{t}"))
                .collect(),
            format!("{notify_fn}()"),
        );
        let select_all = format!("SELECT key, value, version, metadata::text FROM {qtable}");
        let select_keys = format!("{select_all} WHERE key = ANY($1)");

        let (shutdown, shutdown_rx) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                listen_pool,
                server,
                table,
                channel,
                ddl,
                schema_probe,
                select_all,
                select_keys,
                schema: OnceCell::new(),
                hub: Hub::default(),
                snapshot: tokio::sync::Mutex::new(Items::new()),
                listener: Mutex::new(None),
                state: watch::Sender::new(ListenState::default()),
                shutdown: shutdown_rx,
            }),
            shutdown,
        })
    }

    /// The table (`schema.name` or `name`, lower case).
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The NOTIFY channel.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The query pool, for tools and tests that write values.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Creates the table, sequence, functions and triggers if missing.
    pub async fn ensure_schema(&self) -> Result<(), ConfigurationError> {
        self.inner
            .ensure_schema()
            .await
            .map_err(|e| self.inner.error("creating the schema", e))
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.inner.hub.close();
    }
}

#[async_trait]
impl ConfigurationStore for PostgresStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Subscribe]
    }

    async fn get(&self, keys: &[String]) -> Result<Items, ConfigurationError> {
        let inner = &self.inner;
        inner
            .ensure_schema()
            .await
            .map_err(|e| inner.error("creating the schema", e))?;
        let keys = (!keys.is_empty()).then_some(keys);
        inner
            .fetch(keys)
            .await
            .map_err(|e| inner.error("reading", e))
    }

    async fn subscribe(
        &self,
        keys: &[String],
    ) -> Result<mpsc::Receiver<Items>, ConfigurationError> {
        let inner = &self.inner;
        if *self.shutdown.borrow() {
            return Err(ConfigurationError::Unavailable(format!(
                "configuration table '{}' store is closed",
                inner.table
            )));
        }
        inner
            .ensure_schema()
            .await
            .map_err(|e| inner.error("creating the schema", e))?;
        inner.start_listener();
        inner.wait_listening().await?;

        // Seed the snapshot with keys nobody watched yet (under the lock the
        // listener diffs under, so no change falls between the two).
        let mut snap = inner.snapshot.lock().await;
        let before = inner.hub.scope();
        let fresh: Option<(Vec<String>, Items)> = if keys.is_empty() {
            if before == Scope::All {
                None
            } else {
                let rows = inner
                    .fetch(None)
                    .await
                    .map_err(|e| inner.error("reading", e))?;
                let new: Vec<String> = rows
                    .keys()
                    .filter(|k| !before.contains(k))
                    .cloned()
                    .collect();
                snap.retain(|k, _| before.contains(k));
                Some((new, rows))
            }
        } else {
            let new: Vec<String> = keys
                .iter()
                .filter(|k| !before.contains(k))
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if new.is_empty() {
                None
            } else {
                let rows = inner
                    .fetch(Some(&new))
                    .await
                    .map_err(|e| inner.error("reading", e))?;
                Some((new, rows))
            }
        };
        if let Some((new, mut rows)) = fresh {
            for k in new {
                match rows.remove(&k) {
                    Some(item) => snap.insert(k, item),
                    None => snap.remove(&k),
                };
            }
        }
        let rx = inner.hub.subscribe(keys);
        drop(snap);
        Ok(rx)
    }

    async fn close(&self) {
        let _ = self.shutdown.send(true);
        self.inner.hub.close();
        let handle = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            handle.abort();
            let _ = handle.await;
        }
        self.inner.listen_pool.close().await;
        self.inner.pool.close().await;
    }
}

impl Inner {
    async fn ensure_schema(&self) -> Result<(), sqlx::Error> {
        self.schema
            .get_or_try_init(|| async {
                if self.schema_is_current().await? {
                    return Ok(());
                }
                sqlx::raw_sql(&self.ddl).execute(&self.pool).await?;
                tracing::debug!(table = %self.table, channel = %self.channel, "configuration table ready");
                Ok::<_, sqlx::Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Whether the table, its triggers and a notify function for this
    /// channel exist, so the DDL (which needs CREATE privileges) can be
    /// skipped, e.g. for a role that may only read and listen.
    async fn schema_is_current(&self) -> Result<bool, sqlx::Error> {
        let (table, triggers, notify_fn) = &self.schema_probe;
        let (count, src): (i64, Option<String>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = ANY($2)), \
                    (SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($3))",
        )
        .bind(table)
        .bind(triggers)
        .bind(notify_fn)
        .fetch_one(&self.pool)
        .await?;
        let needle = format!("pg_notify('{}'", self.channel);
        Ok(count == triggers.len() as i64 && src.is_some_and(|s| s.contains(&needle)))
    }

    /// Rows for `keys`, or all rows.
    async fn fetch(&self, keys: Option<&[String]>) -> Result<Items, sqlx::Error> {
        let rows: Vec<(String, String, String, String)> = match keys {
            None => {
                sqlx::query_as(&self.select_all)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(keys) => {
                sqlx::query_as(&self.select_keys)
                    .bind(keys)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(key, value, version, metadata)| {
                let metadata = parse_metadata(&metadata);
                (
                    key,
                    ConfigurationItem {
                        value,
                        version,
                        metadata,
                    },
                )
            })
            .collect())
    }

    /// Maps a driver error; connection problems become `Unavailable`.
    fn error(&self, what: &str, e: sqlx::Error) -> ConfigurationError {
        if is_connection_error(&e) {
            ConfigurationError::Unavailable(format!(
                "{what} configuration table '{}': cannot reach PostgreSQL at {}: {e}",
                self.table, self.server
            ))
        } else {
            ConfigurationError::Internal(format!(
                "{what} configuration table '{}': {e}",
                self.table
            ))
        }
    }

    fn start_listener(self: &Arc<Self>) {
        let mut slot = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        *slot = Some(tokio::spawn(listen_loop(self.clone())));
    }

    async fn wait_listening(&self) -> Result<(), ConfigurationError> {
        let mut rx = self.state.subscribe();
        let r = tokio::time::timeout(
            ACQUIRE_TIMEOUT + Duration::from_secs(1),
            rx.wait_for(|s| s.listening),
        )
        .await;
        if matches!(r, Ok(Ok(_))) {
            return Ok(());
        }
        let last = self
            .state
            .borrow()
            .last_error
            .clone()
            .unwrap_or_else(|| "timed out".into());
        Err(ConfigurationError::Unavailable(format!(
            "cannot listen for changes to configuration table '{}' on channel '{}' at {}: {last}",
            self.table, self.channel, self.server
        )))
    }

    fn set_state(&self, listening: bool, error: Option<String>) {
        self.state.send_modify(|s| {
            s.listening = listening;
            if error.is_some() || listening {
                s.last_error = error;
            }
        });
    }

    /// Re-reads every watched key and pushes the differences.
    async fn resync(&self) -> Result<(), sqlx::Error> {
        let mut snap = self.snapshot.lock().await;
        let scope = self.hub.scope();
        let rows = match &scope {
            Scope::All => self.fetch(None).await?,
            Scope::Keys(k) if k.is_empty() => Items::new(),
            Scope::Keys(k) => {
                self.fetch(Some(&k.iter().cloned().collect::<Vec<_>>()))
                    .await?
            }
        };
        snap.retain(|k, _| scope.contains(k));
        let changes = diff(&snap, &rows);
        *snap = rows;
        drop(snap);
        if !changes.is_empty() {
            tracing::debug!(table = %self.table, changed = changes.len(), "configuration resynchronized");
        }
        self.hub.publish(&changes);
        Ok(())
    }

    /// Handles a batch of notifications.
    async fn apply(&self, notes: Vec<PgNotification>) -> Result<(), sqlx::Error> {
        #[derive(serde::Deserialize)]
        struct Payload {
            key: Option<String>,
        }
        let mut keys = HashSet::new();
        for n in &notes {
            match serde_json::from_str::<Payload>(n.payload()) {
                Ok(Payload { key: Some(k) }) => {
                    keys.insert(k);
                }
                // TRUNCATE, an oversized key, or a foreign payload.
                _ => return self.resync().await,
            }
        }
        let mut snap = self.snapshot.lock().await;
        let scope = self.hub.scope();
        snap.retain(|k, _| scope.contains(k));
        let wanted: Vec<String> = keys.into_iter().filter(|k| scope.contains(k)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut rows = self.fetch(Some(&wanted)).await?;
        let mut changes = Items::new();
        for k in wanted {
            match rows.remove(&k) {
                Some(item) => {
                    if snap.get(&k) != Some(&item) {
                        snap.insert(k.clone(), item.clone());
                        changes.insert(k, item);
                    }
                }
                None => {
                    if snap.remove(&k).is_some() {
                        changes.insert(k, deleted_item());
                    }
                }
            }
        }
        drop(snap);
        self.hub.publish(&changes);
        Ok(())
    }
}

/// Resolves when the store is closed or dropped.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn listen_loop(inner: Arc<Inner>) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        if *inner.shutdown.borrow() {
            break;
        }
        let connect = async {
            inner.ensure_schema().await?;
            let mut listener = PgListener::connect_with(&inner.listen_pool).await?;
            // Reconnection is handled here, so a resync follows it.
            listener.eager_reconnect(false);
            listener.listen(&inner.channel).await?;
            inner.resync().await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let result = tokio::select! {
            r = connect => r,
            _ = stopped(inner.shutdown.clone()) => break,
        };
        match result {
            Ok(mut listener) => {
                if failures > 0 {
                    tracing::info!(table = %inner.table, channel = %inner.channel, "configuration listener reconnected");
                }
                failures = 0;
                backoff = BACKOFF_MIN;
                inner.set_state(true, None);
                let reason = loop {
                    let r = tokio::select! {
                        r = listener.try_recv() => r,
                        _ = stopped(inner.shutdown.clone()) => return,
                    };
                    match r {
                        Ok(Some(n)) => {
                            let mut batch = vec![n];
                            while let Some(n) = listener.next_buffered() {
                                batch.push(n);
                            }
                            if let Err(e) = inner.apply(batch).await {
                                break inner.error("reading changes from", e).to_string();
                            }
                        }
                        Ok(None) => break "connection lost".to_string(),
                        Err(e) => break inner.error("listening on", e).to_string(),
                    }
                };
                if *inner.shutdown.borrow() {
                    break;
                }
                tracing::warn!(table = %inner.table, channel = %inner.channel, error = %reason,
                    "configuration listener disconnected; reconnecting");
                inner.set_state(false, Some(reason));
            }
            Err(e) => {
                failures += 1;
                let msg = inner.error("listening on", e).to_string();
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(table = %inner.table, channel = %inner.channel, error = %msg, attempt = failures,
                        "configuration listener cannot connect; retrying");
                }
                inner.set_state(false, Some(msg));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(inner.shutdown.clone()) => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    inner.set_state(false, Some("store closed".into()));
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // connection exception, operator intervention (shutdown),
            // insufficient resources (too many connections)
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
        }),
        _ => false,
    }
}

fn parse_metadata(text: &str) -> std::collections::HashMap<String, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect(),
        _ => Default::default(),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates `name` or `schema.name`; returns the lower-cased parts.
fn parse_table(raw: &str) -> Result<(Option<String>, String), String> {
    let parts: Vec<&str> = raw.split('.').collect();
    let check = |p: &str| -> Result<String, String> {
        if !is_ident(p) {
            return Err(format!(
                "'{raw}' is not a valid table name: '{p}' must start with a letter or '_' and contain only letters, digits and '_'"
            ));
        }
        if p.len() > MAX_NAME_LEN {
            return Err(format!(
                "'{raw}' is not a valid table name: '{p}' is longer than {MAX_NAME_LEN} characters"
            ));
        }
        Ok(p.to_ascii_lowercase())
    };
    match parts.as_slice() {
        [name] => Ok((None, check(name)?)),
        [schema, name] => Ok((Some(check(schema)?), check(name)?)),
        _ => Err(format!(
            "'{raw}' is not a valid table name: use 'name' or 'schema.name'"
        )),
    }
}

fn validate_channel(raw: &str) -> Result<(), String> {
    if !is_ident(raw) {
        return Err(format!(
            "'{raw}' is not a valid channel: it must start with a letter or '_' and contain only letters, digits and '_'"
        ));
    }
    if raw.len() > MAX_IDENT_LEN {
        return Err(format!("'{raw}' is longer than {MAX_IDENT_LEN} characters"));
    }
    Ok(())
}

fn default_channel(table: &str) -> String {
    let mut c: String = format!("weft_config_{table}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    c.truncate(MAX_IDENT_LEN);
    c
}

/// The idempotent DDL run on first use. Every interpolated name has been
/// validated as an identifier (no quotes), so the text is injection-free.
fn schema_ddl(
    table: &str,
    qtable: &str,
    seq: &str,
    version_fn: &str,
    notify_fn: &str,
    name: &str,
    channel: &str,
) -> String {
    format!(
        r#"
SELECT pg_advisory_xact_lock(hashtext('weft_configuration_schema:{table}'));
CREATE SEQUENCE IF NOT EXISTS {seq};
CREATE TABLE IF NOT EXISTS {qtable} (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT nextval('{seq}')::text,
    metadata JSONB NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE OR REPLACE FUNCTION {version_fn}() RETURNS trigger LANGUAGE plpgsql AS $weft$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.version IS NULL OR NEW.version = '' THEN
            NEW.version := nextval('{seq}')::text;
        END IF;
    ELSIF NEW.version IS NOT DISTINCT FROM OLD.version
          AND (NEW.value IS DISTINCT FROM OLD.value OR NEW.metadata IS DISTINCT FROM OLD.metadata) THEN
        NEW.version := nextval('{seq}')::text;
    END IF;
    RETURN NEW;
END
$weft$;
CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $weft$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{channel}', json_build_object('op', TG_OP)::text);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('{channel}', CASE WHEN octet_length(OLD.key) <= 4000
            THEN json_build_object('op', TG_OP, 'key', OLD.key)
            ELSE json_build_object('op', TG_OP) END::text);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.key IS DISTINCT FROM OLD.key) THEN
        PERFORM pg_notify('{channel}', CASE WHEN octet_length(NEW.key) <= 4000
            THEN json_build_object('op', TG_OP, 'key', NEW.key)
            ELSE json_build_object('op', TG_OP) END::text);
    END IF;
    RETURN NULL;
END
$weft$;
DO $weft$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '{qtable}'::regclass AND tgname = '{name}_weft_version') THEN
        CREATE TRIGGER "{name}_weft_version" BEFORE INSERT OR UPDATE ON {qtable}
            FOR EACH ROW EXECUTE PROCEDURE {version_fn}();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '{qtable}'::regclass AND tgname = '{name}_weft_notify') THEN
        CREATE TRIGGER "{name}_weft_notify" AFTER INSERT OR UPDATE OR DELETE ON {qtable}
            FOR EACH ROW EXECUTE PROCEDURE {notify_fn}();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '{qtable}'::regclass AND tgname = '{name}_weft_trunc') THEN
        CREATE TRIGGER "{name}_weft_trunc" AFTER TRUNCATE ON {qtable}
            FOR EACH STATEMENT EXECUTE PROCEDURE {notify_fn}();
    END IF;
END
$weft$;
"#
    )
}

/// `configuration.postgresql` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "configuration.postgresql",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::Configuration(Arc::new(
                PostgresStore::from_metadata(md, ctx)?,
            )))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated() {
        assert_eq!(parse_table("Config").unwrap(), (None, "config".into()));
        assert_eq!(
            parse_table("app.cfg_1").unwrap(),
            (Some("app".into()), "cfg_1".into())
        );
        assert!(parse_table("bad-name").unwrap_err().contains("bad-name"));
        assert!(parse_table("1abc").is_err());
        assert!(parse_table("a.b.c").is_err());
        assert!(parse_table("x; DROP TABLE y").is_err());
        assert!(parse_table(&"a".repeat(51)).is_err());
    }

    #[test]
    fn default_channel_is_an_identifier() {
        assert_eq!(default_channel("app.cfg"), "weft_config_app_cfg");
        assert!(default_channel(&"a".repeat(50)).len() <= 63);
        assert!(validate_channel("ok_chan").is_ok());
        assert!(validate_channel("no'quote").is_err());
    }
}
