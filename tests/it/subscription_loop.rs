//! The whole subscription loop through the real binary, offline: `serve --sandbox
//! --subscription-check enforce`. The sandbox (playing the user and WeChat) pushes a
//! revocation, the service's push listener records it, and a send is refused
//! FAILED_PRECONDITION without a call; an accept is pushed, one send goes, the second is refused.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use tonic::{Code, transport::Channel};
use wechat_notify::pb::{self, subscription_service_client::SubscriptionServiceClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_pushes_feed_the_ledger_and_enforce_refuses_without_a_call() {
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut command = process::serve_sandbox(logs.path(), &[]);
    command.env("NOTIFY_SUBSCRIPTION_CHECK", "enforce");
    let mut process = process::Process::spawn(command);
    let listening = process.listening(logs.path());
    let (grpc_addr, sandbox_addr) = (listening.grpc, listening.sandbox.unwrap());
    let channel = process::wait_until_serving(grpc_addr, &mut process).await;
    let mut notify = pb::notify_service_client::NotifyServiceClient::new(channel.clone());
    let mut subscriptions = SubscriptionServiceClient::new(channel);
    let http = reqwest::Client::new();
    let sandbox = format!("http://{sandbox_addr}/sandbox");
    let user = openid(1);
    let control = |body: Value| {
        let (http, url) = (http.clone(), format!("{sandbox}/subscriptions"));
        async move {
            let answer = http.post(url).json(&body).send().await.unwrap();
            assert!(answer.status().is_success(), "{:?}", answer.text().await);
        }
    };
    let send_requests = || {
        let (http, url) = (http.clone(), format!("{sandbox}/stats"));
        async move {
            let stats: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            stats["send_requests"].as_u64().unwrap()
        }
    };

    // The user turns the template off in the settings: WeChat pushes the change event.
    control(json!({"openid": user, "template_id": COURSE_REMINDER, "status": "reject"})).await;
    wait_for_entry(&mut subscriptions, &user, |entry| {
        entry.source == pb::SubscriptionSource::ChangeEvent as i32
    })
    .await;
    let refused = notify
        .send_subscribe(course_request(&user))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "NOT_SUBSCRIBED");
    assert_eq!(send_requests().await, 0, "wechat was not called");

    // The user accepts in the popup: WeChat pushes the popup event; one message may go.
    control(json!({"openid": user, "template_id": COURSE_REMINDER, "status": "accept"})).await;
    wait_for_entry(&mut subscriptions, &user, |entry| {
        entry.status == pb::SubscriptionStatus::Accepted as i32 && entry.remaining == 1
    })
    .await;
    notify
        .send_subscribe(course_request(&user))
        .await
        .expect("the one grant is used");
    let second = notify
        .send_subscribe(course_request(&user))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition);
    assert_eq!(reason(&second), "NOT_SUBSCRIBED");
    assert_eq!(
        send_requests().await,
        1,
        "only the first send reached wechat"
    );

    // Every push was signed, encrypted and acknowledged on the first attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pushes: Value = http
            .get(format!("{sandbox}/pushes"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pushes = pushes["pushes"].as_array().unwrap().clone();
        // The change, the popup and the delivery result.
        if pushes.len() == 3 {
            assert!(
                pushes
                    .iter()
                    .all(|push| push["acknowledged"] == true && push["attempts"] == 1),
                "{pushes:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "pushes: {pushes:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_entry(
    client: &mut SubscriptionServiceClient<Channel>,
    openid: &str,
    done: impl Fn(&pb::Subscription) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = client
            .get_subscriptions(pb::GetSubscriptionsRequest {
                openid: openid.to_owned(),
                template_ids: vec![COURSE_REMINDER.to_owned()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .subscriptions;
        if entries.iter().any(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ledger never got there: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
