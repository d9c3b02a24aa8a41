//! The client against a local HTTP server: the exact requests, every kind of answer, failing
//! over between API bases, and no secret in any error.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{Method, StatusCode};
use serde_json::json;
use url::Url;

use super::{fake::*, *};
use crate::secret::Secret;

const TOKEN: &str = "ACCESS-TOKEN-abc123";
const APP_SECRET: &str = "APP-SECRET-xyz789";

fn client() -> WechatClient {
    WechatClient::new(&ClientOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(200),
    })
    .unwrap()
}

fn app(mode: TokenMode, bases: Vec<Url>) -> WechatApi {
    client().app("wxAPPID".into(), Secret::new(APP_SECRET), mode, bases)
}

fn message() -> SubscribeMessage {
    SubscribeMessage {
        touser: "oUSER".into(),
        template_id: "TMPL".into(),
        page: Some("pages/index?id=1".into()),
        data: BTreeMap::from([("thing1".to_string(), "hello".to_string())]),
        miniprogram_state: MiniprogramState::Developer,
        lang: None,
    }
}

/// Neither the access token nor the AppSecret may appear in an error's Display or Debug.
fn assert_no_secrets(error: &WechatError) {
    for text in [format!("{error}"), format!("{error:?}")] {
        assert!(!text.contains(TOKEN), "token leaked: {text}");
        assert!(!text.contains(APP_SECRET), "secret leaked: {text}");
    }
}

#[tokio::test]
async fn send_posts_the_exact_body_and_token_query() {
    let fake = Fake::json(json!({"errcode": 0, "errmsg": "ok", "msgid": 12345})).await;
    let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
        .send(&Secret::new(TOKEN), &message())
        .await;
    assert_eq!(attempt.requests, 1);
    assert_eq!(attempt.result.unwrap(), Delivered { msgid: Some(12345) });
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, "/cgi-bin/message/subscribe/send");
    assert_eq!(
        seen[0].query_pairs(),
        BTreeMap::from([("access_token".to_string(), TOKEN.to_string())])
    );
    assert_eq!(
        seen[0].json(),
        json!({
            "touser": "oUSER",
            "template_id": "TMPL",
            "page": "pages/index?id=1",
            "data": {"thing1": {"value": "hello"}},
            "miniprogram_state": "developer",
        })
    );
}

#[tokio::test]
async fn base_with_a_path_prefix_keeps_it() {
    let fake = Fake::json(json!({"errcode": 0})).await;
    let base = fake.base.join("/prefix/").unwrap();
    let attempt = app(TokenMode::Stable, vec![base])
        .send(&Secret::new(TOKEN), &message())
        .await;
    attempt.result.unwrap();
    assert_eq!(
        fake.requests()[0].path,
        "/prefix/cgi-bin/message/subscribe/send"
    );
}

#[tokio::test]
async fn msgid_above_2_pow_53_is_exact() {
    // 2^53 + 1 cannot be represented in an f64; u64::MAX neither.
    for msgid in [3248682510344192008_u64, (1 << 53) + 1, u64::MAX] {
        let body = format!(r#"{{"errcode":0,"errmsg":"ok","msgid":{msgid}}}"#);
        let fake = Fake::start(Duration::ZERO, move |_| (StatusCode::OK, body.clone())).await;
        let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await;
        assert_eq!(attempt.result.unwrap().msgid, Some(msgid));
    }
}

#[tokio::test]
async fn msgid_as_string_absent_or_zero() {
    let cases = [
        (
            json!({"errcode": 0, "msgid": "3248682510344192008"}),
            Some(3248682510344192008),
        ),
        (json!({"errcode": 0, "errmsg": "ok"}), None),
        (json!({"errcode": 0, "msgid": 0}), None),
        (json!({"errcode": 0, "msgid": ""}), None),
        // Delivered even when the msgid is unusable: never an error after errcode 0.
        (json!({"errcode": 0, "msgid": {"weird": true}}), None),
        (json!({"errcode": 0, "msgid": -5}), None),
        (json!({"errcode": 0, "msgid": 1.5}), None),
        (json!({"errcode": 0, "msgid": [1, 2]}), None),
        (json!({"errcode": 0, "msgid": true}), None),
        (json!({"errcode": 0, "msgid": null}), None),
        (json!({"errcode": 0, "msgid": " 42 "}), Some(42)),
    ];
    for (body, expected) in cases {
        let fake = Fake::json(body.clone()).await;
        let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await;
        assert_eq!(attempt.result.unwrap().msgid, expected, "{body}");
    }
}

#[tokio::test]
async fn errcode_is_parsed_with_its_rid() {
    let fake = Fake::json(json!({
        "errcode": 47003,
        "errmsg": "argument invalid! data.thing1.value rid: 6405a1b2-0b8f1a2c-3d4e5f60"
    }))
    .await;
    let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
        .send(&Secret::new(TOKEN), &message())
        .await;
    let error = attempt.result.unwrap_err();
    assert_eq!(
        error,
        WechatError::Api {
            endpoint: Endpoint::Send,
            errcode: 47003,
            errmsg: "argument invalid! data.thing1.value rid: 6405a1b2-0b8f1a2c-3d4e5f60".into(),
            rid: Some("6405a1b2-0b8f1a2c-3d4e5f60".into()),
        }
    );
    assert_eq!(error.class(), Some(ErrorClass::InvalidRequest));
    assert_no_secrets(&error);
}

#[tokio::test]
async fn an_errmsg_with_escapes_is_read_whole() {
    // Escapes cannot be borrowed from the body: the errmsg is unescaped into its own text.
    let fake = Fake::json(json!({
        "errcode": 43101,
        "errmsg": "user refuse to accept the msg \"订阅\"\n rid: 6405a1b2-0b8f1a2c-3d4e5f60"
    }))
    .await;
    let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
        .send(&Secret::new(TOKEN), &message())
        .await;
    match attempt.result.unwrap_err() {
        WechatError::Api { errmsg, rid, .. } => {
            assert!(errmsg.contains("\"订阅\"\n"), "{errmsg}");
            assert_eq!(rid.as_deref(), Some("6405a1b2-0b8f1a2c-3d4e5f60"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_error_status_is_not_failed_over() {
    let fake = Fake::start(Duration::ZERO, |_| (StatusCode::BAD_GATEWAY, "bad".into())).await;
    let second = Fake::json(json!({"errcode": 0})).await;
    let attempt = app(
        TokenMode::Stable,
        vec![fake.base.clone(), second.base.clone()],
    )
    .send(&Secret::new(TOKEN), &message())
    .await;
    assert_eq!(attempt.requests, 1);
    let error = attempt.result.unwrap_err();
    assert_eq!(
        error,
        WechatError::HttpStatus {
            endpoint: Endpoint::Send,
            status: 502
        }
    );
    assert_no_secrets(&error);
    assert!(second.requests().is_empty());
}

#[tokio::test]
async fn non_json_body_is_invalid_response() {
    let fake = Fake::start(Duration::ZERO, |_| {
        (
            StatusCode::OK,
            format!("<html>oops access_token={TOKEN}</html>"),
        )
    })
    .await;
    let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
        .send(&Secret::new(TOKEN), &message())
        .await;
    let error = attempt.result.unwrap_err();
    assert!(
        matches!(
            error,
            WechatError::InvalidResponse {
                endpoint: Endpoint::Send,
                ..
            }
        ),
        "{error:?}"
    );
    assert_no_secrets(&error);
    // JSON that is not an object (serde would echo the value) is scrubbed too.
    let fake = Fake::json(json!(TOKEN)).await;
    let error = app(TokenMode::Stable, vec![fake.base.clone()])
        .send(&Secret::new(TOKEN), &message())
        .await
        .result
        .unwrap_err();
    assert!(
        matches!(error, WechatError::InvalidResponse { .. }),
        "{error:?}"
    );
    assert_no_secrets(&error);
}

#[tokio::test]
async fn refused_connection_fails_over_to_the_next_base() {
    let second = Fake::json(json!({"errcode": 0, "msgid": 7})).await;
    let attempt = app(
        TokenMode::Stable,
        vec![closed_base().await, second.base.clone()],
    )
    .send(&Secret::new(TOKEN), &message())
    .await;
    assert_eq!(attempt.requests, 2);
    assert_eq!(attempt.result.unwrap().msgid, Some(7));
    assert_eq!(second.requests().len(), 1);
}

#[tokio::test]
async fn all_bases_refusing_is_unreachable() {
    let attempt = app(
        TokenMode::Stable,
        vec![closed_base().await, closed_base().await],
    )
    .send(&Secret::new(TOKEN), &message())
    .await;
    assert_eq!(attempt.requests, 2);
    let error = attempt.result.unwrap_err();
    assert!(
        matches!(
            error,
            WechatError::Unreachable {
                endpoint: Endpoint::Send,
                ..
            }
        ),
        "{error:?}"
    );
    assert_no_secrets(&error);
    // The last refusal is kept as the source, not flattened into text.
    let chain = ErrorChain(&error).to_string();
    assert!(
        chain.starts_with("wechat send unreachable: no api base accepted a connection (2 tried): ")
            && chain.contains("refused"),
        "{chain}"
    );

    let attempt = app(TokenMode::Stable, vec![])
        .send(&Secret::new(TOKEN), &message())
        .await;
    assert_eq!(attempt.requests, 0);
    assert!(matches!(
        attempt.result,
        Err(WechatError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn timeout_after_connecting_is_outcome_unknown_and_not_failed_over() {
    let slow = Fake::start(Duration::from_secs(2), |_| {
        (StatusCode::OK, r#"{"errcode":0}"#.into())
    })
    .await;
    let second = Fake::json(json!({"errcode": 0})).await;
    let attempt = app(
        TokenMode::Stable,
        vec![slow.base.clone(), second.base.clone()],
    )
    .send(&Secret::new(TOKEN), &message())
    .await;
    assert_eq!(attempt.requests, 1);
    let error = attempt.result.unwrap_err();
    assert!(
        matches!(
            error,
            WechatError::OutcomeUnknown {
                endpoint: Endpoint::Send,
                ref source,
            } if std::error::Error::source(source).is_some()
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "wechat send outcome unknown: no answer within the request timeout"
    );
    assert_no_secrets(&error);
    assert_eq!(
        slow.requests().len(),
        1,
        "the request reached the first base"
    );
    assert!(
        second.requests().is_empty(),
        "the second base must not be tried"
    );
}

/// A raw TCP server that reads one request, writes `reply` and closes the connection.
async fn raw_base(reply: &'static str) -> (Url, Arc<Mutex<u32>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            *counter.lock().unwrap() += 1;
            let mut buffer = vec![0; 64 * 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.write_all(reply.as_bytes()).await;
            drop(stream);
        }
    });
    (base, accepted)
}

#[tokio::test]
async fn connection_closed_after_the_request_is_outcome_unknown() {
    let second = Fake::json(json!({"errcode": 0})).await;
    for reply in [
        // closed without any answer
        "",
        // answer cut short: the body never completes
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"errcode\"",
    ] {
        let (base, accepted) = raw_base(reply).await;
        let attempt = app(TokenMode::Stable, vec![base, second.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await;
        assert_eq!(attempt.requests, 1);
        let error = attempt.result.unwrap_err();
        assert!(
            matches!(
                error,
                WechatError::OutcomeUnknown {
                    endpoint: Endpoint::Send,
                    ..
                }
            ),
            "{reply:?}: {error:?}"
        );
        assert_no_secrets(&error);
        assert_eq!(*accepted.lock().unwrap(), 1, "sent exactly once");
    }
    assert!(
        second.requests().is_empty(),
        "the second base must not be tried"
    );
}

#[tokio::test]
async fn stable_token_fetch() {
    let fake = Fake::json(json!({"access_token": TOKEN, "expires_in": 5400})).await;
    let api = app(TokenMode::Stable, vec![fake.base.clone()]);
    let fetched = api.fetch_token(true).await.unwrap();
    assert_eq!(fetched.token.expose(), TOKEN);
    assert_eq!(fetched.expires_in, Duration::from_secs(5400));
    assert!(!format!("{fetched:?}").contains(TOKEN));
    let seen = &fake.requests()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/cgi-bin/stable_token");
    assert_eq!(seen.query, None);
    assert_eq!(
        seen.json(),
        json!({
            "grant_type": "client_credential",
            "appid": "wxAPPID",
            "secret": APP_SECRET,
            "force_refresh": true,
        })
    );
    api.fetch_token(false).await.unwrap();
    assert_eq!(fake.requests()[1].json()["force_refresh"], false);
}

#[tokio::test]
async fn classic_token_fetch() {
    let fake = Fake::json(json!({"access_token": TOKEN, "expires_in": 7200})).await;
    let fetched = app(TokenMode::Classic, vec![fake.base.clone()])
        .fetch_token(false)
        .await
        .unwrap();
    assert_eq!(fetched.expires_in, Duration::from_secs(7200));
    let seen = &fake.requests()[0];
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/cgi-bin/token");
    assert_eq!(
        seen.query_pairs(),
        BTreeMap::from([
            ("grant_type".to_string(), "client_credential".to_string()),
            ("appid".to_string(), "wxAPPID".to_string()),
            ("secret".to_string(), APP_SECRET.to_string()),
        ])
    );
}

#[tokio::test]
async fn token_fetch_errors() {
    let cases = [
        json!({"errcode": 40013, "errmsg": "invalid appid rid: r-1"}),
        json!({"errcode": 40001, "errmsg": format!("invalid credential {APP_SECRET}")}),
        json!({"access_token": TOKEN}),
        json!({"access_token": TOKEN, "expires_in": 0}),
        json!({"access_token": TOKEN, "expires_in": 10_000_000}),
        json!({"access_token": TOKEN, "expires_in": 7.5}),
        json!({"access_token": "", "expires_in": 7200}),
        json!({"expires_in": 7200}),
        json!([TOKEN]),
    ];
    for mode in [TokenMode::Stable, TokenMode::Classic] {
        for body in &cases {
            let fake = Fake::json(body.clone()).await;
            let error = app(mode, vec![fake.base.clone()])
                .fetch_token(false)
                .await
                .unwrap_err();
            assert_eq!(error.endpoint(), Endpoint::Token, "{body}");
            assert_no_secrets(&error);
            if body.get("errcode").is_some() {
                assert_eq!(error.class(), Some(ErrorClass::Credential), "{body}");
            } else {
                assert!(
                    matches!(error, WechatError::InvalidResponse { .. }),
                    "{body}: {error:?}"
                );
            }
        }
    }
    let fake = Fake::json(json!({"errcode": 40013, "errmsg": "invalid appid rid: r-1"})).await;
    let error = app(TokenMode::Stable, vec![fake.base.clone()])
        .fetch_token(false)
        .await
        .unwrap_err();
    assert!(
        matches!(error, WechatError::Api { errcode: 40013, ref rid, .. } if rid.as_deref() == Some("r-1"))
    );
    // A string expires_in is accepted (honoured as given).
    let fake = Fake::json(json!({"access_token": TOKEN, "expires_in": "300"})).await;
    let fetched = app(TokenMode::Stable, vec![fake.base.clone()])
        .fetch_token(false)
        .await
        .unwrap();
    assert_eq!(fetched.expires_in, Duration::from_secs(300));
}

#[tokio::test]
async fn token_fetch_fails_over_and_times_out_like_send() {
    let second = Fake::json(json!({"access_token": TOKEN, "expires_in": 7200})).await;
    for mode in [TokenMode::Stable, TokenMode::Classic] {
        app(mode, vec![closed_base().await, second.base.clone()])
            .fetch_token(false)
            .await
            .unwrap();
    }
    assert_eq!(second.requests().len(), 2);

    let slow = Fake::start(Duration::from_secs(2), |_| (StatusCode::OK, "{}".into())).await;
    for mode in [TokenMode::Stable, TokenMode::Classic] {
        let error = app(mode, vec![slow.base.clone()])
            .fetch_token(false)
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            WechatError::OutcomeUnknown {
                endpoint: Endpoint::Token,
                ..
            }
        ));
        assert_no_secrets(&error);
        let error = app(mode, vec![closed_base().await])
            .fetch_token(false)
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            WechatError::Unreachable {
                endpoint: Endpoint::Token,
                ..
            }
        ));
        assert_no_secrets(&error);
    }
    let failing = Fake::start(Duration::ZERO, |_| {
        (StatusCode::INTERNAL_SERVER_ERROR, String::new())
    })
    .await;
    let error = app(TokenMode::Classic, vec![failing.base.clone()])
        .fetch_token(false)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        WechatError::HttpStatus {
            endpoint: Endpoint::Token,
            status: 500
        }
    );
}

#[tokio::test]
async fn templates_are_listed_with_the_token_in_the_query() {
    let fake = Fake::json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "data": [{
            "priTmplId": "T1",
            "title": "会议提醒",
            "content": "会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n",
            "example": "会议时间:2019年10月1日\n会议地点:A\n",
            "type": 2
        }]
    }))
    .await;
    let base = fake.base.join("/prefix/").unwrap();
    let templates = app(TokenMode::Stable, vec![closed_base().await, base])
        .templates(&Secret::new(TOKEN))
        .await
        .unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].id, "T1");
    assert_eq!(templates[0].keywords, ["date2", "thing1"]);
    assert_eq!(templates[0].kind, TemplateKind::OneTime);
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].path, "/prefix/wxaapi/newtmpl/gettemplate");
    assert_eq!(
        seen[0].query_pairs(),
        BTreeMap::from([("access_token".to_string(), TOKEN.to_string())])
    );
}

#[tokio::test]
async fn template_list_errors_carry_the_templates_endpoint_and_no_secrets() {
    let fake = Fake::json(json!({
        "errcode": 42001,
        "errmsg": format!("access_token expired {TOKEN} rid: 6405a1b2-0b8f1a2c")
    }))
    .await;
    let error = app(TokenMode::Stable, vec![fake.base.clone()])
        .templates(&Secret::new(TOKEN))
        .await
        .unwrap_err();
    assert_eq!(error.endpoint(), Endpoint::Templates);
    assert_eq!(error.errcode(), Some(42001));
    assert_eq!(error.class(), Some(ErrorClass::TokenRejected));
    assert_no_secrets(&error);

    let fake = Fake::json(json!({"errcode": 48001, "errmsg": "api unauthorized"})).await;
    let error = app(TokenMode::Stable, vec![fake.base.clone()])
        .templates(&Secret::new(TOKEN))
        .await
        .unwrap_err();
    assert_eq!(error.class(), Some(ErrorClass::Other));

    let failing = Fake::start(Duration::ZERO, |_| (StatusCode::BAD_GATEWAY, TOKEN.into())).await;
    let error = app(TokenMode::Stable, vec![failing.base.clone()])
        .templates(&Secret::new(TOKEN))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        WechatError::HttpStatus {
            endpoint: Endpoint::Templates,
            status: 502
        }
    );
    let garbled = Fake::start(Duration::ZERO, |_| {
        (StatusCode::OK, format!("{{\"data\": \"{TOKEN}\"}}"))
    })
    .await;
    let error = app(TokenMode::Stable, vec![garbled.base.clone()])
        .templates(&Secret::new(TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            WechatError::InvalidResponse {
                endpoint: Endpoint::Templates,
                ..
            }
        ),
        "{error:?}"
    );
    assert_no_secrets(&error);
}

#[tokio::test]
async fn transport_errors_never_carry_the_url() {
    // Talk to reqwest directly to prove the raw error would have leaked, and ours does not.
    let base = closed_base().await;
    let url = format!("{base}cgi-bin/token?secret={APP_SECRET}&access_token={TOKEN}");
    let raw = reqwest::get(&url).await.unwrap_err();
    assert!(
        format!("{raw}").contains(APP_SECRET),
        "reqwest itself prints the url"
    );
    let error = TransportError::new(raw);
    for text in [
        error.to_string(),
        format!("{error:?}"),
        ErrorChain(&error).to_string(),
    ] {
        assert!(
            !text.contains(APP_SECRET) && !text.contains(TOKEN),
            "{text}"
        );
    }
}
