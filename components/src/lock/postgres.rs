//! `lock.postgresql`: locks in a PostgreSQL table, leases timed by the
//! server's clock (`clock_timestamp()`), for runtimes on many machines.
//!
//! # Metadata
//!
//! * `connectionString` (required): as for `state.postgresql` (a
//!   `postgres://` URL or libpq key/value pairs; may come from a secret
//!   store through `secretKeyRef`).
//! * `tableName` (optional, default `weft_locks`): created on first use.
//! * `timeout` (optional duration, default `5s`): per operation.
//!
//! The runtime starts while the server is down; calls answer
//! `Unavailable` until it is back.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use tokio::sync::OnceCell;

use super::{LockError, LockStore, UnlockStatus};
use crate::{ComponentError, Metadata};

const DEFAULT_TABLE: &str = "weft_locks";

/// Locks in one PostgreSQL table.
#[derive(Debug)]
pub struct PostgresLockStore {
    pool: PgPool,
    table: String,
    timeout: Duration,
    ready: OnceCell<()>,
}

impl PostgresLockStore {
    /// Builds the store; connects on first use.
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let (pool, table, timeout) = crate::state::postgres::table_settings(md, DEFAULT_TABLE)?;
        Ok(Self {
            pool,
            table,
            timeout,
            ready: OnceCell::new(),
        })
    }

    fn error(&self, what: &str, e: sqlx::Error) -> LockError {
        let text = format!("PostgreSQL table '{}': {what}: {e}", self.table);
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                LockError::Unavailable(text)
            }
            _ => LockError::Internal(text),
        }
    }

    async fn table(&self) -> Result<(), LockError> {
        self.ready
            .get_or_try_init(|| async {
                crate::state::postgres::create_table(&self.pool, &self.table, "resource TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL")
                    .await
                    .map_err(|e| self.error("create the table", e))
            })
            .await
            .map(|_| ())
    }

    /// Runs `f` within the operation timeout.
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        match tokio::time::timeout(self.timeout, async {
            self.table().await?;
            f.await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(LockError::Unavailable(format!(
                "PostgreSQL table '{}': no answer within {:?}",
                self.table, self.timeout
            ))),
        }
    }
}

#[async_trait]
impl LockStore for PostgresLockStore {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LockError> {
        let ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        self.timed(async {
            let r = sqlx::query(&format!(
                "INSERT INTO {t} (resource, owner, expires_at)
                   VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (resource) DO UPDATE
                   SET owner = excluded.owner, expires_at = excluded.expires_at
                   WHERE {t}.expires_at <= clock_timestamp()",
                t = self.table
            ))
            .bind(resource)
            .bind(owner)
            .bind(ms)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error("try lock", e))?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        self.timed(async {
            // One statement: delete when it is ours, else tell who holds it.
            let row: (i64, i64) = sqlx::query_as(&format!(
                "WITH gone AS (
                     DELETE FROM {t} WHERE resource = $1 AND owner = $2
                       AND expires_at > clock_timestamp() RETURNING 1)
                 SELECT (SELECT count(*) FROM gone),
                        (SELECT count(*) FROM {t} WHERE resource = $1
                           AND expires_at > clock_timestamp())",
                t = self.table
            ))
            .bind(resource)
            .bind(owner)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error("unlock", e))?;
            Ok(match row {
                (1, _) => UnlockStatus::Success,
                (_, n) if n > 0 => UnlockStatus::LockBelongsToOthers,
                _ => UnlockStatus::LockDoesNotExist,
            })
        })
        .await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "lock.postgresql",
    build: |md, _ctx| {
        Box::pin(async move {
            let store = PostgresLockStore::from_metadata(md)?;
            Ok(crate::registry::Component::Lock(std::sync::Arc::new(store)))
        })
    },
};
