//! Configuration tests. Nothing here reads or changes the process environment: arguments are
//! parsed with every clap `env` removed, and `secret_env` lookups go through a closure.

use std::{collections::HashMap, io::Write, path::Path};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use url::Url;

use super::*;
use crate::{push_crypto::PushMode, subscriptions::SubscriptionCheck, wechat::TokenMode};

#[derive(Parser, Debug)]
struct TestCli {
    #[command(subcommand)]
    command: TestCommand,
}

#[derive(Subcommand, Debug)]
enum TestCommand {
    Serve(ServeArgs),
}

/// `wechat-notify serve <args>`, ignoring the real environment.
fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
    let command = TestCli::command().mut_subcommand("serve", |serve| {
        serve.mut_args(|arg| arg.env(None::<&'static str>))
    });
    let argv = ["wechat-notify", "serve"].iter().chain(args);
    let matches = command.try_get_matches_from(argv)?;
    let TestCommand::Serve(mut serve) = TestCli::from_arg_matches(&matches)?.command;
    let (_, serve_matches) = matches.subcommand().expect("serve");
    serve.sources = Sources::from_matches(serve_matches);
    Ok(serve)
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// The plan of `wechat-notify serve <args>`.
fn plan(args: &[&str]) -> Result<ServePlan, ConfigError> {
    parse(args)
        .expect("arguments parse")
        .into_config_with_env(no_env)
}

/// The configuration of `wechat-notify serve <args>`; with `--sandbox`, with [`sandbox_app`].
fn config(args: &[&str]) -> Result<ServeConfig, ConfigError> {
    completed(plan(args)?)
}

/// The plan's configuration; a sandbox plan's with [`sandbox_app`].
fn completed(plan: ServePlan) -> Result<ServeConfig, ConfigError> {
    match plan {
        ServePlan::Configured(config) => Ok(config),
        ServePlan::Sandbox(plan) => plan.into_config(sandbox_app()),
    }
}

/// The app the command line gives for the embedded sandbox, as `serve --sandbox` makes it.
fn sandbox_app() -> AppSettings {
    AppSettings {
        name: "sandbox".to_owned(),
        appid: "wxsandbox000000001".to_owned(),
        secret: Secret::new("fresh-sandbox-secret"),
        api_base: "http://127.0.0.1:8089/".to_owned(),
        push: Some(PushText {
            token: "freshpushtoken".to_owned(),
            aes_key: Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".to_owned()),
            mode: Some("safe".to_owned()),
        }),
    }
}

/// Whether the plan runs the embedded sandbox.
fn is_sandbox(args: &[&str]) -> bool {
    matches!(plan(args), Ok(ServePlan::Sandbox(_)))
}

fn error(args: &[&str]) -> String {
    config(args)
        .expect_err("configuration is refused")
        .to_string()
}

const ONE_APP: &[&str] = &["--appid", "wx0123456789abcdef", "--secret", "s3cr3t-value"];

fn with_one_app<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    ONE_APP
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The command line.

#[test]
fn the_command_definition_is_consistent() {
    TestCli::command().debug_assert();
}

#[test]
fn every_flag_has_its_documented_environment_variable() {
    let command = TestCli::command();
    let serve = command.find_subcommand("serve").expect("serve subcommand");
    let mut flags: HashMap<String, String> = HashMap::new();
    for arg in serve.get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        flags.insert(format!("--{long}"), env.to_string_lossy().into_owned());
    }
    for setting in settings::ALL {
        assert_eq!(
            flags.get(setting.flag).map(String::as_str),
            Some(setting.env),
            "{setting}"
        );
    }
    assert_eq!(
        flags.len(),
        settings::ALL.len(),
        "a flag lacks a setting: {flags:?}"
    );
}

#[test]
fn the_secret_value_is_hidden_from_help() {
    let command = TestCli::command();
    let serve = command.find_subcommand("serve").expect("serve subcommand");
    let secret = serve
        .get_arguments()
        .find(|arg| arg.get_long() == Some("secret"))
        .expect("--secret");
    assert!(secret.is_hide_env_values_set());
}

#[test]
fn defaults() {
    let config = config(ONE_APP).expect("valid");
    assert_eq!(config.listen, "0.0.0.0:50051".parse().unwrap());
    assert_eq!(config.metrics_listen, "0.0.0.0:9464".parse().unwrap());
    assert_eq!(config.log_format, LogFormat::Text);
    assert!(!is_sandbox(ONE_APP));
    assert!(!config.warm_tokens);
    assert_eq!(config.max_batch_recipients, 10_000);
    assert_eq!(config.shutdown_delay, Duration::from_secs(5));
    assert_eq!(config.shutdown_grace, Duration::from_secs(25));
    assert_eq!(config.idempotency.ttl, Duration::from_secs(86_400));
    assert_eq!(config.idempotency.capacity, 1_000_000);
    assert_eq!(config.client.connect_timeout, Duration::from_millis(3_000));
    assert_eq!(config.client.request_timeout, Duration::from_millis(10_000));
    assert!(config.template_checks, "template checks are on by default");
    assert_eq!(config.template_refresh, Duration::from_secs(600));
    assert_eq!(config.push_listen, None, "no push listener unless set");

    let [app] = config.apps.as_slice() else {
        panic!("one app expected: {:?}", config.apps);
    };
    assert_eq!(
        app.name, "wx0123456789abcdef",
        "the single app's name is its appid"
    );
    assert_eq!(app.appid, "wx0123456789abcdef");
    assert_eq!(app.secret.expose(), "s3cr3t-value");
    assert_eq!(
        app.api_bases,
        [Url::parse("https://api.weixin.qq.com/").unwrap()]
    );
    assert_eq!(app.token_mode, TokenMode::Stable);
    assert_eq!(app.max_in_flight, 64);
    assert_eq!(app.rate_per_sec, 500);
    assert_eq!(app.subscription_check, SubscriptionCheck::Observe);
    assert!(app.push.is_none());
}

#[test]
fn every_flag_is_taken() {
    let config = config(&with_one_app(&[
        "--api-base",
        "https://api2.weixin.qq.com,https://sh.api.weixin.qq.com",
        "--token-mode",
        "classic",
        "--listen",
        "127.0.0.1:1",
        "--metrics-listen",
        "[::1]:2",
        "--log-format",
        "json",
        "--max-in-flight",
        "8",
        "--rate-per-sec",
        "20",
        "--max-batch-recipients",
        "100000",
        "--shutdown-delay",
        "0",
        "--shutdown-grace",
        "0",
        "--idempotency-ttl",
        "172800",
        "--idempotency-capacity",
        "5",
        "--connect-timeout-ms",
        "250",
        "--request-timeout-ms",
        "5000",
        "--warm-tokens",
        "--template-checks=false",
        "--template-refresh",
        "120",
    ]))
    .expect("valid");
    assert!(!config.template_checks);
    assert_eq!(config.template_refresh, Duration::from_secs(120));
    assert_eq!(config.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(config.metrics_listen, "[::1]:2".parse().unwrap());
    assert_eq!(config.log_format, LogFormat::Json);
    assert!(config.warm_tokens);
    assert_eq!(config.max_batch_recipients, 100_000);
    assert_eq!(config.shutdown_delay, Duration::ZERO);
    assert_eq!(config.shutdown_grace, Duration::ZERO);
    assert_eq!(config.idempotency.ttl, Duration::from_secs(172_800));
    assert_eq!(config.idempotency.capacity, 5);
    assert_eq!(config.client.connect_timeout, Duration::from_millis(250));
    assert_eq!(config.client.request_timeout, Duration::from_millis(5_000));
    let app = &config.apps[0];
    let bases: Vec<&str> = app.api_bases.iter().map(Url::as_str).collect();
    assert_eq!(
        bases,
        [
            "https://api2.weixin.qq.com/",
            "https://sh.api.weixin.qq.com/"
        ]
    );
    assert_eq!(app.token_mode, TokenMode::Classic);
    assert_eq!(app.max_in_flight, 8);
    assert_eq!(app.rate_per_sec, 20);
}

#[test]
fn boolean_flags_need_no_value_on_the_command_line() {
    assert!(is_sandbox(&["--sandbox"]));
    assert!(!is_sandbox(ONE_APP));
    assert!(
        config(&with_one_app(&["--warm-tokens"]))
            .unwrap()
            .warm_tokens
    );
    assert!(is_sandbox(&["--sandbox=yes"]));
    assert!(!is_sandbox(&with_one_app(&["--sandbox=off"])));
}

#[test]
fn template_checks_are_on_unless_turned_off() {
    let checks = |extra: &[&str]| config(&with_one_app(extra)).unwrap().template_checks;
    assert!(checks(&[]));
    assert!(checks(&["--template-checks"]));
    assert!(checks(&["--template-checks=true"]));
    for off in ["false", "0", "no", "off", "OFF"] {
        let flag = format!("--template-checks={off}");
        assert!(!checks(&[flag.as_str()]), "{off}");
    }
    // An empty NOTIFY_TEMPLATE_CHECKS counts as unset: on.
    assert!(checks(&["--template-checks="]));
}

#[test]
fn boolean_values_have_one_set_of_spellings() {
    for value in ["true", "TRUE", "1", "yes", "On"] {
        assert_eq!(setting::parse_bool(value, false), Ok(true), "{value}");
    }
    for value in ["false", "False", "0", "no", "off"] {
        assert_eq!(setting::parse_bool(value, true), Ok(false), "{value}");
    }
    assert_eq!(setting::parse_bool("", true), Ok(true));
    assert_eq!(setting::parse_bool("", false), Ok(false));
    for bad in ["maybe", "ture", "y", "2"] {
        assert_eq!(
            error(&with_one_app(&[&format!("--warm-tokens={bad}")])),
            format!("--warm-tokens {bad}: expected one of {BOOLEAN_SPELLINGS}")
        );
    }
}

#[test]
fn listen_addresses_take_an_ip_or_localhost() {
    let listen = |value: &str| config(&with_one_app(&["--listen", value])).map(|c| c.listen);
    assert_eq!(
        listen("127.0.0.1:1").unwrap(),
        "127.0.0.1:1".parse().unwrap()
    );
    assert_eq!(listen("[::1]:2").unwrap(), "[::1]:2".parse().unwrap());
    assert_eq!(
        listen("localhost:50061").unwrap(),
        "127.0.0.1:50061".parse().unwrap()
    );
    assert_eq!(
        listen("LOCALHOST:0").unwrap(),
        "127.0.0.1:0".parse().unwrap()
    );
    for bad in [
        ":99999",
        "localhost",
        "localhost:99999",
        "example.com:1",
        "0.0.0.0",
    ] {
        let error = listen(bad).unwrap_err().to_string();
        assert!(error.starts_with(&format!("--listen {bad}: ")), "{error}");
        assert!(
            error.contains("expected IP:PORT or localhost:PORT, e.g. 0.0.0.0:50051"),
            "{error}"
        );
    }
}

#[test]
fn serve_with_the_sandbox_listens_on_loopback_unless_told_otherwise() {
    let Ok(ServePlan::Sandbox(local)) = plan(&["--sandbox"]) else {
        panic!("a sandbox plan expected");
    };
    assert_eq!(local.listen, "127.0.0.1:8089".parse().unwrap());
    assert_eq!(
        local.push_listen,
        "127.0.0.1:0".parse().unwrap(),
        "the push listener on a free loopback port"
    );
    let local = local.into_config(sandbox_app()).unwrap();
    assert_eq!(local.listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(local.metrics_listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(local.push_listen, Some("127.0.0.1:0".parse().unwrap()));
    let told = config(&[
        "--sandbox",
        "--listen",
        "0.0.0.0:1",
        "--metrics-listen",
        "0.0.0.0:2",
    ])
    .unwrap();
    assert_eq!(told.listen, "0.0.0.0:1".parse().unwrap());
    assert_eq!(told.metrics_listen, "0.0.0.0:2".parse().unwrap());
}

#[test]
fn an_unknown_source_names_both_the_variable_and_the_flag() {
    let mut args = parse(&with_one_app(&["--max-in-flight", "0"])).unwrap();
    args.sources = Sources::default();
    assert_eq!(
        args.into_config_with_env(no_env).unwrap_err().to_string(),
        "NOTIFY_MAX_IN_FLIGHT (--max-in-flight) = 0: expected a whole number from 1 to 10000"
    );
}

#[test]
fn empty_optional_values_count_as_unset() {
    let config = config(&[
        "--appid",
        "wx1",
        "--secret",
        "a",
        "--secret-file",
        "",
        "--config",
        "",
    ])
    .expect("valid");
    assert_eq!(config.apps[0].appid, "wx1");
    assert_eq!(
        error(&["--appid", "", "--secret", ""]),
        ConfigError::NoApp.to_string()
    );
}

#[test]
fn malformed_values_name_the_flag_and_the_expected_form() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--listen", "localhost"],
            "--listen localhost: expected IP:PORT or localhost:PORT, e.g. 0.0.0.0:50051",
        ),
        (
            &["--metrics-listen", ":99999"],
            "--metrics-listen :99999: expected IP:PORT or localhost:PORT, e.g. 0.0.0.0:9464",
        ),
        (
            &["--sandbox-listen", "x"],
            "--sandbox-listen x: expected IP:PORT or localhost:PORT, e.g. 127.0.0.1:8089",
        ),
        (
            &["--max-in-flight", "many"],
            "--max-in-flight many: expected a whole number from 1 to 10000",
        ),
        (
            &["--max-in-flight=-1"],
            "--max-in-flight -1: expected a whole number from 1 to 10000",
        ),
        (
            &["--max-in-flight", "0"],
            "--max-in-flight 0: expected a whole number from 1 to 10000",
        ),
        (
            &["--max-in-flight", "10001"],
            "--max-in-flight 10001: expected a whole number from 1 to 10000",
        ),
        (
            &["--rate-per-sec", "0"],
            "--rate-per-sec 0: expected a whole number from 1 to 1000000",
        ),
        (
            &["--max-batch-recipients", "100001"],
            "--max-batch-recipients 100001: expected a whole number from 1 to 100000",
        ),
        (
            &["--shutdown-delay", "3601"],
            "--shutdown-delay 3601: expected a whole number from 0 to 3600",
        ),
        (
            &["--shutdown-grace", "3601"],
            "--shutdown-grace 3601: expected a whole number from 0 to 3600",
        ),
        (
            &["--idempotency-ttl", "86399"],
            "--idempotency-ttl 86399: expected a whole number from 86400 to 2592000",
        ),
        (
            &["--idempotency-capacity", "0"],
            "--idempotency-capacity 0: expected a whole number from 1 to 100000000",
        ),
        (
            &["--connect-timeout-ms", "0"],
            "--connect-timeout-ms 0: expected a whole number from 1 to 60000",
        ),
        (
            &["--request-timeout-ms", "600001"],
            "--request-timeout-ms 600001: expected a whole number from 1 to 600000",
        ),
        (
            &["--template-refresh", "59"],
            "--template-refresh 59: expected a whole number from 60 to 86400",
        ),
        (
            &["--token-mode", "fast"],
            "--token-mode fast: expected stable or classic",
        ),
        (
            &["--log-format", "xml"],
            "--log-format xml: expected text or json",
        ),
        (
            &["--log-format", ""],
            "--log-format \"\": expected text or json",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(error(&with_one_app(args)), *expected);
    }
    assert!(parse(&["--no-such-flag"]).is_err());
}

// ---------------------------------------------------------------------------------------------
// API bases.

#[test]
fn api_base_lists_mean_failover_in_order() {
    let bases = parse_api_base_list(
        " https://api.weixin.qq.com , http://127.0.0.1:8080/wechat,https://proxy.example/a/b/",
    )
    .expect("valid");
    let bases: Vec<&str> = bases.iter().map(Url::as_str).collect();
    assert_eq!(
        bases,
        [
            "https://api.weixin.qq.com/",
            "http://127.0.0.1:8080/wechat/",
            "https://proxy.example/a/b/",
        ]
    );
    // The trailing slash makes joining keep a path prefix.
    let joined = Url::parse("http://127.0.0.1:8080/wechat/")
        .unwrap()
        .join("cgi-bin/token")
        .unwrap();
    assert_eq!(
        joined.as_str(),
        "http://127.0.0.1:8080/wechat/cgi-bin/token"
    );
}

#[test]
fn bad_api_bases_are_refused() {
    let cases = [
        ("", "empty entry"),
        (" ", "empty entry"),
        ("https://a.example,,https://b.example", "empty entry"),
        ("https://a.example,", "empty entry"),
        ("api.weixin.qq.com", "is not a URL"),
        ("ftp://api.weixin.qq.com", "is not an http or https URL"),
        ("unix:/run/wechat.sock", "is not an http or https URL"),
        ("https://api.weixin.qq.com/?x=1", "query or fragment"),
        ("https://api.weixin.qq.com/#top", "query or fragment"),
        (
            "https://api.weixin.qq.com,https://api.weixin.qq.com/",
            "listed twice",
        ),
        ("https://user:hunter2@proxy.example", "credentials"),
    ];
    for (value, expected) in cases {
        let message = error(&with_one_app(&["--api-base", value]));
        assert!(
            message.starts_with("--api-base: ") && message.contains(expected),
            "{value:?} gave {message:?}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}

// ---------------------------------------------------------------------------------------------
// The one app of the flags.

#[test]
fn a_secret_file_loses_its_trailing_newline() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"from-a-file\r\n").unwrap();
    let path = file.path().to_str().unwrap();
    let config = config(&["--appid", "wx1", "--secret-file", path]).expect("valid");
    assert_eq!(config.apps[0].secret.expose(), "from-a-file");
}

#[test]
fn single_app_secrets_are_checked() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty_path = empty.path().to_str().unwrap();
    let mut spaced = tempfile::NamedTempFile::new().unwrap();
    spaced.write_all(b"two words\n").unwrap();
    let spaced_path = spaced.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--appid", "wx1"],
            "WECHAT_SECRET (--secret): not set; WECHAT_APPID (--appid) needs WECHAT_SECRET (--secret) or WECHAT_SECRET_FILE (--secret-file)",
        ),
        (
            &[
                "--appid",
                "wx1",
                "--secret",
                "a",
                "--secret-file",
                empty_path,
            ],
            "WECHAT_SECRET (--secret) and WECHAT_SECRET_FILE (--secret-file) are both set; set one",
        ),
        (
            &["--appid", "wx1", "--secret", ""],
            "WECHAT_SECRET (--secret): not set; WECHAT_APPID (--appid) needs WECHAT_SECRET (--secret) or WECHAT_SECRET_FILE (--secret-file)",
        ),
        (
            &["--appid", "wx1", "--secret", "ends-in-newline\n"],
            "--secret: the secret contains whitespace or control characters",
        ),
        (
            &["--secret", "a"],
            "WECHAT_APPID (--appid): not set, but WECHAT_SECRET (--secret) is",
        ),
        (
            &["--appid", "", "--secret", "a"],
            "WECHAT_APPID (--appid): not set, but WECHAT_SECRET (--secret) is",
        ),
        (
            &["--appid", "wx1 ", "--secret", "a"],
            "--appid: `wx1 ` contains whitespace or control characters",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(error(args), *expected);
    }
    let message = error(&["--appid", "wx1", "--secret-file", empty_path]);
    assert!(
        message.starts_with("--secret-file: the secret is empty"),
        "{message}"
    );
    let message = error(&["--appid", "wx1", "--secret-file", spaced_path]);
    assert!(message.contains("whitespace"), "{message}");
    assert!(!message.contains("two words"), "{message}");
    let message = error(&["--appid", "wx1", "--secret-file", "/no/such/secret"]);
    assert!(
        message.starts_with("--secret-file: cannot read /no/such/secret"),
        "{message}"
    );
}

#[test]
fn an_appid_longer_than_an_app_field_is_refused() {
    let long = "w".repeat(129);
    let message = error(&["--appid", &long, "--secret", "a"]);
    assert_eq!(message, "--appid: must be at most 128 bytes, got 129");
    assert!(config(&["--appid", &"w".repeat(128), "--secret", "a"]).is_ok());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let args = parse(ONE_APP).unwrap();
    assert!(!format!("{args:?}").contains("s3cr3t"), "{args:?}");
    let config = completed(args.into_config_with_env(no_env).unwrap()).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("wx0123456789abcdef"));
}

// ---------------------------------------------------------------------------------------------
// Which source configures the apps.

#[test]
fn no_app_says_what_to_set() {
    let message = error(&[]);
    for name in [
        "WECHAT_APPID",
        "WECHAT_SECRET",
        "NOTIFY_CONFIG",
        "--sandbox",
    ] {
        assert!(message.contains(name), "{message}");
    }
}

#[test]
fn the_sandbox_configures_its_own_apps() {
    let Ok(ServePlan::Sandbox(plan)) = plan(&[
        "--sandbox",
        "--rate-per-sec",
        "5",
        "--api-base",
        "https://proxy.example",
    ]) else {
        panic!("a sandbox plan expected");
    };
    let config = plan.into_config(sandbox_app()).expect("valid");
    let [app] = config.apps.as_slice() else {
        panic!("the sandbox's app only: {:?}", config.apps);
    };
    assert_eq!(
        (app.name.as_str(), app.appid.as_str()),
        ("sandbox", "wxsandbox000000001")
    );
    assert_eq!(app.secret.expose(), "fresh-sandbox-secret");
    assert_eq!(app.rate_per_sec, 5, "the flags' per-app settings apply");
    assert_eq!(
        app.api_bases,
        [Url::parse("http://127.0.0.1:8089/").unwrap()],
        "its API base is the sandbox's, not WECHAT_API_BASE"
    );
    let push = app.push.as_ref().expect("push settings");
    assert_eq!(push.mode, PushMode::Safe);
    assert!(push.aes_key.is_some());

    let message = error(&["--sandbox", "--appid", "wx1", "--config", "apps.toml"]);
    assert_eq!(
        message,
        "NOTIFY_SANDBOX (--sandbox) configures the sandbox's apps itself; \
         remove WECHAT_APPID (--appid)"
    );
    let message = error(&["--sandbox", "--secret", "s3cr3t-value"]);
    assert!(message.contains("WECHAT_SECRET (--secret)"), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");
}

#[test]
fn the_sandboxs_app_is_checked_like_any_app() {
    let refused = |app: AppSettings| {
        let Ok(ServePlan::Sandbox(plan)) = plan(&["--sandbox"]) else {
            panic!("a sandbox plan expected");
        };
        plan.into_config(app).expect_err("refused").to_string()
    };
    assert_eq!(
        refused(AppSettings {
            api_base: "ftp://127.0.0.1:8089/".to_owned(),
            ..sandbox_app()
        }),
        "the app sandbox: api_base: `ftp://127.0.0.1:8089/` is not an http or https URL"
    );
    assert_eq!(
        refused(AppSettings {
            appid: "wx sandbox".to_owned(),
            ..sandbox_app()
        }),
        "the app sandbox: appid: `wx sandbox` contains whitespace or control characters"
    );
    let message = refused(AppSettings {
        push: Some(PushText {
            token: "x".to_owned(),
            ..sandbox_app().push.unwrap()
        }),
        ..sandbox_app()
    });
    assert_eq!(
        message,
        "the app sandbox: push_token: must be 3 to 32 letters and digits (as in WeChat's push \
         settings)"
    );
    let message = refused(AppSettings {
        secret: Secret::new("two words"),
        ..sandbox_app()
    });
    assert!(
        message.starts_with("the app sandbox: secret: "),
        "{message}"
    );
    assert!(!message.contains("two words"), "{message}");
}

#[test]
fn the_file_and_the_one_app_flags_exclude_each_other() {
    let message = error(&with_one_app(&["--config", "apps.toml"]));
    assert_eq!(
        message,
        "NOTIFY_CONFIG (--config) configures the apps; remove WECHAT_APPID (--appid), \
         WECHAT_SECRET (--secret) (one-app settings), or put that app in the file"
    );
}

// ---------------------------------------------------------------------------------------------
// The TOML file.

/// A directory holding `apps.toml` (and whatever else a test puts there).
struct ConfigDir {
    dir: tempfile::TempDir,
}

impl ConfigDir {
    fn new(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("apps.toml"), toml).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self) -> String {
        self.path().join("apps.toml").to_str().unwrap().to_owned()
    }

    fn load(
        &self,
        extra: &[&str],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServeConfig, ConfigError> {
        let file = self.file();
        let args: Vec<&str> = ["--config", file.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        completed(parse(&args).unwrap().into_config_with_env(env)?)
    }

    /// The error, without the file name in front.
    fn error(&self, env: impl Fn(&str) -> Option<String>) -> String {
        let message = self.load(&[], env).expect_err("refused").to_string();
        let prefix = format!("{}: ", self.file());
        message
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{message:?} should start with the file name"))
            .to_owned()
    }
}

#[test]
fn a_file_configures_several_apps() {
    let dir = ConfigDir::new(
        r#"
        # Every key, one source of secret each.
        [[apps]]
        name = "shop"
        appid = "wx-shop"
        secret_env = "SHOP_SECRET"
        api_base = ["https://sh.api.weixin.qq.com", "https://api2.weixin.qq.com"]
        token_mode = "classic"
        max_in_flight = 4
        rate_per_sec = 10

        [[apps]]
        name = "blog"
        appid = "wx-blog"
        secret_file = "blog.secret"
        api_base = "https://a.example, https://b.example"

        [[apps]]
        appid = "wx-plain"
        secret = "plain-secret"
        "#,
    );
    std::fs::write(dir.path().join("blog.secret"), "blog-secret\n").unwrap();
    let env = |name: &str| (name == "SHOP_SECRET").then(|| "shop-secret".to_owned());
    let config = dir
        .load(&["--max-in-flight", "7", "--token-mode", "stable"], env)
        .expect("valid");

    let [shop, blog, plain] = config.apps.as_slice() else {
        panic!("three apps expected: {:?}", config.apps);
    };
    assert_eq!(
        (shop.name.as_str(), shop.appid.as_str()),
        ("shop", "wx-shop")
    );
    assert_eq!(shop.secret.expose(), "shop-secret");
    let shop_bases: Vec<&str> = shop.api_bases.iter().map(Url::as_str).collect();
    assert_eq!(
        shop_bases,
        [
            "https://sh.api.weixin.qq.com/",
            "https://api2.weixin.qq.com/"
        ]
    );
    assert_eq!(shop.token_mode, TokenMode::Classic);
    assert_eq!(shop.max_in_flight, 4);
    assert_eq!(shop.rate_per_sec, 10);

    assert_eq!(blog.secret.expose(), "blog-secret");
    let blog_bases: Vec<&str> = blog.api_bases.iter().map(Url::as_str).collect();
    assert_eq!(blog_bases, ["https://a.example/", "https://b.example/"]);
    assert_eq!(blog.token_mode, TokenMode::Stable, "from the flag");
    assert_eq!(blog.max_in_flight, 7, "from the flag");
    assert_eq!(blog.rate_per_sec, 500, "from the flag's default");

    assert_eq!(plain.name, "wx-plain", "the name defaults to the appid");
    assert_eq!(plain.secret.expose(), "plain-secret");
    assert_eq!(
        plain.api_bases,
        [Url::parse("https://api.weixin.qq.com/").unwrap()],
        "the flag's default"
    );

    let debug = format!("{config:?}");
    for secret in ["shop-secret", "blog-secret", "plain-secret"] {
        assert!(!debug.contains(secret), "{debug}");
    }
}

#[test]
fn an_absolute_secret_file_is_taken_as_is() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "abs-secret").unwrap();
    let dir = ConfigDir::new(&format!(
        "[[apps]]\nappid = \"wx1\"\nsecret_file = {:?}\n",
        secret.path().to_str().unwrap()
    ));
    let config = dir.load(&[], no_env).expect("valid");
    assert_eq!(config.apps[0].secret.expose(), "abs-secret");
}

#[test]
fn file_errors_name_the_key() {
    let cases = [
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\nsecert = \"b\"\n",
            "apps[0].secert: unknown key; expected one of name, appid, secret, secret_env, \
             secret_file, api_base, token_mode, max_in_flight, rate_per_sec, subscription_check, push_token, push_aes_key, push_mode",
        ),
        (
            "listen = \"0.0.0.0:1\"\n[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\n",
            "listen: unknown key; expected one of apps, redis, callers, trust_forwarded_client_cert",
        ),
        ("", "apps: at least one [[apps]] table is required"),
        (
            "apps = []\n",
            "apps: at least one [[apps]] table is required",
        ),
        (
            "[apps]\nappid = \"wx1\"\n",
            "apps: must be an array of tables, written [[apps]]",
        ),
        ("apps = [1]\n", "apps[0]: must be a table, got integer"),
        ("[[apps]]\nsecret = \"a\"\n", "apps[0].appid: required"),
        (
            "[[apps]]\nappid = 7\nsecret = \"a\"\n",
            "apps[0].appid: must be a string, got integer",
        ),
        (
            "[[apps]]\nappid = \"\"\nsecret = \"a\"\n",
            "apps[0].appid: must not be empty",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nname = \"my shop\"\nsecret = \"a\"\n",
            "apps[0].name: `my shop` contains whitespace or control characters",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\n",
            "apps[0]: needs one of secret, secret_env or secret_file",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\nsecret_env = \"A\"\n",
            "apps[0]: secret and secret_env exclude each other; set one",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"\"\n",
            "apps[0].secret: the secret is empty",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret_env = \"SHOP_SECRET\"\n",
            "apps[0].secret_env: environment variable SHOP_SECRET is not set",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret_env = \"EMPTY_SECRET\"\n",
            "apps[0].secret_env: environment variable EMPTY_SECRET: the secret is empty",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret_env = \"\"\n",
            "apps[0].secret_env: \"\" is not an environment variable name",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\ntoken_mode = \"fast\"\n",
            "apps[0].token_mode: must be \"stable\" or \"classic\", got \"fast\"",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\nmax_in_flight = 0\n",
            "apps[0].max_in_flight: must be from 1 to 10000, got 0",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\nmax_in_flight = -3\n",
            "apps[0].max_in_flight: must be from 1 to 10000, got -3",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\nmax_in_flight = \"8\"\n",
            "apps[0].max_in_flight: must be an integer, got string",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\nrate_per_sec = 1000001\n",
            "apps[0].rate_per_sec: must be from 1 to 1000000, got 1000001",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\napi_base = \"ftp://x\"\n",
            "apps[0].api_base: `ftp://x` is not an http or https URL",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\napi_base = []\n",
            "apps[0].api_base: at least one URL is required",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\napi_base = [\"https://a.example\", 1]\n",
            "apps[0].api_base: must hold strings, got integer",
        ),
        (
            "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\napi_base = 1\n",
            "apps[0].api_base: must be a string or an array of strings, got integer",
        ),
    ];
    let env = |name: &str| (name == "EMPTY_SECRET").then(String::new);
    for (toml, expected) in cases {
        let dir = ConfigDir::new(toml);
        assert_eq!(dir.error(env), expected, "for {toml:?}");
    }
}

#[test]
fn names_and_appids_are_unique_across_apps() {
    let cases = [
        (
            "[[apps]]\nname = \"shop\"\nappid = \"wx1\"\nsecret = \"a\"\n\
             [[apps]]\nname = \"shop\"\nappid = \"wx2\"\nsecret = \"b\"\n",
            "apps[1].name: `shop` is already the name or appid of apps[0]; \
             callers may use either, so each must be unique",
        ),
        (
            "[[apps]]\nname = \"shop\"\nappid = \"wx1\"\nsecret = \"a\"\n\
             [[apps]]\nname = \"blog\"\nappid = \"wx1\"\nsecret = \"b\"\n",
            "apps[1].appid: `wx1` is already the name or appid of apps[0]; \
             callers may use either, so each must be unique",
        ),
        (
            "[[apps]]\nname = \"shop\"\nappid = \"wx1\"\nsecret = \"a\"\n\
             [[apps]]\nname = \"wx1\"\nappid = \"wx2\"\nsecret = \"b\"\n",
            "apps[1].name: `wx1` is already the name or appid of apps[0]; \
             callers may use either, so each must be unique",
        ),
        (
            "[[apps]]\nname = \"wx2\"\nappid = \"wx1\"\nsecret = \"a\"\n\
             [[apps]]\nappid = \"wx2\"\nsecret = \"b\"\n",
            "apps[1].name: `wx2` is already the name or appid of apps[0]; \
             callers may use either, so each must be unique",
        ),
    ];
    for (toml, expected) in cases {
        assert_eq!(ConfigDir::new(toml).error(no_env), expected, "for {toml:?}");
    }
    // An app's name may equal its own appid.
    let dir = ConfigDir::new("[[apps]]\nname = \"wx1\"\nappid = \"wx1\"\nsecret = \"a\"\n");
    assert!(dir.load(&[], no_env).is_ok());
}

#[test]
fn a_relative_secret_file_is_read_beside_the_config_file() {
    let dir = ConfigDir::new("[[apps]]\nappid = \"wx1\"\nsecret_file = \"missing.secret\"\n");
    let message = dir.error(no_env);
    let expected_path = dir.path().join("missing.secret");
    assert!(
        message.starts_with(&format!(
            "apps[0].secret_file: cannot read {}",
            expected_path.display()
        )),
        "{message}"
    );
}

#[test]
fn file_errors_never_quote_a_secret() {
    let syntax = ConfigDir::new("[[apps]]\nappid = \"wx1\"\nsecret = \"hunter2\n");
    let message = syntax.load(&[], no_env).unwrap_err().to_string();
    assert!(
        message.contains("invalid TOML at line 3, column"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    let spaced = ConfigDir::new("[[apps]]\nappid = \"wx1\"\nsecret = \"hunter2 \"\n");
    let message = spaced.error(no_env);
    assert_eq!(
        message,
        "apps[0].secret: the secret contains whitespace or control characters"
    );

    let from_env = ConfigDir::new("[[apps]]\nappid = \"wx1\"\nsecret_env = \"S\"\n");
    let message = from_env.error(|_| Some("hunter2\n".to_owned()));
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn a_missing_file_is_named() {
    let message = parse(&["--config", "/no/such/apps.toml"])
        .unwrap()
        .into_config_with_env(no_env)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("NOTIFY_CONFIG (--config) /no/such/apps.toml: cannot read the file"),
        "{message}"
    );
}

// Shared state (Redis).

#[test]
fn redis_is_off_unless_a_url_is_set() {
    assert!(config(ONE_APP).unwrap().redis.is_none());
    let config = config(&with_one_app(&["--redis-url", "rediss://:pw@redis:6380"])).unwrap();
    let redis = config.redis.expect("redis configured");
    assert_eq!(redis.key_prefix, DEFAULT_KEY_PREFIX);
    assert!(!redis.cluster);
    assert!(!format!("{redis:?}").contains("pw"), "the url is redacted");
}

#[test]
fn redis_errors_name_the_setting_and_never_the_password() {
    let message = error(&with_one_app(&["--redis-url", "http://:hunter2@redis"]));
    assert!(message.starts_with("--redis-url: "), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let message = error(&with_one_app(&["--redis-url", "redis://a,redis://b"]));
    assert!(
        message.starts_with("NOTIFY_REDIS_CLUSTER (--redis-cluster): false, but"),
        "{message}"
    );
    let message = error(&with_one_app(&[
        "--redis-url",
        "redis://a",
        "--redis-key-prefix",
        "a{b}",
    ]));
    assert!(message.starts_with("--redis-key-prefix: "), "{message}");
    let cluster = config(&with_one_app(&[
        "--redis-url",
        "redis://a:7000,redis://b:7001",
        "--redis-cluster",
    ]))
    .unwrap();
    assert_eq!(cluster.redis.unwrap().urls.len(), 2);
}

#[test]
fn the_file_configures_redis_and_flags_win() {
    let dir = ConfigDir::new(
        "[redis]\nurl = \"redis://file:6379\"\nkey_prefix = \"shop\"\ncluster = false\n\n\
         [[apps]]\nappid = \"wx1\"\nsecret = \"a\"\n",
    );
    let redis = dir.load(&[], no_env).unwrap().redis.unwrap();
    assert_eq!(redis.key_prefix, "shop");
    assert_eq!(redis.urls[0].expose(), "redis://file:6379");
    let redis = dir
        .load(&["--redis-url", "redis://flag:6379"], no_env)
        .unwrap()
        .redis
        .unwrap();
    assert_eq!(redis.urls[0].expose(), "redis://flag:6379");
    assert_eq!(redis.key_prefix, "shop", "the file's prefix still applies");

    let dir = ConfigDir::new("[redis]\ncolour = 1\n\n[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\n");
    assert_eq!(
        dir.error(no_env),
        "redis.colour: unknown key; expected one of url, key_prefix, cluster"
    );
    let dir =
        ConfigDir::new("[redis]\ncluster = \"yes\"\n\n[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\n");
    assert_eq!(
        dir.error(no_env),
        "redis.cluster: must be true or false, got string"
    );
}

#[test]
fn subscription_and_push_settings() {
    let unset = config(&with_one_app(&["--push-listen", ""])).expect("valid");
    assert_eq!(unset.push_listen, None, "empty counts as unset");
    let config = config(&with_one_app(&[
        "--push-listen",
        "127.0.0.1:8090",
        "--subscription-check",
        "enforce",
    ]))
    .expect("valid");
    assert_eq!(config.push_listen, Some("127.0.0.1:8090".parse().unwrap()));
    assert_eq!(
        config.apps[0].subscription_check,
        SubscriptionCheck::Enforce
    );
    assert!(
        config.apps[0].push.is_none(),
        "push settings come from the apps file"
    );
    assert_eq!(
        error(&with_one_app(&["--subscription-check", "always"])),
        "--subscription-check always: expected off or observe or enforce"
    );
    assert_eq!(
        error(&with_one_app(&["--push-listen", "8090"])),
        "--push-listen 8090: expected IP:PORT or localhost:PORT, e.g. 0.0.0.0:8090"
    );

    let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let dir = ConfigDir::new(&format!(
        "[[apps]]\nname = \"plain\"\nappid = \"wx1\"\nsecret = \"a\"\npush_token = \"Tok3n\"\n\
         [[apps]]\nname = \"safe\"\nappid = \"wx2\"\nsecret = \"b\"\npush_token = \"Tok3n\"\n\
         push_aes_key = \"{key}\"\nsubscription_check = \"off\"\n\
         [[apps]]\nname = \"mixed\"\nappid = \"wx3\"\nsecret = \"c\"\npush_token = \"Tok3n\"\n\
         push_aes_key = \"{key}\"\npush_mode = \"compatible\"\n"
    ));
    let config = dir.load(&[], no_env).expect("valid");
    let modes: Vec<_> = config
        .apps
        .iter()
        .map(|app| app.push.as_ref().map(|push| push.mode))
        .collect();
    assert_eq!(
        modes,
        [
            Some(PushMode::Plaintext),
            Some(PushMode::Safe),
            Some(PushMode::Compatible)
        ]
    );
    assert_eq!(config.apps[1].subscription_check, SubscriptionCheck::Off);
    assert_eq!(
        config.apps[0].subscription_check,
        SubscriptionCheck::Observe
    );
    let debug = format!("{:?}", config.apps);
    assert!(!debug.contains("Tok3n") && !debug.contains(key), "{debug}");

    let base = "[[apps]]\nappid = \"wx1\"\nsecret = \"a\"\n";
    let cases = [
        (
            "push_mode = \"safe\"\n",
            "apps[0].push_mode: needs push_token",
        ),
        (
            "push_token = \"Tok3n\"\npush_mode = \"safe\"\n",
            "apps[0].push_aes_key: is required by the compatible and safe push modes",
        ),
        (
            "push_token = \"Tok3n\"\npush_mode = \"aes\"\n",
            "apps[0].push_mode: must be \"plaintext\", \"compatible\" or \"safe\", got \"aes\"",
        ),
        (
            "push_token = \"a!\"\n",
            "apps[0].push_token: must be 3 to 32 letters and digits (as in WeChat's push settings)",
        ),
        (
            "push_token = \"Tok3n\"\npush_aes_key = \"tooshortsecretkey\"\n",
            "apps[0].push_aes_key: the EncodingAESKey must be 43 characters, got 17",
        ),
        (
            "subscription_check = \"block\"\n",
            "apps[0].subscription_check: must be \"off\", \"observe\" or \"enforce\", got \"block\"",
        ),
    ];
    for (extra, expected) in cases {
        let toml = format!("{base}{extra}");
        let dir = ConfigDir::new(&toml);
        let error = dir.error(no_env);
        assert_eq!(error, expected, "for {toml:?}");
        assert!(!error.contains("tooshortsecretkey"));
    }
}
mod callers;
