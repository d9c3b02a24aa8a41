//! The load generator runs briefly against an in-process server and sandbox and reports.
//! No speed is asserted: benchmarks are not timed tests (see docs/benchmarks.md).

use std::time::Duration;

use crate::common::Harness;
use wechat_notify_bench::{LoadOptions, Report, Scenario, run_load};

fn options(target: String, scenario: Scenario) -> LoadOptions {
    LoadOptions {
        scenario,
        target,
        concurrency: 4,
        connections: 2,
        duration: Duration::from_millis(700),
        warmup: Duration::from_millis(100),
        rate: None,
        max_requests: None,
        app: String::new(),
        watch: vec![("self".to_owned(), std::process::id())],
        reset_peak: false,
        keyed: false,
        subscribed: false,
        tls_ca: None,
        token: None,
    }
}

fn assert_shape(report: &Report, scenario: &str) {
    assert_eq!(report.scenario, scenario);
    assert!(report.calls > 0, "{report}");
    assert!(report.messages > 0, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert!(report.messages_per_sec > 0.0);
    assert!(report.elapsed_secs > 0.0);
    let latency = report.latency_us;
    assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99 && latency.p99 <= latency.max);
    assert_eq!(
        report.processes.len(),
        2,
        "the watched process and the generator"
    );
    // The JSON form names every field scripts read.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for field in [
        "messages",
        "messages_per_sec",
        "errors",
        "latency_us",
        "processes",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    for field in ["p50", "p90", "p99"] {
        assert!(json["latency_us"].get(field).is_some());
    }
    let text = report.to_string();
    assert!(
        text.contains("messages/s") && text.contains("p99"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_drives_send_and_batch_and_reports() {
    let harness = Harness::start().await;
    let target = format!("http://{}", harness.server.grpc_addr);

    let closed = run_load(&options(target.clone(), Scenario::Send))
        .await
        .unwrap();
    assert_shape(&closed, "send");
    assert_eq!(closed.mode, "closed");

    let open = run_load(&LoadOptions {
        rate: Some(200.0),
        ..options(target.clone(), Scenario::Send)
    })
    .await
    .unwrap();
    assert_shape(&open, "send");
    assert_eq!(open.mode, "open");
    assert!(open.calls <= 141, "the schedule bounds the calls: {open}");

    // --subscribed: the recipients are recorded as subscribed before the load.
    let mut ledger = crate::common::subscriptions_client(harness.server.grpc_addr).await;
    let first_recipient = || wechat_notify::pb::GetSubscriptionsRequest {
        openid: "oBenchUser000000000000000000".to_owned(),
        ..Default::default()
    };
    let before = ledger.get_subscriptions(first_recipient()).await.unwrap();
    assert!(before.into_inner().subscriptions.is_empty());
    let subscribed = run_load(&LoadOptions {
        subscribed: true,
        max_requests: Some(1),
        ..options(target.clone(), Scenario::Send)
    })
    .await
    .unwrap();
    assert_shape(&subscribed, "send");
    let after = ledger.get_subscriptions(first_recipient()).await.unwrap();
    let known = after.into_inner().subscriptions;
    assert_eq!(known.len(), 1, "{known:?}");
    assert_eq!(
        known[0].status,
        wechat_notify::pb::SubscriptionStatus::Accepted as i32
    );

    let batch = run_load(&LoadOptions {
        concurrency: 1,
        max_requests: Some(2),
        ..options(target, Scenario::Batch { recipients: 50 })
    })
    .await
    .unwrap();
    assert_shape(&batch, "batch");
    assert_eq!(batch.messages % 50, 0, "{batch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_answer_upstream_and_the_bare_forwarder_answer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        axum::serve(listener, wechat_notify_bench::upstream_router())
            .await
            .unwrap();
    });
    let report = run_load(&options(format!("http://{addr}/"), Scenario::Http))
        .await
        .unwrap();
    assert_shape(&report, "http");

    // The bare forwarder (the reference point) in front of it.
    let forwarder =
        wechat_notify_bench::Forwarder::new(&format!("http://{addr}/").parse().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forwarder_addr = listener.local_addr().unwrap();
    let forwarding = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(forwarder.into_server())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let report = run_load(&options(format!("http://{forwarder_addr}"), Scenario::Send))
        .await
        .unwrap();
    assert_shape(&report, "send");
    forwarding.abort();
    upstream.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_speaks_tls_with_a_bearer_token() {
    use wechat_notify::config::{CallerConfig, CallersConfig, Rpc, TokenDigest};
    const TOKEN: &str = "bench-token-0123456789abcdef";

    let ca = crate::common::pki::Ca::new("bench ca");
    let tls = crate::common::pki::TlsDir::new(&ca.server(), None);
    let harness = Harness::start_with(Default::default(), |config| {
        config.tls = Some(tls.files(false));
        config.callers = CallersConfig {
            callers: vec![CallerConfig {
                name: "bench".to_owned(),
                token: Some(TokenDigest::of(TOKEN.as_bytes())),
                tls_subjects: Vec::new(),
                tls_sans: Vec::new(),
                apps: vec!["demo".to_owned()],
                templates: None,
                rpcs: vec![Rpc::Send, Rpc::Batch],
                rate_per_sec: None,
                max_batch: None,
            }],
            ..CallersConfig::default()
        };
    })
    .await;
    let target = format!("https://{}", harness.server.grpc_addr);
    let report = run_load(&LoadOptions {
        tls_ca: Some(ca.pem()),
        token: Some(wechat_notify_bench::BearerToken::new(TOKEN)),
        ..options(target.clone(), Scenario::Send)
    })
    .await
    .unwrap();
    assert_shape(&report, "send");
    // Without the token every call is refused, and counted as such.
    let refused = run_load(&LoadOptions {
        tls_ca: Some(ca.pem()),
        ..options(target, Scenario::Send)
    })
    .await
    .unwrap();
    assert_eq!(refused.messages, 0);
    assert!(refused.errors.contains_key("UNAUTHENTICATED"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_proxy_forwards_every_byte_in_order_and_holds_each_way() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An echo server behind the proxy.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = echo.accept().await.unwrap();
        let (mut read, mut write) = stream.split();
        tokio::io::copy(&mut read, &mut write).await.unwrap();
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    const DELAY: Duration = Duration::from_millis(30);
    let proxy = tokio::spawn(wechat_notify_bench::serve_delay(
        listener,
        echo_addr,
        DELAY,
        std::future::pending(),
    ));

    let mut client = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let started = tokio::time::Instant::now();
    let (mut read, mut write) = client.split();
    let (_, echoed) = tokio::join!(
        async {
            for chunk in sent.chunks(7_000) {
                write.write_all(chunk).await.unwrap();
            }
            write.shutdown().await.unwrap();
        },
        async {
            let mut echoed = Vec::new();
            read.read_to_end(&mut echoed).await.unwrap();
            echoed
        }
    );
    assert!(
        echoed == sent,
        "{} bytes back of {}",
        echoed.len(),
        sent.len()
    );
    // Held on the way there and on the way back: a lower bound, which no slow machine breaks.
    assert!(started.elapsed() >= 2 * DELAY, "{:?}", started.elapsed());
    proxy.abort();
}
