//! State building block: key/value storage with ETags, TTL and all-or-nothing
//! transactions.
//!
//! ETag semantics (shared by every backend and pinned by the conformance
//! suite):
//!
//! | concurrency    | etag given                          | no etag                      |
//! |----------------|-------------------------------------|------------------------------|
//! | `FirstWrite`   | must equal the stored etag          | the key must not exist yet   |
//! | `LastWrite`    | ignored                             | unconditional write          |
//! | `Unspecified`  | must equal the stored etag          | unconditional write          |
//!
//! A conditional write or delete on a key that does not exist fails with
//! [`StateError::EtagMismatch`]. Every successful write gives the item a new
//! opaque etag. Deleting a missing key without an etag succeeds.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod memory;
#[cfg(feature = "postgresql")]
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::metadata::{ComponentError, InitContext, Metadata};
use crate::registry::{self, Component};

/// Optional capabilities a state store advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Optimistic concurrency with etags.
    Etag,
    /// [`StateStore::transact`] is all-or-nothing.
    Transactional,
    /// Items may carry a time to live.
    Ttl,
}

impl Feature {
    /// The name Dapr's metadata API uses for the feature.
    pub fn dapr_name(self) -> &'static str {
        match self {
            Feature::Etag => "ETAG",
            Feature::Transactional => "TRANSACTIONAL",
            Feature::Ttl => "TTL",
        }
    }
}

/// Concurrency mode of a write or delete (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    #[default]
    Unspecified,
    FirstWrite,
    LastWrite,
}

/// Consistency requested by the caller. Every current backend is strongly
/// consistent on a single node, so this is accepted and passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    #[default]
    Unspecified,
    Eventual,
    Strong,
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    pub value: Vec<u8>,
    pub etag: String,
    /// When the item expires, if it was written with a TTL.
    pub expires_at: Option<SystemTime>,
}

/// A stored item lent for the duration of a read answered in place
/// ([`StateStore::get_now`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub value: &'a [u8],
    pub etag: &'a str,
    pub expires_at: Option<SystemTime>,
}

/// Write one item.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetRequest {
    pub key: String,
    pub value: Vec<u8>,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
    /// Expire the item after this long; `None` keeps it forever.
    pub ttl: Option<Duration>,
}

/// Delete one item.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Set(SetRequest),
    Delete(DeleteRequest),
}

impl Operation {
    pub fn key(&self) -> &str {
        match self {
            Operation::Set(r) => &r.key,
            Operation::Delete(r) => &r.key,
        }
    }
}

/// Why a state operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The etag did not match the stored item (or the item does not exist).
    #[error(
        "etag mismatch for key '{key}': the item was changed or deleted since that etag was read"
    )]
    EtagMismatch { key: String },
    /// The etag is not one this store could have produced.
    #[error("invalid etag '{etag}' for key '{key}'")]
    EtagInvalid { key: String, etag: String },
    /// The request cannot be served by this store (for example a TTL on a
    /// store without [`Feature::Ttl`]).
    #[error("{0}")]
    InvalidRequest(String),
    /// The backend cannot be reached; the caller may retry later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reported.
    #[error("backend error: {0}")]
    Internal(String),
}

/// A state store backend.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Optional capabilities of this backend.
    fn features(&self) -> &'static [Feature];

    /// Reads one item; `None` when it does not exist or has expired.
    async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<StateEntry>, StateError>;

    /// Reads one item without waiting, lending it to `read` (`None`: it
    /// does not exist or has expired) instead of copying it out, so the
    /// caller can write it straight to where it goes. Stores whose reads
    /// may wait (on a connection, a file, a lock held across I/O) keep the
    /// default, which declines: the caller then uses [`StateStore::get`].
    /// `read` runs at most once and must not block.
    fn get_now(
        &self,
        _key: &str,
        _consistency: Consistency,
        _read: &mut dyn FnMut(Option<EntryRef<'_>>),
    ) -> Option<Result<(), StateError>> {
        None
    }

    /// Reads many items, in the order of `keys`.
    async fn bulk_get(&self, keys: &[String]) -> Result<Vec<Option<StateEntry>>, StateError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key, Consistency::Unspecified).await?);
        }
        Ok(out)
    }

    /// Writes one item, honouring its etag and concurrency mode.
    async fn set(&self, req: SetRequest) -> Result<(), StateError>;

    /// Deletes one item, honouring its etag and concurrency mode.
    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError>;

    /// Applies every operation or none of them. Fails with the first
    /// operation's error (an etag mismatch names its key).
    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError>;

    /// Checks that the backend is reachable.
    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// Releases connections and files. Further calls may fail.
    async fn close(&self) {}
}

/// Builds a state store from its component definition (through the
/// [`registry`](crate::registry)). Configuration is validated here; a
/// networked backend that is down does not fail start-up (its calls answer
/// [`StateError::Unavailable`] until it is back).
pub async fn create(
    md: &Metadata,
    ctx: &InitContext,
) -> Result<Arc<dyn StateStore>, ComponentError> {
    match registry::create(md, ctx).await? {
        Component::State(s) => Ok(s),
        _ => Err(registry::unknown_type(md, Some("state"))),
    }
}
