//! `secretstores.local.file`: secrets from a JSON file, read at start-up,
//! as Dapr's local file store reads them (for development and single
//! machines; the file should be readable by the runtime's user only).
//!
//! # Metadata
//!
//! * `secretsFile` (required): the JSON file; relative paths are taken from
//!   the runtime's working directory.
//! * `nestedSeparator` (optional, default `:`): joins the keys of nested
//!   objects, so `{"db": {"password": "x"}}` is the secret `db:password`.
//! * `multiValued` (optional, default `false`): when `true` each top-level
//!   key is one secret whose values are its (flattened) object, so
//!   `GetSecret("db")` answers `{password: x}`.
//!
//! Numbers and booleans are secrets in their JSON text; `null` is the
//! empty string. A missing or unreadable file, invalid JSON, or a top-level
//! value that is not an object stops the component at start-up with the
//! file named; the file's contents are never logged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::Value;

use super::{Secret, SecretError, SecretStore};
use crate::{ComponentError, Metadata};

/// A store over one file's secrets.
#[derive(Debug)]
pub struct FileSecretStore {
    secrets: BTreeMap<String, Secret>,
}

impl FileSecretStore {
    /// Reads `md`'s `secretsFile`.
    pub fn open(md: &Metadata) -> Result<Self, ComponentError> {
        let path = PathBuf::from(md.required("secretsFile")?);
        let separator = md.get("nestedSeparator").unwrap_or(":").to_string();
        if separator.is_empty() {
            return Err(md.invalid("nestedSeparator", "must not be empty"));
        }
        let multi = md.bool("multiValued")?.unwrap_or(false);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            md.invalid(
                "secretsFile",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text, &separator, multi)
            .map_err(|reason| md.invalid("secretsFile", format!("{}: {reason}", path.display())))
    }

    /// The secrets of a file's `text`; the error says what is wrong
    /// without quoting the file.
    pub fn parse(text: &str, separator: &str, multi: bool) -> Result<Self, String> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
        let Value::Object(top) = doc else {
            return Err("the file must hold a JSON object of secrets".into());
        };
        let mut secrets = BTreeMap::new();
        for (name, value) in top {
            if multi {
                let mut values = BTreeMap::new();
                match value {
                    Value::Object(_) => flatten("", &value, separator, &mut values),
                    other => {
                        values.insert(name.clone(), scalar(&other));
                    }
                }
                secrets.insert(name, values);
            } else {
                let mut flat = BTreeMap::new();
                flatten(&name, &value, separator, &mut flat);
                for (k, v) in flat {
                    secrets.insert(k.clone(), BTreeMap::from([(k, v)]));
                }
            }
        }
        Ok(Self { secrets })
    }
}

/// Flattens nested objects into `out`, joining keys with `separator`.
fn flatten(prefix: &str, value: &Value, separator: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}{separator}{k}")
                };
                flatten(&key, v, separator, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[async_trait]
impl SecretStore for FileSecretStore {
    async fn get(&self, key: &str) -> Result<Secret, SecretError> {
        self.secrets
            .get(key)
            .cloned()
            .ok_or_else(|| SecretError::NotFound {
                key: key.to_string(),
            })
    }

    async fn bulk_get(&self) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(self.secrets.clone())
    }
}

pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "secretstores.local.file",
    build: |md, _ctx| {
        Box::pin(async move {
            let store = FileSecretStore::open(md)?;
            Ok(crate::registry::Component::SecretStore(
                std::sync::Arc::new(store),
            ))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        r#"{"db": {"password": "s3cret", "port": 5432}, "token": "t", "off": null, "flag": true}"#;

    #[tokio::test]
    async fn nested_keys_are_joined_with_the_separator() {
        let s = FileSecretStore::parse(FILE, ":", false).unwrap();
        assert_eq!(
            s.get("db:password").await.unwrap(),
            BTreeMap::from([("db:password".to_string(), "s3cret".to_string())])
        );
        assert_eq!(s.get("db:port").await.unwrap()["db:port"], "5432");
        assert_eq!(s.get("off").await.unwrap()["off"], "");
        assert_eq!(s.get("flag").await.unwrap()["flag"], "true");
        assert_eq!(
            s.get("db").await,
            Err(SecretError::NotFound { key: "db".into() })
        );
        let dotted = FileSecretStore::parse(FILE, ".", false).unwrap();
        assert!(dotted.get("db.password").await.is_ok());
        assert_eq!(s.bulk_get().await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn multi_valued_secrets_are_objects() {
        let s = FileSecretStore::parse(FILE, ":", true).unwrap();
        assert_eq!(
            s.get("db").await.unwrap(),
            BTreeMap::from([
                ("password".to_string(), "s3cret".to_string()),
                ("port".to_string(), "5432".to_string())
            ])
        );
        assert_eq!(s.get("token").await.unwrap()["token"], "t");
    }

    #[test]
    fn bad_files_are_refused_without_quoting_them() {
        let e = FileSecretStore::parse(r#"{"a": "s3cret""#, ":", false).unwrap_err();
        assert!(e.contains("not valid JSON") && !e.contains("s3cret"), "{e}");
        let e = FileSecretStore::parse(r#"["s3cret"]"#, ":", false).unwrap_err();
        assert!(e.contains("JSON object") && !e.contains("s3cret"), "{e}");
        let md = Metadata::new(
            "secrets",
            "secretstores.local.file",
            [("secretsFile".to_string(), "/no/such/file.json".to_string())],
        );
        let e = FileSecretStore::open(&md).unwrap_err().to_string();
        assert!(
            e.contains("secretsFile") && e.contains("/no/such/file.json"),
            "{e}"
        );
        let md = Metadata::new("secrets", "secretstores.local.file", []);
        let e = FileSecretStore::open(&md).unwrap_err().to_string();
        assert!(e.contains("secretsFile"), "{e}");
    }
}
