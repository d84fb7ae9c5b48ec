//! Generated protobuf/gRPC bindings for Weft.
//!
//! The `dapr.proto.*` packages are wire compatible with Dapr's v1 runtime
//! API. The module tree mirrors the protobuf packages so that the relative
//! paths emitted by prost resolve.

/// Protobuf packages under `dapr.*`.
pub mod dapr {
    /// Protobuf packages under `dapr.proto.*`.
    pub mod proto {
        /// `dapr.proto.common.*`
        pub mod common {
            /// `dapr.proto.common.v1`: shared message types.
            #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
            pub mod v1 {
                tonic::include_proto!("dapr.proto.common.v1");
            }
        }

        /// `dapr.proto.runtime.*`
        pub mod runtime {
            /// `dapr.proto.runtime.v1`: the `Dapr` sidecar service and the
            /// app-side `AppCallback*` services.
            #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
            pub mod v1 {
                tonic::include_proto!("dapr.proto.runtime.v1");
            }
        }
    }
}

/// Protobuf packages under `weft.*`: Weft's own services.
pub mod weft {
    /// `weft.internal.*`
    pub mod internal {
        /// `weft.internal.v1`: the runtime-to-runtime mesh service.
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
        pub mod v1 {
            tonic::include_proto!("weft.internal.v1");
        }
    }

    /// `weft.runtime.*`
    pub mod runtime {
        /// `weft.runtime.v1`: app-facing services beyond the Dapr API
        /// (`AppChannel`, `Sequencer`).
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
        pub mod v1 {
            tonic::include_proto!("weft.runtime.v1");
        }
    }
}

pub use dapr::proto::common::v1 as common;
pub use dapr::proto::runtime::v1 as runtime;
pub use weft::internal::v1 as mesh;
pub use weft::runtime::v1 as appchannel;
pub use weft::runtime::v1 as sequencer;

/// Encoded `FileDescriptorSet` of every compiled proto (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));
