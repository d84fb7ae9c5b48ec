//! The `--config` file: Dapr's `Configuration` resource.
//!
//! ```yaml
//! apiVersion: dapr.io/v1alpha1
//! kind: Configuration
//! metadata:
//!   name: appconfig
//! spec:
//!   accessControl:            # see security::access for the semantics
//!     defaultAction: deny
//!     trustDomain: public
//!     policies:
//!       - appId: app1
//!         defaultAction: deny
//!         namespace: default
//!         operations:
//!           - name: /op1
//!             httpVerb: ['POST', 'GET']
//!             action: allow
//! ```
//!
//! `spec.accessControl`, `spec.tracing` and `spec.secrets.scopes` are
//! implemented; other sections
//! of Dapr's Configuration (`metric`, `features`, …) are accepted and
//! ignored with a debug log. Inside `accessControl` an unknown field is an
//! error, since a misspelt field would silently change who may call the app.
//! Every error names the file and the field, e.g.
//! `config.yaml: spec.accessControl.policies[1].operations[0].action: expected allow or deny, got "permit"`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;
use weft_blocks::invoke::access::{AccessControlSpec, AccessPolicy};
use weft_blocks::secrets::Scope;

use super::yaml::{from_value, ObjectMeta};
use super::ConfigError;

/// A loaded and validated `Configuration` resource.
#[derive(Debug, Clone)]
pub struct AppConfiguration {
    /// `metadata.name`.
    pub name: String,
    /// `spec.accessControl`; [`AccessPolicy::allow_all`] when absent.
    pub access_control: AccessPolicy,
    /// `spec.tracing`, if given (see `crate::telemetry` for its meaning).
    pub tracing: Option<TracingSpec>,
    /// `spec.secrets.scopes` by secret store name.
    pub secret_scopes: HashMap<String, Scope>,
}

/// `spec.tracing` of a Configuration, as Dapr spells it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// `samplingRate`: "0" (off) to "1" (every trace); a string in Dapr.
    #[serde(default, deserialize_with = "text")]
    pub sampling_rate: Option<String>,
    /// `otel`: the OTLP collector.
    #[serde(default)]
    pub otel: Option<OtelSpec>,
}

/// `spec.tracing.otel`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelSpec {
    /// `endpointAddress`: `host:port` of the collector (or a URL).
    #[serde(default)]
    pub endpoint_address: Option<String>,
    /// `isSecure`: TLS to the collector.
    #[serde(default)]
    pub is_secure: Option<bool>,
    /// `protocol`: `grpc` or `http`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A string, or a number read as its text (`samplingRate: 1`).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(serde::de::Error::custom(
                "invalid type: sequence or mapping, expected a string",
            ))
        }
    })
}

/// A `Configuration` document as written. Every field is optional here so
/// that a missing one is reported by name after reading.
#[derive(Debug, Deserialize)]
struct ConfigurationDoc {
    /// `apiVersion`: `dapr.io/v1alpha1`.
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    /// `kind`: `Configuration`.
    #[serde(default)]
    kind: Option<String>,
    /// `metadata`: its `name` is required; the rest (namespace, labels) is
    /// not used.
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    /// `spec`: the sections; none is required.
    #[serde(default)]
    spec: Option<ConfigurationSpec>,
}

/// `spec` of a `Configuration`.
#[derive(Debug, Deserialize)]
struct ConfigurationSpec {
    /// `accessControl`: who may invoke this app (see
    /// `weft_blocks::invoke::access` for the semantics).
    #[serde(rename = "accessControl", default)]
    access_control: Option<AccessControlSpec>,
    /// `tracing`: sampling and the OTLP collector.
    #[serde(default)]
    tracing: Option<TracingSpec>,
    /// `secrets`: which secrets of each secret store the app may read.
    #[serde(default)]
    secrets: Option<SecretsSpec>,
    /// Sections of Dapr's Configuration this runtime does not implement
    /// (`metric`, `features`, …): accepted and ignored.
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// `spec.secrets` of a `Configuration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsSpec {
    /// One entry per secret store whose secrets are limited.
    #[serde(default)]
    scopes: Vec<SecretScopeSpec>,
}

/// `spec.secrets.scopes[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretScopeSpec {
    /// `storeName`: the secret store component.
    #[serde(default)]
    store_name: Option<String>,
    /// `defaultAccess`: `allow` (default) or `deny`.
    #[serde(default)]
    default_access: Option<String>,
    /// `allowedSecrets`: when given, only these.
    #[serde(default)]
    allowed_secrets: Vec<String>,
    /// `deniedSecrets`: never these.
    #[serde(default)]
    denied_secrets: Vec<String>,
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<AppConfiguration, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        file: file.clone(),
        field: None,
        reason: format!("cannot read configuration file: {e}"),
    })?;
    parse(&file, &text)
}

/// Parses the text of a configuration file; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<AppConfiguration, ConfigError> {
    let err = |field: &str, reason: String| ConfigError::File {
        file: file.to_string(),
        field: (!field.is_empty()).then(|| field.to_string()),
        reason,
    };
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| err("", format!("invalid YAML: {e}")))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let doc = match docs.len() {
        1 => docs.remove(0),
        0 => {
            return Err(err(
                "",
                "empty file; expected a Configuration resource".into(),
            ))
        }
        n => {
            return Err(err(
                "",
                format!("expected one Configuration document, found {n}"),
            ))
        }
    };
    let doc: ConfigurationDoc = from_value(doc).map_err(|(field, reason)| err(&field, reason))?;
    match doc.api_version.as_deref() {
        Some("dapr.io/v1alpha1") => {}
        Some(v) => {
            return Err(err(
                "apiVersion",
                format!("expected dapr.io/v1alpha1, got {v:?}"),
            ))
        }
        None => return Err(err("apiVersion", "missing; use dapr.io/v1alpha1".into())),
    }
    match doc.kind.as_deref() {
        Some("Configuration") => {}
        Some(k) => return Err(err("kind", format!("expected Configuration, got {k:?}"))),
        None => return Err(err("kind", "missing; use Configuration".into())),
    }
    let metadata = doc
        .metadata
        .ok_or_else(|| err("metadata", "missing".into()))?;
    let name = metadata
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "missing".into()))?;

    let mut access_control = AccessPolicy::allow_all();
    let mut tracing_spec = None;
    let mut secret_scopes = HashMap::new();
    if let Some(spec) = doc.spec {
        tracing_spec = spec.tracing;
        for (i, scope) in spec
            .secrets
            .map(|s| s.scopes)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = |f: &str| format!("spec.secrets.scopes[{i}].{f}");
            let store = scope
                .store_name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| err(&at("storeName"), "missing".into()))?;
            let default_allow = match scope
                .default_access
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("allow") => true,
                Some("deny") => false,
                Some(other) => {
                    return Err(err(
                        &at("defaultAccess"),
                        format!("'{other}' is not allow or deny"),
                    ))
                }
            };
            let entry = Scope {
                default_allow,
                allowed: scope.allowed_secrets,
                denied: scope.denied_secrets,
            };
            if secret_scopes.insert(store.clone(), entry).is_some() {
                return Err(err(
                    &at("storeName"),
                    format!("secret store '{store}' is scoped more than once"),
                ));
            }
        }
        for section in spec.other.keys() {
            tracing::debug!(
                file,
                section,
                "configuration section not implemented by this runtime: ignored"
            );
        }
        if let Some(acl) = spec.access_control {
            if let Some(i) = acl.policies.iter().position(|p| p.app_id.is_empty()) {
                return Err(err(
                    &format!("spec.accessControl.policies[{i}].appId"),
                    "missing".into(),
                ));
            }
            access_control = AccessPolicy::from_spec(&acl)
                .map_err(|e| err(&format!("spec.accessControl.{}", e.field), e.reason))?;
        }
    }
    Ok(AppConfiguration {
        name,
        access_control,
        tracing: tracing_spec,
        secret_scopes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_blocks::invoke::access::Caller;

    const CALLER: Caller<'static> = Caller {
        trust_domain: "myDomain",
        namespace: "default",
        app_id: "pythonapp",
    };

    // Dapr's documented example, with sections this runtime ignores.
    const NODEAPP: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: nodeappconfig
  namespace: default
spec:
  tracing:
    samplingRate: "1"
  features:
    - name: SomeFeature
      enabled: true
  accessControl:
    defaultAction: allow
    trustDomain: "public"
    policies:
    - appId: pythonapp
      defaultAction: allow
      trustDomain: 'myDomain'
      namespace: "default"
      operations:
      - name: /neworder
        httpVerb: ['POST']
        action: deny
"#;

    fn error_of(text: &str) -> String {
        parse("config.yaml", text).unwrap_err().to_string()
    }

    /// A Configuration whose `spec.accessControl` is `acl` (YAML, indented 4).
    fn with_acl(acl: &str) -> String {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  accessControl:\n{acl}"
        )
    }

    #[test]
    fn loads_dapr_example() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodeappconfig.yaml");
        std::fs::write(&path, NODEAPP).unwrap();
        let cfg = load(&path).unwrap();
        assert_eq!(cfg.name, "nodeappconfig");
        let acl = &cfg.access_control;
        assert!(acl.is_configured());
        assert_eq!(acl.trust_domain(), "public");
        assert!(!acl.check(&CALLER, "neworder", Some("POST")).is_allowed());
        assert!(acl.check(&CALLER, "neworder", Some("GET")).is_allowed());
        assert!(acl.check(&CALLER, "other", Some("POST")).is_allowed());
    }

    #[test]
    fn no_access_control_allows_all() {
        for text in [
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\n",
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec: {tracing: {samplingRate: '1'}}\n",
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec: {accessControl: }\n",
            "---\napiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec:\n---\n",
        ] {
            let cfg = parse("c.yaml", text).unwrap();
            assert!(!cfg.access_control.is_configured(), "{text}");
        }
    }

    #[test]
    fn access_control_fields_are_read() {
        let text = with_acl(
            "    defaultAction: deny\n    trustDomain: corp\n    policies:\n    - appId: 42\n      namespace: ns1\n      operations:\n      - name: /a/**\n        httpVerb: [get]\n      - name: /b\n        action: deny\n",
        );
        let acl = parse("c.yaml", &text).unwrap().access_control;
        assert_eq!(acl.trust_domain(), "corp");
        let caller = Caller {
            trust_domain: "corp",
            namespace: "ns1",
            app_id: "42",
        };
        assert!(acl.check(&caller, "/a/x", Some("GET")).is_allowed());
        assert!(!acl.check(&caller, "/a/x", Some("PUT")).is_allowed());
        assert!(!acl.check(&caller, "/b", None).is_allowed());
        assert!(!acl
            .check(
                &Caller {
                    namespace: "default",
                    ..caller
                },
                "/a/x",
                Some("GET")
            )
            .is_allowed());
    }

    #[test]
    fn semantic_errors_name_file_and_field() {
        let text = with_acl(
            "    policies:\n    - appId: a\n    - appId: b\n      operations:\n      - name: /x\n        action: permit\n",
        );
        assert_eq!(
            error_of(&text),
            r#"config.yaml: spec.accessControl.policies[1].operations[0].action: expected allow or deny, got "permit""#
        );
        let text = with_acl("    policies:\n    - appId: a\n      operations:\n      - name: /x\n        httpVerb: [GET, FETCH]\n");
        assert!(error_of(&text).starts_with(
            "config.yaml: spec.accessControl.policies[0].operations[0].httpVerb[1]: expected one of GET, POST"
        ));
        let text =
            with_acl("    policies:\n    - appId: a\n    - appId: a\n      namespace: default\n");
        assert!(error_of(&text).starts_with(
            "config.yaml: spec.accessControl.policies[1]: duplicate policy for app 'a'"
        ));
        let text = with_acl("    defaultAction: maybe\n");
        assert!(error_of(&text)
            .starts_with("config.yaml: spec.accessControl.defaultAction: expected allow or deny"));
        let text = with_acl("    policies:\n    - appId: a\n      operations:\n      - name: x\n");
        assert!(error_of(&text).starts_with(
            "config.yaml: spec.accessControl.policies[0].operations[0].name: must start with '/'"
        ));
    }

    #[test]
    fn shape_errors_name_file_and_field() {
        let cases = [
            ("    policies:\n    - namespace: x\n", "spec.accessControl.policies[0].appId: missing"),
            ("    policies:\n    - appId: a\n      httpVerbs: [GET]\n", "spec.accessControl.policies[0].httpVerbs: unknown field"),
            ("    default: deny\n", "spec.accessControl.default: unknown field"),
            ("    policies: {appId: a}\n", "spec.accessControl.policies: expected a list, got a mapping"),
            ("    policies: [x]\n", "spec.accessControl.policies[0]: expected a mapping, got a string"),
            ("    policies:\n    - appId: a\n      operations:\n      - httpVerb: [GET]\n", "spec.accessControl.policies[0].operations[0].name: missing"),
            ("    policies:\n    - appId: a\n      operations:\n      - name: /x\n        httpVerb: GET\n", "spec.accessControl.policies[0].operations[0].httpVerb: expected a list, got a string"),
            ("    policies:\n    - appId: a\n      operations:\n      - name: /x\n        httpVerb: [[GET]]\n", "spec.accessControl.policies[0].operations[0].httpVerb[0]: expected a string, got a list"),
            ("    trustDomain: [a]\n", "spec.accessControl.trustDomain: expected a string, got a list"),
            ("    - x\n", "spec.accessControl: expected a mapping, got a list"),
        ];
        for (acl, want) in cases {
            let e = error_of(&with_acl(acl));
            assert!(
                e.starts_with(&format!("config.yaml: {want}")),
                "{acl}\n  got: {e}\n want: {want}"
            );
        }
    }

    #[test]
    fn envelope_errors() {
        let cases = [
            ("kind: [unclosed", "config.yaml: invalid YAML"),
            ("", "config.yaml: empty file"),
            ("- a\n", "config.yaml: <document>: expected a mapping, got a list"),
            ("kind: Configuration\nmetadata: {name: c}\n", "config.yaml: apiVersion: missing"),
            ("apiVersion: v1\nkind: Configuration\nmetadata: {name: c}\n", "config.yaml: apiVersion: expected dapr.io/v1alpha1"),
            ("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: c}\n", r#"config.yaml: kind: expected Configuration, got "Component""#),
            ("apiVersion: dapr.io/v1alpha1\nmetadata: {name: c}\n", "config.yaml: kind: missing"),
            ("apiVersion: dapr.io/v1alpha1\nkind: Configuration\n", "config.yaml: metadata: missing"),
            ("apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {namespace: x}\n", "config.yaml: metadata.name: missing"),
            ("apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec: [a]\n", "config.yaml: spec: expected a mapping"),
            ("apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: a}\n---\napiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: b}\n", "config.yaml: expected one Configuration document, found 2"),
        ];
        for (text, want) in cases {
            let e = error_of(text);
            assert!(e.starts_with(want), "{text:?}\n  got: {e}\n want: {want}");
        }
    }

    #[test]
    fn unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.yaml");
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read", path.display())),
            "{e}"
        );
    }
}
