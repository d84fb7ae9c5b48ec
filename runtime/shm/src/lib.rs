//! Weft's shared-memory transport (docs/shm-protocol.md).
//!
//! * [`layout`]: the segment header and where the rings live;
//! * [`record`]: record framing and the message envelope (pure, fuzzable);
//! * [`ring`]: the single-producer single-consumer rings over shared memory;
//! * [`segment`]: the /dev/shm file and its mapping, stale-segment sweeping;
//! * [`control`]: the handshake frames and wake-ups on the Unix socket;
//! * [`idle`]: spin, then yield, then sleep;
//! * [`method`]: the method id table;
//! * [`client`]: a blocking Rust client for apps, tests and benchmarks.
//!
//! Nothing here is async: the hot path is plain loads, stores and copies.
//! Every `unsafe` block of the project lives in this crate
//! (`ring`, `segment`, `control`) with its `// SAFETY:` argument.

pub mod client;
pub mod control;
pub mod idle;
pub mod layout;
pub mod method;
pub mod record;
pub mod ring;
pub mod segment;

pub use client::{Client, ClientOptions, Status};
pub use idle::IdleConfig;

/// gRPC status codes used by the protocol.
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const ABORTED: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}
