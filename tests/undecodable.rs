// Own binary: it installs the process-wide log subscriber and reads the process-wide counters.
//! A request that cannot be decoded (a string that is not UTF-8, malformed protobuf) is the
//! caller's fault: INVALID_ARGUMENT naming the field where it is known, logged once with the
//! request id, counted as `invalid`; nothing is sent and the service stays SERVING. A request
//! over the size limit stays OUT_OF_RANGE.

mod common;

use std::{marker::PhantomData, time::Duration};

use common::*;
use prost::{Message, bytes::BufMut};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wechat_notify::{config::LogFormat, pb, telemetry};

const SEND_PATH: &str = "/notify.v1.NotifyService/SendSubscribe";
const BATCH_PATH: &str = "/notify.v1.NotifyService/BatchSend";
/// A placeholder value, replaced in the encoded request by bytes that are not UTF-8.
const MARKER: &str = "MARKERMARKER";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_naming_the_field() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    assert!(telemetry::init_logging_to(
        LogFormat::Text,
        move || writer.clone(),
        false
    ));
    let mut harness = Harness::start().await;
    let channel = Channel::from_shared(format!("http://{}", harness.server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let invalid_before = unknown_app_invalid(harness.server.metrics_addr).await;

    // SendSubscribe with a data value that is not UTF-8.
    let mut send = course_request(&openid(1));
    send.data.insert("phrase1".to_owned(), MARKER.to_owned());
    let status = call_raw::<pb::SendSubscribeResponse>(
        &channel,
        SEND_PATH,
        not_utf8(send.encode_to_vec()),
        "undecodable-send",
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["data"]);
    assert!(
        status.message().contains("invalid string value"),
        "{status:?}"
    );

    // BatchSend with a recipient's data value that is not UTF-8: the path is outermost first.
    let batch = pb::BatchSendRequest {
        template_id: COURSE_REMINDER.to_owned(),
        data: course_data(),
        recipients: vec![pb::Recipient {
            touser: openid(2),
            data: [("phrase1".to_owned(), MARKER.to_owned())].into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = call_raw::<pb::BatchSendResponse>(
        &channel,
        BATCH_PATH,
        not_utf8(batch.encode_to_vec()),
        "undecodable-batch",
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["recipients.data"]);

    // Bytes that are not protobuf at all: INVALID_ARGUMENT, with no field to name.
    let status = call_raw::<pb::SendSubscribeResponse>(
        &channel,
        SEND_PATH,
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        "undecodable-garbage",
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Over the size limit: refused before decoding, OUT_OF_RANGE as documented.
    let huge = course_request(&"o".repeat(17 * 1024 * 1024));
    let status = call_raw::<pb::SendSubscribeResponse>(
        &channel,
        SEND_PATH,
        huge.encode_to_vec(),
        "too-large",
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Nothing was sent, the service is still SERVING and answers a good request.
    assert_eq!(harness.sandbox().stats().send_requests, 0);
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "notify.v1.NotifyService".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(health.get_ref().status, ServingStatus::Serving as i32);
    harness
        .send_course(&openid(3))
        .await
        .expect("a good request is still sent");

    // Each undecodable request: one log line with its request id, one `invalid` message.
    let text = logs.text();
    for request_id in [
        "undecodable-send",
        "undecodable-batch",
        "undecodable-garbage",
    ] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains(request_id) && line.contains("cannot be decoded"))
            .collect();
        assert_eq!(lines.len(), 1, "{request_id}:\n{text}");
        assert!(lines[0].contains("INVALID_ARGUMENT"), "{}", lines[0]);
    }
    assert_eq!(
        unknown_app_invalid(harness.server.metrics_addr).await - invalid_before,
        3.0
    );
}

/// `encoded` with [`MARKER`] replaced by as many bytes that are not UTF-8.
fn not_utf8(mut encoded: Vec<u8>) -> Vec<u8> {
    let at = encoded
        .windows(MARKER.len())
        .position(|window| window == MARKER.as_bytes())
        .expect("the marker is in the encoding");
    encoded[at..at + MARKER.len()].fill(0xff);
    encoded
}

/// Calls `path` with `body` as the request message, exactly as given, and request id `id`.
async fn call_raw<R: Message + Default + Send + 'static>(
    channel: &Channel,
    path: &'static str,
    body: Vec<u8>,
    id: &str,
) -> Result<R, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = Request::new(body);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request.set_timeout(Duration::from_secs(30));
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec::<R>(PhantomData),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// `wechat_notify_messages_total{app="unknown",outcome="invalid"}`, scraped.
async fn unknown_app_invalid(metrics: std::net::SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|line| {
            line.starts_with("wechat_notify_messages_total{")
                && line.contains("app=\"unknown\"")
                && line.contains("outcome=\"invalid\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

/// Sends bytes as they are; decodes the answer as `R`.
struct RawCodec<R>(PhantomData<R>);

impl<R: Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Vec<u8>;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = AnswerDecoder<R>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> AnswerDecoder<R> {
        AnswerDecoder(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

struct AnswerDecoder<R>(PhantomData<R>);

impl<R: Message + Default> Decoder for AnswerDecoder<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(buf)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}
