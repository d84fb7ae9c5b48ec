//! The error type of mesh identities and certificates.

use std::path::PathBuf;

/// What went wrong with an identity, a certificate or a file holding one.
/// Messages name the file and the flag (or field) at fault.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A SPIFFE ID that does not have the shape
    /// `spiffe://<trust-domain>/ns/<namespace>/<app-id>`.
    #[error("invalid SPIFFE ID '{id}': {reason}")]
    SpiffeId { id: String, reason: String },

    /// A certificate that cannot be used, independent of where it came from.
    #[error("{0}")]
    Certificate(String),

    /// A file (named by the flag that points at it) that is missing,
    /// unreadable or holds unusable material.
    #[error("{flag} {}: {reason}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// Anything else: key generation, signing, TLS configuration.
    #[error("{0}")]
    Other(String),
}

impl SecurityError {
    /// A [`SecurityError::File`].
    pub(crate) fn file(
        flag: &'static str,
        path: impl Into<PathBuf>,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self::File {
            flag,
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
