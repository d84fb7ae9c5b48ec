//! Weft's Dubbo pieces, independent of the runtime: the frame codec
//! ([`frame`]), the hessian2 reading and writing routing needs
//! ([`hessian`]), Dubbo URLs ([`url`]) and Dubbo's ZooKeeper layout
//! ([`registry`]).
//!
//! The runtime builds on these: its registry-proxy HTTP routes call
//! [`registry::Registries`], its outbound and inbound Dubbo listeners decode
//! frames with [`frame::Decoder`], route requests by what
//! [`hessian::read_request`] finds (interface, group, version, method,
//! timeout) and forward the bodies untouched.
//!
//! What is understood on the wire, and its limits, is written at the top
//! of each module. The `registry` feature (on by default) brings the
//! ZooKeeper client; without it the crate is the codec alone (bytes,
//! thiserror).

pub mod frame;
pub mod hessian;
#[cfg(feature = "registry")]
pub mod registry;
pub mod url;

pub use frame::{Decoder, Frame, FrameError, Header, Status};
pub use url::{DubboUrl, UrlError};
