//! Every malformed setting, through the real binary: exit 64 before any port is bound, with a
//! message that quotes the setting as the user gave it (the environment variable or the flag)
//! and says what was expected.

use std::process::{Command, Output, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_wechat-notify");
const EXIT_CONFIG: i32 = 64;
const BOOLEANS: &str = "expected one of true, false, 1, 0, yes, no, on, off (any case)";

/// (environment variable, flag, a malformed value, what the message must say was expected).
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "NOTIFY_LISTEN",
        "--listen",
        "localhost:5006x",
        "expected IP:PORT or localhost:PORT, e.g. 0.0.0.0:50051",
    ),
    (
        "NOTIFY_METRICS_LISTEN",
        "--metrics-listen",
        ":99999",
        "expected IP:PORT or localhost:PORT, e.g. 0.0.0.0:9464",
    ),
    (
        "NOTIFY_SANDBOX_LISTEN",
        "--sandbox-listen",
        "sandbox",
        "expected IP:PORT or localhost:PORT, e.g. 127.0.0.1:8089",
    ),
    (
        "NOTIFY_LOG_FORMAT",
        "--log-format",
        "yaml",
        "expected text or json",
    ),
    (
        "WECHAT_TOKEN_MODE",
        "--token-mode",
        "fast",
        "expected stable or classic",
    ),
    (
        "NOTIFY_MAX_IN_FLIGHT",
        "--max-in-flight",
        "lots",
        "expected a whole number from 1 to 10000",
    ),
    (
        "NOTIFY_RATE_PER_SEC",
        "--rate-per-sec",
        "0",
        "expected a whole number from 1 to 1000000",
    ),
    (
        "NOTIFY_MAX_BATCH_RECIPIENTS",
        "--max-batch-recipients",
        "100001",
        "expected a whole number from 1 to 100000",
    ),
    (
        "NOTIFY_SHUTDOWN_DELAY",
        "--shutdown-delay",
        "5s",
        "expected a whole number from 0 to 3600",
    ),
    (
        "NOTIFY_SHUTDOWN_GRACE",
        "--shutdown-grace",
        "3601",
        "expected a whole number from 0 to 3600",
    ),
    (
        "NOTIFY_IDEMPOTENCY_TTL",
        "--idempotency-ttl",
        "1",
        "expected a whole number from 86400 to 2592000",
    ),
    (
        "NOTIFY_IDEMPOTENCY_CAPACITY",
        "--idempotency-capacity",
        "0",
        "expected a whole number from 1 to 100000000",
    ),
    (
        "WECHAT_CONNECT_TIMEOUT_MS",
        "--connect-timeout-ms",
        "1.5",
        "expected a whole number from 1 to 60000",
    ),
    (
        "WECHAT_REQUEST_TIMEOUT_MS",
        "--request-timeout-ms",
        "0",
        "expected a whole number from 1 to 600000",
    ),
    (
        "NOTIFY_TEMPLATE_REFRESH",
        "--template-refresh",
        "59",
        "expected a whole number from 60 to 86400",
    ),
    ("NOTIFY_SANDBOX", "--sandbox", "ture", BOOLEANS),
    ("NOTIFY_WARM_TOKENS", "--warm-tokens", "y", BOOLEANS),
    (
        "NOTIFY_TEMPLATE_CHECKS",
        "--template-checks",
        "maybe",
        BOOLEANS,
    ),
];

/// The binary with only `vars` in its environment and one app configured (so that the bad
/// setting is the only thing wrong).
fn serve(vars: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BINARY)
        .env_clear()
        .env("WECHAT_APPID", "wx0123456789abcdef")
        .env("WECHAT_SECRET", "s3cr3t-value")
        .envs(vars.iter().copied())
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(!stderr.contains("serving"), "nothing starts: {stderr}");
    stderr
}

#[test]
fn a_malformed_environment_variable_is_named_with_its_value() {
    for (env, _, value, expected) in CASES {
        let stderr = refused(&serve(&[(env, value)], &[]));
        let said = format!("{env}={value}: {expected}");
        assert!(stderr.contains(&said), "{env}: want {said:?} in {stderr}");
    }
}

#[test]
fn a_malformed_flag_is_named_with_its_value() {
    for (_, flag, value, expected) in CASES {
        // Booleans take their value after `=`: `--sandbox value` would be an argument.
        let args: Vec<String> = if expected == &BOOLEANS {
            vec![format!("{flag}={value}")]
        } else {
            vec![(*flag).to_owned(), (*value).to_owned()]
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = refused(&serve(&[], &args));
        let said = format!("{flag} {value}: {expected}");
        assert!(stderr.contains(&said), "{flag}: want {said:?} in {stderr}");
    }
}

#[test]
fn the_app_settings_name_what_was_set_and_never_echo_a_credential() {
    // (variable, flag, value, what the message says) for the settings whose value is not
    // quoted: it may hold a credential, or the message quotes the part at fault itself.
    let cases = [
        (
            "WECHAT_API_BASE",
            "--api-base",
            "https://user:hunter2@proxy.example",
            "must not contain credentials",
        ),
        (
            "WECHAT_API_BASE",
            "--api-base",
            "ftp://api.weixin.qq.com",
            "is not an http or https URL",
        ),
        (
            "WECHAT_APPID",
            "--appid",
            "wx1 ",
            "contains whitespace or control characters",
        ),
        (
            "WECHAT_SECRET",
            "--secret",
            "hunter2 with spaces",
            "the secret contains whitespace",
        ),
        (
            "WECHAT_SECRET_FILE",
            "--secret-file",
            "/no/such/secret",
            "cannot read /no/such/secret",
        ),
    ];
    for (env, flag, value, expected) in cases {
        let needs_secret = !matches!(env, "WECHAT_SECRET" | "WECHAT_SECRET_FILE");
        let output = Command::new(BINARY)
            .env_clear()
            .env("WECHAT_APPID", "wx0123456789abcdef")
            .env(env, value)
            .args(["serve"])
            .args(
                needs_secret
                    .then_some(["--secret", "s3cr3t-value"])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = refused(&output);
        assert!(stderr.contains(&format!("{env}: ")), "{env}: {stderr}");
        assert!(stderr.contains(expected), "{env}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{env}: {stderr}");

        let mut args = vec!["serve", flag, value];
        if needs_secret {
            args.extend(["--secret", "s3cr3t-value"]);
        }
        if env != "WECHAT_APPID" {
            args.extend(["--appid", "wx0123456789abcdef"]);
        }
        let output = Command::new(BINARY)
            .env_clear()
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = refused(&output);
        assert!(stderr.contains(&format!("{flag}: ")), "{flag}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{flag}: {stderr}");
    }
    let output = Command::new(BINARY)
        .env_clear()
        .env("NOTIFY_CONFIG", "/no/such/apps.toml")
        .arg("serve")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = refused(&output);
    assert!(
        stderr.contains("NOTIFY_CONFIG (--config) /no/such/apps.toml"),
        "{stderr}"
    );
}

#[test]
fn a_flag_wins_over_its_environment_variable_and_is_the_one_named() {
    let stderr = refused(&serve(
        &[("NOTIFY_LISTEN", "127.0.0.1:0")],
        &["--listen", "nowhere"],
    ));
    assert!(stderr.contains("--listen nowhere: "), "{stderr}");
    assert!(!stderr.contains("NOTIFY_LISTEN"), "{stderr}");
}

#[test]
fn a_malformed_apps_file_value_is_named_by_its_key() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut file,
        b"[[apps]]\nname = \"shop\"\nappid = \"wx1\"\nsecret = \"s\"\nmax_in_flight = \"many\"\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .env_clear()
        .env("NOTIFY_CONFIG", file.path())
        .arg("serve")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = refused(&output);
    assert!(stderr.contains("apps[0].max_in_flight"), "{stderr}");
}

#[test]
fn an_unknown_flag_and_a_bad_worker_count_are_usage_errors_too() {
    let stderr = refused(&serve(&[], &["--no-such-flag"]));
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    let stderr = refused(&serve(&[("TOKIO_WORKER_THREADS", "two")], &[]));
    assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{stderr}");
}

#[test]
fn help_is_not_an_error() {
    let output = serve(&[], &["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--shutdown-delay"), "{help}");
}
