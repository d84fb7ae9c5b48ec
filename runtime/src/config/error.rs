//! Why a configuration cannot be used. Every variant names what is at
//! fault: the flag or environment variable, or the file, component and
//! field.

use crate::config::resources::ResourceError;
use crate::security::SecurityError;

/// A configuration the runtime refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or environment variable (`what`) has a value that cannot be
    /// used.
    #[error("{what}: {reason}")]
    Setting { what: String, reason: String },
    /// Two settings contradict each other.
    #[error("{0}")]
    Conflict(String),
    /// A component resource file.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The `--config` file (Dapr `Configuration`): `file: field: reason`.
    #[error("{file}: {}{reason}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    File {
        file: String,
        field: Option<String>,
        reason: String,
    },
    /// The mesh identity (certificates, trust domain, namespace).
    #[error(transparent)]
    Security(#[from] SecurityError),
}

impl ConfigError {
    pub fn setting(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Setting {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// A value a command-line flag cannot take (clap prints it after the
/// flag's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);
