//! Reading YAML resources into typed structs (serde derive), with errors
//! that name the field in this project's words.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

/// `metadata` of a resource (Dapr's shape): its `name` is what the project
/// uses; the rest (namespace, labels, …) is accepted.
#[derive(Debug, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

/// Deserializes a YAML value into `T`; a failure is `(field, reason)`, the
/// field as a path such as `spec.accessControl.policies[1].appId`
/// (`<document>` for the whole), the reason in this project's words
/// ("missing", "unknown field; expected one of …", "expected a list, got a
/// mapping").
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => String::new(),
            p => p,
        };
        let message = e.into_inner().to_string();
        describe_serde_error(&path, &message)
    })
}

/// `(field, reason)` for serde's message `message` at `path`.
fn describe_serde_error(path: &str, message: &str) -> (String, String) {
    let join = |key: &str| {
        if path.is_empty() || path == key || path.ends_with(&format!(".{key}")) {
            if path.is_empty() {
                key.to_string()
            } else {
                path.to_string()
            }
        } else {
            format!("{path}.{key}")
        }
    };
    let quoted = |s: &str| s.split('`').nth(1).unwrap_or_default().to_string();
    let at = if path.is_empty() { "<document>" } else { path };
    if let Some(rest) = message.strip_prefix("missing field ") {
        return (join(&quoted(rest)), "missing".into());
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let field = quoted(rest);
        let expected: Vec<&str> = rest
            .split_once("expected")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        return (
            join(&field),
            format!("unknown field; expected one of {}", expected.join(", ")),
        );
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return (
                at.to_string(),
                format!("expected {}, got {}", shape(expected), shape(got)),
            );
        }
    }
    (at.to_string(), message.to_string())
}

/// A YAML shape in this project's words, from serde's description of a
/// value or of what it expected.
fn shape(serde_words: &str) -> &'static str {
    let w = serde_words.trim();
    let first = w.trim_start_matches("a ").trim_start_matches("an ");
    match first.split([' ', '`']).next().unwrap_or_default() {
        "map" | "struct" => "a mapping",
        "sequence" | "tuple" => "a list",
        "string" | "str" | "char" => "a string",
        "integer" | "floating" | "i64" | "u64" | "f64" => "a number",
        "boolean" | "bool" => "a boolean",
        "unit" | "null" | "none" => "nothing",
        _ => "something else",
    }
}
