//! Transports. They decode requests and call the building blocks; they hold
//! no business logic.

pub mod app_channel;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod shm;
