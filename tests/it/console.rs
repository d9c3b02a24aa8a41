//! The sandbox console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! playwright-core from tests/browser/console.test.mjs, against the built binary
//! `wechat-notify serve --sandbox` on free loopback ports. Messages go through the service's
//! gRPC API; the page is looked at and clicked as a person would (see the script's steps).
//!
//! Chromium and the script's node_modules are installed by `scripts/test`; when they are missing
//! this test fails and says so. With `WECHAT_NOTIFY_CONSOLE_SCREENSHOT=docs/console.png` it also
//! saves the screenshot shown in the README.

use std::{env, path::PathBuf, process::Command, time::Duration};

use crate::polyglot::{Service, installed, repo_root, run_for};

/// The whole browser session: a dozen steps, each waiting at most 15 s for the page.
const BROWSER_TEST_TIMEOUT: Duration = Duration::from_secs(300);

fn chromium() -> PathBuf {
    installed(
        "WECHAT_NOTIFY_CHROMIUM",
        "/usr/bin/chromium",
        "Chromium (Debian's chromium package)",
    )
}

fn browser_node_modules() -> PathBuf {
    installed(
        "WECHAT_NOTIFY_BROWSER_NODE_MODULES",
        "tests/browser/node_modules",
        "the browser test's node_modules (npm ci in tests/browser)",
    )
}

#[test]
fn console_shows_sends_live_and_its_controls_drive_the_sandbox() {
    let chromium = chromium();
    browser_node_modules();
    let service = Service::start("console");
    let node = env::var_os("WECHAT_NOTIFY_NODE").unwrap_or_else(|| "node".into());
    let mut command = Command::new(node);
    command
        .current_dir(repo_root().join("tests/browser"))
        .arg("console.test.mjs")
        .env("CONSOLE_URL", service.sandbox_url())
        .env("NOTIFY_TARGET", service.grpc.to_string())
        .env(
            "NOTIFY_PROTO",
            repo_root().join("proto/notify/v1/notify.proto"),
        )
        .env("CHROMIUM", chromium)
        .env(
            "FAILURE_SCREENSHOT",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-failure.png"),
        )
        .env_remove("CONSOLE_SCREENSHOT");
    if let Some(screenshot) = env::var_os("WECHAT_NOTIFY_CONSOLE_SCREENSHOT") {
        command.env("CONSOLE_SCREENSHOT", repo_root().join(screenshot));
    }
    let outcome = run_for(command, BROWSER_TEST_TIMEOUT);
    // The steps, for `cargo test --test it console:: -- --nocapture`.
    eprintln!("{}", outcome.stdout);
    assert!(
        outcome.status.success(),
        "the browser test failed\n{}\n--- service log\n{}",
        outcome.describe(),
        service.log()
    );
    // Every step ran, the last one included (the script stops at the first failure).
    assert!(
        outcome
            .stdout
            .contains("ok - the pages logged no JavaScript error"),
        "the browser test did not run to its end\n{}",
        outcome.describe()
    );
    assert!(!outcome.stdout.contains("not ok"), "{}", outcome.describe());
}
