//! The `wechat-sandbox` binary: the fake WeChat API on its own (see `docs/sandbox.md`). The
//! same as `wechat-notify sandbox`, without the service.

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wechat_notify_sandbox::SandboxArgs;

/// wechat-sandbox: a fake WeChat API for development (never expose it).
#[derive(Parser)]
#[command(name = "wechat-sandbox", version, about)]
struct Cli {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let stopped = wechat_notify_sandbox::cli::stop_signal();
    match runtime.block_on(wechat_notify_sandbox::run(cli.sandbox, stopped)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "sandbox failed");
            ExitCode::FAILURE
        }
    }
}
