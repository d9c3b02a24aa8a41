//! notify.v1.SubscriptionService and the send gate, through a real server with the sandbox as
//! WeChat: what RecordSubscriptions and GetSubscriptions answer, what enforce refuses (and that
//! it refuses without a call to WeChat), what observe records without blocking, BatchSend per
//! recipient, and the sandbox's pushes arriving in WatchEvents.

use std::collections::BTreeMap;

use crate::common::*;
use tonic::{Code, transport::Channel};
use wechat_notify::{
    config::{PushSettings, ServeConfig},
    pb::{self, subscription_service_client::SubscriptionServiceClient},
    push_crypto::{AesKey, PushMode},
    secret::Secret,
    subscriptions::SubscriptionCheck,
};
use wechat_notify_sandbox::{DEFAULT_APPID, Grant, PushFormat, PushTarget, SandboxConfig};

async fn start(
    check: SubscriptionCheck,
    auto_accept: bool,
) -> (Harness, SubscriptionServiceClient<Channel>) {
    start_with(check, auto_accept, |_| {}).await
}

async fn start_with(
    check: SubscriptionCheck,
    auto_accept: bool,
    tweak: impl FnOnce(&mut ServeConfig),
) -> (Harness, SubscriptionServiceClient<Channel>) {
    let sandbox = SandboxConfig {
        auto_accept,
        ..SandboxConfig::default()
    };
    let harness = Harness::start_with(sandbox, |config| {
        config.apps[0].subscription_check = check;
        tweak(config);
    })
    .await;
    let client = subscriptions_client(harness.server.grpc_addr).await;
    (harness, client)
}

async fn record(
    client: &mut SubscriptionServiceClient<Channel>,
    openid: &str,
    results: &[(&str, &str)],
) -> Result<Vec<pb::Subscription>, tonic::Status> {
    client
        .record_subscriptions(pb::RecordSubscriptionsRequest {
            openid: openid.to_owned(),
            results: results
                .iter()
                .map(|(template, value)| ((*template).to_owned(), (*value).to_owned()))
                .collect(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().subscriptions)
}

#[tokio::test]
async fn reports_are_checked_recorded_and_answered() {
    let (_harness, mut client) = start(SubscriptionCheck::Observe, true).await;
    let user = openid(1);
    let recorded = record(
        &mut client,
        &user,
        &[
            ("errMsg", "requestSubscribeMessage:ok"),
            (COURSE_REMINDER, "acceptWithAudio"),
            ("T-rejected", "reject"),
            ("T-banned", "ban"),
            ("T-filtered", "filter"),
        ],
    )
    .await
    .unwrap();
    let summary: Vec<(&str, i32, u32)> = recorded
        .iter()
        .map(|entry| (entry.template_id.as_str(), entry.status, entry.remaining))
        .collect();
    assert_eq!(
        summary,
        [
            ("T-banned", pb::SubscriptionStatus::Banned as i32, 0),
            ("T-filtered", pb::SubscriptionStatus::Filtered as i32, 0),
            ("T-rejected", pb::SubscriptionStatus::Rejected as i32, 0),
            (COURSE_REMINDER, pb::SubscriptionStatus::Accepted as i32, 1),
        ]
    );
    assert!(recorded.iter().all(|entry| entry.source
        == pb::SubscriptionSource::ClientReport as i32
        && entry.updated_at.is_some()));

    let asked = client
        .get_subscriptions(pb::GetSubscriptionsRequest {
            openid: user.clone(),
            template_ids: vec![COURSE_REMINDER.to_owned(), "T-never".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].template_id, "T-never");
    assert_eq!(asked[0].status, pb::SubscriptionStatus::Unknown as i32);
    assert_eq!(asked[1], recorded[3]);
    let everything = client
        .get_subscriptions(pb::GetSubscriptionsRequest {
            openid: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(everything, recorded);

    // Bad reports name the field and record nothing.
    let other = openid(2);
    let bad = record(&mut client, &other, &[(COURSE_REMINDER, "maybe")])
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&bad), [format!("results[{COURSE_REMINDER:?}]")]);
    let empty = record(
        &mut client,
        &other,
        &[("errMsg", "requestSubscribeMessage:ok")],
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&empty), ["results"]);
    let no_user = record(&mut client, "", &[(COURSE_REMINDER, "accept")])
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&no_user), ["openid"]);
    let unknown_app = client
        .record_subscriptions(pb::RecordSubscriptionsRequest {
            app: "nobody".into(),
            openid: other.clone(),
            results: BTreeMap::from([(COURSE_REMINDER.to_owned(), "accept".to_owned())]),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_app.code(), Code::NotFound);
    let nothing = client
        .get_subscriptions(pb::GetSubscriptionsRequest {
            openid: other,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert!(nothing.is_empty());
}

#[tokio::test]
async fn enforce_refuses_what_the_ledger_knows_without_calling_wechat() {
    // Auto-accept on: the sandbox would deliver anything, so every refusal is the ledger's. The
    // app's name is this test's own: the metrics recorder is shared by the whole test binary.
    let (mut harness, mut client) = start_with(SubscriptionCheck::Enforce, true, |config| {
        config.apps[0].name = "enforced".to_owned();
    })
    .await;
    let rejected = openid(1);
    record(&mut client, &rejected, &[(COURSE_REMINDER, "reject")])
        .await
        .unwrap();
    let refused = harness.send_course(&rejected).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "NOT_SUBSCRIBED");
    assert_eq!(
        errcode(&refused),
        None,
        "no wechat errcode: wechat was not called"
    );
    assert_eq!(harness.sandbox().stats().send_requests, 0);

    // One accept allows one message; the second is refused before any call.
    let granted = openid(2);
    record(&mut client, &granted, &[(COURSE_REMINDER, "accept")])
        .await
        .unwrap();
    harness.send_course(&granted).await.expect("the one grant");
    let second = harness.send_course(&granted).await.unwrap_err();
    assert_eq!(reason(&second), "NOT_SUBSCRIBED");
    assert_eq!(harness.sandbox().stats().send_requests, 1);

    // A pair the ledger never heard of is sent as before.
    harness
        .send_course(&openid(3))
        .await
        .expect("unknown pairs go");
    assert_eq!(harness.sandbox().stats().send_requests, 2);

    // BatchSend: per recipient.
    let batch = harness
        .client
        .batch_send(pb::BatchSendRequest {
            template_id: COURSE_REMINDER.to_owned(),
            data: course_data(),
            recipients: [rejected.clone(), openid(4), granted.clone()]
                .into_iter()
                .map(|touser| pb::Recipient {
                    touser,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = batch.results.iter().map(|result| result.code).collect();
    assert_eq!(
        codes,
        [
            Code::FailedPrecondition as i32,
            0,
            Code::FailedPrecondition as i32
        ]
    );
    assert_eq!(batch.results[0].attempts, 0);
    assert_eq!(harness.sandbox().stats().send_requests, 3);

    // The calls saved are counted: the rejected pair twice, the spent grant twice.
    let metrics = reqwest::get(format!("http://{}/metrics", harness.server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(
        value("wechat_notify_subscription_sends_saved_total{app=\"enforced\"}"),
        4.0
    );
    assert_eq!(
        value("wechat_notify_subscription_ledger_lookups_total{app=\"enforced\",result=\"hit\"}"),
        5.0
    );
    assert_eq!(
        value("wechat_notify_subscription_ledger_lookups_total{app=\"enforced\",result=\"miss\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_43101_is_remembered_and_observe_never_blocks() {
    for check in [SubscriptionCheck::Observe, SubscriptionCheck::Enforce] {
        // Auto-accept off: the sandbox answers 43101 to anyone who never subscribed.
        let (mut harness, mut client) = start(check, false).await;
        let user = openid(1);
        let first = harness.send_course(&user).await.unwrap_err();
        assert_eq!(errcode(&first), Some(43101));
        let known = client
            .get_subscriptions(pb::GetSubscriptionsRequest {
                openid: user.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .subscriptions;
        assert_eq!(known.len(), 1);
        assert_eq!(known[0].source, pb::SubscriptionSource::SendOutcome as i32);
        assert_eq!(known[0].kind, pb::SubscriptionKind::OneTime as i32);
        let second = harness.send_course(&user).await.unwrap_err();
        let requests = harness.sandbox().stats().send_requests;
        match check {
            SubscriptionCheck::Observe => {
                assert_eq!(errcode(&second), Some(43101), "observe still asks wechat");
                assert_eq!(requests, 2);
            }
            _ => {
                assert_eq!(reason(&second), "NOT_SUBSCRIBED");
                assert_eq!(requests, 1);
            }
        }
        // A new accept (in the sandbox as in the ledger) opens the way again.
        harness.sandbox().subscribe(
            DEFAULT_APPID,
            &user,
            COURSE_REMINDER,
            Grant::Accept { count: 1 },
        );
        record(&mut client, &user, &[(COURSE_REMINDER, "accept")])
            .await
            .unwrap();
        harness.send_course(&user).await.expect("accepted again");
    }
}

#[tokio::test]
async fn off_neither_consults_nor_records() {
    let (mut harness, mut client) = start(SubscriptionCheck::Off, false).await;
    let user = openid(1);
    record(&mut client, &user, &[(COURSE_REMINDER, "reject")])
        .await
        .unwrap();
    let refused = harness.send_course(&user).await.unwrap_err();
    assert_eq!(errcode(&refused), Some(43101), "wechat was asked");
    let known = client
        .get_subscriptions(pb::GetSubscriptionsRequest {
            openid: user,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(known[0].source, pb::SubscriptionSource::ClientReport as i32);
}

#[tokio::test]
async fn the_sandbox_pushes_reach_watchers_and_pair_with_the_client_report() {
    const TOKEN: &str = "Tok3nLoop";
    const KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    let (mut harness, mut client) = start_with(SubscriptionCheck::Enforce, false, |config| {
        config.push_listen = Some(loopback());
        config.apps[0].push = Some(PushSettings {
            token: Secret::new(TOKEN),
            aes_key: Some(AesKey::from_encoding_key(KEY).unwrap()),
            mode: PushMode::Safe,
        });
    })
    .await;
    let push_addr = harness.server.push_addr.unwrap();
    harness.sandbox().set_push_target(
        DEFAULT_APPID,
        Some(PushTarget {
            url: format!("http://{push_addr}/wechat/push/{DEFAULT_APPID}")
                .parse()
                .unwrap(),
            token: TOKEN.to_owned(),
            encoding_aes_key: Some(KEY.to_owned()),
            mode: wechat_notify_sandbox::PushMode::Safe,
            format: PushFormat::Json,
        }),
    );
    let mut watch = client
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let user = openid(7);
    // The user taps accept: the mini program reports it and WeChat (the sandbox) pushes it.
    record(&mut client, &user, &[(COURSE_REMINDER, "accept")])
        .await
        .unwrap();
    harness.sandbox().subscribe(
        DEFAULT_APPID,
        &user,
        COURSE_REMINDER,
        Grant::Accept { count: 1 },
    );
    let popup = next_change(&mut watch, pb::SubscriptionSource::PopupEvent).await;
    assert_eq!(popup.remaining, 1, "one tap, reported twice, is one grant");

    let sent = harness.send_course(&user).await.expect("delivered");
    let delivery = loop {
        match next_event(&mut watch).await {
            pb::event::Event::DeliveryResult(delivery) => break delivery,
            pb::event::Event::Lost(lost) => panic!("lost {}", lost.count),
            pb::event::Event::SubscriptionChanged(_) => {}
        }
    };
    assert_eq!(delivery.msgid, sent.msgid);
    assert_eq!(
        (delivery.openid.as_str(), delivery.errcode),
        (user.as_str(), 0)
    );

    // The user turns the template off from the settings: a change push.
    harness
        .sandbox()
        .revoke(DEFAULT_APPID, &user, COURSE_REMINDER);
    let revoked = next_change(&mut watch, pb::SubscriptionSource::ChangeEvent).await;
    assert_eq!(revoked.status, pb::SubscriptionStatus::Rejected as i32);
    let pushes = harness.sandbox().pushes();
    assert!(
        pushes
            .iter()
            .all(|push| push.acknowledged && push.attempts == 1),
        "{pushes:?}"
    );
}

async fn next_event(watch: &mut tonic::Streaming<pb::Event>) -> pb::event::Event {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    tokio::time::timeout_at(deadline, watch.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

async fn next_change(
    watch: &mut tonic::Streaming<pb::Event>,
    source: pb::SubscriptionSource,
) -> pb::Subscription {
    loop {
        if let pb::event::Event::SubscriptionChanged(change) = next_event(watch).await {
            let entry = change.subscription.unwrap();
            if entry.source == source as i32 {
                return entry;
            }
        }
    }
}

#[tokio::test]
async fn watch_streams_end_cleanly_when_shutdown_begins() {
    let (harness, mut client) = start_with(SubscriptionCheck::Observe, true, |config| {
        // Long enough that a stream left open would show as a timeout below.
        config.shutdown_grace = std::time::Duration::from_secs(60);
    })
    .await;
    let mut watch = client
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let Harness {
        server, sandbox, ..
    } = harness;
    let shutdown = tokio::spawn(server.shutdown());
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("the stream ends when shutdown begins");
    assert!(
        matches!(end, Ok(None)),
        "a clean end of stream, got {end:?}"
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap()
        .unwrap();
    drop(sandbox);
}

#[tokio::test]
async fn the_sandbox_control_api_sets_where_pushes_go() {
    let (harness, client) = start_with(SubscriptionCheck::Observe, true, |config| {
        config.push_listen = Some(loopback());
        config.apps[0].push = Some(PushSettings {
            token: Secret::new("PlainTok3n"),
            aes_key: None,
            mode: PushMode::Plaintext,
        });
    })
    .await;
    let control = format!("{}sandbox", harness.sandbox.base_url());
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{control}/{path}")).json(&body).send()
    };
    let refused = post(
        "push-target",
        serde_json::json!({"url": "http://127.0.0.1:1/x", "token": "PlainTok3n", "mode": "safe"}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 400, "safe mode needs a key");
    let url = format!(
        "http://{}/wechat/push/demo",
        harness.server.push_addr.unwrap()
    );
    let set = post(
        "push-target",
        serde_json::json!({"url": url, "token": "PlainTok3n", "format": "json"}),
    )
    .await
    .unwrap();
    assert_eq!(set.status(), 200);
    let user = openid(9);
    let recorded = post(
        "subscriptions",
        serde_json::json!({"openid": user, "template_id": COURSE_REMINDER, "status": "accept"}),
    )
    .await
    .unwrap();
    assert_eq!(recorded.status(), 200);
    let entry = eventually("the popup push", || {
        let mut client = client.clone();
        let user = user.clone();
        async move {
            let found = client
                .get_subscriptions(pb::GetSubscriptionsRequest {
                    openid: user,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .subscriptions;
            found.into_iter().next()
        }
    })
    .await;
    assert_eq!(entry.source, pb::SubscriptionSource::PopupEvent as i32);
    assert_eq!(entry.remaining, 1);
}
