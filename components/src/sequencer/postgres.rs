//! `sequencer.postgresql`: sequences in a PostgreSQL table, for runtimes
//! on many machines.
//!
//! # Metadata
//!
//! * `connectionString` (required): as for `state.postgresql` (may come
//!   from a secret store through `secretKeyRef`).
//! * `tableName` (optional, default `weft_sequences`): created on first
//!   use.
//! * `timeout` (optional duration, default `5s`): per operation.
//!
//! One row per key holds the next id to reserve; a reservation is one
//! upsert that moves it on under the row's lock, so concurrent runtimes
//! get disjoint ranges. An id is as durable as the server's commits
//! (`synchronous_commit`, and synchronous replication for failovers).
//! The runtime starts while the server is down; calls answer
//! `Unavailable` until it is back.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use tokio::sync::OnceCell;

use super::{SequencerError, SequencerStore};
use crate::{ComponentError, Metadata};

const DEFAULT_TABLE: &str = "weft_sequences";

/// Sequences in one PostgreSQL table.
#[derive(Debug)]
pub struct PostgresSequencer {
    pool: PgPool,
    table: String,
    timeout: Duration,
    ready: OnceCell<()>,
}

impl PostgresSequencer {
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

    fn error(&self, what: &str, e: sqlx::Error) -> SequencerError {
        let text = format!("PostgreSQL table '{}': {what}: {e}", self.table);
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                SequencerError::Unavailable(text)
            }
            _ => SequencerError::Internal(text),
        }
    }

    async fn table(&self) -> Result<(), SequencerError> {
        self.ready
            .get_or_try_init(|| async {
                crate::state::postgres::create_table(
                    &self.pool,
                    &self.table,
                    "key TEXT PRIMARY KEY, next_id BIGINT NOT NULL",
                )
                .await
                .map_err(|e| self.error("create the table", e))
            })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl SequencerStore for PostgresSequencer {
    async fn reserve(&self, key: &str, count: u64) -> Result<i64, SequencerError> {
        let count = i64::try_from(count.max(1))
            .map_err(|_| SequencerError::InvalidRequest(format!("cannot reserve {count} ids")))?;
        let work = async {
            self.table().await?;
            sqlx::query_scalar::<_, i64>(&format!(
                "INSERT INTO {t} (key, next_id) VALUES ($1, 1 + $2)
                 ON CONFLICT (key) DO UPDATE SET next_id = {t}.next_id + $2
                 RETURNING next_id - $2",
                t = self.table
            ))
            .bind(key)
            .bind(count)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error("reserve", e))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SequencerError::Unavailable(format!(
                "PostgreSQL table '{}': no answer within {:?}",
                self.table, self.timeout
            ))),
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "sequencer.postgresql",
    build: |md, _ctx| {
        Box::pin(async move {
            let store = PostgresSequencer::from_metadata(md)?;
            Ok(crate::registry::Component::Sequencer(std::sync::Arc::new(
                store,
            )))
        })
    },
};
