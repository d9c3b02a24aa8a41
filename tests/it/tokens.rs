//! The shared token cache seen from outside: through gRPC, with the sandbox counting fetches.

use std::time::Duration;

use crate::common::*;
use futures::future::join_all;
use tonic::Code;
use tonic_types::StatusExt;
use wechat_notify::{pb, wechat::TokenMode};
use wechat_notify_sandbox::{Fault, SandboxConfig};

const APPID: &str = "wxsandbox000000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_cold_calls_fetch_one_token() {
    let harness = Harness::start_with(SandboxConfig::default(), |_| {}).await;
    let calls = (0..300).map(|index| {
        let mut client = harness.client.clone();
        async move { client.send_subscribe(course_request(&openid(index))).await }
    });
    let results = join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "every call is sent");
    let stats = harness.sandbox().stats();
    assert_eq!(stats.total_token_fetches(), 1);
    assert_eq!(stats.delivered, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_traffic_is_refreshed_once_and_every_message_goes_once() {
    let harness = Harness::start_with(SandboxConfig::default(), |_| {}).await;
    let send_wave = |start: usize| {
        let client = harness.client.clone();
        async move {
            let calls = (start..start + 100).map(|index| {
                let mut client = client.clone();
                async move { client.send_subscribe(course_request(&openid(index))).await }
            });
            join_all(calls).await
        }
    };
    let first = send_wave(0).await;
    assert!(first.iter().all(Result::is_ok));
    // WeChat revokes the token (as a force refresh elsewhere would) while traffic goes on.
    harness.sandbox().revoke_tokens("wxsandbox000000001");
    let second = send_wave(100).await;
    for result in &second {
        assert!(result.is_ok(), "{result:?}");
    }
    let stats = harness.sandbox().stats();
    assert_eq!(
        stats.total_token_fetches(),
        2,
        "one fetch, then one refresh"
    );
    let inbox = harness.sandbox().inbox(None);
    assert_eq!(inbox.len(), 200);
    let mut recipients: Vec<_> = inbox.iter().map(|message| message.openid.clone()).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 200, "every message exactly once");
}

/// The answer to a send whose token WeChat rejected twice (the fault is the user's, not the
/// token's): UNAVAILABLE, with the send's errcode as trailer, ErrorInfo and in the message.
fn assert_rejected_twice(status: &tonic::Status, wechat_errcode: i32) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(errcode(status), Some(wechat_errcode));
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "TOKEN_REJECTED");
    assert_eq!(info.metadata["errcode"], wechat_errcode.to_string());
    assert!(info.metadata.contains_key("rid"), "{info:?}");
    assert!(
        status
            .message()
            .starts_with(&format!("wechat send answered errcode {wechat_errcode}: ")),
        "{}",
        status.message()
    );
    assert!(status.message().contains("rid: "), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_for_one_user_never_cut_the_app_off() {
    // The token is fine; WeChat rejects it only for two users (a stale edge node, say).
    let mut harness = Harness::start().await;
    let started = tokio::time::Instant::now();
    harness.send_course(&openid(0)).await.expect("warm-up send");
    let (user_a, user_b) = (openid(1), openid(2));
    harness
        .sandbox()
        .inject(Fault::errcode(40001).for_openid(&user_a));
    harness
        .sandbox()
        .inject(Fault::errcode(42001).for_openid(&user_b));

    // The first rejection forces a new token; the second, within 30 s, keeps that one.
    assert_rejected_twice(&harness.send_course(&user_a).await.unwrap_err(), 40001);
    assert_rejected_twice(&harness.send_course(&user_b).await.unwrap_err(), 42001);
    for index in 10..30 {
        harness
            .send_course(&openid(index))
            .await
            .expect("users without a fault are served");
    }
    // A storm of further rejections: each answered with its own errcode, no token fetch.
    let storm = (0..40).map(|index| {
        let mut client = harness.client.clone();
        let user = if index % 2 == 0 { &user_a } else { &user_b };
        async move { client.send_subscribe(course_request(user)).await }
    });
    for (index, result) in join_all(storm).await.into_iter().enumerate() {
        let wechat_errcode = if index % 2 == 0 { 40001 } else { 42001 };
        assert_rejected_twice(&result.unwrap_err(), wechat_errcode);
    }
    for index in 30..50 {
        harness
            .send_course(&openid(index))
            .await
            .expect("users without a fault are still served");
    }

    let stats = harness.sandbox().stats();
    assert_eq!(stats.delivered, 41);
    let fetches = &stats.token_fetches[APPID];
    // The first fetch; then a fetch and a force for the first token's rejection; then one fetch
    // for the second token's. Each further 30 s (a slow machine) allows one more of each.
    let windows = started.elapsed().as_secs() / 30;
    assert!(
        fetches.stable <= 4 + 2 * windows,
        "token fetches bounded: {fetches:?}"
    );
    assert!(fetches.force_refreshes <= 1 + windows, "{fetches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lifetime_never_sends_an_expired_token() {
    let sandbox_config = SandboxConfig {
        token_lifetime: Duration::from_secs(2),
        stable_rollover: Duration::from_millis(500),
        ..SandboxConfig::default()
    };
    let mut harness = Harness::start_with(sandbox_config, |_| {}).await;
    // Traffic across several lifetimes: each send must use a live token.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut sent = 0;
    while tokio::time::Instant::now() < until {
        harness
            .client
            .send_subscribe(course_request(&openid(sent)))
            .await
            .expect("every send uses a live token");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = harness.sandbox().stats();
    assert_eq!(
        stats.rejected.get(&42001),
        None,
        "no expired token was used"
    );
    assert_eq!(
        stats.rejected.get(&40001),
        None,
        "no revoked token was used"
    );
    assert_eq!(stats.delivered, sent as u64);
    assert!(stats.total_token_fetches() >= 2, "the token was renewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_mode_uses_the_classic_endpoint() {
    let mut harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].token_mode = TokenMode::Classic;
    })
    .await;
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent");
    let fetches = &harness.sandbox().stats().token_fetches["wxsandbox000000001"];
    assert_eq!((fetches.classic, fetches.stable), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_tokens_fetch_before_serving() {
    let harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.warm_tokens = true;
    })
    .await;
    assert_eq!(harness.sandbox().stats().total_token_fetches(), 1);
    let _ = pb::SendSubscribeResponse::default();
}
