//! Mesh security: SPIFFE identities ([`spiffe`]), a certificate authority
//! ([`ca`]) and mutual TLS that follows certificate rotation ([`tls`]).
//! Access policies, which decide who may call an app, are the invocation
//! block's (`weft_blocks::invoke::access`).

pub mod ca;
mod error;
pub mod spiffe;
pub mod tls;

pub use error::SecurityError;
pub use spiffe::SpiffeId;
