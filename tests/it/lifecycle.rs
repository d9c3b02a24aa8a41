//! The process lifecycle, through the real binary: SIGTERM in the middle of a BatchSend turns
//! health NOT_SERVING at once, lets the batch finish and exits 0; during the shutdown delay new
//! connections are still accepted and served while health says NOT_SERVING, and SIGINT skips
//! the delay; `--warm-tokens` with a secret WeChat refuses exits non-zero without printing the
//! secret.

use std::time::{Duration, Instant};

use crate::common::{process::*, *};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wechat_notify::pb;
use wechat_notify_sandbox::{DEFAULT_APPID, Sandbox, SandboxConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_goes_not_serving_finishes_the_batch_and_exits_zero() {
    let logs = tempfile::NamedTempFile::new().unwrap();
    let command = serve_sandbox(
        logs.path(),
        &["--shutdown-delay", "0", "--shutdown-grace", "20"],
    );
    let mut process = Process::spawn(command);
    let listening = process.listening(logs.path());
    let (grpc_addr, sandbox_addr) = (listening.grpc, listening.sandbox.unwrap());
    let health_channel = wait_until_serving(grpc_addr, &mut process).await;

    // Watch health on a connection of its own, opened before shutdown (a draining server
    // refuses new streams).
    let mut health = HealthClient::new(health_channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Every send's answer held back for 3 s: the batch (sent concurrently) takes that long.
    let sandbox = format!("http://{sandbox_addr}/sandbox");
    let http = reqwest::Client::new();
    let injected = http
        .post(format!("{sandbox}/faults"))
        .json(&serde_json::json!({"latency_ms": 3000}))
        .send()
        .await
        .unwrap();
    assert!(injected.status().is_success());

    let recipients = 5;
    let mut client = connect(grpc_addr).await;
    let batch = tokio::spawn(async move {
        let mut request = Request::new(pb::BatchSendRequest {
            template_id: COURSE_REMINDER.to_owned(),
            data: course_data(),
            recipients: (0..recipients)
                .map(|index| pb::Recipient {
                    touser: openid(index),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-request-id", "ops-shutdown-batch".parse().unwrap());
        client.batch_send(request).await
    });

    // Once WeChat (the sandbox) holds the sends, the batch is mid-flight.
    wait_for(|| async {
        let stats: serde_json::Value = http
            .get(format!("{sandbox}/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (stats["in_flight_sends"].as_u64()? == recipients as u64).then_some(())
    })
    .await;

    let terminated = Instant::now();
    process.signal("-TERM");

    let update = watch
        .message()
        .await
        .expect("watch answers")
        .expect("an update");
    assert_eq!(update.status, ServingStatus::NotServing as i32);
    assert!(
        !batch.is_finished(),
        "NOT_SERVING is announced while the batch is still running"
    );
    // The server lets go of the Watch stream rather than hold the shutdown for it.
    assert!(watch.message().await.expect("ends cleanly").is_none());

    let response = batch
        .await
        .unwrap()
        .expect("the batch completes")
        .into_inner();
    assert_eq!(response.results.len(), recipients);
    assert_eq!(
        (response.succeeded, response.failed),
        (recipients as u32, 0)
    );
    assert!(response.results.iter().all(|result| result.code == 0));

    let status = process.wait_for_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        terminated.elapsed() < Duration::from_secs(15),
        "exited when the batch was done, not at the end of the 20 s grace period"
    );

    let logs = std::fs::read_to_string(logs.path()).unwrap();
    for expected in [
        "SIGTERM received",
        "shutdown begun: health is NOT_SERVING",
        "no longer accepting; draining the calls in flight",
        "shutdown complete",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in:\n{logs}");
    }
    assert!(!logs.contains("grace period over"), "{logs}");
    let batch_line = logs
        .lines()
        .find(|line| line.contains("batch sent"))
        .expect("the batch's line");
    assert!(batch_line.contains("ops-shutdown-batch"), "{batch_line}");
    assert!(batch_line.contains("method=\"BatchSend\"") || batch_line.contains("method=BatchSend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_new_connections_are_served_for_the_delay_with_health_not_serving() {
    let logs = tempfile::NamedTempFile::new().unwrap();
    // Far longer than the test needs: the second signal below ends it.
    let command = serve_sandbox(logs.path(), &["--shutdown-delay", "300"]);
    let mut process = Process::spawn(command);
    let grpc_addr = process.listening(logs.path()).grpc;
    wait_until_serving(grpc_addr, &mut process).await;

    process.signal("-TERM");

    // A probe on a new connection, as a kubelet makes one per probe, is answered NOT_SERVING
    // (not refused) once the signal has been handled.
    wait_for(|| async {
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .expect("the listener still accepts during the delay");
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: SERVICE.to_owned(),
            })
            .await
            .expect("health answers during the delay");
        (answer.get_ref().status == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    // A caller whose load balancer has not yet seen the endpoint leave is still served.
    let mut client = connect(grpc_addr).await;
    let sent = client
        .send_subscribe(pb::SendSubscribeRequest {
            touser: openid(1),
            template_id: COURSE_REMINDER.to_owned(),
            data: course_data(),
            ..Default::default()
        })
        .await
        .expect("a send on a new connection during the delay succeeds");
    assert!(sent.get_ref().msgid > 0);
    assert!(!process.exited(), "still running during the delay");

    // A second signal ends the delay; the process drains and exits 0.
    process.signal("-INT");
    let status =
        tokio::task::spawn_blocking(move || process.wait_for_exit(Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let logs = std::fs::read_to_string(logs.path()).unwrap();
    for expected in [
        "SIGTERM received",
        "shutdown begun: health is NOT_SERVING; serving on for the delay, then draining delay_secs=300",
        "SIGINT received",
        "second signal: the delay ends now",
        "shutdown complete",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_skips_the_delay() {
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut command = command(logs.path());
    command
        .args(["serve", "--sandbox"])
        .env("NOTIFY_LISTEN", ANY_PORT)
        .env("NOTIFY_METRICS_LISTEN", ANY_PORT)
        .env("NOTIFY_SANDBOX_LISTEN", ANY_PORT)
        .env("NOTIFY_SHUTDOWN_DELAY", "300");
    let mut process = Process::spawn(command);
    let grpc_addr = process.listening(logs.path()).grpc;
    wait_until_serving(grpc_addr, &mut process).await;

    process.signal("-INT");
    // Bounded far below the 300 s delay: Ctrl-C does not wait for it.
    let status =
        tokio::task::spawn_blocking(move || process.wait_for_exit(Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let logs = std::fs::read_to_string(logs.path()).unwrap();
    assert!(
        logs.contains(
            "shutdown begun: health is NOT_SERVING; serving on for the delay, then draining delay_secs=0"
        ),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_tokens_with_a_refused_secret_exits_non_zero_without_the_secret() {
    let sandbox = Sandbox::new(SandboxConfig::default())
        .spawn(loopback())
        .await
        .unwrap();
    let secret = "f00dfeedf00dfeedf00dfeedf00dfeed";
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut command = command(logs.path());
    command
        .args([
            "serve",
            "--warm-tokens",
            "--listen",
            ANY_PORT,
            "--metrics-listen",
            ANY_PORT,
        ])
        .env("WECHAT_APPID", DEFAULT_APPID)
        .env("WECHAT_SECRET", secret)
        .env("WECHAT_API_BASE", sandbox.base_url().as_str());
    let mut process = Process::spawn(command);
    // The sandbox answers from this runtime: wait without blocking it.
    let status = tokio::task::spawn_blocking(move || {
        let status = process.wait_for_exit(Duration::from_secs(30));
        drop(process);
        status
    })
    .await
    .unwrap();
    assert!(!status.success(), "a refused secret must not start");
    assert_eq!(status.code(), Some(1));

    let logs = std::fs::read_to_string(logs.path()).unwrap();
    assert!(
        logs.contains("cannot fetch a token for app"),
        "the error says what failed:\n{logs}"
    );
    assert!(logs.contains("40125") || logs.contains("40001"), "{logs}");
    assert!(!logs.contains(secret), "the secret was printed:\n{logs}");
    assert!(!logs.contains(" serving"), "never served:\n{logs}");
    assert_eq!(sandbox.sandbox().stats().send_requests, 0);
}

/// Polls `probe` until it answers `Some`, for at most 20 s.
async fn wait_for<F, Fut>(mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe().await.is_none() {
        assert!(Instant::now() < deadline, "condition not reached in 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
