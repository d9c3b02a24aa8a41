//! What grpcurl needs to decode error details: reflection serves the `google.rpc` messages the
//! statuses carry (BadRequest, ErrorInfo, RetryInfo) and the files they import, so
//! `grpcurl` prints them as JSON instead of base64.

use crate::common::*;
use prost::Message;
use tonic::transport::Channel;
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// The files reflection answers with for `request` (grpcurl 1.8 speaks v1alpha).
async fn files(channel: Channel, request: MessageRequest) -> Vec<prost_types::FileDescriptorProto> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(found)) => found
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
            .collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_describes_the_error_details_and_their_imports() {
    let harness = Harness::start().await;
    let channel = Channel::from_shared(format!("http://{}", harness.server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for symbol in [
        "google.rpc.BadRequest",
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
    ] {
        let found = files(
            channel.clone(),
            MessageRequest::FileContainingSymbol(symbol.to_owned()),
        )
        .await;
        let (_, name) = symbol.rsplit_once('.').unwrap();
        let declares = found.iter().any(|file| {
            file.package() == "google.rpc"
                && file
                    .message_type
                    .iter()
                    .any(|message| message.name() == name)
        });
        assert!(declares, "{symbol} is not described");
        // RetryInfo's retry_delay is a google.protobuf.Duration: its file must resolve too.
        for import in found.iter().flat_map(|file| file.dependency.clone()) {
            let imported = files(
                channel.clone(),
                MessageRequest::FileByFilename(import.clone()),
            )
            .await;
            assert!(
                imported.iter().any(|file| file.name() == import),
                "import {import} does not resolve"
            );
        }
    }
}
