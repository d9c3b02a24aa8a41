// Own binary: it installs a process-wide TRACE log subscriber (shared by its two tests).
//! Secrets never reach a log line, even at TRACE: AppSecrets and access tokens
//! (`app_secret`), bearer tokens and TLS private keys (`caller_secrets`).

#[path = "../common/mod.rs"]
mod common;

mod app_secret;
mod caller_secrets;

use std::sync::OnceLock;

use common::CapturedLogs;

/// Everything logged in this process at TRACE (the subscriber is installed on first use).
fn trace_logs() -> &'static CapturedLogs {
    static CAPTURED: OnceLock<CapturedLogs> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = CapturedLogs::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        captured
    })
}
