//! Idempotency keys through gRPC: one send per key, sequential or concurrent.

use crate::common::*;
use futures::future::join_all;
use std::time::Duration;

use tonic::Code;
use wechat_notify::pb;
use wechat_notify_sandbox::Fault;

fn keyed(touser: &str, key: &str) -> pb::SendSubscribeRequest {
    pb::SendSubscribeRequest {
        idempotency_key: key.into(),
        ..course_request(touser)
    }
}

#[tokio::test]
async fn a_repeated_key_is_answered_from_the_record() {
    let mut harness = Harness::start().await;
    let first = harness
        .client
        .send_subscribe(keyed(OPENID, "order-42-shipped"))
        .await
        .unwrap()
        .into_inner();
    let second = harness
        .client
        .send_subscribe(keyed(OPENID, "order-42-shipped"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(first.msgid, second.msgid);
    assert_eq!(harness.sandbox().inbox(None).len(), 1);
    assert_eq!(harness.sandbox().stats().send_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_send_once_and_share_the_outcome() {
    let harness = Harness::start().await;
    let calls = (0..40).map(|_| {
        let mut client = harness.client.clone();
        async move { client.send_subscribe(keyed(OPENID, "same-key")).await }
    });
    let responses: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|result| result.expect("sent").into_inner())
        .collect();
    let fresh = responses.iter().filter(|r| !r.deduplicated).count();
    assert_eq!(fresh, 1, "exactly one caller made the send");
    assert!(responses.iter().all(|r| r.msgid == responses[0].msgid));
    assert_eq!(harness.sandbox().inbox(None).len(), 1);
}

#[tokio::test]
async fn failures_are_not_recorded_so_a_retry_sends() {
    let mut harness = Harness::start().await;
    harness.sandbox().inject(Fault::errcode(43101).times(1));
    let status = harness
        .client
        .send_subscribe(keyed(OPENID, "retry-me"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let retried = harness
        .client
        .send_subscribe(keyed(OPENID, "retry-me"))
        .await
        .expect("the retry sends")
        .into_inner();
    assert!(!retried.deduplicated);
    assert_eq!(harness.sandbox().inbox(None).len(), 1);
}

#[tokio::test]
async fn a_key_reused_for_another_recipient_is_rejected() {
    let mut harness = Harness::start().await;
    harness
        .client
        .send_subscribe(keyed(OPENID, "k1"))
        .await
        .unwrap();
    let status = harness
        .client
        .send_subscribe(keyed(&openid(7), "k1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["idempotency_key"]);
    assert_eq!(harness.sandbox().inbox(None).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_send_whose_caller_hangs_up_still_completes_and_is_recorded() {
    let mut harness = Harness::start().await;
    // WeChat answers after 400 ms; the caller gives up after 100 ms, mid-request (on paused
    // time, so these are points on one virtual timeline, whatever the machine's load).
    harness
        .sandbox()
        .inject(Fault::latency(Duration::from_millis(400)).times(1));
    // No grpc-timeout: the server learns of it only when the client resets the stream.
    let mut client = harness.client.clone();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        client.send_subscribe(keyed(OPENID, "abandoned")),
    )
    .await;
    assert!(abandoned.is_err(), "the call was still running");
    drop(client);
    // The request to WeChat was not cut in half: it completes and lands in the inbox.
    eventually("the message in the inbox", || {
        let delivered = !harness.sandbox().inbox(None).is_empty();
        async move { delivered.then_some(()) }
    })
    .await;
    // Its outcome was recorded under the key: the caller's retry does not send again.
    let retried = harness
        .client
        .send_subscribe(keyed(OPENID, "abandoned"))
        .await
        .expect("answered from the record")
        .into_inner();
    assert!(retried.deduplicated);
    assert_eq!(retried.msgid, harness.sandbox().inbox(None)[0].msgid);
    assert_eq!(harness.sandbox().stats().send_requests, 1);
}
