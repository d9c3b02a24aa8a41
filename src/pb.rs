//! Generated protobuf and gRPC code for `notify.v1`, and the descriptor set served by reflection.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("notify.v1");

/// Encoded `FileDescriptorSet` of `proto/notify/v1/` (`notify.proto`, `subscriptions.proto`),
/// for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("notify_descriptor");
