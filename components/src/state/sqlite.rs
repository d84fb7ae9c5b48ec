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
//!   waits for a lock held by another process (or, rarely, by a checkpoint)
//!   before failing with [`StateError::Unavailable`].
//! * `synchronous` (optional, `full` (default) or `normal`): SQLite's
//!   `PRAGMA synchronous` for the writer. `full` fsyncs the write-ahead log
//!   on every commit, so an acknowledged write survives a power loss.
//!   `normal` fsyncs only at checkpoints: in WAL mode that still survives a
//!   crash of the process (the log is in the OS page cache), but a power
//!   loss or kernel crash may lose the last commits (never corrupting the
//!   database). It saves the fsync of every commit.
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
//! are single statements whose changed-row count tells whether the
//! condition held.
//!
//! # Threads
//!
//! **Reads run inline** on the calling task, on one of a few reader
//! connections (each behind a `std` mutex, opened on first use). A read is a
//! point lookup by primary key: with the pages cached it takes a few
//! microseconds inside SQLite, far less than handing it to another thread
//! and back (two wake-ups, tens of microseconds on a VM). WAL mode lets
//! readers proceed while the writer writes, so a read never waits for a
//! write. It blocks the async worker only when another *process* holds the
//! database in an exclusive mode, or while a 1 MiB value is copied; both
//! are short compared with a request's network cost. A read that would
//! block longer (a lock held for up to `busyTimeout`) is the rare case and
//! the price of the fast common one.
//!
//! **Writes go to one writer thread**, which owns the only writing
//! connection and takes jobs (set, delete, transaction, sweep of expired
//! rows) from a bounded channel, answering each through a oneshot channel.
//! Writers therefore queue in order instead of competing for SQLite's write
//! lock (whose busy handler sleeps 1, 2, 5, 10 … ms), and the fsync of each
//! commit happens off the async threads. Jobs that are already waiting when
//! the thread takes one are committed together, up to [`MAX_BATCH`] of them,
//! in one `BEGIN IMMEDIATE` transaction and so with one fsync (group
//! commit). Each job still gets its own answer: an etag mismatch changes
//! nothing (a single conditional statement, or a transaction rolled back to
//! its savepoint), and if any statement of a group fails the group is
//! rolled back and its jobs are run again one by one, so an error reaches
//! only the job that caused it. A transaction of the API is one savepoint
//! in that `BEGIN IMMEDIATE` transaction: all or nothing.
//!
//! With `:memory:` there is a single connection (another would open another
//! database). Reads then lock the writer's connection, which is fine for an
//! in-memory database: no commit waits for a disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::memory::{new_etag, Condition};
use super::{
    Consistency, DeleteRequest, Feature, Operation, SetRequest, StateEntry, StateError, StateStore,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

const DEFAULT_TABLE: &str = "state";
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections of a database file (opened on first use). Reads hold
/// one only for the duration of a lookup, so this bounds how many async
/// workers can read at the same instant.
const READERS: usize = 4;
/// Write jobs that may wait for the writer thread before senders wait.
const QUEUE: usize = 256;
/// Most write jobs committed in one transaction.
const MAX_BATCH: usize = 64;
/// How often expired rows are deleted, at most.
const SWEEP_INTERVAL_MS: i64 = 60_000;

/// The `state.sqlite` store.
#[derive(Debug)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    /// Reader connections: for a file, [`READERS`] slots opened on first
    /// use; for `:memory:`, the writer's connection.
    readers: Vec<Arc<Mutex<Option<Connection>>>>,
    /// Where and how to open another reader; `None` for `:memory:`.
    reader_open: Option<OpenOptions>,
    /// Set by [`StateStore::close`]; readers are not reopened after it.
    closed: AtomicBool,
    /// The writer thread's queue.
    jobs: mpsc::Sender<Job>,
    /// Unix milliseconds of the last sweep of expired rows.
    last_sweep_ms: AtomicI64,
}

/// What the reader and writer sides share.
#[derive(Debug)]
struct Shared {
    table: String,
    sql: Statements,
}

/// How to open a connection to the database file.
#[derive(Debug, Clone)]
struct OpenOptions {
    file: PathBuf,
    busy_timeout: Duration,
}

/// The value of the `synchronous` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    Full,
    Normal,
}

impl Synchronous {
    fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        match md.get("synchronous").map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(Synchronous::Full),
            Some(v) => match v.as_str() {
                "full" => Ok(Synchronous::Full),
                "normal" => Ok(Synchronous::Normal),
                _ => Err(md.invalid(
                    "synchronous",
                    format!("'{v}' is not a synchronous mode (use 'full' or 'normal')"),
                )),
            },
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
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

/// Work for the writer thread.
enum Job {
    Write(Write),
    /// Delete rows that expired before this time (unix milliseconds).
    Sweep(i64),
    /// Close the writer connection, answer, and stop.
    Shutdown(oneshot::Sender<()>),
}

/// One write and where its answer goes.
struct Write {
    op: WriteOp,
    /// Unix milliseconds when the request arrived: the time TTLs and
    /// expiry are measured against.
    now: i64,
    reply: oneshot::Sender<Result<(), StateError>>,
}

enum WriteOp {
    Set(SetRequest),
    Delete(DeleteRequest),
    Transact(Vec<Operation>),
}

impl WriteOp {
    /// What the write does, for error messages.
    fn describe(&self) -> String {
        match self {
            WriteOp::Set(req) => format!("set key '{}'", req.key),
            WriteOp::Delete(req) => format!("delete key '{}'", req.key),
            WriteOp::Transact(ops) => format!("transaction of {} operations", ops.len()),
        }
    }
}

/// Why a group of writes did not commit.
struct GroupFailure {
    /// Which write failed, if the failure is its own (not the group's
    /// `BEGIN` or `COMMIT`).
    write: Option<usize>,
    /// What failed.
    what: String,
    err: rusqlite::Error,
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
        let synchronous = Synchronous::from_metadata(md)?;

        let path = md.get("databasePath").map(str::trim);
        let reader_open = if path == Some(":memory:") {
            None
        } else {
            let file = match path {
                Some(p) => PathBuf::from(p),
                None => ctx
                    .data_dir
                    .join(format!("state-{}.db", file_stem(md.component()))),
            };
            Some(OpenOptions { file, busy_timeout })
        };
        let shown_path = reader_open
            .as_ref()
            .map_or(":memory:".to_string(), |o| o.file.display().to_string());
        let cannot_open = |e: rusqlite::Error| {
            md.invalid(
                "databasePath",
                format!("cannot open SQLite database '{shown_path}': {e}"),
            )
        };

        let writer = match &reader_open {
            None => Connection::open_in_memory().map_err(cannot_open)?,
            Some(options) => {
                let conn = options.open().map_err(cannot_open)?;
                // Reading the journal mode is also the first read of the
                // file, so a file that is not a database fails here.
                let mode: String = conn
                    .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                    .map_err(cannot_open)?;
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(
                        path = shown_path,
                        mode,
                        "SQLite did not switch to WAL mode; reads may wait for writes"
                    );
                }
                conn
            }
        };
        writer
            .pragma_update(None, "synchronous", synchronous.pragma())
            .map_err(cannot_open)?;
        create_table(&writer, table).map_err(|e| {
            md.init_error(format!(
                "cannot create table '{table}' in SQLite database '{shown_path}': {e}"
            ))
        })?;

        let writer = Arc::new(Mutex::new(Some(writer)));
        let readers = match &reader_open {
            None => vec![Arc::clone(&writer)],
            Some(options) => {
                // Open the first reader now, so that a problem shows at start.
                let first = options.open_reader().map_err(cannot_open)?;
                let mut readers = vec![Arc::new(Mutex::new(Some(first)))];
                readers.extend((1..READERS).map(|_| Arc::new(Mutex::new(None))));
                readers
            }
        };

        let shared = Arc::new(Shared {
            table: table.to_string(),
            sql: Statements::new(table),
        });
        let (jobs, queue) = mpsc::channel(QUEUE);
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("weft-sqlite-w".to_string())
            .spawn(move || run_writer(&thread_shared, &writer, queue))
            .map_err(|e| md.init_error(format!("cannot start the SQLite writer thread: {e}")))?;

        Ok(Self {
            shared,
            readers,
            reader_open,
            closed: AtomicBool::new(false),
            jobs,
            last_sweep_ms: AtomicI64::new(now_ms()),
        })
    }

    /// The error of a call on a closed store.
    fn closed_error(&self) -> StateError {
        StateError::Unavailable(format!(
            "SQLite table '{}': the store is closed",
            self.shared.table
        ))
    }

    /// Runs `f` on a free reader connection, on this thread (see the module
    /// docs for why that is fine).
    fn read<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let mut slot = self.reader();
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        if slot.is_none() {
            let Some(options) = &self.reader_open else {
                return Err(self.closed_error());
            };
            let conn = options
                .open_reader()
                .map_err(|e| self.shared.error("open a reader connection", &e))?;
            *slot = Some(conn);
        }
        let conn = slot.as_ref().expect("a reader connection was just opened");
        f(conn).map_err(|e| self.shared.error(&what(), &e))
    }

    /// The first reader slot that is free, or else (all busy) the first.
    fn reader(&self) -> MutexGuard<'_, Option<Connection>> {
        for slot in &self.readers {
            match slot.try_lock() {
                Ok(guard) => return guard,
                // A panic while reading cannot leave a connection half
                // changed: take it over.
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        lock(&self.readers[0])
    }

    /// Hands a write to the writer thread and waits for its answer.
    async fn write(&self, op: WriteOp) -> Result<(), StateError> {
        let now = now_ms();
        self.sweep_if_due(now);
        let (reply, answer) = oneshot::channel();
        let job = Job::Write(Write { op, now, reply });
        if self.jobs.send(job).await.is_err() {
            return Err(self.closed_error());
        }
        answer.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// Asks the writer thread to delete expired rows when the last sweep is
    /// old. Skipped (until the next call) when its queue is full.
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
        if self.jobs.try_send(Job::Sweep(now)).is_err() {
            self.last_sweep_ms.store(last, Ordering::Relaxed);
        }
    }
}

impl OpenOptions {
    /// Opens a connection to the file (creating it if missing; the path is
    /// taken literally, not as a `file:` URI).
    fn open(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.file, flags)?;
        conn.busy_timeout(self.busy_timeout)?;
        Ok(conn)
    }

    /// Opens a connection for reads only.
    fn open_reader(&self) -> rusqlite::Result<Connection> {
        let conn = self.open()?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

fn create_table(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (\
             key TEXT NOT NULL PRIMARY KEY, \
             value BLOB NOT NULL, \
             etag TEXT NOT NULL, \
             expires_at INTEGER NULL, \
             updated_at INTEGER NOT NULL); \
         CREATE INDEX IF NOT EXISTS \"{table}_expires_at\" ON \"{table}\" (expires_at);"
    ))
}

/// Locks `m`, taking over a poisoned lock: every user leaves the connection
/// consistent (SQLite rolls back what a failed statement did; an open
/// transaction is rolled back before the next group starts).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// A [`StateError`] for `err`, naming the table and the operation.
    fn error(&self, what: &str, err: &rusqlite::Error) -> StateError {
        let message = format!("SQLite table '{}': {what}: {err}", self.table);
        if is_unavailable(err) {
            StateError::Unavailable(message)
        } else {
            StateError::Internal(message)
        }
    }

    fn get(&self, conn: &Connection, key: &str, now: i64) -> rusqlite::Result<Option<StateEntry>> {
        let mut stmt = conn.prepare_cached(&self.sql.get)?;
        stmt.query_row(params![key, now], |row| {
            Ok(StateEntry {
                value: row.get(0)?,
                etag: row.get(1)?,
                expires_at: row.get::<_, Option<i64>>(2)?.map(from_ms),
            })
        })
        .optional()
    }

    /// Runs a write; `Ok(false)` when its etag condition did not hold (and
    /// nothing changed).
    fn apply_set(&self, conn: &Connection, req: &SetRequest, now: i64) -> rusqlite::Result<bool> {
        let expires_at = req.ttl.map(|ttl| expiry_ms(now, ttl));
        let etag = new_etag();
        let value: &[u8] = &req.value;
        let changed = match Condition::for_set(req) {
            Condition::Always => conn
                .prepare_cached(&self.sql.upsert)?
                .execute(params![req.key, value, etag, expires_at, now])?,
            Condition::Absent => conn
                .prepare_cached(&self.sql.insert_if_absent)?
                .execute(params![req.key, value, etag, expires_at, now])?,
            Condition::EtagEquals(expected) => conn
                .prepare_cached(&self.sql.update_if_etag)?
                .execute(params![req.key, value, etag, expires_at, now, expected])?,
        };
        Ok(changed > 0)
    }

    /// Runs a delete; `Ok(false)` when its etag condition did not hold.
    fn apply_delete(
        &self,
        conn: &Connection,
        req: &DeleteRequest,
        now: i64,
    ) -> rusqlite::Result<bool> {
        match Condition::for_delete(req) {
            Condition::EtagEquals(expected) => {
                let changed = conn
                    .prepare_cached(&self.sql.delete_if_etag)?
                    .execute(params![req.key, expected, now])?;
                Ok(changed > 0)
            }
            Condition::Always | Condition::Absent => {
                conn.prepare_cached(&self.sql.delete)?
                    .execute(params![req.key])?;
                Ok(true)
            }
        }
    }

    /// Runs one write inside the open transaction. `Ok(Err(_))` is the
    /// write's own failure (an etag mismatch) after which the database is
    /// as it was before the write; `Err` is a database error.
    fn apply(
        &self,
        conn: &Connection,
        write: &Write,
    ) -> Result<Result<(), StateError>, (String, rusqlite::Error)> {
        let mismatch = |key: &str| {
            Ok(Err(StateError::EtagMismatch {
                key: key.to_string(),
            }))
        };
        match &write.op {
            WriteOp::Set(req) => match self.apply_set(conn, req, write.now) {
                Ok(true) => Ok(Ok(())),
                Ok(false) => mismatch(&req.key),
                Err(e) => Err((write.op.describe(), e)),
            },
            WriteOp::Delete(req) => match self.apply_delete(conn, req, write.now) {
                Ok(true) => Ok(Ok(())),
                Ok(false) => mismatch(&req.key),
                Err(e) => Err((write.op.describe(), e)),
            },
            WriteOp::Transact(ops) => {
                let step = |what: &str, e| Err((format!("transaction: {what}"), e));
                if let Err(e) = conn.execute_batch("SAVEPOINT weft_tx") {
                    return step("begin a savepoint", e);
                }
                for op in ops {
                    let applied = match op {
                        Operation::Set(req) => self.apply_set(conn, req, write.now),
                        Operation::Delete(req) => self.apply_delete(conn, req, write.now),
                    };
                    match applied {
                        Ok(true) => {}
                        Ok(false) => {
                            if let Err(e) =
                                conn.execute_batch("ROLLBACK TO weft_tx; RELEASE weft_tx")
                            {
                                return step("roll back to the savepoint", e);
                            }
                            return mismatch(op.key());
                        }
                        Err(e) => {
                            let what = match op {
                                Operation::Set(_) => "set",
                                Operation::Delete(_) => "delete",
                            };
                            return step(&format!("{what} key '{}'", op.key()), e);
                        }
                    }
                }
                match conn.execute_batch("RELEASE weft_tx") {
                    Ok(()) => Ok(Ok(())),
                    Err(e) => step("release the savepoint", e),
                }
            }
        }
    }

    /// Applies `writes` in one `BEGIN IMMEDIATE` transaction and commits
    /// them; answers each write's own outcome, or the first database error
    /// (after which the transaction may still be open).
    fn try_group(
        &self,
        conn: &Connection,
        writes: &[Write],
    ) -> Result<Vec<Result<(), StateError>>, GroupFailure> {
        let failure = |write, what: &str, err| GroupFailure {
            write,
            what: what.to_string(),
            err,
        };
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| failure(None, "begin a transaction", e))?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for (i, write) in writes.iter().enumerate() {
            let outcome = self
                .apply(conn, write)
                .map_err(|(what, e)| failure(Some(i), &what, e))?;
            outcomes.push(outcome);
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| failure(None, "commit a transaction", e))?;
        Ok(outcomes)
    }

    /// Commits `writes` together and answers each, isolating failures (see
    /// the module docs).
    fn commit_group(&self, conn: &Connection, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let failure = match self.try_group(conn, &writes) {
            Ok(outcomes) => {
                for (write, outcome) in writes.into_iter().zip(outcomes) {
                    // The caller may have gone away; its write stands.
                    let _ = write.reply.send(outcome);
                }
                return;
            }
            Err(failure) => failure,
        };
        rollback(conn);
        if writes.len() == 1 || failure.write.is_none() && is_unavailable(&failure.err) {
            // One write, or the group could not start or commit for a
            // reason that is not any write's: every write gets the error.
            for write in writes {
                let what = match failure.write {
                    Some(_) => failure.what.clone(),
                    None => format!("{}: {}", write.op.describe(), failure.what),
                };
                let _ = write.reply.send(Err(self.error(&what, &failure.err)));
            }
            return;
        }
        tracing::debug!(
            table = self.table,
            writes = writes.len(),
            error = %failure.err,
            "a group of SQLite writes failed; retrying them one by one"
        );
        for write in writes {
            self.commit_group(conn, vec![write]);
        }
    }

    fn sweep(&self, conn: &Connection, now: i64) {
        let swept = conn
            .prepare_cached(&self.sql.sweep)
            .and_then(|mut stmt| stmt.execute(params![now]));
        match swept {
            Ok(deleted) => tracing::debug!(table = self.table, deleted, "swept expired state rows"),
            Err(error) => {
                rollback(conn);
                tracing::debug!(table = self.table, %error, "sweeping expired state rows failed");
            }
        }
    }
}

/// Rolls back the open transaction, if any.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(error) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(%error, "SQLite rollback failed");
        }
    }
}

/// The writer thread: takes jobs until the store is dropped or closed.
fn run_writer(shared: &Shared, conn: &Mutex<Option<Connection>>, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = queue.blocking_recv() {
        jobs.push(job);
        // Whatever else is already waiting joins the same group.
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut guard = lock(conn);
        let Some(db) = guard.as_ref() else {
            // Closed: dropping the jobs answers their callers.
            return;
        };
        let mut group = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::Write(write) => group.push(write),
                Job::Sweep(now) => {
                    shared.commit_group(db, std::mem::take(&mut group));
                    shared.sweep(db, now);
                }
                Job::Shutdown(done) => {
                    shared.commit_group(db, std::mem::take(&mut group));
                    *guard = None;
                    let _ = done.send(());
                    return;
                }
            }
        }
        shared.commit_group(db, group);
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
        self.read(
            || format!("get key '{key}'"),
            |conn| self.shared.get(conn, key, now),
        )
    }

    async fn bulk_get(&self, keys: &[String]) -> Result<Vec<Option<StateEntry>>, StateError> {
        let now = now_ms();
        self.sweep_if_due(now);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.read(
                || format!("get key '{key}'"),
                |conn| self.shared.get(conn, key, now),
            )?);
        }
        Ok(out)
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        self.write(WriteOp::Set(req)).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.write(WriteOp::Delete(req)).await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::Transact(ops)).await
    }

    async fn ping(&self) -> Result<(), StateError> {
        if self.jobs.is_closed() {
            return Err(self.closed_error());
        }
        self.read(
            || "ping".to_string(),
            |conn| conn.query_row("SELECT 1", [], |_| Ok(())),
        )
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let (done, closed) = oneshot::channel();
        if self.jobs.send(Job::Shutdown(done)).await.is_ok() {
            let _ = closed.await;
        }
        for slot in &self.readers {
            *lock(slot) = None;
        }
    }
}

/// Whether `err` is worth retrying later: the database is busy or locked,
/// or the file cannot be opened, read or written.
fn is_unavailable(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
        )
    )
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

/// `state.sqlite` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "state.sqlite",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::State(Arc::new(
                SqliteStore::from_metadata(md, ctx).await?,
            )))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Concurrency;

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

    fn md(fields: &[(&str, &str)]) -> Metadata {
        Metadata::new(
            "lite",
            "state.sqlite",
            fields.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn ctx(dir: &std::path::Path) -> InitContext {
        InitContext {
            data_dir: dir.to_path_buf(),
            app_id: "sqlite-unit".to_string(),
        }
    }

    fn set(key: &str, value: &[u8]) -> SetRequest {
        SetRequest {
            key: key.to_string(),
            value: value.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn synchronous_field() {
        assert_eq!(
            Synchronous::from_metadata(&md(&[])).unwrap(),
            Synchronous::Full
        );
        let normal = md(&[("synchronous", " Normal ")]);
        assert_eq!(
            Synchronous::from_metadata(&normal).unwrap(),
            Synchronous::Normal
        );
        let full = md(&[("synchronous", "FULL")]);
        assert_eq!(
            Synchronous::from_metadata(&full).unwrap(),
            Synchronous::Full
        );
        let err = Synchronous::from_metadata(&md(&[("synchronous", "off")])).unwrap_err();
        assert!(err.to_string().contains("'synchronous'"), "{err}");
    }

    #[tokio::test]
    async fn synchronous_is_applied_to_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        for (value, expected) in [("normal", 1), ("full", 2), ("", 2)] {
            // With `:memory:` the one reader slot is the writer's connection.
            let fields = [("databasePath", ":memory:"), ("synchronous", value)];
            let store = SqliteStore::from_metadata(&md(&fields), &ctx(dir.path()))
                .await
                .unwrap();
            let mode: i64 = store
                .read(
                    || "pragma".into(),
                    |c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)),
                )
                .unwrap();
            assert_eq!(mode, expected, "synchronous = {value:?}");
            store.close().await;
        }
    }

    /// Writes that queue up while the writer is busy are committed together,
    /// yet each gets its own answer: mismatches and a failing statement
    /// reach only their own caller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_keep_their_own_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::from_metadata(&md(&[]), &ctx(dir.path()))
            .await
            .unwrap();
        // Make every write of key 'bad' fail inside SQLite.
        let conn = Connection::open(dir.path().join("state-lite.db")).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER fail_bad BEFORE INSERT ON state WHEN NEW.key = 'bad' \
             BEGIN SELECT RAISE(ABORT, 'bad key'); END;",
        )
        .unwrap();
        drop(conn);

        store.set(set("existing", b"0")).await.unwrap();
        let mut calls = Vec::new();
        for round in 0..5 {
            for i in 0..20 {
                let key = format!("k{round}-{i}");
                calls.push(("ok", store.set(set(&key, b"v"))));
            }
            calls.push(("bad", store.set(set("bad", b"v"))));
            calls.push((
                "mismatch",
                store.set(SetRequest {
                    etag: Some("stale".into()),
                    concurrency: Concurrency::FirstWrite,
                    ..set("existing", b"x")
                }),
            ));
        }
        let (kinds, futures): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
        let results = futures::future::join_all(futures).await;
        for (kind, result) in kinds.into_iter().zip(results) {
            match (kind, &result) {
                ("ok", Ok(())) => {}
                ("bad", Err(StateError::Internal(m))) if m.contains("'bad'") => {}
                ("mismatch", Err(StateError::EtagMismatch { key })) if key == "existing" => {}
                _ => panic!("{kind}: unexpected {result:?}"),
            }
        }
        for round in 0..5 {
            for i in 0..20 {
                let key = format!("k{round}-{i}");
                let got = store.get(&key, Consistency::Strong).await.unwrap();
                assert_eq!(got.map(|e| e.value), Some(b"v".to_vec()), "{key}");
            }
        }
        let existing = store.get("existing", Consistency::Strong).await.unwrap();
        assert_eq!(existing.unwrap().value, b"0");
        assert_eq!(store.get("bad", Consistency::Strong).await.unwrap(), None);

        // A transaction in a group is still all or nothing.
        let tx = store.transact(vec![
            Operation::Set(set("t1", b"1")),
            Operation::Set(set("bad", b"1")),
        ]);
        let single = store.set(set("t2", b"2"));
        let (tx, single) = tokio::join!(tx, single);
        assert!(
            matches!(&tx, Err(StateError::Internal(m)) if m.contains("'bad'")),
            "{tx:?}"
        );
        single.unwrap();
        assert_eq!(store.get("t1", Consistency::Strong).await.unwrap(), None);
        assert!(store
            .get("t2", Consistency::Strong)
            .await
            .unwrap()
            .is_some());

        store.close().await;
        let after = store.get("t2", Consistency::Strong).await;
        assert!(
            matches!(after, Err(StateError::Unavailable(_))),
            "{after:?}"
        );
        let after = store.set(set("t3", b"3")).await;
        assert!(
            matches!(after, Err(StateError::Unavailable(_))),
            "{after:?}"
        );
    }
}
