//! Compiles the service's API (`proto/` at the top of the repository) with protox (pure Rust, no
//! system `protoc`): the client the load generator drives, and the server the bare forwarder
//! implements. The load generator speaks the API as any caller does, without the service crate.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["notify/v1/notify.proto", "notify/v1/subscriptions.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keyword maps as BTreeMap, as the service's generated code has them.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
