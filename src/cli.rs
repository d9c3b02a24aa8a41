//! The command line: `serve`, `serve --sandbox` and `sandbox`. Part of the composition root:
//! the one production-side place that knows the sandbox, so that `serve --sandbox` can start it.

use std::{future::Future, process::ExitCode};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind};

use crate::{
    config::{PushSettings, ServeArgs, ServeConfig},
    push_crypto::{AesKey, PushMode},
    sandbox::{self, PushFormat, PushTarget, Sandbox, SandboxApp, SandboxArgs, SandboxConfig},
    secret::Secret,
    server,
    signal::{Shutdown, shutdown_signal},
    telemetry,
};

/// Exit code for a configuration the service refuses (EX_USAGE), before any port is bound.
const EXIT_CONFIG: u8 = 64;
/// Exit code for a failure after start-up began (a port in use, a token warm-up refused).
const EXIT_FAILURE: u8 = 1;
/// Name of the app `serve --sandbox` configures.
pub const SANDBOX_APP_NAME: &str = "sandbox";

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
    Sandbox(Box<SandboxArgs>),
    /// Load generator and fixed-answer upstream for benchmarks (see docs/benchmarks.md).
    Bench(Box<crate::bench::BenchArgs>),
}

/// Parses the command line and runs the chosen command to completion.
pub fn main() -> ExitCode {
    let cli = match parse_command_line() {
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
        Command::Bench(args) => crate::bench::main(*args, &runtime),
        Command::Serve(args) => {
            let config = match args.into_config() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("wechat-notify: configuration error: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let _logs = telemetry::init_logging(config.log_format);
            runtime.block_on(async { serve(config, shutdown_signal()).await })
        }
        Command::Sandbox(args) => {
            let _logs = telemetry::init_logging(crate::config::LogFormat::Text);
            let stopped = async {
                shutdown_signal().await;
            };
            match runtime.block_on(async { sandbox::run(*args, stopped).await }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "sandbox failed");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
    }
}

/// The command line, with where each of `serve`'s settings came from (flag or environment).
fn parse_command_line() -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches()?;
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

/// Runs the service until `shutdown` resolves, with the embedded sandbox when configured.
pub async fn serve(
    mut config: ServeConfig,
    shutdown: impl Future<Output = Shutdown> + Send + 'static,
) -> ExitCode {
    // Kept alive until the service has shut down.
    let sandbox = if config.sandbox {
        match start_embedded_sandbox(&mut config).await {
            Ok(sandbox) => Some(sandbox),
            Err(error) => {
                tracing::error!(%error, addr = %config.sandbox_listen, "cannot start the embedded sandbox");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    } else {
        None
    };
    let listeners = match server::Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addrs = listeners.addrs;
    if let (Some(sandbox), Some(push)) = (&sandbox, addrs.push) {
        // Before the service serves: a first popup must find its push URL.
        wire_sandbox_pushes(sandbox, push);
    }
    // Every address as bound (port 0 resolved): what operators and tests read to connect.
    tracing::info!(
        grpc = %addrs.grpc,
        metrics = %addrs.metrics,
        push = addrs.push.map(tracing::field::display),
        sandbox = sandbox.as_ref().map(|sandbox| tracing::field::display(sandbox.server.addr)),
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

/// The push settings of the embedded sandbox's app: a fresh Token and EncodingAESKey, safe
/// mode, as a developer would set them in the mini program's admin.
struct SandboxPushSettings {
    token: String,
    encoding_aes_key: String,
}

impl SandboxPushSettings {
    fn generate() -> Self {
        use base64::Engine;
        let mut key = [0u8; 32];
        key.iter_mut().for_each(|byte| *byte = fastrand::u8(..));
        let encoding_aes_key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
        Self {
            token: uuid::Uuid::new_v4().simple().to_string(),
            encoding_aes_key,
        }
    }
}

/// Points the embedded sandbox's pushes at the service's own push endpoint, so the whole loop
/// (popup -> push -> ledger -> send) runs offline.
fn wire_sandbox_pushes(sandbox: &EmbeddedSandbox, push_addr: std::net::SocketAddr) {
    let mut addr = push_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let Ok(url) = url::Url::parse(&format!("http://{addr}/wechat/push/{SANDBOX_APP_NAME}")) else {
        return;
    };
    tracing::info!(%url, "embedded sandbox pushes subscription events to the service");
    let server = &sandbox.server;
    server.sandbox().set_push_target(
        &sandbox.appid,
        Some(PushTarget {
            url,
            token: sandbox.push.token.clone(),
            encoding_aes_key: Some(sandbox.push.encoding_aes_key.clone()),
            mode: PushMode::Safe,
            format: PushFormat::Xml,
        }),
    );
}

/// The embedded sandbox and what the service's app was configured with.
struct EmbeddedSandbox {
    server: sandbox::SandboxServer,
    appid: String,
    push: SandboxPushSettings,
}

/// Starts the sandbox on its loopback address, auto-accepting subscriptions so a first send
/// just works, and configures one app against it with a fresh random secret and push settings
/// (the push listener on a loopback port the system picks unless NOTIFY_PUSH_LISTEN says
/// otherwise).
async fn start_embedded_sandbox(config: &mut ServeConfig) -> std::io::Result<EmbeddedSandbox> {
    let sandbox_config = SandboxConfig {
        auto_accept: true,
        ..SandboxConfig::default()
    };
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let appid = sandbox_config.apps[0].appid.clone();
    let sandbox_config = SandboxConfig {
        apps: vec![SandboxApp::new(appid.clone(), secret.clone())],
        ..sandbox_config
    };
    let running = Sandbox::new(sandbox_config)
        .spawn(config.sandbox_listen)
        .await?;
    let mut app = config.app_defaults.app(
        SANDBOX_APP_NAME.to_owned(),
        appid.clone(),
        Secret::new(secret),
    );
    app.api_bases = vec![running.base_url()];
    let push = SandboxPushSettings::generate();
    app.push = Some(PushSettings {
        token: Secret::new(push.token.as_str()),
        aes_key: AesKey::from_encoding_key(&push.encoding_aes_key).ok(),
        mode: PushMode::Safe,
    });
    // Bound with the service's other listeners; `serve` then points the sandbox's pushes at it.
    config
        .push_listen
        .get_or_insert(std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            0,
        )));
    tracing::info!(
        base_url = %running.base_url(),
        console = %running.base_url(),
        inbox = %format!("{}sandbox/inbox", running.base_url()),
        "embedded sandbox listening (a fake WeChat API for development)"
    );
    config.apps = vec![app];
    Ok(EmbeddedSandbox {
        server: running,
        appid,
        push,
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
}
