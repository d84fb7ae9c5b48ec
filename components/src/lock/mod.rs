//! Distributed locks: a named resource held by one owner at a time until
//! the owner unlocks it or its lease expires. Behind Dapr's lock API
//! (`TryLockAlpha1`, `UnlockAlpha1`).
//!
//! The backend enforces expiry with its own clock (the database's), never
//! the caller's, so a holder that dies or stalls loses the lock when its
//! lease ends whatever its clock says.
//!
//! Backends: [`sqlite`] (`lock.sqlite`, one database file shared by every
//! runtime of a machine: the embedded default), [`postgres`]
//! (`lock.postgresql`) and [`zookeeper`] (`lock.zookeeper`, whose locks
//! also end with their holder's session). Every backend runs the suite in
//! [`conformance`].

use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgresql")]
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

/// How an unlock ended, as Dapr's `UnlockResponse.Status` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockStatus {
    Success,
    /// No one holds the resource (never locked, unlocked, or expired).
    LockDoesNotExist,
    /// Another owner holds it.
    LockBelongsToOthers,
}

/// Why a lock operation could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend error: {0}")]
    Internal(String),
}

/// A lock store backend.
#[async_trait]
pub trait LockStore: Send + Sync + 'static {
    /// Takes `resource` for `owner` for `lease` when no one holds it (or
    /// its holder's lease has ended); `false` when someone holds it,
    /// including `owner` itself.
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LockError>;

    /// Releases `resource` if `owner` holds it.
    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError>;

    /// Whether a holder's locks end with its connection: `true` when
    /// closing the store (or the runtime's death, once the backend notices)
    /// releases them without waiting for their leases. Lease expiry holds
    /// either way.
    fn releases_on_close(&self) -> bool {
        false
    }

    /// Releases connections.
    async fn close(&self) {}
}
