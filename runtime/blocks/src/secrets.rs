//! Secrets building block: `GetSecret` and `GetBulkSecret` over the secret
//! stores, filtered by the app's secret scopes (Dapr Configuration
//! `spec.secrets.scopes`), and the resolution of `secretKeyRef` fields in
//! component files ([`SecretsBlock::resolve`]).
//!
//! A secret's value is never logged or put in an error message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use weft_components::secretstores::{Secret, SecretError, SecretStore};
use weft_proto::runtime as pb;

use crate::context::CallContext;
use crate::error::{BlockError, Code};
use crate::telemetry::{OpMetrics, Telemetry};

/// Which secrets of one store the app may read (`spec.secrets.scopes[i]`),
/// with Dapr's rules: when `allowed` is not empty only the secrets it
/// lists are readable; otherwise a secret in `denied` is not, and the rest
/// follow `default_allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `defaultAccess`: `allow` (the default) or `deny`.
    pub default_allow: bool,
    /// `allowedSecrets`.
    pub allowed: Vec<String>,
    /// `deniedSecrets`.
    pub denied: Vec<String>,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            default_allow: true,
            allowed: Vec::new(),
            denied: Vec::new(),
        }
    }
}

impl Scope {
    pub fn allows(&self, key: &str) -> bool {
        if !self.allowed.is_empty() {
            return self.allowed.iter().any(|k| k == key);
        }
        if self.denied.iter().any(|k| k == key) {
            return false;
        }
        self.default_allow
    }
}

/// A secret store with its type and metric handles.
pub struct StoreHandle {
    store: Arc<dyn SecretStore>,
    kind: String,
    get: OpMetrics,
    bulk_get: OpMetrics,
}

impl StoreHandle {
    pub fn new(name: &str, kind: &str, store: Arc<dyn SecretStore>, telemetry: &Telemetry) -> Self {
        Self {
            store,
            kind: kind.to_string(),
            get: telemetry.metrics.op(name, kind, "get"),
            bulk_get: telemetry.metrics.op(name, kind, "bulk_get"),
        }
    }
}

/// A `secretKeyRef` of a component file: field `field` takes the secret
/// `name` (its value `key`, or the secret's only value) from `store`
/// (`auth.secretStore`; empty when the component names none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub field: String,
    pub store: String,
    pub name: String,
    pub key: Option<String>,
}

/// The secrets building block.
pub struct SecretsBlock {
    stores: BTreeMap<String, StoreHandle>,
    scopes: HashMap<String, Scope>,
    telemetry: Arc<Telemetry>,
}

impl SecretsBlock {
    pub fn new(
        stores: BTreeMap<String, StoreHandle>,
        scopes: HashMap<String, Scope>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            stores,
            scopes,
            telemetry,
        }
    }

    pub fn store_names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    fn store(&self, name: &str) -> Result<&StoreHandle, BlockError> {
        BlockError::find_component(&self.stores, name, "store_name", "secret store")
    }

    fn allowed(&self, store: &str, key: &str) -> bool {
        self.scopes.get(store).is_none_or(|s| s.allows(key))
    }

    pub async fn get_secret(
        &self,
        ctx: &CallContext,
        req: pb::GetSecretRequest,
    ) -> Result<pb::GetSecretResponse, BlockError> {
        let h = self.store(&req.store_name)?;
        if req.key.is_empty() {
            return Err(BlockError::missing_field("key"));
        }
        if !self.allowed(&req.store_name, &req.key) {
            return Err(BlockError::new(
                Code::PermissionDenied,
                format!(
                    "secret store '{}': access to secret '{}' is not allowed by this app's secret scopes (spec.secrets.scopes)",
                    req.store_name, req.key
                ),
            ));
        }
        let data = self
            .telemetry
            .component_call(ctx, "secret get", &h.kind, &h.get, h.store.get(&req.key))
            .await
            .map_err(|e| from_secret(&req.store_name, e))?;
        Ok(pb::GetSecretResponse {
            data: data.into_iter().collect(),
        })
    }

    pub async fn get_bulk_secret(
        &self,
        ctx: &CallContext,
        req: pb::GetBulkSecretRequest,
    ) -> Result<pb::GetBulkSecretResponse, BlockError> {
        let h = self.store(&req.store_name)?;
        let all = self
            .telemetry
            .component_call(
                ctx,
                "secret bulk_get",
                &h.kind,
                &h.bulk_get,
                h.store.bulk_get(),
            )
            .await
            .map_err(|e| from_secret(&req.store_name, e))?;
        Ok(pb::GetBulkSecretResponse {
            data: all
                .into_iter()
                .filter(|(k, _)| self.allowed(&req.store_name, k))
                .map(|(k, v)| {
                    (
                        k,
                        pb::SecretResponse {
                            secrets: v.into_iter().collect(),
                        },
                    )
                })
                .collect(),
        })
    }
}

/// The value a `secretKeyRef` names, for a component's field, from the
/// secret stores built so far. With no store named (`auth.secretStore`
/// absent) the only secret store is used. Scopes do not apply: they limit
/// the app, not the runtime's own component files. Errors name the field,
/// store and secret, never a value.
pub async fn resolve(
    stores: &BTreeMap<String, StoreHandle>,
    r: &SecretRef,
) -> Result<String, String> {
    let known = || stores.keys().cloned().collect::<Vec<_>>().join(", ");
    let (store_name, h) = if r.store.is_empty() {
        match stores.len() {
            1 => stores.iter().next().expect("one store"),
            0 => {
                return Err(format!(
                    "field '{}': secretKeyRef needs a secret store, and none is configured (add a secretstores.* component)",
                    r.field
                ))
            }
            _ => {
                return Err(format!(
                    "field '{}': secretKeyRef: several secret stores are configured ({}); name one in the component's auth.secretStore",
                    r.field,
                    known()
                ))
            }
        }
    } else {
        match stores.get_key_value(&r.store) {
            Some(found) => found,
            None if stores.is_empty() => {
                return Err(format!(
                    "field '{}': auth.secretStore names secret store '{}', but no secret stores are configured",
                    r.field, r.store
                ))
            }
            None => {
                return Err(format!(
                    "field '{}': auth.secretStore names secret store '{}', which is not configured (secret stores: {})",
                    r.field,
                    r.store,
                    known()
                ))
            }
        }
    };
    let secret: Secret = h.store.get(&r.name).await.map_err(|e| {
        format!(
            "field '{}': secretKeyRef '{}' in secret store '{store_name}': {e}",
            r.field, r.name
        )
    })?;
    let key = r.key.as_deref().unwrap_or(&r.name);
    match secret.get(key) {
        Some(v) => Ok(v.clone()),
        None if r.key.is_none() && secret.len() == 1 => {
            Ok(secret.into_values().next().unwrap_or_default())
        }
        None => Err(format!(
            "field '{}': secretKeyRef '{}' in secret store '{store_name}' has no value '{key}' (it has: {})",
            r.field,
            r.name,
            secret.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

fn from_secret(store: &str, e: SecretError) -> BlockError {
    let code = match &e {
        SecretError::NotFound { .. } => Code::NotFound,
        SecretError::InvalidRequest(_) => Code::InvalidArgument,
        SecretError::Unavailable(_) => Code::Unavailable,
    };
    BlockError::new(code, format!("secret store '{store}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_daprs_rules() {
        let open = Scope::default();
        assert!(open.allows("a"));
        let deny_all = Scope {
            default_allow: false,
            ..Scope::default()
        };
        assert!(!deny_all.allows("a"));
        let allow_list = Scope {
            default_allow: false,
            allowed: vec!["a".into()],
            denied: vec!["a".into(), "b".into()],
        };
        assert!(allow_list.allows("a"), "the allowed list wins");
        assert!(!allow_list.allows("c"));
        let deny_list = Scope {
            default_allow: true,
            allowed: vec![],
            denied: vec!["b".into()],
        };
        assert!(deny_list.allows("a") && !deny_list.allows("b"));
    }
}
