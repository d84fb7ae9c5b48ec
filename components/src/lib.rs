//! Weft components: one module per building block.
//!
//! Every block follows the same shape:
//!
//! * `mod.rs` holds a small required trait (for example [`state::StateStore`]),
//!   the request/response types, an error enum, the list of optional
//!   capabilities a backend advertises through `features()`, and a factory
//!   that builds a backend from its component type and metadata;
//! * one file per backend (`memory.rs`, `sqlite.rs`, `postgres.rs`, …);
//! * `conformance.rs`, a generic suite that every backend of the block runs.
//!
//! Components know nothing about transports or the Dapr API: the runtime's
//! building blocks translate API requests into these types.

pub mod configuration;
pub mod lock;
pub mod metadata;
pub mod nameresolution;
pub mod pubsub;
pub mod registry;
pub mod secretstores;
pub mod sequencer;
mod shared_sqlite;
pub mod state;
#[cfg(feature = "zookeeper")]
pub mod zk;

pub use metadata::{ComponentError, InitContext, Metadata};
