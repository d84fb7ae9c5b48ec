//! Transports. They decode requests, fill each call's context and call the
//! building blocks; they hold no business logic.
//!
//! * [`grpc`]: the Dapr v1 API and `weft.runtime.v1.AppChannel`;
//! * [`http`]: health, metadata, shutdown;
//! * [`shm`]: the shared-memory transport (`shm_in_place`: GetState read
//!   and answered without allocating; `shm_drive`: topic subscriptions
//!   served on the session thread);
//! * [`app_channel`]: the runtime as a client of the app's `AppCallback`;
//! * [`common`]: token check, unimplemented operations, metadata view;
//! * [`status`]: block errors ↔ transport statuses;
//! * [`headers`]: gRPC metadata ↔ forwarded headers, deadlines;
//! * [`serve`]: HTTP/2 serving of gRPC routes with DEADLINE_EXCEEDED at the deadline.

pub mod app_channel;
pub mod common;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod serve;
pub mod shm;
mod shm_drive;
mod shm_in_place;
pub mod status;
