//! The command line: `serve`, `serve --sandbox` and `sandbox`. Part of the composition root:
//! the one production-side place that knows the sandbox (the `wechat-notify-sandbox` crate,
//! behind the default cargo feature `sandbox`), so that `serve --sandbox` can start it.

#[cfg(feature = "sandbox")]
mod embedded_sandbox;

use std::{future::Future, process::ExitCode};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind};

use crate::{
    config::{SandboxPlan, ServeArgs, ServeConfig, ServePlan},
    server,
    signal::{Shutdown, shutdown_signal},
    telemetry,
};

/// Exit code for a configuration the service refuses (EX_USAGE), before any port is bound.
const EXIT_CONFIG: u8 = 64;
/// Exit code for a failure after start-up began (a port in use, a token warm-up refused).
const EXIT_FAILURE: u8 = 1;

/// wechat-notify: send WeChat Mini Program subscribe messages with one gRPC call.
#[derive(Debug, Parser)]
#[command(name = "wechat-notify", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve notify.v1.NotifyService (with --sandbox: against an embedded fake WeChat API).
    Serve(Box<ServeArgs>),
    /// Run the fake WeChat API alone (a development tool; never expose it).
    #[cfg(feature = "sandbox")]
    Sandbox(Box<wechat_notify_sandbox::SandboxArgs>),
    /// Not in this build (built without the cargo feature `sandbox`).
    #[cfg(not(feature = "sandbox"))]
    #[command(disable_help_flag = true)]
    Sandbox {
        /// Whatever was given; refused as a whole.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Parses the process's command line and runs the chosen command to completion.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Parses `args` (the program's name first) and runs the chosen command to completion.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match parse_command_line(args) {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match worker_threads(std::env::var_os(WORKER_THREADS_ENV)) {
        Ok(workers) => {
            builder.worker_threads(workers);
        }
        Err(error) => {
            eprintln!("wechat-notify: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wechat-notify: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let plan = match args.into_config() {
                Ok(plan) => plan,
                Err(error) => {
                    eprintln!("wechat-notify: configuration error: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match plan {
                ServePlan::Configured(config) => {
                    let _logs = telemetry::init_logging(config.log_format);
                    // The signal handlers are installed inside the runtime.
                    runtime.block_on(async { serve(config, shutdown_signal()).await })
                }
                ServePlan::Sandbox(plan) => serve_with_sandbox(plan, &runtime),
            }
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => {
            let _logs = telemetry::init_logging(crate::config::LogFormat::Text);
            let stopped = async {
                shutdown_signal().await;
            };
            match runtime.block_on(wechat_notify_sandbox::run(*args, stopped)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "sandbox failed");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        #[cfg(not(feature = "sandbox"))]
        Command::Sandbox { .. } => {
            eprintln!("wechat-notify: configuration error: sandbox: {NO_SANDBOX}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The command line, with where each of `serve`'s settings came from (flag or environment).
fn parse_command_line<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Serve(args), Some(("serve", serve))) = (&mut cli.command, matches.subcommand())
    {
        args.sources = crate::config::Sources::from_matches(serve);
    }
    Ok(cli)
}

/// Help and version go to stdout with status 0; any other command line the service cannot
/// take is a usage error, which exits 64 like every other configuration error.
fn usage_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_CONFIG),
    }
}

/// The runtime's worker threads, as tokio reads them (docs/configuration.md).
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";
/// Worker threads at most.
const MAX_WORKER_THREADS: usize = 1024;

/// The runtime's worker threads from `TOKIO_WORKER_THREADS`, checked here and always passed
/// to the builder, since tokio itself panics on a bad (or empty) value. Unset or empty: one per
/// CPU the process may use (its affinity and container CPU limit included).
fn worker_threads(value: Option<std::ffi::OsString>) -> Result<usize, String> {
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Ok(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    };
    value
        .to_str()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .filter(|workers| (1..=MAX_WORKER_THREADS).contains(workers))
        .ok_or_else(|| {
            format!(
                "{WORKER_THREADS_ENV}={value:?}: must be a whole number from 1 to {MAX_WORKER_THREADS}"
            )
        })
}

/// Runs the service until `shutdown` resolves.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = Shutdown> + Send + 'static,
) -> ExitCode {
    let listeners = match server::Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    serve_on(config, listeners, None, shutdown).await
}

/// Says where everything listens, then serves on `listeners` until `shutdown` resolves.
async fn serve_on(
    config: ServeConfig,
    listeners: server::Listeners,
    sandbox: Option<std::net::SocketAddr>,
    shutdown: impl Future<Output = Shutdown> + Send + 'static,
) -> ExitCode {
    let addrs = &listeners.addrs;
    // Every address as bound (port 0 resolved): what operators and tests read to connect.
    tracing::info!(
        grpc = %addrs.grpc,
        metrics = %addrs.metrics,
        push = addrs.push.map(tracing::field::display),
        sandbox = sandbox.map(tracing::field::display),
        "listening"
    );
    match server::start_on(config, listeners, shutdown).await {
        Ok(running) => match running.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_already_logged) => ExitCode::from(EXIT_FAILURE),
        },
        Err(error) => {
            tracing::error!(%error, "cannot start");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Why a build without the `sandbox` feature refuses `serve --sandbox` and `sandbox`.
#[cfg(not(feature = "sandbox"))]
const NO_SANDBOX: &str = "this wechat-notify was built without the sandbox (cargo feature \
                          `sandbox`, on by default); build it with the feature, or run the \
                          sandbox's own binary, wechat-sandbox";

/// `serve --sandbox` in a build without the sandbox: a configuration error.
#[cfg(not(feature = "sandbox"))]
fn serve_with_sandbox(_plan: SandboxPlan, _runtime: &tokio::runtime::Runtime) -> ExitCode {
    eprintln!(
        "wechat-notify: configuration error: {}: {NO_SANDBOX}",
        crate::config::settings::SANDBOX
    );
    ExitCode::from(EXIT_CONFIG)
}

/// `serve --sandbox`: starts the sandbox, binds the service's listeners, points the sandbox's
/// pushes at the push listener as bound (port 0 resolved), then serves with its app until a
/// signal.
#[cfg(feature = "sandbox")]
fn serve_with_sandbox(plan: SandboxPlan, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let _logs = telemetry::init_logging(plan.log_format());
    runtime.block_on(async {
        let (config, sandbox) = match embedded_sandbox::start(plan).await {
            Ok(started) => started,
            Err(embedded_sandbox::StartError::Config(error)) => {
                eprintln!("wechat-notify: configuration error: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let listeners = match server::Listeners::bind(&config).await {
            Ok(listeners) => listeners,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        // Before the service serves: a first popup must find its push URL.
        if let Some(push) = listeners.addrs.push {
            sandbox.send_pushes_to(push);
        }
        // The sandbox is kept until the service has shut down.
        serve_on(config, listeners, Some(sandbox.addr()), shutdown_signal()).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_are_checked_before_tokio_sees_them() {
        let parse = |value: &str| worker_threads(Some(value.into()));
        assert_eq!(parse("1"), Ok(1));
        assert_eq!(parse(" 4 "), Ok(4));
        assert!(worker_threads(None).unwrap() >= 1);
        assert_eq!(parse(""), worker_threads(None));
        for bad in ["0", "-1", "two", "1.5", "1025"] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("TOKIO_WORKER_THREADS"), "{error}");
            assert!(error.contains(bad), "{error}");
        }
    }

    /// `serve --sandbox` and `sandbox` exist in every build; without the sandbox they are
    /// configuration errors, refused before anything is bound.
    #[cfg(not(feature = "sandbox"))]
    #[test]
    fn a_build_without_the_sandbox_refuses_it_as_a_configuration_error() {
        let refused = ExitCode::from(EXIT_CONFIG);
        assert_eq!(run(["wechat-notify", "serve", "--sandbox"]), refused);
        assert_eq!(run(["wechat-notify", "sandbox", "--auto-accept"]), refused);
        assert_eq!(run(["wechat-notify", "sandbox"]), refused);
    }

    #[test]
    fn the_bench_subcommand_is_gone_from_the_service() {
        let Err(error) = parse_command_line(["wechat-notify", "bench", "send"]) else {
            panic!("bench parsed");
        };
        assert_eq!(error.kind(), ErrorKind::InvalidSubcommand);
    }
}
