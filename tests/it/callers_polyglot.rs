//! Callers and TLS through the real binary and real clients: docs/callers.md's grpcurl
//! walkthrough as written, and the Python and Node examples with a bearer token and with a
//! client certificate, against `wechat-notify serve --sandbox --config callers.toml --tls-*`.
//! Certificates are made in the test. Toolchains come from `scripts/test` (see
//! tests/it/examples.rs).

use std::{ffi::OsString, path::Path, process::Command};

use crate::common::pki::{Ca, Leaf};
use crate::polyglot::{
    Options, Service, generate_python_stubs, node_modules, path_with, repo_root, retarget, run,
    venv_python,
};

const TOKEN: &str = "ops-token-0123456789abcdef0123";
const DEMO_USER: &str = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M";

/// A directory with the walkthrough's files: `ca.crt`, `server.*`, `shop.*` and the
/// `callers.toml` of docs/callers.md.
struct Files {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("walkthrough ca");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.crt", &ca.pem());
        let server = ca.server();
        write("server.crt", &server.cert);
        write("server.key", &server.key);
        let Leaf { cert, key } = ca.client("shop", &[]);
        write("shop.crt", &cert);
        write("shop.key", &key);
        write("callers.toml", &callers_toml());
        Files { dir, ca }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `serve --sandbox` with the walkthrough's callers and TLS files.
    fn start(&self, name: &str) -> Service {
        let file = |name: &str| OsString::from(self.path().join(name));
        Service::start_with(
            name,
            &Options {
                args: vec![
                    "--config".into(),
                    file("callers.toml"),
                    "--tls-cert".into(),
                    file("server.crt"),
                    "--tls-key".into(),
                    file("server.key"),
                    "--tls-client-ca".into(),
                    file("ca.crt"),
                ],
                env: vec![("OPS_TOKEN".into(), TOKEN.into())],
                tls_ca: Some(self.ca.pem()),
            },
        )
    }
}

/// The ```toml block of docs/callers.md's grpcurl section: the test uses what the doc shows.
fn callers_toml() -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/callers.md")).unwrap();
    let section = doc
        .split("\n## ")
        .find(|section| section.starts_with("Try it with grpcurl over TLS\n"))
        .expect("docs/callers.md has the grpcurl section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a toml block");
    block.to_owned()
}

#[test]
fn callers_doc_grpcurl_walkthrough_runs_as_written() {
    let grpcurl = crate::polyglot::grpcurl();
    let steps = crate::polyglot::walkthrough("docs/callers.md", "Try it with grpcurl over TLS");
    assert_eq!(steps.len(), 7, "the walkthrough changed; update this test");
    let files = Files::new();
    let service = files.start("callers-grpcurl");
    let path = path_with(grpcurl.parent().unwrap());
    let outcomes: Vec<_> = steps
        .iter()
        .map(|step| {
            let mut command = Command::new("bash");
            command
                .args(["-o", "pipefail", "-c"])
                .arg(retarget(&step.command, &service))
                .current_dir(files.path())
                .env("PATH", &path)
                .env("NOTIFY_TOKEN", TOKEN);
            let outcome = run(command);
            eprintln!(
                "# {}\n$ {}\n{}",
                step.comment,
                step.command,
                outcome.describe()
            );
            outcome
        })
        .collect();
    let [
        list,
        health,
        by_cert,
        by_token,
        anonymous,
        template,
        not_allowed,
    ] = outcomes.as_slice()
    else {
        unreachable!()
    };
    for (outcome, what) in [
        (list, "list"),
        (health, "health"),
        (by_cert, "send by certificate"),
        (by_token, "send by token"),
    ] {
        assert!(outcome.status.success(), "{what}\n{}", outcome.describe());
    }
    assert!(list.stdout.contains("notify.v1.NotifyService"));
    assert!(health.stdout.contains("SERVING"));
    for sent in [by_cert, by_token] {
        assert!(sent.stdout.contains("\"msgid\""), "{}", sent.describe());
    }
    assert_eq!(
        anonymous.status.code(),
        Some(80),
        "{}",
        anonymous.describe()
    );
    assert!(anonymous.stderr.contains("Unauthenticated"));
    assert_eq!(template.status.code(), Some(71), "{}", template.describe());
    assert!(
        template.stderr.contains("template `sandbox-order-shipped`"),
        "{}",
        template.describe()
    );
    assert_eq!(
        not_allowed.status.code(),
        Some(71),
        "{}",
        not_allowed.describe()
    );
    for expected in ["PermissionDenied", "CALLER_NOT_ALLOWED", "rpc batch", "ops"] {
        assert!(
            not_allowed.stderr.contains(expected),
            "{expected}\n{}",
            not_allowed.describe()
        );
    }
    assert!(!anonymous.stderr.contains(TOKEN) && !not_allowed.stderr.contains(TOKEN));
    let inbox = service.inbox(DEMO_USER);
    assert_eq!(
        inbox["messages"].as_array().unwrap().len(),
        2,
        "the two identified sends were delivered, nothing else: {inbox}"
    );
}

/// What both examples print on success: a delivered message and a full batch.
fn assert_sent(service: &Service, outcome: &crate::polyglot::Outcome) {
    assert!(
        outcome.status.success(),
        "the example failed\n{}\n--- service log\n{}",
        outcome.describe(),
        service.log()
    );
    assert!(
        outcome.stdout.contains("sent: msgid="),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("batch: succeeded=2 failed=0"),
        "{}",
        outcome.stdout
    );
}

#[test]
fn python_example_speaks_tls_with_a_token_or_a_certificate() {
    let python = venv_python();
    let example_dir = repo_root().join("examples/python");
    generate_python_stubs(&python);

    // `ops` may only SendSubscribe, so the token run uses `shop`'s certificate for the batch
    // half: run once with the certificate (everything), once with the token (refused batch).
    let files = Files::new();
    let service = files.start("callers-python");
    let example = |extra: &[(&str, &Path)], token: Option<&str>| {
        let mut command = Command::new(&python);
        command
            .current_dir(&example_dir)
            .arg("send.py")
            .env("NOTIFY_TARGET", service.grpc.to_string())
            .env("SANDBOX_URL", service.sandbox_url())
            .env("NOTIFY_CA_FILE", files.path().join("ca.crt"));
        for (name, path) in extra {
            command.env(name, path);
        }
        if let Some(token) = token {
            command.env("NOTIFY_TOKEN", token);
        }
        run(command)
    };
    let by_cert = example(
        &[
            ("NOTIFY_CERT_FILE", &files.path().join("shop.crt")),
            ("NOTIFY_KEY_FILE", &files.path().join("shop.key")),
        ],
        None,
    );
    assert_sent(&service, &by_cert);
    let by_token = example(&[], Some(TOKEN));
    assert!(
        by_token.stdout.contains("sent: msgid="),
        "{}",
        by_token.describe()
    );
    assert!(
        !by_token.status.success() && by_token.stderr.contains("PERMISSION_DENIED"),
        "ops may not batch\n{}",
        by_token.describe()
    );
    let anonymous = example(&[], None);
    assert!(!anonymous.status.success());
    assert!(
        anonymous.stderr.contains("UNAUTHENTICATED"),
        "{}",
        anonymous.describe()
    );
}

#[test]
fn node_example_speaks_tls_with_a_certificate_or_a_token() {
    let example_dir = repo_root().join("examples/node");
    node_modules();
    let files = Files::new();
    let service = files.start("callers-node");
    let node = std::env::var_os("WECHAT_NOTIFY_NODE").unwrap_or_else(|| "node".into());
    let example = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(&node);
        command
            .current_dir(&example_dir)
            .arg("send.js")
            .arg("--target")
            .arg(service.grpc.to_string())
            .arg("--sandbox-url")
            .arg(service.sandbox_url())
            .arg("--ca-file")
            .arg(files.path().join("ca.crt"))
            .args(args);
        if let Some(token) = token {
            command.env("NOTIFY_TOKEN", token);
        }
        run(command)
    };
    let cert = files.path().join("shop.crt");
    let key = files.path().join("shop.key");
    let by_cert = example(
        &[
            "--cert-file",
            cert.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ],
        None,
    );
    assert_sent(&service, &by_cert);
    let by_token = example(&[], Some(TOKEN));
    assert!(
        by_token.stdout.contains("sent: msgid="),
        "{}",
        by_token.describe()
    );
    assert!(
        !by_token.status.success() && by_token.stderr.contains("PERMISSION_DENIED"),
        "ops may not batch\n{}",
        by_token.describe()
    );
}

#[test]
fn an_open_service_says_so_and_require_callers_refuses_to_start_open() {
    let service = Service::start("callers-open");
    let warnings: Vec<String> = service
        .log()
        .lines()
        .filter(|line| line.contains("no callers configured"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{}", service.log());
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    drop(service);

    let refused = run({
        let mut command = Command::new(env!("CARGO_BIN_EXE_wechat-notify"));
        command
            .args(["serve", "--sandbox", "--listen", "127.0.0.1:0"])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--sandbox-listen",
                "127.0.0.1:0",
            ])
            .env("NOTIFY_REQUIRE_CALLERS", "true");
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("NOTIFY_") && name != "NOTIFY_REQUIRE_CALLERS" {
                command.env_remove(name);
            }
        }
        command
    });
    assert_eq!(refused.status.code(), Some(64), "{}", refused.describe());
    assert!(
        refused
            .stderr
            .contains("NOTIFY_REQUIRE_CALLERS: no caller is configured"),
        "{}",
        refused.describe()
    );
}
