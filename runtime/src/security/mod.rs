//! Mesh security: SPIFFE identities ([`spiffe`]), a certificate authority
//! ([`ca`]), mutual TLS that follows certificate rotation ([`tls`]) and
//! access policies ([`access`]).

pub mod access;
pub mod ca;
mod error;
pub mod spiffe;
pub mod tls;

pub use error::SecurityError;
pub use spiffe::SpiffeId;
