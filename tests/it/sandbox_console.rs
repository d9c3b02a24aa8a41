//! The console's side of the sandbox over real HTTP on 127.0.0.1:0: the page and its assets,
//! the live event stream, the refused sends and their causes, the quotas left, and where the
//! sandbox says it listens. (The page itself runs in a browser in tests/it/console.rs.)

use std::time::Duration;

use reqwest::{Client, Response};
use serde_json::{Value, json};
use wechat_notify_sandbox::{
    DEFAULT_APPID, DEFAULT_SECRET, DEMO_OPENID, Fault, Grant, Sandbox, SandboxConfig, SandboxServer,
};

const COURSE: &str = "sandbox-course-reminder";
const OTHER_OPENID: &str = "oOtherUser0000000000000000_1";
/// A bound on waiting for an event that should come at once; only reached when it never does.
const EVENT_WAIT: Duration = Duration::from_secs(10);

async fn start(config: SandboxConfig) -> SandboxServer {
    Sandbox::new(config)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn url(server: &SandboxServer, path: &str) -> String {
    server.base_url().join(path).unwrap().to_string()
}

async fn get_json(server: &SandboxServer, path: &str) -> Value {
    let response = Client::new().get(url(server, path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

async fn token(server: &SandboxServer) -> String {
    let answer: Value = Client::new()
        .post(url(server, "cgi-bin/stable_token"))
        .json(
            &json!({"grant_type": "client_credential", "appid": DEFAULT_APPID,
                      "secret": DEFAULT_SECRET}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_string()
}

async fn send(server: &SandboxServer, token: &str, openid: &str) -> Value {
    send_request(server, token, openid)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn send_request(server: &SandboxServer, token: &str, openid: &str) -> reqwest::RequestBuilder {
    Client::new()
        .post(url(server, "cgi-bin/message/subscribe/send"))
        .query(&[("access_token", token)])
        .json(&json!({
            "touser": openid,
            "template_id": COURSE,
            "page": "pages/course/detail?id=42",
            "data": {
                "phrase1": {"value": "张三"},
                "date5": {"value": "2019年10月1日 15:01"},
                "phrase4": {"value": "李老师"},
            },
        }))
}

/// A reader of `GET /sandbox/events`.
struct Events {
    response: Response,
    buffer: String,
}

impl Events {
    async fn open(server: &SandboxServer) -> Events {
        let response = Client::new()
            .get(url(server, "sandbox/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (name, JSON data), skipping keep-alive comments.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_string();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if name.is_empty() {
                    continue;
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout(EVENT_WAIT, self.response.chunk())
                .await
                .expect("an event within the wait")
                .expect("the stream reads");
            self.buffer.push_str(std::str::from_utf8(&chunk?).unwrap());
        }
    }

    /// The next event named `name`, skipping others (the stats ticks).
    async fn next_named(&mut self, name: &str) -> Value {
        loop {
            let (event, data) = self.next().await.expect("the stream is open");
            if event == name {
                return data;
            }
        }
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_content_security_policy() {
    let server = start(SandboxConfig::default()).await;
    for path in ["", "sandbox/ui", "sandbox/ui/"] {
        let response = Client::new().get(url(&server, path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "/{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        let page = response.text().await.unwrap();
        assert!(page.contains("服务通知"));
        assert!(page.contains(r#"<script type="module" src="/sandbox/ui/main.js">"#));
    }
    for asset in [
        "main.js",
        "api.js",
        "dom.js",
        "inbox.js",
        "controls.js",
        "stats.js",
    ] {
        let response = Client::new()
            .get(url(&server, &format!("sandbox/ui/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(
            response.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    let css = Client::new()
        .get(url(&server, "sandbox/ui/console.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let missing = Client::new()
        .get(url(&server, "sandbox/ui/console.rs"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn events_stream_deliveries_refusals_changes_and_counters() {
    let server = start(SandboxConfig::default()).await;
    let sandbox = server.sandbox().clone();
    let mut events = Events::open(&server).await;
    // Counters come once a second, whatever else happens.
    let stats = events.next_named("stats").await;
    assert_eq!(stats["send_requests"], 0);

    let token = token(&server).await;
    let answer = send(&server, &token, DEMO_OPENID).await;
    let delivered = events.next_named("delivered").await;
    assert_eq!(delivered["msgid"], answer["msgid"]);
    assert_eq!(delivered["openid"], DEMO_OPENID);
    assert_eq!(delivered["title"], "课程提醒");
    assert_eq!(delivered["page"], "pages/course/detail?id=42");

    sandbox.subscribe(DEFAULT_APPID, DEMO_OPENID, COURSE, Grant::Reject);
    let changed = events.next_named("changed").await;
    assert_eq!(changed["what"], "subscriptions");
    let answer = send(&server, &token, DEMO_OPENID).await;
    assert_eq!(answer["errcode"], 43101);
    let failed = events.next_named("failed").await;
    assert_eq!(failed["errcode"], 43101);
    assert_eq!(failed["errmsg"], answer["errmsg"]);
    assert_eq!(failed["openid"], DEMO_OPENID);
    assert_eq!(failed["appid"], DEFAULT_APPID);
    assert_eq!(failed["template_id"], COURSE);
    assert_eq!(failed["injected"], false);
    assert!(
        failed["cause"].as_str().unwrap().contains("rejected"),
        "{failed}"
    );

    let stats = events.next_named("stats").await;
    assert_eq!(stats["send_requests"], 2);
    assert_eq!(stats["delivered"], 1);
    assert_eq!(stats["rejected"]["43101"], 1);
}

#[tokio::test]
async fn a_client_that_falls_behind_is_told_to_resync() {
    let server = start(SandboxConfig::default()).await;
    let sandbox = server.sandbox().clone();
    let mut events = Events::open(&server).await;
    events.next_named("stats").await;
    // More changes than the channel keeps, while this client reads nothing.
    for _ in 0..wechat_notify_sandbox::EVENTS_CAPACITY + 10 {
        sandbox.set_auto_accept(true);
    }
    let resync = events.next_named("resync").await;
    assert!(resync["missed"].as_u64().unwrap() >= 10, "{resync}");
}

#[tokio::test]
async fn failed_sends_are_listed_with_their_cause_filtered_and_cleared() {
    let server = start(SandboxConfig {
        auto_accept: false,
        ..SandboxConfig::default()
    })
    .await;
    let sandbox = server.sandbox().clone();
    let token = token(&server).await;
    assert_eq!(send(&server, &token, DEMO_OPENID).await["errcode"], 43101);
    sandbox.inject(Fault::http_status(502).times(1).for_openid(OTHER_OPENID));
    // An injected HTTP status answers a body that is not JSON.
    let response = send_request(&server, &token, OTHER_OPENID)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    sandbox.inject(Fault::errcode(-1).times(1));
    assert_eq!(send(&server, &token, DEMO_OPENID).await["errcode"], -1);

    let all = get_json(&server, "sandbox/failures").await;
    let failures = all["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{all}");
    assert!(
        failures[0]["cause"]
            .as_str()
            .unwrap()
            .contains("auto-accept is off")
    );
    assert_eq!(failures[1]["http_status"], 502);
    assert_eq!(failures[1]["errcode"], Value::Null);
    assert!(
        failures[1]["cause"]
            .as_str()
            .unwrap()
            .starts_with("injected fault: HTTP 502")
    );
    assert_eq!(failures[2]["errcode"], -1);
    assert_eq!(failures[2]["injected"], true);
    assert!(
        failures[2]["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("system error rid: ")
    );

    let mine = get_json(&server, &format!("sandbox/failures?openid={DEMO_OPENID}")).await;
    assert_eq!(mine["failures"].as_array().unwrap().len(), 2);
    let latest = get_json(&server, "sandbox/failures?limit=1").await;
    assert_eq!(latest["failures"][0]["errcode"], -1);
    assert_eq!(latest["failures"].as_array().unwrap().len(), 1);
    assert_eq!(sandbox.failed_sends(Some(OTHER_OPENID)).len(), 1);

    let cleared: Value = Client::new()
        .delete(url(&server, "sandbox/failures"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 3);
    assert!(sandbox.failed_sends(None).is_empty());
}

#[tokio::test]
async fn the_inbox_limit_keeps_the_latest_messages() {
    let server = start(SandboxConfig::default()).await;
    let token = token(&server).await;
    let mut msgids = Vec::new();
    for _ in 0..3 {
        msgids.push(send(&server, &token, DEMO_OPENID).await["msgid"].clone());
    }
    let latest = get_json(&server, "sandbox/inbox?limit=2").await;
    let shown: Vec<&Value> = latest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["msgid"])
        .collect();
    assert_eq!(shown, vec![&msgids[1], &msgids[2]]);
}

#[tokio::test]
async fn stats_show_the_quotas_left_only_when_quotas_are_set() {
    let server = start(SandboxConfig {
        daily_quota: Some(5),
        minute_limit: Some(3),
        ..SandboxConfig::default()
    })
    .await;
    let token = token(&server).await;
    send(&server, &token, DEMO_OPENID).await;
    let stats = get_json(&server, "sandbox/stats").await;
    assert_eq!(
        stats["quotas_left"][DEFAULT_APPID],
        json!({"daily": 4, "minute": 2})
    );

    let unlimited = start(SandboxConfig::default()).await;
    let stats = get_json(&unlimited, "sandbox/stats").await;
    assert!(stats.get("quotas_left").is_none(), "{stats}");
}

#[tokio::test]
async fn the_overview_says_where_the_sandbox_listens_and_whether_that_is_exposed() {
    let loopback = start(SandboxConfig::default()).await;
    let overview = get_json(&loopback, "sandbox/").await;
    assert_eq!(overview["listen"], loopback.addr.to_string());
    assert_eq!(overview["exposed"], false);
    assert_eq!(overview["console"], "/sandbox/ui");

    // Every interface: reached here over loopback only, and stopped at once.
    let everywhere = Sandbox::default()
        .spawn("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap();
    let overview = get_json(&everywhere, "sandbox/").await;
    assert_eq!(overview["exposed"], true);
    assert_eq!(
        overview["listen"],
        format!("0.0.0.0:{}", everywhere.addr.port())
    );
    everywhere.shutdown().await;
}

#[tokio::test]
async fn shutting_down_ends_open_event_streams_cleanly() {
    let server = start(SandboxConfig::default()).await;
    let mut events = Events::open(&server).await;
    events.next_named("stats").await;
    server.shutdown().await;
    // The stream ends (no error): it was closed, not left running past the shutdown (an open
    // stream would go on with a stats event every second). At most the ones already sent remain.
    let mut after_shutdown = 0;
    while let Some((name, _)) = events.next().await {
        assert_eq!(name, "stats");
        after_shutdown += 1;
        assert!(after_shutdown < 3, "the event stream outlived the shutdown");
    }
}
