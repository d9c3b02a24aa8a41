//! No bearer token (right or wrong) and no TLS private key reaches a log line, at TRACE, through
//! identified, refused and TLS calls and a failed certificate reload.

use std::time::Duration;

use crate::common::{pki::*, *};
use tonic::Request;
use wechat_notify::{
    config::{CallerConfig, CallersConfig, Rpc, TokenDigest},
    pb::notify_service_client::NotifyServiceClient,
};
use wechat_notify_sandbox::SandboxConfig;

const RIGHT_TOKEN: &str = "right-bearer-token-value-0123456789";
const WRONG_TOKEN: &str = "wrong-bearer-token-value-9876543210";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_bearer_token_and_no_tls_key() {
    let captured = crate::trace_logs();

    let ca = Ca::new("ca");
    let server_leaf = ca.server();
    let client_leaf = ca.client("shop", &["spiffe://cluster.local/ns/shop/sa/shop"]);
    let tls = TlsDir::new(&server_leaf, Some(&ca));
    let callers = CallersConfig {
        callers: vec![CallerConfig {
            name: "shop".to_owned(),
            token: Some(TokenDigest::of(RIGHT_TOKEN.as_bytes())),
            tls_subjects: vec!["shop".to_owned()],
            tls_sans: Vec::new(),
            apps: vec!["demo".to_owned()],
            templates: Some(vec![COURSE_REMINDER.to_owned()]),
            rpcs: vec![Rpc::Send],
            rate_per_sec: None,
            max_batch: None,
        }],
        trust_forwarded_client_cert: false,
        require_callers: true,
    };
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
    config.callers = callers;
    config.tls = Some(tls.files(true));
    let debug_config = format!("{config:?}");
    let server = wechat_notify::server::start(config, std::future::pending())
        .await
        .expect("server starts");
    let addr = server.grpc_addr;

    let channel = tls_channel(addr, &ca, None).await.unwrap();
    let mut client = NotifyServiceClient::new(channel);
    let with = |token: &str| {
        let mut request = Request::new(course_request(OPENID));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    client
        .send_subscribe(with(RIGHT_TOKEN))
        .await
        .expect("sent");
    assert!(client.send_subscribe(with(WRONG_TOKEN)).await.is_err());
    let mut not_allowed = with(RIGHT_TOKEN);
    not_allowed.get_mut().template_id = "another-template".to_owned();
    assert!(client.send_subscribe(not_allowed).await.is_err());
    let channel = tls_channel(addr, &ca, Some(&client_leaf)).await.unwrap();
    NotifyServiceClient::new(channel)
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent by certificate");
    // A rotation to a key that does not go with the certificate is logged and refused.
    std::fs::write(&tls.key, ca.server().key).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let logs = captured.text();
    assert!(logs.lines().count() > 20, "trace logging was captured");
    assert!(logs.contains("call refused"), "refusals are logged");
    assert!(
        logs.contains("caller=shop"),
        "the caller is on the call's lines"
    );
    for token in [RIGHT_TOKEN, WRONG_TOKEN] {
        assert!(!logs.contains(token), "a bearer token was logged");
        assert!(!debug_config.contains(token));
    }
    let key_body = |pem: &str| {
        pem.lines()
            .filter(|line| !line.starts_with("-----"))
            .collect::<String>()
    };
    for key in [&server_leaf.key, &client_leaf.key] {
        let body = key_body(key);
        assert!(body.len() > 40);
        // Any 40 characters of the key's base64, wherever a line break fell.
        let flat: String = logs.split_whitespace().collect();
        assert!(!flat.contains(&body[..40]), "a private key was logged");
    }
    assert!(logs.contains("do not load"), "the failed reload was logged");
    drop(server);
}
