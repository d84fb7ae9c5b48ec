//! Secret stores: read-only maps of secret name → values, behind the Dapr
//! secrets API (`GetSecret`, `GetBulkSecret`) and behind `secretKeyRef` in
//! component files.
//!
//! A secret is a small map: most stores hold one value per secret, returned
//! as `{name: value}`; multi-valued stores return several named values.
//!
//! Backends: [`file`] (`secretstores.local.file`, a JSON file) and [`env`]
//! (`secretstores.local.env`, the runtime's environment). Every backend runs
//! the suite in [`conformance`] (feature `conformance`).

use std::collections::BTreeMap;

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod env;
pub mod file;

/// The values of one secret.
pub type Secret = BTreeMap<String, String>;

/// Why a secret could not be read. Messages never include a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The store has no secret of that name.
    #[error("no secret named '{key}'")]
    NotFound { key: String },
    /// The request is not one this store can answer (e.g. an empty name).
    #[error("{0}")]
    InvalidRequest(String),
    /// The store cannot be read right now.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A secret store backend.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// The secret named `key`.
    async fn get(&self, key: &str) -> Result<Secret, SecretError>;

    /// Every secret of the store, by name.
    async fn bulk_get(&self) -> Result<BTreeMap<String, Secret>, SecretError>;
}
