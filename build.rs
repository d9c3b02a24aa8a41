//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes the descriptor set
//! that server reflection serves.

use std::{env, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &["notify/v1/notify.proto", "notify/v1/subscriptions.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let descriptors = protox::compile(PROTOS, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("notify_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keyword maps as BTreeMap: the JSON sent to WeChat lists keywords in a stable order,
        // and a message needs no conversion (nor SipHash per keyword) on the way there.
        .btree_map(".")
        // Every service's codec: a request that cannot be decoded is INVALID_ARGUMENT naming
        // the field, not tonic-prost's INTERNAL (src/codec.rs).
        .codec_path("crate::codec::NotifyCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
