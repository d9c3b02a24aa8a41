//! The error table (docs/api.md, "Errors"): each upstream row provoked through gRPC against the
//! sandbox, checking that the message says what actually happened (the endpoint, the errcode
//! and errmsg with its `rid`, or the transport failure), beside the code the table gives. The
//! codes alone are also checked in tests/it/send.rs; local validation in tests/it/send.rs and
//! tests/it/templates.rs.

use crate::common::*;
use tonic::Code;
use tonic_types::StatusExt;
use wechat_notify_sandbox::{Fault, SandboxConfig};

/// Sends one message while the sandbox answers `faults`, returning the status and the harness.
async fn status_under(faults: Vec<Fault>) -> (tonic::Status, Harness) {
    let mut harness = Harness::start().await;
    for fault in faults {
        harness.sandbox().inject(fault);
    }
    let status = harness.send_course(OPENID).await.unwrap_err();
    (status, harness)
}

#[tokio::test]
async fn every_send_errcode_names_the_endpoint_the_errcode_and_the_errmsg_with_its_rid() {
    for (wechat_errcode, errmsg, code) in [
        (40003, "invalid openid", Code::InvalidArgument),
        (
            43101,
            "user refuse to accept the msg",
            Code::FailedPrecondition,
        ),
        (
            45011,
            "api minute-quota reach limit",
            Code::ResourceExhausted,
        ),
        (-1, "system error", Code::Unavailable),
        (40014, "invalid access_token", Code::Unavailable),
        (48001, "api unauthorized", Code::Unknown),
    ] {
        // Enough answers to outlast every retry the service makes.
        let (status, _harness) = status_under(vec![Fault::errcode(wechat_errcode)]).await;
        assert_eq!(status.code(), code, "errcode {wechat_errcode}");
        let message = status.message();
        assert!(
            message.starts_with(&format!(
                "wechat send answered errcode {wechat_errcode}: {errmsg}"
            )),
            "{message}"
        );
        let rid = status.get_error_details().error_info().unwrap().metadata["rid"].clone();
        assert!(message.ends_with(&format!("rid: {rid}")), "{message}");
    }
}

#[tokio::test]
async fn an_http_error_status_is_named_with_its_endpoint() {
    let (status, _harness) = status_under(vec![Fault::http_status(503)]).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "wechat send answered http status 503");
    assert_eq!(reason(&status), "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn a_connection_reset_after_writing_is_outcome_unknown_and_not_retried() {
    let (status, harness) = status_under(vec![Fault::reset().times(1)]).await;
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(reason(&status), "OUTCOME_UNKNOWN");
    assert!(
        status
            .message()
            .starts_with("wechat send outcome unknown: "),
        "{}",
        status.message()
    );
    let stats = harness.sandbox().stats();
    assert_eq!((stats.send_requests, stats.resets), (1, 1));
    assert!(harness.sandbox().inbox(None).is_empty());
}

#[tokio::test]
async fn a_malformed_send_answer_is_outcome_unknown_and_says_so() {
    let fault = Fault::http_status(200).with_body("<html>not json</html>");
    let (status, harness) = status_under(vec![fault]).await;
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(reason(&status), "OUTCOME_UNKNOWN");
    assert!(
        status
            .message()
            .starts_with("wechat send answered a malformed body: "),
        "{}",
        status.message()
    );
    assert_eq!(harness.sandbox().stats().send_requests, 1);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_named_as_such() {
    // Every attempt of the one fetch answered 502: UNAVAILABLE, nothing sent.
    let (status, harness) = status_under(vec![Fault::http_status(502).on_token_endpoint()]).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "could not get an access token: wechat token answered http status 502"
    );
    assert_eq!(harness.sandbox().stats().send_requests, 0);
}

#[tokio::test]
async fn a_reset_on_the_token_endpoint_is_retried_within_the_fetch() {
    let mut harness = Harness::start().await;
    harness
        .sandbox()
        .inject(Fault::reset().on_token_endpoint().times(1));
    harness
        .send_course(OPENID)
        .await
        .expect("the fetch is retried and the message sent");
    let stats = harness.sandbox().stats();
    assert_eq!(stats.total_token_fetches(), 2);
    assert_eq!(stats.delivered, 1);
}

#[tokio::test]
async fn rejected_credentials_name_the_token_endpoint_and_its_errmsg() {
    let mut harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].secret = wechat_notify::secret::Secret::new("wrong-secret");
    })
    .await;
    let status = harness.send_course(OPENID).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "CREDENTIALS_REJECTED");
    assert!(
        status
            .message()
            .starts_with("could not get an access token: wechat token answered errcode 40125: invalid appsecret rid: "),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn no_reachable_api_base_says_so() {
    let (closed, _held) = closed_base().await;
    let mut harness = Harness::start_with(SandboxConfig::default(), move |config| {
        config.apps[0].api_bases = vec![closed];
    })
    .await;
    let status = harness.send_course(OPENID).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with(
            "could not get an access token: wechat token unreachable: no api base accepted a connection"
        ),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_that_cannot_admit_in_time_is_resource_exhausted_without_a_send() {
    // One send a second: of 36 calls at once without a deadline, at most 31 are admitted within
    // the 30 s a SendSubscribe waits for the app's limits; the rest are refused, unsent.
    let harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].rate_per_sec = 1;
    })
    .await;
    let calls = (0..36).map(|index| {
        let mut client = harness.client.clone();
        async move { client.send_subscribe(course_request(&openid(index))).await }
    });
    let results = futures::future::join_all(calls).await;
    let mut refused = 0;
    for result in &results {
        let Err(status) = result else { continue };
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(status), "RATE_LIMITED");
        assert_eq!(
            status.message(),
            "not sent: the app's rate limit could not admit the send in time"
        );
        assert!(status.metadata().get("retry-after").is_some());
        refused += 1;
    }
    assert!(refused >= 5, "{refused} refused");
    let sent = results.len() - refused;
    assert_eq!(harness.sandbox().stats().send_requests, sent as u64);
}
