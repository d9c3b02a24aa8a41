//! The shared token cache seen from outside: through gRPC, with the sandbox counting fetches.

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use wechat_notify::{pb, sandbox::SandboxConfig, wechat::TokenMode};

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
