//! Callers over plaintext gRPC: bearer tokens right, wrong and missing; every permission
//! allowed and refused; the forwarded client certificate believed only when configured;
//! attribution in metrics and idempotency scoped per caller. Nothing reaches WeChat (the
//! sandbox) for a refused call.

use crate::common::*;
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;
use wechat_notify::{
    config::{CallerConfig, CallersConfig, Rpc, TokenDigest},
    pb,
};
use wechat_notify_sandbox::{AppCredentials, SandboxConfig};

const SHOP_TOKEN: &str = "shop-token-0123456789abcdef";
const CRM_TOKEN: &str = "crm-token-0123456789abcdef";
const XFCC: &str = "x-forwarded-client-cert";

fn caller(name: &str) -> CallerConfig {
    CallerConfig {
        name: name.to_owned(),
        token: None,
        tls_subjects: Vec::new(),
        tls_sans: Vec::new(),
        apps: vec!["demo".to_owned()],
        templates: None,
        rpcs: vec![Rpc::Send, Rpc::Batch, Rpc::Subscriptions],
        rate_per_sec: None,
        max_batch: None,
    }
}

/// `shop`: everything on `demo` by token. `crm`: only SendSubscribe of the course reminder on
/// `second` (named by appid), 2 per second, batches of 2. `mesh`: identified by a SPIFFE id.
fn callers(trust_forwarded_client_cert: bool) -> CallersConfig {
    CallersConfig {
        callers: vec![
            CallerConfig {
                token: Some(TokenDigest::of(SHOP_TOKEN.as_bytes())),
                ..caller("shop")
            },
            CallerConfig {
                token: Some(TokenDigest::of(CRM_TOKEN.as_bytes())),
                apps: vec!["wxsandbox000000002".to_owned()],
                templates: Some(vec![COURSE_REMINDER.to_owned()]),
                rpcs: vec![Rpc::Send, Rpc::Batch],
                rate_per_sec: Some(3),
                max_batch: Some(2),
                ..caller("crm")
            },
            CallerConfig {
                tls_sans: vec!["spiffe://cluster.local/ns/mesh/sa/mesh".to_owned()],
                rpcs: vec![Rpc::Send],
                ..caller("mesh")
            },
        ],
        trust_forwarded_client_cert,
        require_callers: false,
    }
}

async fn start(trust_forwarded_client_cert: bool) -> Harness {
    let sandbox_config = SandboxConfig {
        apps: vec![
            AppCredentials::new("wxsandbox000000001", "secret-one"),
            AppCredentials::new("wxsandbox000000002", "secret-two"),
        ],
        ..SandboxConfig::default()
    };
    Harness::start_with(sandbox_config, |config| {
        config.callers = callers(trust_forwarded_client_cert);
    })
    .await
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn send_to(app: &str, touser: &str) -> pb::SendSubscribeRequest {
    pb::SendSubscribeRequest {
        app: app.to_owned(),
        ..course_request(touser)
    }
}

fn batch_to(app: &str, recipients: usize) -> pb::BatchSendRequest {
    pb::BatchSendRequest {
        app: app.to_owned(),
        template_id: COURSE_REMINDER.to_owned(),
        data: course_data(),
        recipients: (0..recipients)
            .map(|index| pb::Recipient {
                touser: openid(index),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The caller and what it lacks, from a PERMISSION_DENIED's ErrorInfo.
fn not_allowed(status: &tonic::Status) -> (String, String) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "CALLER_NOT_ALLOWED");
    (
        info.metadata["caller"].clone(),
        info.metadata["lacks"].clone(),
    )
}

#[tokio::test]
async fn bearer_tokens_right_wrong_and_missing() {
    let mut harness = start(false).await;
    let sent = harness
        .client
        .send_subscribe(with_token(send_to("demo", OPENID), SHOP_TOKEN))
        .await
        .expect("the right token sends");
    assert!(sent.into_inner().msgid > 0);

    for (request, what) in [
        (
            with_token(send_to("demo", OPENID), "shop-token-0123456789abcdeX"),
            "wrong",
        ),
        (with_token(send_to("demo", OPENID), ""), "empty"),
        (Request::new(send_to("demo", OPENID)), "missing"),
    ] {
        let status = harness.client.send_subscribe(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(!status.message().contains(SHOP_TOKEN), "{what}");
    }
    let mut basic = Request::new(send_to("demo", OPENID));
    basic
        .metadata_mut()
        .insert("authorization", "Basic c2hvcDpzaG9w".parse().unwrap());
    let status = harness.client.send_subscribe(basic).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        harness.sandbox().send_requests().len(),
        1,
        "only the identified call reached WeChat"
    );

    // Health and reflection need no identity.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", harness.server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "notify.v1.NotifyService".to_owned(),
        })
        .await
        .expect("health answers without an identity");
    assert_eq!(health.into_inner().status, 1);
}

#[tokio::test]
async fn each_permission_is_allowed_and_refused() {
    let mut harness = start(false).await;
    fn crm<T>(message: T) -> Request<T> {
        with_token(message, CRM_TOKEN)
    }

    // App: allowed by appid, asked by name; another app (or one that does not exist) refused
    // alike, so the refusal tells nothing about which apps exist.
    harness
        .client
        .send_subscribe(crm(send_to("second", OPENID)))
        .await
        .expect("crm may use second");
    for app in ["demo", "no-such-app"] {
        let status = harness
            .client
            .send_subscribe(crm(send_to(app, OPENID)))
            .await
            .unwrap_err();
        assert_eq!(
            not_allowed(&status),
            ("crm".to_owned(), format!("app `{app}`"))
        );
    }
    // Template.
    let status = harness
        .client
        .send_subscribe(crm(pb::SendSubscribeRequest {
            template_id: "another-template".to_owned(),
            ..send_to("second", OPENID)
        }))
        .await
        .unwrap_err();
    assert_eq!(not_allowed(&status).1, "template `another-template`");
    // Batch size: 2 allowed, 3 refused.
    let batch = harness
        .client
        .batch_send(crm(batch_to("second", 2)))
        .await
        .expect("a batch of 2 is allowed")
        .into_inner();
    assert_eq!(batch.succeeded, 2);
    let status = harness
        .client
        .batch_send(crm(batch_to("second", 3)))
        .await
        .unwrap_err();
    assert!(
        not_allowed(&status).1.contains("max_batch is 2"),
        "{status:?}"
    );
    let delivered = harness.sandbox().send_requests().len();
    assert_eq!(delivered, 3, "one send and one batch of two reached WeChat");

    // Rate: 3 per second, 3 already used within this second or so; keep sending until refused
    // (a slow machine may have refilled some), then check nothing refused was sent.
    let mut refused = None;
    for _ in 0..20 {
        match harness
            .client
            .send_subscribe(crm(send_to("second", OPENID)))
            .await
        {
            Ok(_) => {}
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("the caller's rate refuses within 20 quick calls");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "CALLER_RATE_LIMITED");
    assert!(status.metadata().get("retry-after").is_some());
    let sent_before_refusal = harness.sandbox().send_requests().len();

    // RPC: crm may not call the subscriptions service (refused by its path prefix, whatever
    // methods that service has); shop, allowed every RPC, gets through to the service (and
    // batches). BatchSend refused by RPC: `an_rpc_outside_...` below.
    let addr = harness.server.grpc_addr;
    let subscriptions = |token: &str| {
        let token = token.to_owned();
        async move {
            let mut grpc = tonic::client::Grpc::new(
                tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
            grpc.ready().await.unwrap();
            grpc.unary(
                with_token((), &token),
                http::uri::PathAndQuery::from_static(
                    "/notify.v1.SubscriptionService/GetSubscriptions",
                ),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
        }
    };
    let status = subscriptions(CRM_TOKEN).await.unwrap_err();
    assert_eq!(
        not_allowed(&status),
        ("crm".to_owned(), "rpc subscriptions".to_owned())
    );
    // Shop holds the rpc; its empty request names no app, which its `apps` permission refuses
    // (as SendSubscribe's would), not the rpc.
    let status = subscriptions(SHOP_TOKEN).await.unwrap_err();
    assert_eq!(
        not_allowed(&status),
        ("shop".to_owned(), "app ``".to_owned())
    );
    let mut shop_batch = with_token(batch_to("demo", 1), SHOP_TOKEN);
    shop_batch.set_timeout(std::time::Duration::from_secs(10));
    harness
        .client
        .batch_send(shop_batch)
        .await
        .expect("shop may batch");
    assert_eq!(
        harness.sandbox().send_requests().len(),
        sent_before_refusal + 1
    );
}

#[tokio::test]
async fn an_rpc_outside_the_callers_list_is_refused_before_its_body_is_read() {
    let mut harness = start(true).await;
    let header = "By=spiffe://cluster.local/ns/notify/sa/notify;Hash=00ff;\
                  Subject=\"CN=mesh,O=Example\";URI=spiffe://cluster.local/ns/mesh/sa/mesh";
    let mut request = Request::new(batch_to("demo", 1));
    request.metadata_mut().insert(XFCC, header.parse().unwrap());
    let status = harness.client.batch_send(request).await.unwrap_err();
    assert_eq!(
        not_allowed(&status),
        ("mesh".to_owned(), "rpc batch".to_owned())
    );
    let mut request = Request::new(send_to("demo", OPENID));
    request.metadata_mut().insert(XFCC, header.parse().unwrap());
    harness
        .client
        .send_subscribe(request)
        .await
        .expect("mesh may send, identified by the forwarded certificate");
    assert_eq!(harness.sandbox().send_requests().len(), 1);
}

#[tokio::test]
async fn the_forwarded_certificate_is_ignored_unless_trusted() {
    let mut harness = start(false).await;
    let mut request = Request::new(send_to("demo", OPENID));
    request.metadata_mut().insert(
        XFCC,
        "Hash=00ff;URI=spiffe://cluster.local/ns/mesh/sa/mesh"
            .parse()
            .unwrap(),
    );
    let status = harness.client.send_subscribe(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(harness.sandbox().send_requests().is_empty());
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_caller_and_calls_are_attributed() {
    // shop and crm (without its rate) share one app. Metrics are one registry per process:
    // names of their own here keep the other tests' calls out of the series checked below.
    let mut harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].name = "attributed".to_owned();
        let mut both = callers(false);
        both.callers.truncate(2);
        for caller in &mut both.callers {
            caller.name = format!("{}-attributed", caller.name);
            caller.apps = vec!["attributed".to_owned()];
            caller.rate_per_sec = None;
        }
        config.callers = both;
    })
    .await;
    let keyed = || pb::SendSubscribeRequest {
        idempotency_key: "order-42".to_owned(),
        ..course_request(OPENID)
    };
    let send = |token: &'static str| {
        let mut client = harness.client.clone();
        async move {
            client
                .send_subscribe(with_token(keyed(), token))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let shop = send(SHOP_TOKEN).await;
    let shop_retry = send(SHOP_TOKEN).await;
    assert!(shop_retry.deduplicated && shop_retry.msgid == shop.msgid);
    let crm = send(CRM_TOKEN).await;
    assert!(!crm.deduplicated, "crm's key is not shop's record");
    assert_ne!(crm.msgid, shop.msgid);
    assert_eq!(harness.sandbox().send_requests().len(), 2);

    // Attribution: message and RPC series carry the caller.
    let refused = harness.client.send_subscribe(course_request(OPENID)).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    let metrics = reqwest::get(format!("http://{}/metrics", harness.server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|label| line.contains(label))
            })
            .and_then(|line| line.rsplit_once(' '))
            .map(|(_, value)| value.parse::<f64>().unwrap())
    };
    for caller in ["shop-attributed", "crm-attributed"] {
        let label = format!("caller=\"{caller}\"");
        assert_eq!(
            sample(
                "wechat_notify_messages_total",
                &[&label, "app=\"attributed\"", "outcome=\"sent\""]
            ),
            Some(1.0),
            "{caller}\n{metrics}"
        );
    }
    assert_eq!(
        sample(
            "wechat_notify_messages_total",
            &["caller=\"shop-attributed\"", "outcome=\"deduplicated\""]
        ),
        Some(1.0)
    );
    for (caller, calls) in [("shop-attributed", 2.0), ("crm-attributed", 1.0)] {
        let label = format!("caller=\"{caller}\"");
        assert_eq!(
            sample(
                "wechat_notify_rpc_requests_total",
                &[&label, "method=\"SendSubscribe\"", "code=\"OK\""]
            ),
            Some(calls),
            "{caller}"
        );
    }
    // Other tests refuse calls too: at least this one.
    assert!(
        sample(
            "wechat_notify_rpc_requests_total",
            &[
                "caller=\"anonymous\"",
                "method=\"SendSubscribe\"",
                "code=\"UNAUTHENTICATED\""
            ]
        )
        .is_some_and(|count| count >= 1.0)
    );
    assert!(!metrics.contains(SHOP_TOKEN) && !metrics.contains(CRM_TOKEN));
}
