//! SendSubscribe end to end: a real server on a loopback port, a real gRPC client, the sandbox
//! as WeChat.

use std::{collections::BTreeMap, time::Duration};

use crate::common::*;
use tonic::Code;
use tonic_types::StatusExt;
use wechat_notify::pb;
use wechat_notify_sandbox::{AppCredentials, Fault, Grant, SandboxConfig};

#[tokio::test]
async fn a_message_reaches_wechat_as_exactly_this_json() {
    let mut harness = Harness::start().await;
    let response = harness
        .client
        .send_subscribe(pb::SendSubscribeRequest {
            page: "pages/course/detail?id=42".into(),
            miniprogram_state: pb::MiniprogramState::Trial as i32,
            lang: "en_US".into(),
            ..course_request(OPENID)
        })
        .await
        .expect("sent")
        .into_inner();
    assert!(response.msgid > 1 << 53, "msgid survives without a float");
    assert_eq!(response.attempts, 1);
    assert!(!response.deduplicated);

    let sends = harness.sandbox().send_requests();
    assert_eq!(sends.len(), 1);
    assert_eq!(
        sends[0].body.clone().unwrap(),
        serde_json::json!({
            "touser": OPENID,
            "template_id": COURSE_REMINDER,
            "page": "pages/course/detail?id=42",
            "data": {
                "phrase1": {"value": "王小二"},
                "date5": {"value": "2019年10月1日 15:01"},
                "phrase4": {"value": "李老师"},
            },
            "miniprogram_state": "trial",
            "lang": "en_US",
        })
    );
    let inbox = harness.sandbox().inbox(Some(OPENID));
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].msgid, response.msgid);
}

#[tokio::test]
async fn defaults_are_left_to_wechat() {
    let mut harness = Harness::start().await;
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent");
    let body = harness.sandbox().send_requests()[0].body.clone().unwrap();
    let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["data", "template_id", "touser"]);
}

#[tokio::test]
async fn invalid_requests_name_every_bad_field_and_send_nothing() {
    let mut harness = Harness::start().await;
    let mut data = course_data();
    data.insert("phrase1".into(), "a phrase far too long".into());
    data.insert("thing9".into(), "x".repeat(21));
    let status = harness
        .client
        .send_subscribe(pb::SendSubscribeRequest {
            touser: String::new(),
            template_id: "t".repeat(129),
            lang: "fr_FR".into(),
            data,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "data.phrase1",
            "data.thing9",
            "lang",
            "template_id",
            "touser"
        ]
    );

    let status = harness
        .client
        .send_subscribe(pb::SendSubscribeRequest {
            data: BTreeMap::new(),
            ..course_request(OPENID)
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["data"]);

    let status = harness
        .client
        .send_subscribe(pb::SendSubscribeRequest {
            miniprogram_state: 42,
            ..course_request(OPENID)
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["miniprogram_state"]);

    assert_eq!(harness.sandbox().stats().send_requests, 0);
    // The service is still up and sends the next good request.
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("still serving");
}

#[tokio::test]
async fn unknown_and_missing_apps() {
    let sandbox_config = SandboxConfig {
        apps: vec![
            AppCredentials::new("wxsandbox000000001", "secret-one"),
            AppCredentials::new("wxsandbox000000002", "secret-two"),
        ],
        auto_accept: true,
        ..SandboxConfig::default()
    };
    let mut harness = Harness::start_with(sandbox_config, |_| {}).await;
    let status = harness
        .client
        .send_subscribe(pb::SendSubscribeRequest {
            app: "nope".into(),
            ..course_request(OPENID)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = harness.send_course(OPENID).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["app"]);
    assert_eq!(harness.sandbox().stats().send_requests, 0);

    // By name and by appid; each app has its own token.
    for app in ["demo", "wxsandbox000000002"] {
        harness
            .client
            .send_subscribe(pb::SendSubscribeRequest {
                app: app.into(),
                ..course_request(OPENID)
            })
            .await
            .expect("sent");
    }
    let sends = harness.sandbox().send_requests();
    assert_eq!(sends.len(), 2);
    assert_ne!(sends[0].access_token, sends[1].access_token);
    let fetches = harness.sandbox().stats().token_fetches;
    assert_eq!(fetches["wxsandbox000000001"].stable, 1);
    assert_eq!(fetches["wxsandbox000000002"].stable, 1);
}

/// Sends one message while the sandbox answers `fault`, returning the status.
async fn status_under(fault: Fault) -> (tonic::Status, Harness) {
    let mut harness = Harness::start().await;
    harness.sandbox().inject(fault);
    let status = harness.send_course(OPENID).await.unwrap_err();
    (status, harness)
}

#[tokio::test]
async fn wechat_errcodes_map_to_the_interface_table() {
    for (wechat_errcode, code) in [
        (40003, Code::InvalidArgument),
        (40037, Code::InvalidArgument),
        (47003, Code::InvalidArgument),
        (41030, Code::InvalidArgument),
        (43101, Code::FailedPrecondition),
        (45009, Code::ResourceExhausted),
        (45011, Code::ResourceExhausted),
        (48001, Code::Unknown),
    ] {
        let (status, harness) = status_under(Fault::errcode(wechat_errcode)).await;
        assert_eq!(status.code(), code, "errcode {wechat_errcode}");
        assert_eq!(errcode(&status), Some(wechat_errcode));
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.domain, "weixin.qq.com");
        assert_eq!(info.metadata["errcode"], wechat_errcode.to_string());
        assert!(info.metadata.contains_key("errmsg"));
        assert_eq!(
            harness.sandbox().stats().send_requests,
            1,
            "errcode {wechat_errcode} is not retried"
        );
        if matches!(wechat_errcode, 45009 | 45011) {
            assert!(status.metadata().get("retry-after").is_some());
        }
    }
}

#[tokio::test]
async fn real_rule_violations_come_back_from_the_sandbox_as_47003() {
    // With template checks off, a key the template does not have is left to WeChat (with them
    // on it is caught locally: tests/it/templates.rs).
    let sandbox_config = SandboxConfig::default();
    let mut harness = Harness::start_with(sandbox_config, |config| {
        config.template_checks = false;
    })
    .await;
    let mut data = course_data();
    data.insert("thing7".into(), "extra".into());
    let status = harness
        .client
        .send_subscribe(pb::SendSubscribeRequest {
            data,
            ..course_request(OPENID)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(errcode(&status), Some(47003));
    assert!(status.message().contains("47003"));
    assert_eq!(harness.sandbox().stats().send_requests, 1);
}

#[tokio::test]
async fn a_user_without_subscription_is_a_failed_precondition() {
    let no_auto_accept = SandboxConfig {
        auto_accept: false,
        ..SandboxConfig::default()
    };
    let mut harness = Harness::start_with(no_auto_accept, |_| {}).await;
    let status = harness.send_course(OPENID).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(errcode(&status), Some(43101));

    // One accept allows exactly one message.
    harness.sandbox().subscribe(
        "wxsandbox000000001",
        OPENID,
        COURSE_REMINDER,
        Grant::Accept { count: 1 },
    );
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("subscribed once");
    let status = harness.send_course(OPENID).await.unwrap_err();
    assert_eq!(errcode(&status), Some(43101));
}

#[tokio::test]
async fn system_busy_is_retried_with_backoff_then_succeeds() {
    let mut harness = Harness::start().await;
    harness.sandbox().inject(Fault::errcode(-1).times(2));
    let response = harness
        .send_course(OPENID)
        .await
        .expect("third attempt goes through");
    assert_eq!(response.attempts, 3);
    assert_eq!(harness.sandbox().inbox(Some(OPENID)).len(), 1);
}

#[tokio::test]
async fn system_busy_that_persists_is_unavailable() {
    let (status, harness) = status_under(Fault::errcode(-1)).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(errcode(&status), Some(-1));
    assert_eq!(
        harness.sandbox().stats().send_requests,
        4,
        "1 try + 3 retries"
    );
}

#[tokio::test]
async fn an_http_error_status_is_unavailable_and_not_retried() {
    let (status, harness) = status_under(Fault::http_status(502)).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(harness.sandbox().stats().send_requests, 1);
}

#[tokio::test]
async fn a_timeout_after_writing_is_outcome_unknown_and_not_retried() {
    let (status, harness) = status_under(Fault::latency(Duration::from_secs(3))).await;
    assert_eq!(status.code(), Code::Unknown);
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "OUTCOME_UNKNOWN");
    assert_eq!(harness.sandbox().stats().send_requests, 1);
}

#[tokio::test]
async fn a_token_rejected_twice_is_unavailable_after_one_refresh() {
    let (status, harness) = status_under(Fault::errcode(40001).times(2)).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(errcode(&status), Some(40001));
    assert_eq!(harness.sandbox().stats().send_requests, 2);
}

#[tokio::test]
async fn rejected_credentials_are_a_failed_precondition_without_a_send() {
    let sandbox_config = SandboxConfig::default();
    let mut harness = Harness::start_with(sandbox_config, |config| {
        config.apps[0].secret = wechat_notify::secret::Secret::new("wrong-secret");
    })
    .await;
    for _ in 0..3 {
        let status = harness.send_course(OPENID).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(errcode(&status), Some(40125));
        assert!(!status.message().contains("wrong-secret"));
    }
    let stats = harness.sandbox().stats();
    assert_eq!(stats.send_requests, 0);
    assert_eq!(
        stats.total_token_fetches(),
        1,
        "a credential error is not hammered"
    );
}

#[tokio::test]
async fn a_refused_api_base_fails_over_to_the_next() {
    let sandbox_config = SandboxConfig::default();
    let (closed, _held) = closed_base().await;
    let mut harness = Harness::start_with(sandbox_config, move |config| {
        let sandbox_base = config.apps[0].api_bases[0].clone();
        config.apps[0].api_bases = vec![closed, sandbox_base];
    })
    .await;
    let response = harness
        .send_course(OPENID)
        .await
        .expect("sent through the second base");
    assert_eq!(response.attempts, 2);
    assert_eq!(harness.sandbox().inbox(Some(OPENID)).len(), 1);
}

#[tokio::test]
async fn no_reachable_base_is_unavailable() {
    let (closed, _held) = closed_base().await;
    let mut harness = Harness::start_with(SandboxConfig::default(), move |config| {
        config.apps[0].api_bases = vec![closed];
    })
    .await;
    let status = harness.send_course(OPENID).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}
