// Own binary: it installs the process-wide log subscriber (JSON lines, captured).
//! The caller's `x-request-id` (or a generated one) is on every log line of its call and comes
//! back in the response metadata, errors included; JSON lines carry it at the top level.

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::Value;
use tonic::{Code, Request};
use wechat_notify::{config::LogFormat, pb, telemetry};
use wechat_notify_sandbox::DEFAULT_APPID;

/// The production JSON subscriber, writing into memory (installed once per binary).
fn captured() -> &'static CapturedLogs {
    static CAPTURED: OnceLock<CapturedLogs> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = CapturedLogs::default();
        let writer = captured.clone();
        assert!(telemetry::init_logging_to(
            LogFormat::Json,
            move || writer.clone(),
            false
        ));
        captured
    })
}

/// Every captured line, parsed (each must be one JSON object).
fn lines() -> Vec<Value> {
    let bytes = captured().0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not json: {line}")))
        .collect()
}

fn lines_of(request_id: &str) -> Vec<Value> {
    lines()
        .into_iter()
        .filter(|line| line["request_id"] == request_id)
        .collect()
}

fn with_request_id<T>(message: T, request_id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    request
}

fn echoed(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("x-request-id comes back")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_request_id_is_on_every_line_of_the_call_and_comes_back() {
    captured();
    let harness = Harness::start().await;
    let mut client = harness.client.clone();
    // A revoked token makes the send log from inside the delivery task (token rejected,
    // refreshed, retried): those lines must carry the id too.
    client.send_subscribe(course_request(OPENID)).await.unwrap();
    harness.sandbox().revoke_tokens(DEFAULT_APPID);

    let request_id = "ops-test-given-7f3a";
    let response = client
        .send_subscribe(with_request_id(course_request(OPENID), request_id))
        .await
        .expect("sent after a refresh");
    assert_eq!(echoed(response.metadata()), request_id);
    assert_eq!(response.into_inner().attempts, 2);

    let call = lines_of(request_id);
    let messages: Vec<&str> = call
        .iter()
        .filter_map(|line| line["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"wechat rejected the access token"),
        "the delivery task's lines carry the id: {messages:?}"
    );
    let done = call
        .iter()
        .find(|line| line["message"] == "message sent")
        .expect("one line for the call");
    assert_eq!(done["method"], "SendSubscribe");
    assert_eq!(
        done["app"], "demo",
        "the resolved app, though the caller left app empty"
    );
    assert_eq!(done["template_id"], COURSE_REMINDER);
    assert_eq!(done["code"], "OK");
    assert_eq!(done["attempts"], 2);
    assert!(done["latency_ms"].is_u64());
    assert_eq!(done["level"], "INFO");
    // No line of this process's calls lacks its id.
    for line in lines() {
        let spans = line["spans"].as_array().cloned().unwrap_or_default();
        if spans.iter().any(|span| span == "rpc") {
            assert!(
                line["request_id"].is_string(),
                "a call's line without request_id: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_generated_when_absent_and_logged() {
    captured();
    let harness = Harness::start().await;
    let mut client = harness.client.clone();
    let response = client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent");
    let generated = echoed(response.metadata());
    assert!(
        uuid::Uuid::parse_str(&generated).is_ok(),
        "a uuid was generated: {generated}"
    );
    let call = lines_of(&generated);
    assert!(
        call.iter().any(|line| line["message"] == "message sent"),
        "the generated id is logged: {call:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_batches_carry_the_request_id_too() {
    captured();
    let harness = Harness::start().await;
    let mut client = harness.client.clone();

    let request_id = "ops-test-invalid-91c2";
    let status = client
        .send_subscribe(with_request_id(course_request(""), request_id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(echoed(status.metadata()), request_id);
    let failed = lines_of(request_id)
        .into_iter()
        .find(|line| line["message"] == "message not sent")
        .expect("the failed call's line");
    assert_eq!(failed["code"], "INVALID_ARGUMENT");
    assert_eq!(failed["attempts"], 0);

    let request_id = "ops-test-batch-5d08";
    let batch = pb::BatchSendRequest {
        template_id: COURSE_REMINDER.to_owned(),
        data: course_data(),
        recipients: (0..3)
            .map(|index| pb::Recipient {
                touser: openid(index),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let response = client
        .batch_send(with_request_id(batch, request_id))
        .await
        .expect("batch");
    assert_eq!(echoed(response.metadata()), request_id);
    let done = lines_of(request_id)
        .into_iter()
        .find(|line| line["message"] == "batch sent")
        .expect("the batch's line");
    assert_eq!(done["method"], "BatchSend");
    assert_eq!(done["app"], "demo");
    assert_eq!(done["succeeded"], 3);
    assert_eq!(done["recipients"], 3);
}
