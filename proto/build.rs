//! Compiles the Dapr-compatible protos with the vendored `protoc`, so no
//! system installation is required.

use std::{env, error::Error, path::PathBuf};

const PROTOS: &[&str] = &[
    "dapr/proto/common/v1/common.proto",
    "dapr/proto/runtime/v1/appcallback.proto",
    "dapr/proto/runtime/v1/binding.proto",
    "dapr/proto/runtime/v1/configuration.proto",
    "dapr/proto/runtime/v1/dapr.proto",
    "dapr/proto/runtime/v1/invoke.proto",
    "dapr/proto/runtime/v1/lock.proto",
    "dapr/proto/runtime/v1/metadata.proto",
    "dapr/proto/runtime/v1/pubsub.proto",
    "dapr/proto/runtime/v1/secret.proto",
    "dapr/proto/runtime/v1/state.proto",
    "weft/internal/v1/mesh.proto",
    "weft/runtime/v1/appchannel.proto",
    "weft/runtime/v1/sequencer.proto",
    "weft/runtime/v1/shm.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let wkt_include = protoc_bin_vendored::include_path()?;
    env::set_var("PROTOC", protoc);

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=dapr");
    println!("cargo:rerun-if-changed=weft");

    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| manifest_dir.join(p)).collect();
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let includes = vec![manifest_dir.clone(), wkt_include];

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("weft_descriptor.bin"))
        .compile_protos(&protos, &includes)?;

    Ok(())
}
