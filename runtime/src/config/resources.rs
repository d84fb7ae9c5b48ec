//! Component resource files in Dapr's YAML shape:
//!
//! ```yaml
//! apiVersion: dapr.io/v1alpha1
//! kind: Component
//! metadata:
//!   name: statestore
//! spec:
//!   type: state.postgresql
//!   version: v1
//!   metadata:
//!     - name: connectionString
//!       value: postgres://weft@127.0.0.1:5432/weft
//! scopes: [orders]        # optional: only these app ids load it
//! ```
//!
//! Every `*.yaml` / `*.yml` file in the resources directory is read (several
//! documents per file are allowed, separated by `---`). Documents of other
//! kinds (`Subscription`, `Configuration`, `Resiliency`, …) are skipped with
//! a log line. Any error names the file, the component and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use weft_blocks::secrets::SecretRef;
pub use weft_blocks::ComponentSpec;

use super::yaml::{from_value, ObjectMeta};

/// A resource file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceError {
    pub file: String,
    pub component: Option<String>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(c) = &self.component {
            write!(f, ": component '{c}'")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field '{field}'")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ResourceError {}

/// Reads every component in `dir` that is in scope for `app_id`.
pub fn load_dir(dir: &Path, app_id: &str) -> Result<Vec<ComponentSpec>, ResourceError> {
    let io_err = |e: std::io::Error| ResourceError {
        file: dir.display().to_string(),
        component: None,
        field: None,
        reason: format!("cannot read resources directory: {e}"),
    };
    let files = yaml_files(dir).map_err(io_err)?;
    let mut out: Vec<ComponentSpec> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ResourceError {
            file: file.display().to_string(),
            component: None,
            field: None,
            reason: format!("cannot read file: {e}"),
        })?;
        for spec in parse_file(&file.display().to_string(), &text, app_id)? {
            if let Some(prev) = out.iter().find(|c| c.name == spec.name) {
                return Err(ResourceError {
                    file: spec.source.clone(),
                    component: Some(spec.name.clone()),
                    field: Some("metadata.name".into()),
                    reason: format!(
                        "a component with this name is already defined in {}",
                        prev.source
                    ),
                });
            }
            out.push(spec);
        }
    }
    Ok(out)
}

/// The resource files of `dir` (`*.yaml`, `*.yml`), sorted.
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parses the documents of one file; `file` is used in error messages.
pub fn parse_file(
    file: &str,
    text: &str,
    app_id: &str,
) -> Result<Vec<ComponentSpec>, ResourceError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| ResourceError {
            file: file.to_string(),
            component: None,
            field: None,
            reason: format!("invalid YAML (document {}): {e}", index + 1),
        })?;
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        if let Some(spec) = parse_document(file, &value, app_id)? {
            out.push(spec);
        }
    }
    Ok(out)
}

/// A `Component` document as written (Dapr's shape). Every field is
/// optional here so that a missing one is reported by name after reading.
#[derive(Debug, Deserialize)]
struct ComponentDoc {
    /// `apiVersion`: `dapr.io/v1alpha1`.
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    /// `metadata`: its `name` is the name apps use.
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    /// `spec`: type, version and metadata fields.
    #[serde(default)]
    spec: Option<ComponentSpecDoc>,
    /// `scopes`: the app ids that load it (all when absent or empty).
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// `auth.secretStore`: the secret store its `secretKeyRef` fields read
    /// (the only one configured when absent).
    #[serde(default)]
    auth: Option<AuthDoc>,
}

/// `auth` of a component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthDoc {
    #[serde(rename = "secretStore", default)]
    secret_store: Option<String>,
}

/// `secretKeyRef` of a metadata entry: the secret `name`, and which of its
/// values (`key`; the secret's only value when absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyRefDoc {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

/// `spec` of a component.
#[derive(Debug, Deserialize)]
struct ComponentSpecDoc {
    /// `type`: `<block>.<backend>`, e.g. `state.sqlite`.
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// `version`: `v1` (the default).
    #[serde(default)]
    version: Option<Value>,
    /// `metadata`: the component's fields as `{name, value}` entries.
    #[serde(default)]
    metadata: Option<Vec<MetadataItem>>,
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

/// One `spec.metadata` entry.
#[derive(Debug, Deserialize)]
struct MetadataItem {
    #[serde(default)]
    name: Option<String>,
    /// A string, number or boolean.
    #[serde(default)]
    value: Option<Value>,
    /// `secretKeyRef: {name, key}`: a value from a secret store.
    #[serde(rename = "secretKeyRef", default)]
    secret_key_ref: Option<SecretKeyRefDoc>,
}

fn parse_document(
    file: &str,
    doc: &Value,
    app_id: &str,
) -> Result<Option<ComponentSpec>, ResourceError> {
    let mut err = ResourceError {
        file: file.to_string(),
        component: None,
        field: None,
        reason: String::new(),
    };
    let fail = |err: &ResourceError, field: &str, reason: String| -> ResourceError {
        ResourceError {
            field: Some(field.to_string()),
            reason,
            ..err.clone()
        }
    };
    if !doc.is_mapping() {
        return Err(fail(
            &err,
            "<document>",
            "expected a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    }
    // Only `Component` documents are read; the others are someone else's.
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(&err, "kind", "missing or not a string".into()))?;
    if kind != "Component" {
        tracing::info!(
            file,
            kind,
            "skipping resource of a kind this runtime does not load"
        );
        return Ok(None);
    }
    err.component = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let parsed: ComponentDoc =
        from_value(doc.clone()).map_err(|(field, reason)| fail(&err, &field, reason))?;
    let name = parsed
        .metadata
        .and_then(|m| m.name)
        .ok_or_else(|| fail(&err, "metadata.name", "missing or not a string".into()))?;
    if !valid_name(&name) {
        return Err(fail(
            &err,
            "metadata.name",
            format!("'{name}' is not a valid component name (letters, digits, '-', '_', '.'; at most 253 characters)"),
        ));
    }
    err.component = Some(name.clone());
    match parsed.api_version.as_deref() {
        Some("dapr.io/v1alpha1") => {}
        Some(v) => {
            return Err(fail(
                &err,
                "apiVersion",
                format!("'{v}' is not supported; use dapr.io/v1alpha1"),
            ))
        }
        None => {
            return Err(fail(
                &err,
                "apiVersion",
                "missing; use dapr.io/v1alpha1".into(),
            ))
        }
    }
    if let Some(scopes) = &parsed.scopes {
        if !scopes.is_empty() && !scopes.iter().any(|s| s == app_id) {
            tracing::info!(file, component = %name, "component is not scoped to this app id; skipping");
            return Ok(None);
        }
    }
    let spec = parsed
        .spec
        .ok_or_else(|| fail(&err, "spec", "missing or not a mapping".into()))?;
    let kind = spec
        .kind
        .ok_or_else(|| fail(&err, "spec.type", "missing or not a string".into()))?;
    if !kind.contains('.') || kind.starts_with('.') || kind.ends_with('.') {
        return Err(fail(
            &err,
            "spec.type",
            format!("'{kind}' is not of the form <block>.<backend>, e.g. state.sqlite"),
        ));
    }
    let version = match &spec.version {
        None | Some(Value::Null) => "v1".to_string(),
        Some(v) => scalar_string(v)
            .ok_or_else(|| fail(&err, "spec.version", "must be a string such as v1".into()))?,
    };
    if version != "v1" {
        return Err(fail(
            &err,
            "spec.version",
            format!("version '{version}' is not available for {kind}; use v1"),
        ));
    }
    let secret_store = parsed.auth.and_then(|a| a.secret_store).unwrap_or_default();
    let mut secret_refs = Vec::new();
    let mut metadata = BTreeMap::new();
    for (i, item) in spec.metadata.unwrap_or_default().into_iter().enumerate() {
        let field_name = item.name.ok_or_else(|| {
            fail(
                &err,
                &format!("spec.metadata[{i}].name"),
                "missing or not a string".into(),
            )
        })?;
        if let Some(r) = item.secret_key_ref {
            let at = format!("spec.metadata.{field_name}.secretKeyRef");
            if item.value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(fail(
                    &err,
                    &format!("spec.metadata.{field_name}"),
                    "give either value or secretKeyRef, not both".into(),
                ));
            }
            let name = r.name.filter(|n| !n.is_empty()).ok_or_else(|| {
                fail(
                    &err,
                    &format!("{at}.name"),
                    "missing: the secret's name".into(),
                )
            })?;
            if secret_refs
                .iter()
                .any(|x: &SecretRef| x.field == field_name)
            {
                return Err(fail(
                    &err,
                    &format!("spec.metadata.{field_name}"),
                    "given more than once".into(),
                ));
            }
            secret_refs.push(SecretRef {
                field: field_name,
                store: secret_store.clone(),
                name,
                key: r.key.filter(|k| !k.is_empty()),
            });
            continue;
        }
        let value = match &item.value {
            None | Some(Value::Null) => String::new(),
            Some(v) => scalar_string(v).ok_or_else(|| {
                fail(
                    &err,
                    &format!("spec.metadata.{field_name}"),
                    "value must be a string, number or boolean".into(),
                )
            })?,
        };
        if secret_refs.iter().any(|x| x.field == field_name)
            || metadata.insert(field_name.clone(), value).is_some()
        {
            return Err(fail(
                &err,
                &format!("spec.metadata.{field_name}"),
                "given more than once".into(),
            ));
        }
    }
    Ok(Some(ComponentSpec {
        name,
        kind,
        version,
        metadata,
        source: file.to_string(),
        secret_refs,
    }))
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The components a runtime starts with when no resources path is given.
pub fn embedded_defaults() -> Vec<ComponentSpec> {
    let default = |name: &str, kind: &str| ComponentSpec {
        name: name.to_string(),
        kind: kind.to_string(),
        version: "v1".to_string(),
        metadata: BTreeMap::new(),
        source: "<built-in default>".to_string(),
        secret_refs: Vec::new(),
    };
    vec![
        default("statestore", "state.sqlite"),
        default("configstore", "configuration.file"),
        default("pubsub", "pubsub.embedded"),
        default("lockstore", "lock.sqlite"),
        default("sequencer", "sequencer.sqlite"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.postgresql
  version: v1
  metadata:
    - name: connectionString
      value: postgres://x
    - name: maxConns
      value: 5
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata:
  name: ignored
"#;

    #[test]
    fn parses_components_and_skips_other_kinds() {
        let specs = parse_file("a.yaml", GOOD, "app").unwrap();
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(
            (s.name.as_str(), s.kind.as_str(), s.version.as_str()),
            ("statestore", "state.postgresql", "v1")
        );
        assert_eq!(s.metadata["maxConns"], "5");
        assert_eq!(s.block(), "state");
    }

    fn error_of(text: &str) -> ResourceError {
        parse_file("bad.yaml", text, "app").unwrap_err()
    }

    #[test]
    fn bad_yaml_names_the_file() {
        let e = error_of("kind: [unclosed");
        assert_eq!(e.file, "bad.yaml");
        assert!(e.to_string().contains("invalid YAML"), "{e}");
    }

    #[test]
    fn secret_key_refs_are_kept_for_the_blocks_to_resolve() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: db}\nspec:\n  type: state.postgresql\n  metadata:\n    - {name: connectionString, secretKeyRef: {name: pg, key: url}}\n    - {name: tableName, value: t}\nauth: {secretStore: vault}\n";
        let specs = parse_file("db.yaml", text, "app").unwrap();
        assert_eq!(
            specs[0].secret_refs,
            vec![SecretRef {
                field: "connectionString".into(),
                store: "vault".into(),
                name: "pg".into(),
                key: Some("url".into()),
            }]
        );
        assert!(!specs[0].metadata.contains_key("connectionString"));
        assert_eq!(specs[0].metadata["tableName"], "t");
    }

    #[test]
    fn missing_fields_are_named() {
        let e = error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {version: v1}\n");
        assert_eq!(e.field.as_deref(), Some("spec.type"));
        assert_eq!(e.component.as_deref(), Some("s"));
        let e =
            error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nspec: {type: state.sqlite}\n");
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
        let e = error_of("kind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite}\n");
        assert_eq!(e.field.as_deref(), Some("apiVersion"));
        let e = error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite, version: v2}\n");
        assert_eq!(e.field.as_deref(), Some("spec.version"));
        let e = error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite, metadata: [{value: x}]}\n");
        assert_eq!(e.field.as_deref(), Some("spec.metadata[0].name"));
        let e = error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite, metadata: [{name: p, value: x, secretKeyRef: {name: a, key: b}}]}\n");
        assert_eq!(e.field.as_deref(), Some("spec.metadata.p"));
        assert!(e.reason.contains("not both"), "{e}");
        let e = error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite, metadata: [{name: p, secretKeyRef: {key: b}}]}\n");
        assert_eq!(
            e.field.as_deref(),
            Some("spec.metadata.p.secretKeyRef.name")
        );
        let e = error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite, metadata: [{name: p, secretKeyRef: {name: a, nmae: b}}]}\n");
        assert!(e.to_string().contains("nmae"), "{e}");
        let e = error_of("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: sqlite}\n");
        assert_eq!(e.field.as_deref(), Some("spec.type"));
    }

    #[test]
    fn scopes_filter_by_app_id() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite}\nscopes: [other]\n";
        assert!(parse_file("f", text, "app").unwrap().is_empty());
        assert_eq!(parse_file("f", text, "other").unwrap().len(), 1);
    }

    #[test]
    fn directory_loading_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let one = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: {type: state.sqlite}\n";
        std::fs::write(dir.path().join("a.yaml"), one).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(load_dir(dir.path(), "app").unwrap().len(), 1);
        std::fs::write(dir.path().join("b.yml"), one).unwrap();
        let e = load_dir(dir.path(), "app").unwrap_err();
        assert!(e.to_string().contains("already defined"), "{e}");
        assert!(load_dir(&dir.path().join("missing"), "app").is_err());
    }
}
