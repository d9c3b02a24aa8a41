//! No AppSecret or access token reaches a log line, at any level, even when things go wrong.

use std::time::Duration;

use crate::common::*;
use wechat_notify::pb;
use wechat_notify_sandbox::{Fault, SandboxConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_secret_and_no_token() {
    let captured = crate::trace_logs();

    let secret = "s3cr3t-app-secret-value-for-the-test";
    let sandbox_config = SandboxConfig {
        apps: vec![wechat_notify_sandbox::AppCredentials::new(
            "wxsandbox000000001",
            secret,
        )],
        auto_accept: true,
        ..SandboxConfig::default()
    };
    let mut harness = Harness::start_with(sandbox_config, |config| {
        config.client.request_timeout = Duration::from_millis(500);
    })
    .await;
    let send = |harness: &mut Harness| {
        let mut client = harness.client.clone();
        async move { client.send_subscribe(course_request(OPENID)).await }
    };
    send(&mut harness).await.expect("sent");
    // Token rejected, then refreshed.
    harness.sandbox().revoke_tokens("wxsandbox000000001");
    send(&mut harness).await.expect("sent after refresh");
    // An errcode, an HTTP status, a timeout and a busy retry all print errors.
    for fault in [
        Fault::errcode(40003).times(1),
        Fault::http_status(502).times(1),
        Fault::latency(Duration::from_secs(1)).times(1),
        Fault::errcode(-1).times(1),
    ] {
        harness.sandbox().inject(fault);
        let _ = send(&mut harness).await;
    }
    // A bad secret on the token endpoint.
    let mut bad = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].secret = wechat_notify::secret::Secret::new("another-wrong-secret-value");
    })
    .await;
    let _ = bad
        .client
        .send_subscribe(pb::SendSubscribeRequest {
            ..course_request(OPENID)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let logs = captured.text();
    assert!(logs.lines().count() > 20, "trace logging was captured");
    let mut tokens: Vec<String> = harness
        .sandbox()
        .send_requests()
        .into_iter()
        .filter_map(|send| send.access_token)
        .collect();
    tokens.sort();
    tokens.dedup();
    assert!(tokens.len() >= 2, "a token was issued and then replaced");
    for token in &tokens {
        assert!(!logs.contains(token.as_str()), "an access token was logged");
    }
    assert!(!logs.contains(secret), "the app secret was logged");
    assert!(!logs.contains("another-wrong-secret-value"));
}
