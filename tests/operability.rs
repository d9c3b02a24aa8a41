// Own binary: it asserts exact counts of the process-wide metrics recorder, RPC series included.
//! What `/metrics` says matches what WeChat (the sandbox) saw: scraped over HTTP from the running
//! server and parsed from the Prometheus text format.

mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use common::*;
use tonic::Code;
use wechat_notify::{pb, secret::Secret};
use wechat_notify_sandbox::{DEFAULT_APPID, Fault, SandboxConfig};

const APP: &str = "ops";
const BAD_APP: &str = "ops-bad-secret";
const BAD_SECRET: &str = "0123456789abcdef-wrong-secret-for-metrics";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_the_sandbox_counted() {
    let harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].name = APP.to_owned();
    })
    .await;
    let metrics_addr = harness.server.metrics_addr;
    let mut client = harness.client.clone();

    // Before any message: the app's series exist at zero, so rate() and alerts work at once.
    let before = scrape(metrics_addr).await;
    assert_eq!(
        before.value(MESSAGES, &[("app", APP), ("outcome", "sent")]),
        Some(0.0)
    );
    assert_eq!(
        before.value(MESSAGES, &[("app", APP), ("outcome", "rejected")]),
        Some(0.0)
    );

    // 3 sent, then a keyed send and its replay (1 sent, 1 deduplicated).
    for index in 0..3 {
        client
            .send_subscribe(course_request(&openid(index)))
            .await
            .expect("sent");
    }
    let keyed = pb::SendSubscribeRequest {
        idempotency_key: "ops-metrics-key".to_owned(),
        ..course_request(OPENID)
    };
    client.send_subscribe(keyed.clone()).await.expect("sent");
    let replay = client
        .send_subscribe(keyed)
        .await
        .expect("replayed")
        .into_inner();
    assert!(replay.deduplicated);

    // Refused before sending: a missing touser (invalid), an unknown app (invalid, app unknown).
    let status = client.send_subscribe(course_request("")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let unknown = pb::SendSubscribeRequest {
        app: "no-such-app".to_owned(),
        ..course_request(OPENID)
    };
    let status = client.send_subscribe(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // WeChat answers: 40003 (rejected), -1 twice then ok (sent, two errcodes counted), a 502
    // (failed), and a revoked token (40001, refreshed, sent).
    harness.sandbox().inject(Fault::errcode(40003).times(1));
    let status = client
        .send_subscribe(course_request(OPENID))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    harness.sandbox().inject(Fault::errcode(-1).times(2));
    let busy = client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent after -1");
    assert_eq!(busy.into_inner().attempts, 3);
    harness.sandbox().inject(Fault::http_status(502).times(1));
    let status = client
        .send_subscribe(course_request(OPENID))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    harness.sandbox().revoke_tokens(DEFAULT_APPID);
    client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent after a refresh");

    // A batch of three: two sent, one invalid recipient (phrase: at most 5 Chinese characters).
    let mut bad_recipient = pb::Recipient {
        touser: openid(12),
        ..Default::default()
    };
    bad_recipient
        .data
        .insert("phrase1".to_owned(), "Wang Xiao Er".to_owned());
    let batch = pb::BatchSendRequest {
        template_id: COURSE_REMINDER.to_owned(),
        data: course_data(),
        recipients: vec![
            pb::Recipient {
                touser: openid(10),
                ..Default::default()
            },
            pb::Recipient {
                touser: openid(11),
                ..Default::default()
            },
            bad_recipient,
        ],
        ..Default::default()
    };
    let batch = client.batch_send(batch).await.expect("batch").into_inner();
    assert_eq!((batch.succeeded, batch.failed), (2, 1));

    // A second server whose secret WeChat refuses.
    let bad = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].name = BAD_APP.to_owned();
        config.apps[0].secret = Secret::new(BAD_SECRET);
    })
    .await;
    let status = bad
        .client
        .clone()
        .send_subscribe(course_request(OPENID))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    let metrics = scrape(metrics_addr).await;
    let stats = harness.sandbox().stats();

    // Messages, by outcome.
    let outcome = |outcome: &str| metrics.value(MESSAGES, &[("app", APP), ("outcome", outcome)]);
    assert_eq!(outcome("sent"), Some(3.0 + 1.0 + 1.0 + 1.0 + 2.0));
    assert_eq!(
        outcome("sent"),
        Some(stats.delivered as f64),
        "sent = delivered"
    );
    assert_eq!(outcome("deduplicated"), Some(1.0));
    assert_eq!(
        outcome("invalid"),
        Some(2.0),
        "missing touser, bad batch recipient"
    );
    assert_eq!(outcome("rejected"), Some(1.0), "40003");
    assert_eq!(outcome("failed"), Some(1.0), "502");
    assert_eq!(
        metrics.value(MESSAGES, &[("app", "unknown"), ("outcome", "invalid")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(MESSAGES, &[("app", BAD_APP), ("outcome", "rejected")]),
        Some(1.0),
        "a credential errcode is a WeChat answer"
    );

    // Every errcode the sandbox answered on send, retried ones included, and nothing else.
    let errcodes: BTreeMap<i64, u64> = stats.rejected.clone();
    assert_eq!(errcodes, BTreeMap::from([(-1, 2), (40001, 1), (40003, 1)]));
    for (errcode, count) in &errcodes {
        let labels = [
            ("app", APP),
            ("endpoint", "send"),
            ("errcode", &errcode.to_string()),
        ];
        assert_eq!(
            metrics.value(WECHAT_ERRORS, &labels),
            Some(*count as f64),
            "errcode {errcode}"
        );
    }
    assert_eq!(metrics.sum(WECHAT_ERRORS, &[("app", APP)]), 4.0);

    // Tokens: one fetch, one after the revocation, as the sandbox counted.
    let fetched = stats.token_fetches[DEFAULT_APPID].stable;
    assert_eq!(fetched, 2);
    assert_eq!(
        metrics.value(TOKEN_FETCHES, &[("app", APP)]),
        Some(fetched as f64)
    );
    assert_eq!(metrics.value(TOKEN_FAILURES, &[("app", APP)]), Some(0.0));
    // The revocation: one rejection, and WeChat handed out a new token.
    assert_eq!(
        metrics.value(
            TOKEN_REJECTIONS,
            &[("app", APP), ("errcode", "40001"), ("action", "refreshed")]
        ),
        Some(1.0)
    );
    assert_eq!(metrics.sum(TOKEN_REJECTIONS, &[("app", APP)]), 1.0);
    let expires_in = metrics.value(TOKEN_EXPIRES, &[("app", APP)]).unwrap();
    assert!(
        expires_in > 7_000.0 && expires_in <= 7_200.0,
        "{expires_in}"
    );

    // The refused secret: one fetch (then answered from memory during the cooldown), failed,
    // with its errcode, and no token.
    let bad_stats = bad.sandbox().stats();
    let bad_fetched = bad_stats.token_fetches[DEFAULT_APPID].stable;
    assert_eq!(bad_fetched, 1);
    assert_eq!(metrics.value(TOKEN_FETCHES, &[("app", BAD_APP)]), Some(1.0));
    assert_eq!(
        metrics.value(TOKEN_FAILURES, &[("app", BAD_APP)]),
        Some(1.0)
    );
    assert_eq!(
        metrics.sum(WECHAT_ERRORS, &[("app", BAD_APP), ("endpoint", "token")]),
        1.0
    );
    // The bad server's gauges are sampled by its own scrape.
    let bad_metrics = scrape(bad.server.metrics_addr).await;
    assert_eq!(
        bad_metrics.value(TOKEN_EXPIRES, &[("app", BAD_APP)]),
        Some(0.0)
    );

    // Upstream latency: one observation per HTTP request the sandbox received.
    let send_requests = metrics.value(
        &format!("{UPSTREAM_DURATION}_count"),
        &[("app", APP), ("endpoint", "send")],
    );
    assert_eq!(send_requests, Some(stats.send_requests as f64));
    let token_requests = metrics.value(
        &format!("{UPSTREAM_DURATION}_count"),
        &[("app", APP), ("endpoint", "token")],
    );
    assert_eq!(token_requests, Some(fetched as f64));
    assert_eq!(
        metrics.value(UPSTREAM_IN_FLIGHT, &[("app", APP)]),
        Some(0.0)
    );
    assert_eq!(
        metrics.value("wechat_notify_upstream_in_flight_limit", &[("app", APP)]),
        Some(64.0)
    );

    // RPCs by method and code (both servers share the process-wide recorder).
    let rpcs = |method: &str, code: &str| {
        metrics.value(RPC_REQUESTS, &[("method", method), ("code", code)])
    };
    assert_eq!(rpcs("SendSubscribe", "OK"), Some(7.0));
    assert_eq!(rpcs("SendSubscribe", "INVALID_ARGUMENT"), Some(2.0));
    assert_eq!(rpcs("SendSubscribe", "NOT_FOUND"), Some(1.0));
    assert_eq!(rpcs("SendSubscribe", "UNAVAILABLE"), Some(1.0));
    assert_eq!(rpcs("SendSubscribe", "FAILED_PRECONDITION"), Some(1.0));
    assert_eq!(rpcs("BatchSend", "OK"), Some(1.0));
    assert_eq!(
        metrics.value(
            "wechat_notify_rpc_duration_seconds_count",
            &[("method", "SendSubscribe"), ("code", "OK")]
        ),
        Some(7.0)
    );
    assert_eq!(
        metrics.value(
            "wechat_notify_rpc_in_flight",
            &[("method", "SendSubscribe")]
        ),
        Some(0.0)
    );

    // Self-explanatory: every family has its HELP and TYPE.
    for (family, kind) in [
        (MESSAGES, "counter"),
        (WECHAT_ERRORS, "counter"),
        (TOKEN_FETCHES, "counter"),
        (TOKEN_FAILURES, "counter"),
        (TOKEN_REJECTIONS, "counter"),
        (TOKEN_EXPIRES, "gauge"),
        (UPSTREAM_DURATION, "histogram"),
        (UPSTREAM_IN_FLIGHT, "gauge"),
        ("wechat_notify_upstream_in_flight_limit", "gauge"),
        (RPC_REQUESTS, "counter"),
        ("wechat_notify_rpc_duration_seconds", "histogram"),
        ("wechat_notify_rpc_in_flight", "gauge"),
        ("wechat_notify_build_info", "gauge"),
    ] {
        assert!(
            metrics.text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
        assert!(
            metrics.text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} is not a {kind}"
        );
    }
    assert_eq!(
        metrics.value(
            "wechat_notify_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // Bounded labels: no openid, template id or secret anywhere.
    for needle in [OPENID, &openid(10), COURSE_REMINDER, BAD_SECRET] {
        assert!(!metrics.text.contains(needle), "{needle} is in /metrics");
    }
    let secret = &SandboxConfig::default().apps[0].secret;
    assert!(!metrics.text.contains(secret.as_str()));
}

const MESSAGES: &str = "wechat_notify_messages_total";
const WECHAT_ERRORS: &str = "wechat_notify_wechat_errors_total";
const TOKEN_FETCHES: &str = "wechat_notify_token_fetches_total";
const TOKEN_FAILURES: &str = "wechat_notify_token_fetch_failures_total";
const TOKEN_REJECTIONS: &str = "wechat_notify_token_rejections_total";
const TOKEN_EXPIRES: &str = "wechat_notify_token_expires_in_seconds";
const UPSTREAM_DURATION: &str = "wechat_notify_upstream_request_duration_seconds";
const UPSTREAM_IN_FLIGHT: &str = "wechat_notify_upstream_in_flight";
const RPC_REQUESTS: &str = "wechat_notify_rpc_requests_total";

/// A parsed `/metrics` answer.
struct Scrape {
    text: String,
    /// (name, labels, value) per sample line.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The value of the one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self.matching(name, labels).collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches {} samples",
            matching.len()
        );
        matching.first().copied()
    }

    /// The sum over every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples
            .iter()
            .filter(move |(sample, sample_labels, _)| {
                sample == name
                    && labels.iter().all(|(key, value)| {
                        sample_labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .map(|(_, _, value)| *value)
    }
}

/// `GET /metrics` over HTTP, parsed.
async fn scrape(addr: SocketAddr) -> Scrape {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("metrics answers");
    assert!(response.status().is_success());
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(parse_sample)
        .collect();
    Scrape { text, samples }
}

/// `name{key="value",...} 1.5` or `name 1.5` (label values here hold no quotes or commas).
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value: f64 = value.parse().expect("a numeric sample value");
    let Some((name, labels)) = series.split_once('{') else {
        return (series.to_owned(), BTreeMap::new(), value);
    };
    let labels = labels
        .strip_suffix('}')
        .expect("labels end with }")
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, quoted) = pair.split_once('=').expect("label is key=value");
            (key.to_owned(), quoted.trim_matches('"').to_owned())
        })
        .collect();
    (name.to_owned(), labels, value)
}
