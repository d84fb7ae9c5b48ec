//! Mesh security: SPIFFE identities ([`spiffe`]), a certificate authority
//! ([`ca`]), and mutual TLS that follows certificate rotation
//! ([`tls`]).

pub mod access;
pub mod ca;
mod error;
pub mod spiffe;
pub mod tls;

pub use error::SecurityError;
pub use spiffe::SpiffeId;
