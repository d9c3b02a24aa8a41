//! The polyglot callers, run for real: the Python and Node examples and the README's grpcurl
//! walkthrough, each against its own `wechat-notify serve --sandbox` (the built binary) on free
//! loopback ports.
//!
//! Their toolchains (a virtualenv with grpcio and grpcurl, the Node example's node_modules) are
//! installed by `scripts/test`; when they are missing these tests fail and say so.

use std::process::Command;

use crate::polyglot::{
    Outcome, Service, generate_python_stubs, node_modules, path_with, repo_root, retarget, run,
    venv_python, walkthrough,
};
use serde_json::Value;

/// The openids the examples and the walkthrough send to.
const DEMO_USER: &str = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M";

/// The value of `name=` on the example's output line starting with `prefix`.
fn field<'a>(output: &'a str, prefix: &str, name: &str) -> &'a str {
    let line = output
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{output}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// What both examples print, checked the same way: a delivered message, its deduplicated
/// retry, the 43101 path and the batch totals; the message is in the sandbox's inbox.
fn assert_example_output(service: &Service, outcome: &Outcome, true_word: &str) {
    assert!(
        outcome.status.success(),
        "the example failed\n{}\n--- service log\n{}",
        outcome.describe(),
        service.log()
    );
    let out = &outcome.stdout;
    let msgid: u64 = field(out, "sent:", "msgid")
        .parse()
        .expect("msgid is a u64");
    assert!(msgid > 1 << 53, "msgid {msgid} must survive above 2^53");
    assert_eq!(field(out, "retried:", "msgid"), msgid.to_string(), "{out}");
    assert_eq!(field(out, "retried:", "deduplicated"), true_word, "{out}");
    assert_eq!(
        field(out, "not subscribed:", "code"),
        "FAILED_PRECONDITION",
        "{out}"
    );
    assert_eq!(
        field(out, "not subscribed:", "wechat-errcode"),
        "43101",
        "{out}"
    );
    assert_eq!(field(out, "batch:", "succeeded"), "2", "{out}");
    assert_eq!(field(out, "batch:", "failed"), "0", "{out}");
    // The report is recorded and answered back: one one-time grant from the client.
    assert_eq!(
        field(out, "recorded:", "template"),
        "sandbox-course-reminder",
        "{out}"
    );
    assert_eq!(
        field(out, "recorded:", "status"),
        "SUBSCRIPTION_STATUS_ACCEPTED",
        "{out}"
    );
    assert_eq!(field(out, "recorded:", "remaining"), "1", "{out}");
    assert_eq!(
        field(out, "known:", "source"),
        "SUBSCRIPTION_SOURCE_CLIENT_REPORT",
        "{out}"
    );
    assert_eq!(field(out, "known:", "remaining"), "1", "{out}");

    let inbox = service.inbox(DEMO_USER);
    let delivered: Vec<u64> = inbox["messages"]
        .as_array()
        .expect("inbox messages")
        .iter()
        .map(|message| message["msgid"].as_u64().expect("msgid"))
        .collect();
    assert!(delivered.contains(&msgid), "msgid {msgid} not in {inbox}");
    // One send and one batch reached the demo user; the retry was answered from the record.
    assert_eq!(delivered.len(), 2, "{inbox}");
}

#[test]
fn python_example_sends_handles_43101_and_batches() {
    let python = venv_python();
    let example_dir = repo_root().join("examples/python");
    generate_python_stubs(&python);

    let service = Service::start("python-example");
    let outcome = run({
        let mut command = Command::new(&python);
        command
            .current_dir(&example_dir)
            .arg("send.py")
            .env("NOTIFY_TARGET", service.grpc.to_string())
            .env("SANDBOX_URL", service.sandbox_url());
        command
    });
    assert_example_output(&service, &outcome, "True");
}

#[test]
fn node_example_sends_handles_43101_and_batches() {
    let example_dir = repo_root().join("examples/node");
    node_modules();
    let service = Service::start("node-example");
    let node = std::env::var_os("WECHAT_NOTIFY_NODE").unwrap_or_else(|| "node".into());
    let outcome = run({
        let mut command = Command::new(node);
        command
            .current_dir(&example_dir)
            .arg("send.js")
            .arg("--target")
            .arg(service.grpc.to_string())
            .arg("--sandbox-url")
            .arg(service.sandbox_url());
        command
    });
    assert_example_output(&service, &outcome, "true");
}

/// grpcurl's JSON answer on stdout.
fn json(outcome: &Outcome) -> Value {
    serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}):\n{}", outcome.describe()))
}

/// The README's quick tour, command for command, against a real server: the README
/// and this test cannot drift. The commands run on the service's free ports (not the README's
/// fixed defaults), so the test neither collides with a `cargo run -- serve --sandbox` the
/// developer keeps running nor with a parallel test.
#[test]
fn readme_grpcurl_walkthrough_runs_as_written() {
    let grpcurl = crate::polyglot::grpcurl();
    let steps = walkthrough("README.md", "Quick tour");
    let shown: Vec<&str> = steps.iter().map(|step| step.command.as_str()).collect();
    assert_eq!(
        steps.len(),
        10,
        "the walkthrough's commands changed; update this test with them: {shown:#?}"
    );

    let service = Service::start("grpcurl-walkthrough");
    // `grpcurl` on PATH is the binary shipped in the package.
    let path = path_with(grpcurl.parent().unwrap());
    let mut step_index = 0;
    let mut next = |marker: &str| -> Outcome {
        let step = &steps[step_index];
        step_index += 1;
        assert!(
            step.command.contains(marker),
            "walkthrough command {step_index} should contain {marker:?}: {step:#?}"
        );
        let mut command = Command::new("bash");
        command
            .args(["-o", "pipefail", "-c"])
            .arg(retarget(&step.command, &service))
            .env("PATH", &path);
        let outcome = run(command);
        eprintln!(
            "# {}\n$ {}\n{}",
            step.comment,
            step.command,
            outcome.describe()
        );
        outcome
    };
    let ok = |outcome: &Outcome, what: &str| {
        assert!(
            outcome.status.success(),
            "{what} failed\n{}",
            outcome.describe()
        );
    };

    let list = next(" list");
    ok(&list, "list");
    for service_name in [
        "notify.v1.NotifyService",
        "notify.v1.SubscriptionService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.stdout.contains(service_name), "{}", list.describe());
    }
    let describe = next("describe notify.v1.NotifyService");
    ok(&describe, "describe the service");
    for rpc in ["rpc SendSubscribe", "rpc BatchSend"] {
        assert!(describe.stdout.contains(rpc), "{}", describe.describe());
    }
    let describe = next("describe notify.v1.SendSubscribeRequest");
    ok(&describe, "describe the request");
    assert!(
        describe.stdout.contains("idempotency_key"),
        "{}",
        describe.describe()
    );

    let sent = next("notify.v1.NotifyService/SendSubscribe");
    ok(&sent, "the first send");
    let sent = json(&sent);
    let msgid = sent["msgid"]
        .as_str()
        .expect("msgid (a uint64, as a string)");
    assert_ne!(msgid, "0", "{sent}");
    assert_ne!(sent["deduplicated"], true, "{sent}");

    let repeated = next("notify.v1.NotifyService/SendSubscribe");
    ok(&repeated, "the repeated send");
    let repeated = json(&repeated);
    assert_eq!(repeated["deduplicated"], true, "{repeated}");
    assert_eq!(repeated["msgid"], msgid, "{repeated}");

    let inbox = next("/sandbox/inbox");
    ok(&inbox, "the inbox");
    let inbox = json(&inbox);
    let messages = inbox["messages"].as_array().expect("inbox messages");
    assert_eq!(messages.len(), 1, "sent once, delivered once: {inbox}");
    assert_eq!(messages[0]["msgid"].to_string(), msgid, "{inbox}");
    assert_eq!(messages[0]["data"]["phrase1"], "王小二", "{inbox}");

    let refused = next("notify.v1.NotifyService/SendSubscribe");
    // grpcurl exits 64 + the status code: InvalidArgument is 3.
    assert_eq!(
        refused.status.code(),
        Some(67),
        "the rule violation must fail with INVALID_ARGUMENT\n{}",
        refused.describe()
    );
    for expected in [
        "Code: InvalidArgument",
        "data.phrase1",
        "google.rpc.BadRequest",
    ] {
        assert!(
            refused.stderr.contains(expected),
            "{expected:?} missing\n{}",
            refused.describe()
        );
    }

    let batch = next("notify.v1.NotifyService/BatchSend");
    ok(&batch, "the batch");
    let batch = json(&batch);
    assert_eq!(batch["succeeded"], 2, "{batch}");
    assert_eq!(batch["failed"].as_u64().unwrap_or(0), 0, "{batch}");
    let results = batch["results"].as_array().expect("batch results");
    assert_eq!(results.len(), 2, "{batch}");
    for result in results {
        assert_ne!(
            result["msgid"].as_str().unwrap_or("0"),
            "0",
            "every recipient got a message: {batch}"
        );
    }

    let health = next("grpc.health.v1.Health/Check");
    ok(&health, "health");
    assert_eq!(json(&health)["status"], "SERVING");

    let metrics = next("/metrics");
    ok(&metrics, "metrics");
    assert!(
        metrics.stdout.lines().any(|line| {
            line.starts_with("wechat_notify_messages_total{") && line.contains("outcome=\"sent\"")
        }),
        "no sent count in the metrics\n{}",
        metrics.describe()
    );
}
