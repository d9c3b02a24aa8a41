//! The push listener (`/wechat/push/{app}`) against pushes built independently of the code
//! under test: signatures by Python's hashlib, ciphertexts by the openssl CLI (AES-256-CBC with
//! no padding of its own; the 32-byte PKCS#7 padding is done by the snippet). Every check
//! happens before anything is recorded; retries are applied once; XML and JSON bodies in every
//! shape WeChat sends are understood.

use std::{process::Command, time::Duration};

use crate::common::*;
use serde_json::{Value, json};
use tonic::transport::Channel;
use wechat_notify::{
    config::PushSettings,
    pb::{self, subscription_service_client::SubscriptionServiceClient},
    push_crypto::{AesKey, PushMode},
    secret::Secret,
};
use wechat_notify_sandbox::{DEFAULT_APPID, SandboxConfig};

const TOKEN: &str = "Tok3nForPush";
/// 43 characters whose last one carries non-zero bits past the 32 key bytes, as WeChat's
/// admin-generated keys often do.
const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const ONE_TIME: &str = COURSE_REMINDER;

/// Computes `signature`, and for an encrypted push the ciphertext and `msg_signature`, with
/// Python's standard library and the openssl CLI: nothing of the service's own code.
const VECTORS_PY: &str = r#"
import base64, hashlib, json, subprocess, sys
a = json.loads(sys.stdin.read())
def sign(parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()
out = {"signature": sign([a["token"], a["timestamp"], a["nonce"]])}
if a.get("encoding_aes_key"):
    key = base64.b64decode(a["encoding_aes_key"] + "=")
    assert len(key) == 32
    msg = a["message"].encode()
    plain = bytes(range(16)) + len(msg).to_bytes(4, "big") + msg + a["appid"].encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    sealed = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-nopad", "-K", key.hex(), "-iv", key[:16].hex()],
        input=plain, capture_output=True, check=True).stdout
    encrypt = base64.b64encode(sealed).decode()
    out.update(encrypt=encrypt, pad=pad,
               msg_signature=sign([a["token"], a["timestamp"], a["nonce"], encrypt]))
print(json.dumps(out))
"#;

/// The independent vectors for one push.
struct Vectors {
    signature: String,
    encrypt: Option<String>,
    msg_signature: Option<String>,
    pad: Option<u64>,
}

fn vectors(timestamp: &str, nonce: &str, encrypted: Option<(&str, &str)>) -> Vectors {
    let (message, appid) = encrypted.unwrap_or_default();
    let input = json!({
        "token": TOKEN,
        "timestamp": timestamp,
        "nonce": nonce,
        "encoding_aes_key": encrypted.map(|_| ENCODING_AES_KEY),
        "message": message,
        "appid": appid,
    });
    let mut child = Command::new("python3")
        .args(["-c", VECTORS_PY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test checks it is installed)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the vector snippet failed (is openssl installed?)"
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    let text = |key: &str| out[key].as_str().map(str::to_owned);
    Vectors {
        signature: text("signature").unwrap(),
        encrypt: text("encrypt"),
        msg_signature: text("msg_signature"),
        pad: out["pad"].as_u64(),
    }
}

struct PushHarness {
    /// Kept alive for the test: the sandbox and the server.
    _harness: Harness,
    subscriptions: SubscriptionServiceClient<Channel>,
    base: String,
    http: reqwest::Client,
}

async fn start(mode: PushMode) -> PushHarness {
    let harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.push_listen = Some(loopback());
        config.apps[0].push = Some(PushSettings {
            token: Secret::new(TOKEN),
            aes_key: Some(AesKey::from_encoding_key(ENCODING_AES_KEY).unwrap()),
            mode,
        });
    })
    .await;
    let subscriptions = subscriptions_client(harness.server.grpc_addr).await;
    let base = format!(
        "http://{}/wechat/push/demo",
        harness.server.push_addr.expect("push listener")
    );
    PushHarness {
        _harness: harness,
        subscriptions,
        base,
        http: reqwest::Client::new(),
    }
}

impl PushHarness {
    async fn post(&self, query: &[(&str, &str)], body: String) -> (u16, String) {
        let response = self
            .http
            .post(&self.base)
            .query(query)
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Posts `message` as WeChat would in plaintext mode, signed with the independent vector.
    async fn post_plain(&self, message: &str, nonce: &str) -> (u16, String) {
        let timestamp = now();
        let vectors = vectors(&timestamp, nonce, None);
        self.post(
            &[
                ("signature", &vectors.signature),
                ("timestamp", &timestamp),
                ("nonce", nonce),
            ],
            message.to_owned(),
        )
        .await
    }

    async fn subscriptions_of(&self, openid: &str) -> Vec<pb::Subscription> {
        self.subscriptions
            .clone()
            .get_subscriptions(pb::GetSubscriptionsRequest {
                openid: openid.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .subscriptions
    }

    async fn wait_for(&self, openid: &str, count: usize) -> Vec<pb::Subscription> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.subscriptions_of(openid).await;
            if found.len() >= count {
                return found;
            }
            assert!(tokio::time::Instant::now() < deadline, "push not applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Now, in unix seconds, as WeChat stamps a push.
fn now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

fn popup_xml(openid: &str, create_time: u64, lists: &[(&str, &str)]) -> String {
    let lists: String = lists
        .iter()
        .map(|(template, status)| {
            format!(
                "<List><TemplateId><![CDATA[{template}]]></TemplateId>\
                 <SubscribeStatusString><![CDATA[{status}]]></SubscribeStatusString>\
                 <PopupScene>0</PopupScene></List>"
            )
        })
        .collect();
    format!(
        "<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName>\
         <FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{create_time}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_popup_event]]></Event>\
         <SubscribeMsgPopupEvent>{lists}</SubscribeMsgPopupEvent></xml>"
    )
}

#[tokio::test]
async fn url_verification_answers_echostr_verbatim_and_refuses_a_bad_signature() {
    let push = start(PushMode::Safe).await;
    let timestamp = now();
    let vectors = vectors(&timestamp, "42", None);
    let echostr = "7293547712345678901";
    let answer = push
        .http
        .get(&push.base)
        .query(&[
            ("signature", vectors.signature.as_str()),
            ("timestamp", timestamp.as_str()),
            ("nonce", "42"),
            ("echostr", echostr),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), echostr);
    let refused = push
        .http
        .get(&push.base)
        .query(&[
            ("signature", vectors.signature.as_str()),
            ("timestamp", "1700000002"),
            ("nonce", "42"),
            ("echostr", echostr),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(!refused.text().await.unwrap().contains(echostr));
    let unknown = push
        .http
        .get(push.base.replace("/demo", "/nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn an_encrypted_push_built_independently_is_applied() {
    let push = start(PushMode::Safe).await;
    let openid = openid(1);
    // Pad the message with trailing blanks until the 32-byte padding is above 16, which a
    // stock 16-byte PKCS#7 unpadder would refuse.
    let mut message = popup_xml(&openid, 1_700_000_100, &[(ONE_TIME, "accept")]);
    while 32 - (20 + message.len() + DEFAULT_APPID.len()) % 32 <= 16 {
        message.push(' ');
    }
    let (timestamp, nonce) = (now(), "998877");
    let timestamp = timestamp.as_str();
    let vectors = vectors(timestamp, nonce, Some((&message, DEFAULT_APPID)));
    assert!(vectors.pad.unwrap() > 16, "pad {:?}", vectors.pad);
    let encrypt = vectors.encrypt.unwrap();
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    );
    let msg_signature = vectors.msg_signature.unwrap();
    let query = [
        ("signature", vectors.signature.as_str()),
        ("timestamp", timestamp),
        ("nonce", nonce),
        ("encrypt_type", "aes"),
        ("msg_signature", msg_signature.as_str()),
    ];
    assert_eq!(push.post(&query, body).await, (200, "success".to_owned()));
    let found = push.wait_for(&openid, 1).await;
    assert_eq!(found[0].template_id, ONE_TIME);
    assert_eq!(found[0].status, pb::SubscriptionStatus::Accepted as i32);
    assert_eq!(found[0].source, pb::SubscriptionSource::PopupEvent as i32);
    assert_eq!(found[0].remaining, 1);

    // The same ciphertext in JSON, as WeChat's JSON data format sends it; a retry of the first
    // (same CreateTime), so it changes nothing.
    let json_body = json!({"ToUserName": "gh_123456789abc", "Encrypt": encrypt}).to_string();
    assert_eq!(
        push.post(&query, json_body).await,
        (200, "success".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(push.subscriptions_of(&openid).await[0].remaining, 1);
}

#[tokio::test]
async fn a_push_failing_any_check_is_refused_and_nothing_is_recorded() {
    let push = start(PushMode::Safe).await;
    let openid = openid(2);
    let message = popup_xml(&openid, 1_700_000_200, &[(ONE_TIME, "accept")]);
    let (timestamp, nonce) = (now(), "5151");
    let timestamp = timestamp.as_str();
    let encrypted_for = |appid: &str| {
        let vectors = vectors(timestamp, nonce, Some((&message, appid)));
        let encrypt = vectors.encrypt.unwrap();
        (
            vectors.signature,
            vectors.msg_signature.unwrap(),
            format!("<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
        )
    };
    let (signature, msg_signature, body) = encrypted_for("wxsomeoneelse00001");
    let query = |signature: &str, msg_signature: &str| {
        vec![
            ("signature", signature.to_owned()),
            ("timestamp", timestamp.to_owned()),
            ("nonce", nonce.to_owned()),
            ("encrypt_type", "aes".to_owned()),
            ("msg_signature", msg_signature.to_owned()),
        ]
    };
    let post = |query: Vec<(&'static str, String)>, body: String| {
        let push = &push;
        async move {
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            push.post(&query, body).await.0
        }
    };
    // Sealed for another appid: decrypts, but is not ours.
    assert_eq!(post(query(&signature, &msg_signature), body).await, 400);
    let (signature, msg_signature, body) = encrypted_for(DEFAULT_APPID);
    // A forged signature, a forged msg_signature, no signature at all.
    let forged = "0".repeat(40);
    assert_eq!(
        post(query(&forged, &msg_signature), body.clone()).await,
        401
    );
    assert_eq!(post(query(&signature, &forged), body.clone()).await, 401);
    assert_eq!(post(Vec::new(), body.clone()).await, 401);
    // Genuinely signed, but an hour ago: a replay.
    let hour_ago = (timestamp.parse::<u64>().unwrap() - 3_600).to_string();
    let old = vectors(&hour_ago, nonce, Some((&message, DEFAULT_APPID)));
    let stale_query = vec![
        ("signature", old.signature),
        ("timestamp", hour_ago),
        ("nonce", nonce.to_owned()),
        ("encrypt_type", "aes".to_owned()),
        ("msg_signature", old.msg_signature.unwrap()),
    ];
    let stale_body = format!(
        "<xml><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        old.encrypt.unwrap()
    );
    assert_eq!(post(stale_query, stale_body).await, 401);
    // The body tampered with after signing.
    let tampered = body.replacen("<Encrypt><![CDATA[", "<Encrypt><![CDATA[AAAA", 1);
    assert_eq!(post(query(&signature, &msg_signature), tampered).await, 401);
    // Plaintext, while the app's mode is safe.
    let plain_query = vec![
        ("signature", signature.clone()),
        ("timestamp", timestamp.to_owned()),
        ("nonce", nonce.to_owned()),
    ];
    assert_eq!(post(plain_query, message.clone()).await, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        push.subscriptions_of(&openid).await.is_empty(),
        "nothing recorded"
    );
    // The genuine push still goes through afterwards.
    assert_eq!(post(query(&signature, &msg_signature), body).await, 200);
    assert_eq!(push.wait_for(&openid, 1).await[0].remaining, 1);
}

#[tokio::test]
async fn wechat_retries_of_one_push_are_applied_once() {
    let push = start(PushMode::Compatible).await;
    let openid = openid(3);
    let message = popup_xml(&openid, 1_700_000_300, &[(ONE_TIME, "accept")]);
    for attempt in 0..3 {
        // WeChat signs each attempt afresh; the event (and its CreateTime) is the same.
        let nonce = format!("30{attempt}");
        assert_eq!(push.post_plain(&message, &nonce).await.0, 200);
    }
    push.wait_for(&openid, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(push.subscriptions_of(&openid).await[0].remaining, 1);
    // A later tap (a new CreateTime) is a new grant.
    let later = popup_xml(&openid, 1_700_000_400, &[(ONE_TIME, "accept")]);
    assert_eq!(push.post_plain(&later, "31").await.0, 200);
    let mut remaining = 0;
    for _ in 0..500 {
        remaining = push.subscriptions_of(&openid).await[0].remaining;
        if remaining == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, 2);
}

#[tokio::test]
async fn every_body_shape_wechat_sends_is_understood() {
    let push = start(PushMode::Compatible).await;
    let long_term = wechat_notify_sandbox::templates::SERVICE_NOTICE;
    let mut watch = push
        .subscriptions
        .clone()
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    // XML, two templates in one popup event.
    let first = openid(10);
    let xml = popup_xml(
        &first,
        1_700_001_000,
        &[(ONE_TIME, "accept"), (long_term, "reject")],
    );
    assert_eq!(push.post_plain(&xml, "1").await.0, 200);
    let found = push.wait_for(&first, 2).await;
    let statuses: Vec<(&str, i32)> = found
        .iter()
        .map(|entry| (entry.template_id.as_str(), entry.status))
        .collect();
    let mut expected = vec![
        (ONE_TIME, pb::SubscriptionStatus::Accepted as i32),
        (long_term, pb::SubscriptionStatus::Rejected as i32),
    ];
    expected.sort();
    assert_eq!(statuses, expected);

    // JSON: `List` as one object with numbers as strings, and as an array with numbers.
    let second = openid(11);
    let object = json!({
        "ToUserName": "gh_123456789abc", "FromUserName": second, "CreateTime": "1700001001",
        "MsgType": "event", "Event": "subscribe_msg_popup_event",
        "List": {"TemplateId": ONE_TIME, "SubscribeStatusString": "accept", "PopupScene": "0"}
    });
    assert_eq!(push.post_plain(&object.to_string(), "2").await.0, 200);
    assert_eq!(push.wait_for(&second, 1).await[0].remaining, 1);
    let third = openid(12);
    let array = json!({
        "ToUserName": "gh_123456789abc", "FromUserName": third, "CreateTime": 1700001002,
        "MsgType": "event", "Event": "subscribe_msg_popup_event",
        "List": [
            {"TemplateId": ONE_TIME, "SubscribeStatusString": "accept", "PopupScene": 0},
            {"TemplateId": long_term, "SubscribeStatusString": "accept", "PopupScene": 0}
        ]
    });
    assert_eq!(push.post_plain(&array.to_string(), "3").await.0, 200);
    assert_eq!(push.wait_for(&third, 2).await.len(), 2);

    // A change event (JSON, List object) turns the one-time grant off.
    let change = json!({
        "ToUserName": "gh_123456789abc", "FromUserName": second, "CreateTime": "1700001003",
        "MsgType": "event", "Event": "subscribe_msg_change_event",
        "List": {"TemplateId": ONE_TIME, "SubscribeStatusString": "reject"}
    });
    assert_eq!(push.post_plain(&change.to_string(), "4").await.0, 200);

    // Delivery results: XML, and JSON with MsgID and ErrorCode as strings (above 2^53).
    let sent_xml = format!(
        "<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName>\
         <FromUserName><![CDATA[{first}]]></FromUserName><CreateTime>1700001004</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event>\
         <SubscribeMsgSentEvent><List><TemplateId><![CDATA[{ONE_TIME}]]></TemplateId>\
         <MsgID>1864323726461255680</MsgID><ErrorCode>0</ErrorCode>\
         <ErrorStatus><![CDATA[success]]></ErrorStatus></List></SubscribeMsgSentEvent></xml>"
    );
    assert_eq!(push.post_plain(&sent_xml, "5").await.0, 200);
    let sent_json = json!({
        "ToUserName": "gh_123456789abc", "FromUserName": third, "CreateTime": "1700001005",
        "MsgType": "event", "Event": "subscribe_msg_sent_event",
        "List": {"TemplateId": ONE_TIME, "MsgID": "9007199254740993", "ErrorCode": "10001",
                 "ErrorStatus": "user blocked"}
    });
    assert_eq!(push.post_plain(&sent_json.to_string(), "6").await.0, 200);

    // An event the service does not use is acknowledged.
    let other = format!(
        "<xml><ToUserName>gh_1</ToUserName><FromUserName>{first}</FromUserName>\
         <CreateTime>1700001006</CreateTime><MsgType>text</MsgType><Content>hi</Content></xml>"
    );
    assert_eq!(
        push.post_plain(&other, "7").await,
        (200, "success".to_owned())
    );
    // Not a push at all.
    assert_eq!(push.post_plain("hello", "8").await.0, 400);

    let mut deliveries = Vec::new();
    let mut revoked = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while deliveries.len() < 2 || !revoked {
        let event = tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        match event.event.unwrap() {
            pb::event::Event::DeliveryResult(delivery) => deliveries.push(delivery),
            pb::event::Event::SubscriptionChanged(change) => {
                let entry = change.subscription.unwrap();
                if change.openid == second
                    && entry.source == pb::SubscriptionSource::ChangeEvent as i32
                {
                    assert_eq!(entry.status, pb::SubscriptionStatus::Rejected as i32);
                    assert_eq!(entry.remaining, 0);
                    revoked = true;
                }
            }
            pb::event::Event::Lost(lost) => panic!("lost {} events", lost.count),
        }
    }
    deliveries.sort_by_key(|delivery| delivery.msgid);
    assert_eq!(deliveries[0].msgid, 9_007_199_254_740_993);
    assert_eq!(
        (deliveries[0].errcode, deliveries[0].status.as_str()),
        (10001, "user blocked")
    );
    assert_eq!(deliveries[1].msgid, 1_864_323_726_461_255_680);
    assert_eq!(
        (deliveries[1].openid.as_str(), deliveries[1].errcode),
        (first.as_str(), 0)
    );
}
