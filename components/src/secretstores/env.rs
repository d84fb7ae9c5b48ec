//! `secretstores.local.env`: the runtime's environment variables as
//! secrets, as Dapr's local environment store serves them (for
//! development; in production a variable is visible to anything that can
//! read the process's environment).
//!
//! # Metadata
//!
//! * `prefix` (optional): only variables starting with it are secrets,
//!   named without it (`prefix: APP_` makes `APP_DB_PASSWORD` the secret
//!   `DB_PASSWORD`). Without a prefix every variable is a secret.
//!
//! Variables are read at each call, so a value set after start-up is seen.
//! Variables whose name or value is not valid UTF-8 are skipped.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{Secret, SecretError, SecretStore};
use crate::Metadata;

/// A store over the process environment.
#[derive(Debug)]
pub struct EnvSecretStore {
    prefix: String,
}

impl EnvSecretStore {
    pub fn new(md: &Metadata) -> Self {
        Self {
            prefix: md.get("prefix").unwrap_or_default().to_string(),
        }
    }
}

#[async_trait]
impl SecretStore for EnvSecretStore {
    async fn get(&self, key: &str) -> Result<Secret, SecretError> {
        if key.is_empty() {
            return Err(SecretError::InvalidRequest(
                "a secret name must not be empty".into(),
            ));
        }
        match std::env::var(format!("{}{key}", self.prefix)) {
            Ok(v) => Ok(BTreeMap::from([(key.to_string(), v)])),
            Err(_) => Err(SecretError::NotFound {
                key: key.to_string(),
            }),
        }
    }

    async fn bulk_get(&self) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(&self.prefix)?.to_string();
                (!name.is_empty()).then(|| (name.clone(), BTreeMap::from([(name, v)])))
            })
            .collect())
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "secretstores.local.env",
    build: |md, _ctx| {
        Box::pin(async move {
            Ok(crate::registry::Component::SecretStore(
                std::sync::Arc::new(EnvSecretStore::new(md)),
            ))
        })
    },
};
