//! Configuration building block: read-mostly key/value settings that apps
//! read and subscribe to. Changes are made outside the runtime (by editing
//! the file, or writing the table) and pushed to subscribers.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod file;
mod hub;
#[cfg(feature = "postgresql")]
pub mod postgres;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::metadata::{ComponentError, InitContext, Metadata};
use crate::registry::{self, Component};

/// Optional capabilities a configuration store advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// [`ConfigurationStore::subscribe`] pushes changes.
    Subscribe,
}

impl Feature {
    /// The capability's name in the metadata API.
    pub fn dapr_name(self) -> &'static str {
        match self {
            Feature::Subscribe => "SUBSCRIBE",
        }
    }
}

/// One configuration value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigurationItem {
    pub value: String,
    /// Changes whenever the value changes.
    pub version: String,
    pub metadata: HashMap<String, String>,
}

/// Items by key.
pub type Items = HashMap<String, ConfigurationItem>;

/// Metadata key set on an item delivered to subscribers when its key was
/// removed from the store (the item's value is then empty).
pub const DELETED_METADATA_KEY: &str = "deleted";

/// Why a configuration operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend error: {0}")]
    Internal(String),
}

/// A configuration store backend.
#[async_trait]
pub trait ConfigurationStore: Send + Sync + 'static {
    /// Optional capabilities of this backend.
    fn features(&self) -> &'static [Feature];

    /// The current items for `keys`, or every item when `keys` is empty.
    /// Keys that do not exist are absent from the result.
    async fn get(&self, keys: &[String]) -> Result<Items, ConfigurationError>;

    /// Starts a subscription to `keys` (every key when empty). Each message
    /// holds the items that changed since the last one; a removed key comes
    /// with an empty value and metadata `deleted=true`. Dropping the
    /// receiver ends the subscription. The current values are not sent:
    /// callers read them with [`ConfigurationStore::get`] after subscribing.
    async fn subscribe(&self, keys: &[String])
        -> Result<mpsc::Receiver<Items>, ConfigurationError>;

    /// Stops watchers and releases connections.
    async fn close(&self) {}
}

/// Builds a configuration store from its component definition (through
/// the [`registry`](crate::registry)).
pub async fn create(
    md: &Metadata,
    ctx: &InitContext,
) -> Result<Arc<dyn ConfigurationStore>, ComponentError> {
    match registry::create(md, ctx).await? {
        Component::Configuration(c) => Ok(c),
        _ => Err(registry::unknown_type(md, Some("configuration"))),
    }
}
