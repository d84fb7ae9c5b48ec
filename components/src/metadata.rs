//! Component metadata (`spec.metadata` in a component file) with typed,
//! error-reporting accessors, and the context a component is built in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Why a component could not be built from its definition. Every variant
/// names the component and, where one is at fault, the metadata field.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ComponentError {
    #[error("component '{component}' ({kind}): missing required metadata field '{field}'")]
    MissingField {
        component: String,
        kind: String,
        field: String,
    },
    #[error("component '{component}' ({kind}): metadata field '{field}' is invalid: {reason}")]
    InvalidField {
        component: String,
        kind: String,
        field: String,
        reason: String,
    },
    #[error("component '{component}': unknown type '{kind}' (known types: {known})")]
    UnknownType {
        component: String,
        kind: String,
        known: String,
    },
    #[error("component '{component}' ({kind}): {reason}")]
    Init {
        component: String,
        kind: String,
        reason: String,
    },
}

/// Where and for whom a component is being built.
#[derive(Debug, Clone)]
pub struct InitContext {
    /// Directory for embedded backends' files (SQLite databases, default
    /// configuration file). Created by the runtime before components start.
    pub data_dir: PathBuf,
    /// The app id of the runtime that owns the component.
    pub app_id: String,
}

/// A component's name, type and `spec.metadata` entries.
///
/// Field lookups are case-insensitive, as they are in Dapr.
#[derive(Debug, Clone)]
pub struct Metadata {
    component: String,
    kind: String,
    values: BTreeMap<String, String>,
}

impl Metadata {
    pub fn new(
        component: impl Into<String>,
        kind: impl Into<String>,
        values: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            component: component.into(),
            kind: kind.into(),
            values: values
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        }
    }

    /// The component's name (`metadata.name`).
    pub fn component(&self) -> &str {
        &self.component
    }

    /// The component's type (`spec.type`), for example `state.sqlite`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The raw value of a field, if present and not empty.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.values
            .get(&field.to_ascii_lowercase())
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The value of a field that must be present.
    pub fn required(&self, field: &str) -> Result<&str, ComponentError> {
        self.get(field).ok_or_else(|| ComponentError::MissingField {
            component: self.component.clone(),
            kind: self.kind.clone(),
            field: field.to_string(),
        })
    }

    /// Parses an optional field with [`FromStr`].
    pub fn parse<T>(&self, field: &str) -> Result<Option<T>, ComponentError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(field) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| self.invalid(field, format!("'{raw}': {e}"))),
        }
    }

    /// Parses an optional boolean field (`true`/`false`/`1`/`0`/`yes`/`no`).
    pub fn bool(&self, field: &str) -> Result<Option<bool>, ComponentError> {
        match self.get(field).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) => match v.as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(self.invalid(field, format!("'{v}' is not a boolean"))),
            },
        }
    }

    /// Parses an optional duration: `250ms`, `5s`, `2m`, `1h`, or a bare
    /// number of seconds.
    pub fn duration(&self, field: &str) -> Result<Option<Duration>, ComponentError> {
        match self.get(field) {
            None => Ok(None),
            Some(raw) => parse_duration(raw).map(Some).ok_or_else(|| {
                self.invalid(
                    field,
                    format!("'{raw}' is not a duration (e.g. 500ms, 5s, 2m)"),
                )
            }),
        }
    }

    /// An [`ComponentError::InvalidField`] for this component.
    pub fn invalid(&self, field: &str, reason: impl Into<String>) -> ComponentError {
        ComponentError::InvalidField {
            component: self.component.clone(),
            kind: self.kind.clone(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// An [`ComponentError::Init`] for this component.
    pub fn init_error(&self, reason: impl Into<String>) -> ComponentError {
        ComponentError::Init {
            component: self.component.clone(),
            kind: self.kind.clone(),
            reason: reason.into(),
        }
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let s = raw.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "us" | "µs" => n / 1_000_000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        Metadata::new(
            "store",
            "state.test",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn lookups_are_case_insensitive_and_skip_blank_values() {
        let m = md(&[("ConnectionString", "x"), ("empty", "  ")]);
        assert_eq!(m.get("connectionstring"), Some("x"));
        assert_eq!(m.get("empty"), None);
        let err = m.required("empty").unwrap_err();
        assert!(err.to_string().contains("'empty'"), "{err}");
        assert!(err.to_string().contains("'store'"), "{err}");
    }

    #[test]
    fn typed_fields_report_the_field() {
        let m = md(&[("n", "abc"), ("b", "maybe"), ("d", "5 parsecs")]);
        assert!(m.parse::<u32>("n").unwrap_err().to_string().contains("'n'"));
        assert!(m.bool("b").unwrap_err().to_string().contains("'b'"));
        assert!(m.duration("d").unwrap_err().to_string().contains("'d'"));
        assert_eq!(m.parse::<u32>("missing").unwrap(), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1y"), None);
    }
}
