//! TLS on the gRPC port with certificates made in the test: a server certificate, mutual TLS
//! accepted and refused (unknown CA, expired), a caller identified by its certificate, and a
//! certificate rotation while a client keeps its connection.

use std::time::Duration;

use crate::common::{pki::*, *};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use wechat_notify::{
    config::{CallerConfig, CallersConfig, Rpc, TokenDigest},
    pb::notify_service_client::NotifyServiceClient,
};
use wechat_notify_sandbox::SandboxConfig;

const TOKEN: &str = "tls-token-0123456789abcdef";

fn callers() -> CallersConfig {
    let caller = |name: &str| CallerConfig {
        name: name.to_owned(),
        token: None,
        tls_subjects: Vec::new(),
        tls_sans: Vec::new(),
        apps: vec!["demo".to_owned()],
        templates: None,
        rpcs: vec![Rpc::Send, Rpc::Batch],
        rate_per_sec: None,
        max_batch: None,
    };
    CallersConfig {
        callers: vec![
            CallerConfig {
                tls_subjects: vec!["shop".to_owned()],
                ..caller("shop")
            },
            CallerConfig {
                tls_sans: vec!["spiffe://cluster.local/ns/crm/sa/crm".to_owned()],
                ..caller("crm")
            },
            CallerConfig {
                token: Some(TokenDigest::of(TOKEN.as_bytes())),
                ..caller("bearer")
            },
        ],
        trust_forwarded_client_cert: false,
        require_callers: false,
    }
}

async fn start(tls: &TlsDir, mutual: bool, with_callers: bool) -> Harness {
    let files = tls.files(mutual);
    let sandbox = wechat_notify_sandbox::Sandbox::new(SandboxConfig::default())
        .spawn(loopback())
        .await
        .unwrap();
    let mut config = serve_config();
    config.apps.push(app_config(
        "demo",
        &SandboxConfig::default().apps[0],
        vec![sandbox.base_url()],
    ));
    config.tls = Some(files);
    if with_callers {
        config.callers = callers();
    }
    let server = wechat_notify::server::start(config, std::future::pending())
        .await
        .expect("server starts");
    // The harness's own client speaks plaintext; tests here connect with TLS themselves.
    let client =
        NotifyServiceClient::new(Channel::from_static("http://127.0.0.1:1").connect_lazy());
    Harness {
        sandbox,
        server,
        client,
    }
}

async fn send(channel: Channel, token: Option<&str>) -> Result<u64, tonic::Status> {
    let mut request = Request::new(course_request(OPENID));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    NotifyServiceClient::new(channel)
        .send_subscribe(request)
        .await
        .map(|response| response.into_inner().msgid)
}

#[tokio::test]
async fn tls_with_a_server_certificate_serves_and_plaintext_is_refused() {
    let ca = Ca::new("server ca");
    let tls = TlsDir::new(&ca.server(), None);
    let harness = start(&tls, false, false).await;
    let addr = harness.server.grpc_addr;

    let channel = tls_channel(addr, &ca, None).await.expect("tls connects");
    assert!(send(channel.clone(), None).await.expect("sent over tls") > 0);
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health over tls");
    assert_eq!(health.into_inner().status, 1);

    // A client that does not trust the server's CA, and a plaintext client, get nowhere.
    let stranger = Ca::new("another ca");
    let refused = match tls_channel(addr, &stranger, None).await {
        Err(_) => true,
        Ok(channel) => send(channel, None).await.is_err(),
    };
    assert!(refused, "a client not trusting the CA must not get through");
    let plaintext = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    let plaintext_refused = match plaintext {
        Err(_) => true,
        Ok(channel) => send(channel, None).await.is_err(),
    };
    assert!(plaintext_refused);
    assert_eq!(harness.sandbox().send_requests().len(), 1);
}

#[tokio::test]
async fn mutual_tls_accepts_known_clients_and_refuses_unknown_ca_and_expired() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let tls = TlsDir::new(&server_ca.server(), Some(&client_ca));
    let harness = start(&tls, true, true).await;
    let addr = harness.server.grpc_addr;

    // By subject CN, and by URI SAN (a SPIFFE id).
    let shop = client_ca.client("shop", &[]);
    let channel = tls_channel(addr, &server_ca, Some(&shop)).await.unwrap();
    send(channel, None)
        .await
        .expect("shop's certificate identifies it");
    let crm = client_ca.client("crm-workload", &["spiffe://cluster.local/ns/crm/sa/crm"]);
    let channel = tls_channel(addr, &server_ca, Some(&crm)).await.unwrap();
    send(channel, None).await.expect("crm's SAN identifies it");

    // A valid certificate of nobody configured: the handshake passes, the call does not.
    let nobody = client_ca.client("nobody", &["nobody.example"]);
    let channel = tls_channel(addr, &server_ca, Some(&nobody)).await.unwrap();
    let status = send(channel, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // No certificate: health still answers; a bearer token identifies the caller.
    let channel = tls_channel(addr, &server_ca, None).await.unwrap();
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no identity");
    let status = send(channel.clone(), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    send(channel, Some(TOKEN))
        .await
        .expect("the token works over tls");
    let delivered = harness.sandbox().send_requests().len();
    assert_eq!(delivered, 3);

    // Refused in the handshake: a certificate from another CA, and an expired one.
    let stranger = Ca::new("stranger ca").client("shop", &[]);
    let expired = client_ca.expired_client("shop");
    for (leaf, what) in [(&stranger, "unknown ca"), (&expired, "expired")] {
        let refused = match tls_channel(addr, &server_ca, Some(leaf)).await {
            Err(_) => None,
            Ok(channel) => Some(send(channel, None).await.unwrap_err()),
        };
        if let Some(status) = &refused {
            // TLS 1.3 finishes the client's side before the server checks its certificate:
            // the refusal then shows on the first call, as a transport failure.
            assert_ne!(status.code(), Code::Ok, "{what}");
            assert_ne!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        }
    }
    assert_eq!(
        harness.sandbox().send_requests().len(),
        delivered,
        "nothing refused reached WeChat"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_used_for_new_connections_while_open_ones_stay() {
    let old_ca = Ca::new("old ca");
    let tls = TlsDir::new(&old_ca.server(), None);
    let harness = start(&tls, false, false).await;
    let addr = harness.server.grpc_addr;

    let kept = tls_channel(addr, &old_ca, None).await.unwrap();
    send(kept.clone(), None)
        .await
        .expect("sent before the rotation");

    // Rotate to a certificate from a new CA: a client trusting only the new CA gets in once
    // the files are reloaded (checked every 2 s; allow a generous 30 s).
    let new_ca = Ca::new("new ca");
    tls.write(&new_ca.server(), None);
    let mut reloaded = false;
    for _ in 0..60 {
        if let Ok(channel) = tls_channel(addr, &new_ca, None).await
            && send(channel, None).await.is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(reloaded, "the new certificate was never served");

    // The kept connection still works: it trusts only the old CA, so a reconnect would have
    // failed; it was never dropped.
    send(kept, None)
        .await
        .expect("the open connection outlived the rotation");
    // And a new client trusting only the old CA is refused now.
    let old_refused = match tls_channel(addr, &old_ca, None).await {
        Err(_) => true,
        Ok(channel) => send(channel, None).await.is_err(),
    };
    assert!(old_refused);

    // A rotation to files that do not load keeps the current certificate.
    std::fs::write(&tls.key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let channel = tls_channel(addr, &new_ca, None).await.unwrap();
    send(channel, None)
        .await
        .expect("a broken rotation keeps the working certificate");
}
