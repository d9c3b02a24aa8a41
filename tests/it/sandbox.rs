//! The sandbox as its users see it: WeChat's endpoints over real HTTP on 127.0.0.1:0, the
//! control API, and the Rust API. Token timing rules run in-process on a paused clock.

use std::time::Duration;

use axum::{Router, body::Body, http::Request};
use reqwest::Client;
use serde_json::{Value, json};
use tower::ServiceExt;
use wechat_notify_sandbox::{
    AppCredentials, DEFAULT_APPID, DEFAULT_SECRET, DEMO_OPENID, Fault, Grant, Sandbox,
    SandboxConfig, SandboxServer, Template, TemplateKind, cli,
};

const COURSE: &str = "sandbox-course-reminder";
const SERVICE_NOTICE: &str = "sandbox-service-notice";
const ORDER_STATUS: &str = "sandbox-order-status";
const OTHER_OPENID: &str = "oOtherUser0000000000000000_1";

// ---------------------------------------------------------------------------------------------
// helpers

struct Harness {
    server: SandboxServer,
    http: Client,
}

impl Harness {
    async fn start(config: SandboxConfig) -> Harness {
        let server = Sandbox::new(config)
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Harness {
            server,
            http: Client::new(),
        }
    }

    fn sandbox(&self) -> &Sandbox {
        self.server.sandbox()
    }

    fn url(&self, path: &str) -> String {
        self.server.base_url().join(path).unwrap().to_string()
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST {path}");
        response.json().await.unwrap()
    }

    async fn stable_token(&self, force_refresh: bool) -> Value {
        self.post(
            "cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": DEFAULT_APPID,
                   "secret": DEFAULT_SECRET, "force_refresh": force_refresh}),
        )
        .await
    }

    async fn token(&self) -> String {
        let answer = self.stable_token(false).await;
        answer["access_token"].as_str().unwrap().to_string()
    }

    async fn send_raw(&self, token: &str, body: String) -> reqwest::Response {
        self.http
            .post(self.url("cgi-bin/message/subscribe/send"))
            .query(&[("access_token", token)])
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn send(&self, token: &str, body: Value) -> Value {
        let response = self.send_raw(token, body.to_string()).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

fn course_message(openid: &str) -> Value {
    json!({
        "touser": openid,
        "template_id": COURSE,
        "page": "pages/course/detail?id=42",
        "data": {
            "phrase1": {"value": "张三"},
            "date5": {"value": "2019年10月1日 15:01"},
            "phrase4": {"value": "李老师"},
        },
    })
}

fn service_message(openid: &str) -> Value {
    json!({
        "touser": openid,
        "template_id": SERVICE_NOTICE,
        "data": {
            "thing1": {"value": "护照办理"},
            "phrase2": {"value": "已受理"},
            "date3": {"value": "2019年10月1日"},
        },
    })
}

fn errcode(answer: &Value) -> i64 {
    answer["errcode"].as_i64().unwrap_or(0)
}

/// The errmsg without its ` rid: ...` suffix, checking the rid is there and well-formed.
fn message(answer: &Value) -> String {
    let errmsg = answer["errmsg"].as_str().unwrap();
    let (message, rid) = errmsg
        .split_once(" rid: ")
        .unwrap_or_else(|| panic!("no rid in {errmsg:?}"));
    let parts: Vec<&str> = rid.split('-').collect();
    assert_eq!(parts.len(), 3, "rid {rid}");
    assert!(
        parts
            .iter()
            .all(|p| p.len() == 8 && p.chars().all(|c| c.is_ascii_hexdigit()))
    );
    message.to_string()
}

fn no_auto_accept() -> SandboxConfig {
    SandboxConfig {
        auto_accept: false,
        ..SandboxConfig::default()
    }
}

/// In-process call on the router (for paused-clock tests).
async fn call(router: &Router, method: &str, uri: &str, body: Option<Value>) -> Value {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn stable_in_process(router: &Router, force_refresh: bool) -> Value {
    let body = json!({"grant_type": "client_credential", "appid": DEFAULT_APPID,
                      "secret": DEFAULT_SECRET, "force_refresh": force_refresh});
    call(router, "POST", "/cgi-bin/stable_token", Some(body)).await
}

async fn classic_in_process(router: &Router) -> String {
    let uri = format!(
        "/cgi-bin/token?grant_type=client_credential&appid={DEFAULT_APPID}&secret={DEFAULT_SECRET}"
    );
    let answer = call(router, "GET", &uri, None).await;
    answer["access_token"].as_str().unwrap().to_string()
}

async fn send_in_process(router: &Router, token: &str) -> i64 {
    let uri = format!("/cgi-bin/message/subscribe/send?access_token={token}");
    errcode(&call(router, "POST", &uri, Some(course_message(DEMO_OPENID))).await)
}

async fn advance(secs: u64) {
    tokio::time::advance(Duration::from_secs(secs)).await;
}

// ---------------------------------------------------------------------------------------------
// tokens

#[tokio::test(start_paused = true)]
async fn stable_token_is_reused_with_falling_expires_in() {
    let router = Sandbox::default().router();
    let first = stable_in_process(&router, false).await;
    assert_eq!(first["expires_in"], 7200);
    assert!(first.get("errcode").is_none());
    let token = first["access_token"].as_str().unwrap();
    assert!(token.len() >= 64);
    advance(100).await;
    let again = stable_in_process(&router, false).await;
    assert_eq!(again["access_token"], token);
    assert_eq!(again["expires_in"], 7100);
}

#[tokio::test(start_paused = true)]
async fn stable_token_rolls_over_before_expiry_and_the_old_one_lives_until_its_own() {
    let router = Sandbox::default().router();
    let old = stable_in_process(&router, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    advance(6901).await; // 299 s left: inside the 5-minute rollover window
    let rolled = stable_in_process(&router, false).await;
    let new = rolled["access_token"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(rolled["expires_in"], 7200);
    assert_eq!(send_in_process(&router, &old).await, 0);
    advance(299).await;
    assert_eq!(send_in_process(&router, &old).await, 42001);
    assert_eq!(send_in_process(&router, new).await, 0);
}

#[tokio::test(start_paused = true)]
async fn force_refresh_revokes_the_old_token_at_most_every_30_seconds() {
    let sandbox = Sandbox::default();
    let router = sandbox.router();
    let old = stable_in_process(&router, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let forced = stable_in_process(&router, true).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(forced, old);
    assert_eq!(send_in_process(&router, &old).await, 40001);
    assert_eq!(send_in_process(&router, &forced).await, 0);

    advance(10).await;
    let within = stable_in_process(&router, true).await;
    assert_eq!(
        within["access_token"],
        forced.as_str(),
        "no refresh within 30 s"
    );
    assert_eq!(within["expires_in"], 7190);
    advance(25).await;
    let later = stable_in_process(&router, true).await;
    assert_ne!(later["access_token"], forced.as_str());
    assert_eq!(send_in_process(&router, &forced).await, 40001);
    assert_eq!(
        sandbox.stats().token_fetches[DEFAULT_APPID].force_refreshes,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn force_refresh_is_capped_at_20_a_day() {
    let router = Sandbox::default().router();
    for _ in 0..20 {
        assert!(stable_in_process(&router, true).await["access_token"].is_string());
        advance(31).await;
    }
    let capped = stable_in_process(&router, true).await;
    assert_eq!(errcode(&capped), 45009);
    // Normal mode keeps working.
    assert!(stable_in_process(&router, false).await["access_token"].is_string());
}

#[tokio::test(start_paused = true)]
async fn classic_token_is_superseded_after_the_overlap_window() {
    let router = Sandbox::default().router();
    let first = classic_in_process(&router).await;
    let second = classic_in_process(&router).await;
    assert_ne!(first, second);
    advance(299).await;
    assert_eq!(send_in_process(&router, &first).await, 0);
    advance(2).await;
    assert_eq!(send_in_process(&router, &first).await, 40001);
    assert_eq!(send_in_process(&router, &second).await, 0);
}

#[tokio::test(start_paused = true)]
async fn classic_and_stable_tokens_are_isolated() {
    let router = Sandbox::default().router();
    let stable = stable_in_process(&router, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let classic = classic_in_process(&router).await;
    classic_in_process(&router).await;
    stable_in_process(&router, true).await; // revokes stable tokens only
    advance(600).await;
    assert_eq!(send_in_process(&router, &stable).await, 40001); // by the force refresh
    assert_eq!(send_in_process(&router, &classic).await, 40001); // by the second fetch

    let router = Sandbox::default().router();
    let stable = stable_in_process(&router, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    classic_in_process(&router).await;
    classic_in_process(&router).await;
    advance(600).await;
    assert_eq!(send_in_process(&router, &stable).await, 0);
}

#[tokio::test(start_paused = true)]
async fn token_lifetime_is_configurable_and_expiry_answers_42001() {
    let router = Sandbox::new(SandboxConfig {
        token_lifetime: Duration::from_secs(600),
        stable_rollover: Duration::from_secs(60),
        ..SandboxConfig::default()
    })
    .router();
    let answer = stable_in_process(&router, false).await;
    assert_eq!(answer["expires_in"], 600);
    let token = answer["access_token"].as_str().unwrap().to_string();
    advance(600).await;
    assert_eq!(send_in_process(&router, &token).await, 42001);
}

#[tokio::test]
async fn bad_credentials_get_wechat_errcodes() {
    let h = Harness::start(SandboxConfig::default()).await;
    let classic = |query: &str| format!("cgi-bin/token?{query}");
    let cases = [
        ("appid=wxsandbox000000001&secret=sandbox-secret", 40002),
        ("grant_type=password&appid=x&secret=y", 40002),
        ("grant_type=client_credential&secret=sandbox-secret", 41002),
        (
            "grant_type=client_credential&appid=wxsandbox000000001",
            41004,
        ),
        (
            "grant_type=client_credential&appid=wxnobody&secret=x",
            40013,
        ),
        (
            "grant_type=client_credential&appid=wxsandbox000000001&secret=wrong",
            40125,
        ),
    ];
    for (query, expected) in cases {
        let answer = h.get(&classic(query)).await;
        assert_eq!(errcode(&answer), expected, "{query}");
        message(&answer);
        assert!(answer.get("access_token").is_none());
    }
    let wrong = h
        .post(
            "cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": DEFAULT_APPID, "secret": "nope"}),
        )
        .await;
    assert_eq!(errcode(&wrong), 40125);
    let unknown = h
        .post(
            "cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": "wxnobody", "secret": "x"}),
        )
        .await;
    assert_eq!(errcode(&unknown), 40013);
    let not_json = h
        .http
        .post(h.url("cgi-bin/stable_token"))
        .body("grant_type=client_credential")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(errcode(&not_json), 47001);

    let ok = h
        .get(&classic(
            "grant_type=client_credential&appid=wxsandbox000000001&secret=sandbox-secret",
        ))
        .await;
    assert_eq!(ok["expires_in"], 7200);
    let stats = h.sandbox().stats();
    assert_eq!(stats.token_fetches[DEFAULT_APPID].classic, 4);
    assert_eq!(stats.token_fetches[DEFAULT_APPID].stable, 1);
    assert!(!stats.token_fetches.contains_key("wxnobody"));
}

#[tokio::test]
async fn tokens_of_different_apps_differ_and_templates_are_per_app() {
    let mut config = SandboxConfig::default();
    config
        .apps
        .push(AppCredentials::new("wxsecondapp0000002", "second-secret"));
    config.templates.push(
        Template::new(
            "second-only",
            "到货提醒",
            "商品:{{thing1.DATA}}\n",
            TemplateKind::OneTime,
        )
        .for_apps(&["wxsecondapp0000002"]),
    );
    let h = Harness::start(config).await;
    let first = h.token().await;
    let second = h
        .post(
            "cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": "wxsecondapp0000002",
                   "secret": "second-secret"}),
        )
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first[..11], second[..11], "app tag in the token");

    let message = json!({"touser": DEMO_OPENID, "template_id": "second-only",
                         "data": {"thing1": {"value": "牛奶"}}});
    assert_eq!(errcode(&h.send(&first, message.clone()).await), 40037);
    assert_eq!(errcode(&h.send(&second, message).await), 0);
    assert_eq!(h.sandbox().inbox(None)[0].appid, "wxsecondapp0000002");

    let listed = h
        .get(&format!("wxaapi/newtmpl/gettemplate?access_token={first}"))
        .await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["priTmplId"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&"second-only"));
    // Several apps: the control API needs an appid.
    let response = h
        .http
        .post(h.url("sandbox/tokens/revoke"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

// ---------------------------------------------------------------------------------------------
// send rules

#[tokio::test]
async fn send_delivers_with_a_msgid_above_2_pow_53_as_a_json_number() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    let response = h
        .send_raw(&token, course_message(DEMO_OPENID).to_string())
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["errcode"], 0);
    assert_eq!(answer["errmsg"], "ok");
    let msgid = answer["msgid"].as_u64().expect("msgid is a json number");
    assert!(msgid > 1 << 53);
    assert!(text.contains(&format!("\"msgid\":{msgid}")));
    assert_ne!(
        msgid as f64 as u64, msgid,
        "an f64 round trip must break it"
    );

    let inbox = h.sandbox().inbox(Some(DEMO_OPENID));
    assert_eq!(inbox.len(), 1);
    let delivered = &inbox[0];
    assert_eq!(delivered.msgid, msgid);
    assert_eq!(delivered.appid, DEFAULT_APPID);
    assert_eq!(delivered.title, "课程提醒");
    assert_eq!(
        delivered.text,
        "学员:张三\n上课时间:2019年10月1日 15:01\n老师:李老师\n"
    );
    assert_eq!(delivered.data["phrase4"], "李老师");
    assert_eq!(delivered.page.as_deref(), Some("pages/course/detail?id=42"));
    assert_eq!(delivered.miniprogram_state, "formal");
    assert_eq!(delivered.lang, "zh_CN");
    assert!(delivered.time_unix_ms > 0);
}

#[tokio::test]
async fn msgid_can_be_answered_as_a_string() {
    let h = Harness::start(SandboxConfig {
        msgid_as_string: true,
        ..SandboxConfig::default()
    })
    .await;
    let token = h.token().await;
    let answer = h.send(&token, course_message(DEMO_OPENID)).await;
    let msgid: u64 = answer["msgid"].as_str().unwrap().parse().unwrap();
    assert!(msgid > 1 << 53);
    assert_eq!(h.sandbox().inbox(None)[0].msgid, msgid);
}

#[tokio::test]
async fn token_problems_on_send() {
    let h = Harness::start(SandboxConfig::default()).await;
    let missing = h
        .http
        .post(h.url("cgi-bin/message/subscribe/send"))
        .json(&course_message(DEMO_OPENID))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(errcode(&missing), 41001);
    assert_eq!(message(&missing), "access_token missing");
    let unknown = h.send("not-a-token", course_message(DEMO_OPENID)).await;
    assert_eq!(errcode(&unknown), 40014);
    assert_eq!(message(&unknown), "invalid access_token");

    let token = h.token().await;
    h.sandbox().revoke_tokens(DEFAULT_APPID);
    let revoked = h.send(&token, course_message(DEMO_OPENID)).await;
    assert_eq!(errcode(&revoked), 40001);
    assert!(message(&revoked).starts_with("invalid credential"));
    // The next stable fetch hands out a new, working token.
    let fresh = h.token().await;
    assert_ne!(fresh, token);
    assert_eq!(
        errcode(&h.send(&fresh, course_message(DEMO_OPENID)).await),
        0
    );
    assert!(h.sandbox().inbox(None).len() == 1);
}

#[tokio::test]
async fn each_bad_field_gets_its_errcode() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;

    let not_json = h.send_raw(&token, "{touser: nope".to_string()).await;
    let not_json: Value = not_json.json().await.unwrap();
    assert_eq!(errcode(&not_json), 47001);
    assert_eq!(message(&not_json), "data format error");

    for openid in [
        "",
        "short",
        "o6_bmjrPTlm6_2sgVt7hMZOPfL2M!",
        "o6_bmjrPTlm6_2sgVt7hMZOPf.2M",
    ] {
        let answer = h.send(&token, course_message(openid)).await;
        assert_eq!(errcode(&answer), 40003, "{openid:?}");
        assert_eq!(message(&answer), "invalid openid");
    }
    let mut no_touser = course_message(DEMO_OPENID);
    no_touser.as_object_mut().unwrap().remove("touser");
    assert_eq!(errcode(&h.send(&token, no_touser).await), 40003);

    let mut unknown_template = course_message(DEMO_OPENID);
    unknown_template["template_id"] = json!("no-such-template");
    let answer = h.send(&token, unknown_template).await;
    assert_eq!(errcode(&answer), 40037);
    assert_eq!(message(&answer), "invalid template_id");

    let invalid = |edit: &dyn Fn(&mut Value)| {
        let mut body = course_message(DEMO_OPENID);
        edit(&mut body);
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            invalid(&|b| {
                b["data"].as_object_mut().unwrap().remove("date5");
            }),
            "data.date5.value",
        ),
        (
            invalid(&|b| b["data"]["thing7"] = json!({"value": "多余"})),
            "data.thing7.value",
        ),
        (
            invalid(&|b| b["data"]["phrase1"] = json!({"value": ""})),
            "data.phrase1.value",
        ),
        (
            invalid(&|b| b["data"]["phrase4"] = json!({"value": 42})),
            "data.phrase4.value",
        ),
        (
            invalid(&|b| b["data"]["phrase4"] = json!("李老师")),
            "data.phrase4.value",
        ),
        (invalid(&|b| b["data"] = json!("x")), "data"),
        // The keyword type rules (phrase: at most 5 Chinese characters; date: a date).
        (
            invalid(&|b| b["data"]["phrase1"] = json!({"value": "Wang Xiao Er"})),
            "data.phrase1.value",
        ),
        (
            invalid(&|b| b["data"]["phrase4"] = json!({"value": "一二三四五六"})),
            "data.phrase4.value",
        ),
        (
            invalid(&|b| b["data"]["date5"] = json!({"value": "next tuesday"})),
            "data.date5.value",
        ),
        (
            invalid(&|b| b["miniprogram_state"] = json!("production")),
            "miniprogram_state",
        ),
        (invalid(&|b| b["lang"] = json!("fr_FR")), "lang"),
    ];
    for (body, field) in cases {
        let answer = h.send(&token, body).await;
        assert_eq!(errcode(&answer), 47003, "{field}");
        assert_eq!(message(&answer), format!("argument invalid! {field}"));
    }

    let enum_message = |value: &str| {
        json!({"touser": DEMO_OPENID, "template_id": ORDER_STATUS, "data": {
            "character_string1": {"value": "SBX2019100100001"},
            "enum_string2": {"value": value},
            "thing3": {"value": "请注意查收"},
        }})
    };
    let answer = h.send(&token, enum_message("丢失")).await;
    assert_eq!(
        message(&answer),
        "argument invalid! data.enum_string2.value"
    );
    assert_eq!(errcode(&h.send(&token, enum_message("已发货")).await), 0);

    let mut with_options = course_message(DEMO_OPENID);
    with_options["miniprogram_state"] = json!("trial");
    with_options["lang"] = json!("en_US");
    assert_eq!(errcode(&h.send(&token, with_options).await), 0);
    let last = h.sandbox().inbox(None).pop().unwrap();
    assert_eq!(
        (last.miniprogram_state.as_str(), last.lang.as_str()),
        ("trial", "en_US")
    );
    assert_eq!(h.sandbox().inbox(None).len(), 2, "only the two valid sends");
}

#[tokio::test]
async fn pages_outside_the_configured_list_get_41030() {
    let h = Harness::start(SandboxConfig {
        pages: Some(vec![
            "pages/course/detail".into(),
            "pages/index/index".into(),
        ]),
        ..SandboxConfig::default()
    })
    .await;
    let token = h.token().await;
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    let mut elsewhere = course_message(DEMO_OPENID);
    elsewhere["page"] = json!("pages/secret/admin?id=42");
    let answer = h.send(&token, elsewhere).await;
    assert_eq!(errcode(&answer), 41030);
    assert_eq!(message(&answer), "invalid page");
    let mut no_page = course_message(DEMO_OPENID);
    no_page.as_object_mut().unwrap().remove("page");
    assert_eq!(errcode(&h.send(&token, no_page).await), 0);
}

#[tokio::test]
async fn checks_run_in_wechat_order() {
    let h = Harness::start(SandboxConfig {
        daily_quota: Some(1),
        ..no_auto_accept()
    })
    .await;
    let token = h.token().await;
    // Bad openid and bad template: the openid is reported.
    let mut both = course_message("bad");
    both["template_id"] = json!("nope");
    assert_eq!(errcode(&h.send(&token, both).await), 40003);
    // The quota is checked before the body, the token before everything.
    let not_json = h.send_raw(&token, "not json".into()).await;
    assert_eq!(errcode(&not_json.json().await.unwrap()), 45009);
    assert_eq!(errcode(&h.send("bogus", json!({})).await), 40014);
}

// ---------------------------------------------------------------------------------------------
// subscriptions and auto-accept

#[tokio::test]
async fn one_time_grants_are_consumed_long_term_are_not_and_rejects_stick() {
    let h = Harness::start(no_auto_accept()).await;
    let token = h.token().await;
    let sandbox = h.sandbox();
    let answer = h.send(&token, course_message(DEMO_OPENID)).await;
    assert_eq!(errcode(&answer), 43101);
    assert_eq!(message(&answer), "user refuse to accept the msg");

    sandbox.subscribe(
        DEFAULT_APPID,
        DEMO_OPENID,
        COURSE,
        Grant::Accept { count: 1 },
    );
    sandbox.subscribe(
        DEFAULT_APPID,
        DEMO_OPENID,
        COURSE,
        Grant::Accept { count: 1 },
    );
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        43101
    );
    // A grant is per user.
    sandbox.subscribe(
        DEFAULT_APPID,
        OTHER_OPENID,
        COURSE,
        Grant::Accept { count: 1 },
    );
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        43101
    );

    sandbox.subscribe(
        DEFAULT_APPID,
        DEMO_OPENID,
        SERVICE_NOTICE,
        Grant::Accept { count: 1 },
    );
    for _ in 0..3 {
        assert_eq!(
            errcode(&h.send(&token, service_message(DEMO_OPENID)).await),
            0
        );
    }
    sandbox.subscribe(DEFAULT_APPID, DEMO_OPENID, SERVICE_NOTICE, Grant::Reject);
    sandbox.set_auto_accept(true);
    let rejected = h.send(&token, service_message(DEMO_OPENID)).await;
    assert_eq!(
        errcode(&rejected),
        43101,
        "auto-accept never overrides a reject"
    );
    assert_eq!(sandbox.inbox(Some(DEMO_OPENID)).len(), 5);
    assert_eq!(sandbox.stats().rejected[&43101], 4);
}

#[tokio::test]
async fn auto_accept_delivers_without_a_grant_and_can_be_toggled() {
    let h = Harness::start(SandboxConfig::default()).await;
    assert!(h.sandbox().auto_accept(), "default config auto-accepts");
    let token = h.token().await;
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );

    let off = h
        .post("sandbox/auto-accept", json!({"enabled": false}))
        .await;
    assert_eq!(off["enabled"], false);
    assert_eq!(h.get("sandbox/auto-accept").await["enabled"], false);
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        43101
    );
}

#[tokio::test]
async fn inbox_filters_and_clears() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    h.send(&token, course_message(DEMO_OPENID)).await;
    h.send(&token, course_message(OTHER_OPENID)).await;
    h.send(&token, service_message(OTHER_OPENID)).await;
    assert_eq!(h.sandbox().inbox(None).len(), 3);
    assert_eq!(h.sandbox().inbox(Some(OTHER_OPENID)).len(), 2);

    let listed = h
        .get(&format!(
            "sandbox/inbox?openid={OTHER_OPENID}&appid={DEFAULT_APPID}"
        ))
        .await;
    let messages = listed["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["template_id"], COURSE);
    assert!(messages[0]["msgid"].as_u64().unwrap() > 1 << 53);
    let by_template = h
        .get(&format!("sandbox/inbox?template_id={SERVICE_NOTICE}"))
        .await;
    assert_eq!(by_template["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        h.get("sandbox/inbox?appid=wxelsewhere").await["messages"],
        json!([])
    );

    let cleared = h
        .http
        .delete(h.url("sandbox/inbox"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 3);
    assert!(h.sandbox().inbox(None).is_empty());
}

// ---------------------------------------------------------------------------------------------
// faults and quotas

#[tokio::test]
async fn errcode_faults_apply_n_times_then_vanish() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    h.sandbox().inject(Fault::errcode(-1).times(2));
    for _ in 0..2 {
        let answer = h.send(&token, course_message(DEMO_OPENID)).await;
        assert_eq!(errcode(&answer), -1);
        assert_eq!(message(&answer), "system error");
    }
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    assert!(h.sandbox().faults().is_empty());
    assert_eq!(
        h.sandbox().inbox(None).len(),
        1,
        "faulted sends deliver nothing"
    );
}

#[tokio::test]
async fn faults_can_target_one_openid_and_carry_a_message() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    h.sandbox().inject(
        Fault::errcode(45011)
            .for_openid(OTHER_OPENID)
            .with_errmsg("slow down"),
    );
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    let answer = h.send(&token, course_message(OTHER_OPENID)).await;
    assert_eq!(errcode(&answer), 45011);
    assert_eq!(message(&answer), "slow down");
    assert_eq!(
        errcode(&h.send(&token, course_message(OTHER_OPENID)).await),
        45011
    );
    h.sandbox().clear_faults();
    assert_eq!(
        errcode(&h.send(&token, course_message(OTHER_OPENID)).await),
        0
    );
}

#[tokio::test]
async fn http_status_faults_answer_a_non_json_body() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    h.sandbox().inject(Fault::http_status(502).times(1));
    let response = h
        .send_raw(&token, course_message(DEMO_OPENID).to_string())
        .await;
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err());
    assert!(body.contains("502 Bad Gateway"));
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    assert_eq!(h.sandbox().stats().http_errors, 1);
}

#[tokio::test]
async fn token_endpoint_faults() {
    let h = Harness::start(SandboxConfig::default()).await;
    h.sandbox()
        .inject(Fault::errcode(-1).on_token_endpoint().times(1));
    h.sandbox()
        .inject(Fault::http_status(503).on_token_endpoint().times(1));
    let busy = h.stable_token(false).await;
    assert_eq!(errcode(&busy), -1);
    let response = h
        .http
        .get(h.url(&format!(
            "cgi-bin/token?grant_type=client_credential&appid={DEFAULT_APPID}&secret={DEFAULT_SECRET}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(h.stable_token(false).await["access_token"].is_string());
    // Send faults do not touch the token endpoints.
    h.sandbox().inject(Fault::errcode(-1));
    assert!(h.stable_token(false).await["access_token"].is_string());
}

#[tokio::test]
async fn latency_longer_than_the_client_timeout_leaves_the_outcome_unknown() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    h.sandbox()
        .inject(Fault::latency(Duration::from_secs(3)).times(1));
    let impatient = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .post(h.url("cgi-bin/message/subscribe/send"))
        .query(&[("access_token", &token)])
        .json(&course_message(DEMO_OPENID))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    // The sandbox acted on the request: the message is delivered, once.
    let delivered = wait_for(|| h.sandbox().inbox(None).len() == 1).await;
    assert!(delivered, "the delayed send was delivered");
    assert_eq!(h.sandbox().send_requests().len(), 1);
}

#[tokio::test]
async fn quotas_answer_45009_and_45011() {
    let h = Harness::start(SandboxConfig {
        daily_quota: Some(2),
        ..SandboxConfig::default()
    })
    .await;
    let token = h.token().await;
    for _ in 0..2 {
        assert_eq!(
            errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
            0
        );
    }
    let answer = h.send(&token, course_message(DEMO_OPENID)).await;
    assert_eq!(errcode(&answer), 45009);
    assert_eq!(message(&answer), "reach max api daily quota limit");

    let h = Harness::start(SandboxConfig {
        minute_limit: Some(1),
        ..SandboxConfig::default()
    })
    .await;
    let token = h.token().await;
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    let answer = h.send(&token, course_message(DEMO_OPENID)).await;
    assert_eq!(errcode(&answer), 45011);
    assert!(message(&answer).starts_with("api minute-quota reach limit"));
}

#[tokio::test(start_paused = true)]
async fn the_minute_limit_resets_the_next_minute() {
    let router = Sandbox::new(SandboxConfig {
        minute_limit: Some(1),
        ..SandboxConfig::default()
    })
    .router();
    let token = stable_in_process(&router, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(send_in_process(&router, &token).await, 0);
    assert_eq!(send_in_process(&router, &token).await, 45011);
    advance(60).await;
    assert_eq!(send_in_process(&router, &token).await, 0);
}

#[tokio::test]
async fn concurrency_is_observed() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    h.sandbox().inject(Fault::latency(Duration::from_secs(2)));
    let sends: Vec<_> = (0..6)
        .map(|_| {
            let request = h
                .http
                .post(h.url("cgi-bin/message/subscribe/send"))
                .query(&[("access_token", &token)])
                .json(&course_message(DEMO_OPENID));
            tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await })
        })
        .collect();
    assert!(wait_for(|| h.sandbox().stats().in_flight_sends == 6).await);
    for send in sends {
        assert_eq!(errcode(&send.await.unwrap().unwrap()), 0);
    }
    let stats = h.sandbox().stats();
    assert_eq!(stats.max_concurrent_sends, 6);
    assert_eq!(stats.in_flight_sends, 0);
    assert_eq!(stats.delivered, 6);
}

#[tokio::test]
async fn fixed_answer_skips_every_check() {
    let h = Harness::start(SandboxConfig {
        fixed_answer: true,
        ..no_auto_accept()
    })
    .await;
    let answer = h.send("whatever", json!({"nonsense": true})).await;
    assert_eq!(errcode(&answer), 0);
    assert!(answer["msgid"].as_u64().unwrap() > 1 << 53);
    h.sandbox().inject(Fault::errcode(-1).times(1));
    assert_eq!(errcode(&h.send("whatever", json!({})).await), -1);
    let stats = h.sandbox().stats();
    assert_eq!((stats.send_requests, stats.delivered), (2, 1));
}

// ---------------------------------------------------------------------------------------------
// templates, control API, server lifecycle

#[tokio::test]
async fn gettemplate_lists_templates_in_wechat_shape() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    let answer = h
        .get(&format!("wxaapi/newtmpl/gettemplate?access_token={token}"))
        .await;
    assert_eq!(answer["errcode"], 0);
    assert_eq!(answer["errmsg"], "ok");
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 5);
    let course = data.iter().find(|t| t["priTmplId"] == COURSE).unwrap();
    assert_eq!(course["title"], "课程提醒");
    assert_eq!(course["type"], 2);
    assert_eq!(
        course["content"],
        "学员:{{phrase1.DATA}}\n上课时间:{{date5.DATA}}\n老师:{{phrase4.DATA}}\n"
    );
    assert!(course["example"].as_str().unwrap().starts_with("学员:"));
    assert!(course.get("keywordEnumValueList").is_none());
    let notice = data
        .iter()
        .find(|t| t["priTmplId"] == SERVICE_NOTICE)
        .unwrap();
    assert_eq!(notice["type"], 3);
    let status = data
        .iter()
        .find(|t| t["priTmplId"] == ORDER_STATUS)
        .unwrap();
    assert_eq!(
        status["keywordEnumValueList"],
        json!([{"keywordCode": "enum_string2.DATA", "enumValueList": ["待发货", "已发货", "已签收"]}])
    );
    let no_token = h.get("wxaapi/newtmpl/gettemplate").await;
    assert_eq!(errcode(&no_token), 41001);
}

#[tokio::test]
async fn templates_can_be_added_and_gettemplate_faulted_and_counted() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    let list = format!("wxaapi/newtmpl/gettemplate?access_token={token}");
    // Added while running: listed, and usable by a send.
    let arrival = Template::new(
        "added-later",
        "到货提醒",
        "商品:{{thing1.DATA}}\n",
        TemplateKind::OneTime,
    );
    h.sandbox().add_template(arrival.clone()).unwrap();
    assert!(
        h.sandbox().add_template(arrival).is_err(),
        "an id is defined once per app"
    );
    let answer = h.get(&list).await;
    assert!(
        answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["priTmplId"] == "added-later")
    );
    h.sandbox().set_auto_accept(true);
    let message = json!({"touser": DEMO_OPENID, "template_id": "added-later",
                         "data": {"thing1": {"value": "牛奶"}}});
    assert_eq!(errcode(&h.send(&token, message).await), 0);

    // A fault on the template list, through the control API; the token is still checked first.
    h.post(
        "sandbox/faults",
        json!({"endpoint": "templates", "errcode": 48001, "times": 1}),
    )
    .await;
    let no_token = h.get("wxaapi/newtmpl/gettemplate").await;
    assert_eq!(errcode(&no_token), 41001);
    assert_eq!(errcode(&h.get(&list).await), 48001);
    assert_eq!(errcode(&h.get(&list).await), 0);
    h.sandbox()
        .inject(Fault::http_status(502).on_templates_endpoint().times(1));
    let response = h.http.get(h.url(&list)).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(h.sandbox().stats().template_requests, 5);
    assert_eq!(h.sandbox().stats().send_requests, 1);
}

#[tokio::test]
async fn control_api_routes() {
    let h = Harness::start(no_auto_accept()).await;
    let overview = h.get("sandbox/").await;
    assert_eq!(overview["apps"], json!([DEFAULT_APPID]));

    // Subscriptions: appid may be omitted with one app.
    let recorded = h
        .post(
            "sandbox/subscriptions",
            json!({"openid": DEMO_OPENID, "template_id": COURSE, "status": "accept", "count": 2}),
        )
        .await;
    assert_eq!(recorded["one_time_remaining"], 2);
    let token = h.token().await;
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        0
    );
    let listed = h
        .get(&format!("sandbox/subscriptions?openid={DEMO_OPENID}"))
        .await;
    assert_eq!(listed["subscriptions"][0]["one_time_remaining"], 1);
    let rejected = h
        .post(
            "sandbox/subscriptions",
            json!({"appid": DEFAULT_APPID, "openid": DEMO_OPENID, "template_id": COURSE,
                   "status": "reject"}),
        )
        .await;
    assert_eq!(rejected["rejected"], true);
    assert_eq!(
        errcode(&h.send(&token, course_message(DEMO_OPENID)).await),
        43101
    );
    for bad in [
        json!({"openid": "short", "template_id": COURSE, "status": "accept"}),
        json!({"openid": DEMO_OPENID, "template_id": "nope", "status": "accept"}),
        json!({"openid": DEMO_OPENID, "template_id": COURSE, "status": "maybe"}),
        json!({"appid": "wxnobody", "openid": DEMO_OPENID, "template_id": COURSE, "status": "accept"}),
    ] {
        let response = h
            .http
            .post(h.url("sandbox/subscriptions"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    }

    // Faults.
    let injected = h
        .post(
            "sandbox/faults",
            json!({"errcode": 45009, "times": 1, "openid": OTHER_OPENID, "latency_ms": 10}),
        )
        .await;
    assert!(injected["id"].is_u64());
    let faults = h.get("sandbox/faults").await;
    assert_eq!(faults["faults"][0]["errcode"], 45009);
    assert_eq!(faults["faults"][0]["latency_ms"], 10);
    h.sandbox().subscribe(
        DEFAULT_APPID,
        OTHER_OPENID,
        COURSE,
        Grant::Accept { count: 5 },
    );
    assert_eq!(
        errcode(&h.send(&token, course_message(OTHER_OPENID)).await),
        45009
    );
    h.post("sandbox/faults", json!({"http_status": 500})).await;
    let cleared = h
        .http
        .delete(h.url("sandbox/faults"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 1);
    let useless = h
        .http
        .post(h.url("sandbox/faults"))
        .json(&json!({"times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(useless.status(), 400);

    // Revoking tokens.
    let revoked = h.post("sandbox/tokens/revoke", json!({})).await;
    assert_eq!(revoked["revoked"], 1);
    assert_eq!(
        errcode(&h.send(&token, course_message(OTHER_OPENID)).await),
        40001
    );

    // Templates, stats, recorded sends.
    let templates = h.get("sandbox/templates").await;
    let course = templates["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == COURSE)
        .unwrap()
        .clone();
    assert_eq!(course["kind"], "one-time");
    assert_eq!(
        course["keywords"][1],
        json!({"key": "date5", "type": "date", "label": "上课时间"})
    );
    let stats = h.get("sandbox/stats").await;
    assert_eq!(stats["send_requests"], 4);
    assert_eq!(stats["delivered"], 1);
    assert_eq!(stats["rejected"]["43101"], 1);
    assert_eq!(stats["rejected"]["45009"], 1);
    assert_eq!(stats["rejected"]["40001"], 1);
    assert_eq!(stats["token_fetches"][DEFAULT_APPID]["stable"], 1);
    let sends = h.get("sandbox/sends").await;
    let first = &sends["sends"][0];
    assert_eq!(first["access_token"], token.as_str());
    assert_eq!(first["body"]["touser"], DEMO_OPENID);

    // Unknown routes.
    let missing = h.http.get(h.url("sandbox/nothing")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let wrong_method = h.get("cgi-bin/message/subscribe/send").await;
    assert_eq!(errcode(&wrong_method), 404);
}

#[tokio::test]
async fn send_requests_are_recorded_as_received() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    h.send(&token, course_message(DEMO_OPENID)).await;
    h.send_raw(&token, "not json".into()).await;
    let sends = h.sandbox().send_requests();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].access_token.as_deref(), Some(token.as_str()));
    assert_eq!(sends[0].body, Some(course_message(DEMO_OPENID)));
    assert_eq!(sends[1].body, None);
    assert_eq!(sends[1].raw_body, "not json");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let h = Harness::start(SandboxConfig::default()).await;
    let url = h.url("sandbox/stats");
    assert_eq!(h.server.base_url().host_str(), Some("127.0.0.1"));
    h.server.shutdown().await;
    assert!(h.http.get(url).send().await.is_err());
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let h = Harness::start(SandboxConfig::default()).await;
    let url = h.url("sandbox/stats");
    h.get("sandbox/stats").await;
    drop(h.server);
    let fresh = Client::new();
    let stopped = wait_for_async(|| {
        let request = fresh.get(&url);
        async move { request.send().await.is_err() }
    })
    .await;
    assert!(stopped, "no longer accepting");
}

#[tokio::test]
async fn documented_sample_values_are_accepted() {
    let h = Harness::start(SandboxConfig::default()).await;
    let token = h.token().await;
    let samples = [
        (
            "sandbox-order-shipped",
            json!({"character_string1": {"value": "SBX2019100100001"},
                   "thing2": {"value": "无线耳机"},
                   "date3": {"value": "2019年10月1日 15:01"},
                   "phrase4": {"value": "已发货"}}),
        ),
        (
            "sandbox-appointment",
            json!({"thing1": {"value": "体检"}, "time2": {"value": "15:01"},
                   "thing3": {"value": "二号楼三层"}, "name4": {"value": "张三"}}),
        ),
    ];
    for (template_id, data) in samples {
        let body = json!({"touser": DEMO_OPENID, "template_id": template_id, "data": data});
        assert_eq!(errcode(&h.send(&token, body).await), 0, "{template_id}");
    }
}

/// The standalone sandbox's flags (`wechat-sandbox ARGS`), on port 0.
fn standalone(args: &[&str]) -> wechat_notify_sandbox::SandboxArgs {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: wechat_notify_sandbox::SandboxArgs,
    }

    let argv = ["sandbox", "--listen", "127.0.0.1:0"].iter().chain(args);
    Cli::try_parse_from(argv).unwrap().sandbox
}

#[tokio::test]
async fn start_binds_port_0_and_reports_the_port_it_got() {
    let server = cli::start(standalone(&[])).await.expect("starts");
    assert_ne!(server.addr.port(), 0);
    let url = server.base_url().join("sandbox/auto-accept").unwrap();
    let auto_accept: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(auto_accept["enabled"], false, "standalone default");
    server.shutdown().await;
}

#[tokio::test]
async fn serve_until_serves_until_the_shutdown_future_resolves() {
    let server = cli::start(standalone(&["--auto-accept"])).await.unwrap();
    let url = server.base_url().join("sandbox/auto-accept").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(cli::serve_until(server, async move {
        let _ = stopped.await;
    }));
    // The serving task runs first: were it not waiting for `stopped`, it would stop serving now.
    tokio::task::yield_now().await;
    let auto_accept: Value = reqwest::get(url.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(auto_accept["enabled"], true, "the flags were applied");
    stop.send(()).unwrap();
    serving.await.unwrap();
    assert!(reqwest::get(url).await.is_err(), "stopped serving");
}

#[tokio::test]
async fn run_refuses_bad_flags_and_returns_when_told_to_stop() {
    let refused = wechat_notify_sandbox::run(standalone(&["--app", "wxa"]), std::future::pending())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("APPID:SECRET"), "{refused}");
    wechat_notify_sandbox::run(standalone(&[]), std::future::ready(()))
        .await
        .expect("started and stopped");
}

/// Polls `condition` for up to 10 s.
async fn wait_for(condition: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

async fn wait_for_async<F, Fut>(condition: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
