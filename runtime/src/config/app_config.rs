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
//! Only `spec.accessControl` is implemented; other sections of Dapr's
//! Configuration (`tracing`, `metric`, `features`, …) are accepted and
//! ignored with a debug log. Inside `accessControl` an unknown field is an
//! error, since a misspelt field would silently change who may call the app.
//! Every error names the file and the field, e.g.
//! `config.yaml: spec.accessControl.policies[1].operations[0].action: expected allow or deny, got "permit"`.

use std::path::Path;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::security::access::{AccessControlSpec, AccessPolicy, AppPolicySpec, OperationSpec};

/// A loaded and validated `Configuration` resource.
#[derive(Debug, Clone)]
pub struct AppConfiguration {
    /// `metadata.name`.
    pub name: String,
    /// `spec.accessControl`; [`AccessPolicy::allow_all`] when absent.
    pub access_control: AccessPolicy,
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<AppConfiguration, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{file}: cannot read configuration file: {e}"))?;
    parse(&file, &text)
}

/// Parses the text of a configuration file; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<AppConfiguration, String> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| format!("{file}: invalid YAML: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let doc = match docs.as_slice() {
        [doc] => doc,
        [] => {
            return Err(format!(
                "{file}: empty file; expected a Configuration resource"
            ))
        }
        _ => {
            return Err(format!(
                "{file}: expected one Configuration document, found {}",
                docs.len()
            ))
        }
    };
    let r = Reader { file };
    let top = r.mapping(doc, "<document>")?;
    match r.opt_string(top, "", "apiVersion")? {
        Some(v) if v == "dapr.io/v1alpha1" => {}
        Some(v) => {
            return Err(r.err(
                "apiVersion",
                format!("expected dapr.io/v1alpha1, got {v:?}"),
            ))
        }
        None => return Err(r.err("apiVersion", "missing; use dapr.io/v1alpha1")),
    }
    match r.opt_string(top, "", "kind")? {
        Some(k) if k == "Configuration" => {}
        Some(k) => return Err(r.err("kind", format!("expected Configuration, got {k:?}"))),
        None => return Err(r.err("kind", "missing; use Configuration")),
    }
    let metadata = match top.get("metadata") {
        Some(m) => r.mapping(m, "metadata")?,
        None => return Err(r.err("metadata", "missing")),
    };
    let name = r
        .opt_string(metadata, "metadata", "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| r.err("metadata.name", "missing"))?;

    let mut access_control = AccessPolicy::allow_all();
    if let Some(spec) = top.get("spec").filter(|s| !s.is_null()) {
        for (key, value) in r.mapping(spec, "spec")? {
            match key.as_str() {
                Some("accessControl") if !value.is_null() => {
                    let acl = r.access_control(value)?;
                    access_control = AccessPolicy::from_spec(&acl)
                        .map_err(|e| r.err(&format!("spec.accessControl.{}", e.field), e.reason))?;
                }
                Some("accessControl") => {}
                _ => tracing::debug!(
                    file,
                    section = ?key,
                    "configuration section not implemented by this runtime: ignored"
                ),
            }
        }
    }
    Ok(AppConfiguration {
        name,
        access_control,
    })
}

/// Walks the YAML tree, producing errors that name the file and field.
struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn err(&self, field: &str, reason: impl std::fmt::Display) -> String {
        format!("{}: {field}: {reason}", self.file)
    }

    fn mapping<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Mapping, String> {
        v.as_mapping()
            .ok_or_else(|| self.err(field, format!("expected a mapping, got {}", describe(v))))
    }

    fn list<'v>(&self, v: &'v Value, field: &str) -> Result<&'v [Value], String> {
        match v {
            Value::Null => Ok(&[]),
            Value::Sequence(items) => Ok(items),
            _ => Err(self.err(field, format!("expected a list, got {}", describe(v)))),
        }
    }

    fn string(&self, v: &Value, field: &str) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(self.err(field, format!("expected a string, got {}", describe(v)))),
        }
    }

    /// `map[key]` as a string; `None` when absent or null.
    fn opt_string(&self, map: &Mapping, at: &str, key: &str) -> Result<Option<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.string(v, &join(at, key)).map(Some),
        }
    }

    /// Fails on keys of `map` outside `known`.
    fn known_keys(&self, map: &Mapping, at: &str, known: &[&str]) -> Result<(), String> {
        for key in map.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => {
                    return Err(self.err(
                        &join(at, k),
                        format!("unknown field; expected one of {}", known.join(", ")),
                    ))
                }
                None => return Err(self.err(at, format!("unexpected key {key:?}"))),
            }
        }
        Ok(())
    }

    fn access_control(&self, v: &Value) -> Result<AccessControlSpec, String> {
        let at = "spec.accessControl";
        let map = self.mapping(v, at)?;
        self.known_keys(map, at, &["defaultAction", "trustDomain", "policies"])?;
        let mut spec = AccessControlSpec {
            default_action: self.opt_string(map, at, "defaultAction")?,
            trust_domain: self.opt_string(map, at, "trustDomain")?,
            policies: Vec::new(),
        };
        let policies = map.get("policies").unwrap_or(&Value::Null);
        for (i, p) in self
            .list(policies, &join(at, "policies"))?
            .iter()
            .enumerate()
        {
            spec.policies
                .push(self.policy(p, &format!("{at}.policies[{i}]"))?);
        }
        Ok(spec)
    }

    fn policy(&self, v: &Value, at: &str) -> Result<AppPolicySpec, String> {
        let map = self.mapping(v, at)?;
        let known = [
            "appId",
            "trustDomain",
            "namespace",
            "defaultAction",
            "operations",
        ];
        self.known_keys(map, at, &known)?;
        let mut policy = AppPolicySpec {
            app_id: self
                .opt_string(map, at, "appId")?
                .filter(|a| !a.is_empty())
                .ok_or_else(|| self.err(&join(at, "appId"), "missing"))?,
            trust_domain: self.opt_string(map, at, "trustDomain")?,
            namespace: self.opt_string(map, at, "namespace")?,
            default_action: self.opt_string(map, at, "defaultAction")?,
            operations: Vec::new(),
        };
        let ops = map.get("operations").unwrap_or(&Value::Null);
        for (j, op) in self.list(ops, &join(at, "operations"))?.iter().enumerate() {
            let at = format!("{at}.operations[{j}]");
            let map = self.mapping(op, &at)?;
            self.known_keys(map, &at, &["name", "httpVerb", "action"])?;
            let verbs = map.get("httpVerb").unwrap_or(&Value::Null);
            let verbs_at = join(&at, "httpVerb");
            policy.operations.push(OperationSpec {
                name: self
                    .opt_string(map, &at, "name")?
                    .ok_or_else(|| self.err(&join(&at, "name"), "missing"))?,
                http_verbs: self
                    .list(verbs, &verbs_at)?
                    .iter()
                    .enumerate()
                    .map(|(k, v)| self.string(v, &format!("{verbs_at}[{k}]")))
                    .collect::<Result<_, _>>()?,
                action: self.opt_string(map, &at, "action")?,
            });
        }
        Ok(policy)
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::access::Caller;

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
        parse("config.yaml", text).unwrap_err()
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
        let e = load(&path).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: cannot read", path.display())),
            "{e}"
        );
    }
}
