//! `wechat-notify-bench`: a load generator for a running service, and a fixed-answer upstream to
//! run it against, so that what is measured is the service and not WeChat (see
//! `docs/benchmarks.md`). A crate of its own: it speaks the service's gRPC API like any caller
//! (its own code generated from `proto/`), and none of it ships in the service's binary.
//!
//! - `send` / `batch`: drive SendSubscribe or BatchSend over gRPC, closed loop (a
//!   fixed number of calls in flight) or open loop (`--rate`: calls started on a schedule,
//!   whatever the answers do), and report messages/s, latency percentiles, errors by gRPC code,
//!   and the CPU time and peak RSS of the processes named with `--pid`.
//! - `http`: the same against the upstream's send endpoint directly, to learn the rate the
//!   upstream sustains alone.
//! - `upstream`: a minimal fixed-answer WeChat API (token endpoints and send).
//! - `forwarder`: the reference point, a bare tonic handler forwarding each SendSubscribe
//!   with one shared reqwest client and nothing else.
//! - `delay`: a TCP proxy adding a fixed delay each way, to put a Redis on loopback at the
//!   distance of one in another zone.
//!
//! Every run is bounded by `--duration` (and `--requests`) and stops by itself.

mod delay;
mod forwarder;
mod load;
pub mod pb;
mod process;
mod report;
mod signal;
mod upstream;

use std::{io::Write, net::SocketAddr, process::ExitCode, time::Duration};

pub use delay::serve_delay;
pub use forwarder::{Forwarder, serve_forwarder};
pub use load::{BearerToken, LoadOptions, Scenario, run_load};
pub use process::ProcessWatch;
pub use report::{Latency, ProcessUsage, Report};
pub use upstream::{BENCH_TOKEN, serve_upstream, upstream_router};

/// wechat-notify-bench: load generator, fixed-answer WeChat upstream and bare forwarder for
/// benchmarking wechat-notify (see docs/benchmarks.md).
#[derive(Debug, clap::Parser)]
#[command(name = "wechat-notify-bench", version)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Drive SendSubscribe: one message per call.
    Send(LoadArgs),
    /// Drive BatchSend: --recipients messages per call.
    Batch(BatchArgs),
    /// Drive the upstream's send endpoint directly over HTTP (the rate it sustains alone).
    Http(LoadArgs),
    /// Serve a fixed-answer WeChat API: tokens and `{"errcode":0,...}` for every send.
    Upstream(UpstreamArgs),
    /// Serve a bare SendSubscribe forwarder (the reference point; nothing but tonic + reqwest).
    Forwarder(ForwarderArgs),
    /// Forward TCP connections to --target, holding every chunk --delay-ms in each direction.
    Delay(DelayArgs),
}

/// Flags shared by every load scenario.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// gRPC address of the service (`send`, `batch`) or base URL of the upstream (`http`).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Calls in flight at most (closed loop: exactly this many).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over (gRPC scenarios).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds before measuring (token fetch, connection set-up).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open loop: start this many calls per second on a fixed schedule (latency then includes
    /// any wait for a free slot under --concurrency). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many measured calls, even before --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// `app` field of each call (empty: the service's only app).
    #[arg(long, default_value = "")]
    app: String,
    /// Processes to watch as LABEL=PID (repeatable): CPU time per message and peak RSS.
    #[arg(long = "pid", value_name = "LABEL=PID", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Reset the watched processes' peak RSS (VmHWM) before measuring.
    #[arg(long)]
    reset_peak: bool,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Give every SendSubscribe its own idempotency key (unique to the run).
    #[arg(long)]
    keyed: bool,
    /// Before the warm-up, record every SendSubscribe recipient as subscribed to the template
    /// (RecordSubscriptions, `accept`), so that the sends go to users the ledger knows.
    #[arg(long)]
    subscribed: bool,
    /// Speak TLS to the service, trusting this CA certificate (PEM) for the name `localhost`
    /// (use an https:// --target).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// A caller's bearer token, sent on every call (docs/callers.md); prefer the environment
    /// variable, since arguments show in the process list
    #[arg(
        long,
        env = "NOTIFY_BENCH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = parse_token
    )]
    token: Option<BearerToken>,
}

#[derive(Debug, clap::Args)]
struct BatchArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Recipients per BatchSend call.
    #[arg(long, default_value_t = 10_000)]
    recipients: usize,
}

#[derive(Debug, clap::Args)]
struct UpstreamArgs {
    /// Where to listen (loopback).
    #[arg(long, default_value = "127.0.0.1:18089")]
    listen: SocketAddr,
    /// Exit by itself after this many seconds (a safety net for scripts).
    #[arg(long, default_value_t = 3_600)]
    exit_after: u64,
}

#[derive(Debug, clap::Args)]
struct ForwarderArgs {
    /// Where to serve gRPC (loopback).
    #[arg(long, default_value = "127.0.0.1:50152")]
    listen: SocketAddr,
    /// Base URL of the fixed-answer upstream.
    #[arg(long, default_value = "http://127.0.0.1:18089/")]
    upstream: reqwest::Url,
    /// Exit by itself after this many seconds (a safety net for scripts).
    #[arg(long, default_value_t = 3_600)]
    exit_after: u64,
}

#[derive(Debug, clap::Args)]
struct DelayArgs {
    /// Where to listen (loopback).
    #[arg(long, default_value = "127.0.0.1:16380")]
    listen: SocketAddr,
    /// Where to forward each connection.
    #[arg(long, default_value = "127.0.0.1:6379")]
    target: SocketAddr,
    /// Milliseconds each chunk is held, at least, in each direction. The timer rounds up to
    /// the next millisecond, so measure the round trip through it (1 gave 4.4 ms here).
    #[arg(long, default_value_t = 1.0)]
    delay_ms: f64,
    /// Exit by itself after this many seconds (a safety net for scripts).
    #[arg(long, default_value_t = 3_600)]
    exit_after: u64,
}

/// Resolves on SIGTERM/SIGINT or after `exit_after`.
async fn stop_signal(exit_after: Duration) {
    tokio::select! {
        () = signal::stop_requested() => {}
        () = tokio::time::sleep(exit_after) => {}
    }
}

fn parse_token(value: &str) -> Result<BearerToken, std::convert::Infallible> {
    Ok(BearerToken::new(value))
}

fn parse_pid(value: &str) -> Result<(String, u32), String> {
    let (label, pid) = value.split_once('=').unwrap_or(("service", value));
    let pid = pid
        .parse()
        .map_err(|_| format!("{value}: expected LABEL=PID"))?;
    Ok((label.to_owned(), pid))
}

impl LoadArgs {
    fn into_options(self, scenario: Scenario) -> Result<LoadOptions, String> {
        let tls_ca = self
            .ca_file
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map_err(|error| format!("--ca-file {}: {error}", path.display()))
            })
            .transpose()?;
        Ok(LoadOptions {
            scenario,
            target: self.target,
            concurrency: self.concurrency.max(1),
            connections: self.connections.max(1),
            duration: Duration::from_secs_f64(self.duration.max(0.0)),
            warmup: Duration::from_secs_f64(self.warmup.max(0.0)),
            rate: self.rate.filter(|rate| *rate > 0.0),
            max_requests: self.requests,
            app: self.app,
            watch: self.pids,
            reset_peak: self.reset_peak,
            keyed: self.keyed,
            subscribed: self.subscribed,
            tls_ca,
            token: self.token,
        })
    }
}

/// The exit code of a serving `command` that ended with `result`, its error printed.
fn served(command: &str, result: Result<(), impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wechat-notify-bench {command}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command on `runtime`.
pub fn main(args: BenchArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let (options, json) = match args.command {
        BenchCommand::Upstream(args) => {
            let stop = stop_signal(Duration::from_secs(args.exit_after));
            return served(
                "upstream",
                runtime.block_on(serve_upstream(args.listen, stop)),
            );
        }
        BenchCommand::Forwarder(args) => {
            let stop = stop_signal(Duration::from_secs(args.exit_after));
            let forwarded = runtime.block_on(serve_forwarder(args.listen, &args.upstream, stop));
            return served("forwarder", forwarded);
        }
        BenchCommand::Delay(args) => {
            let stop = stop_signal(Duration::from_secs(args.exit_after));
            let delay = Duration::from_secs_f64(args.delay_ms.max(0.0) / 1000.0);
            let delayed = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(args.listen).await?;
                serve_delay(listener, args.target, delay, stop).await
            });
            return served("delay", delayed);
        }
        BenchCommand::Send(load) => {
            let json = load.json;
            (load.into_options(Scenario::Send), json)
        }
        BenchCommand::Http(load) => {
            let json = load.json;
            (load.into_options(Scenario::Http), json)
        }
        BenchCommand::Batch(batch) => {
            let json = batch.load.json;
            let recipients = batch.recipients.max(1);
            (
                batch.load.into_options(Scenario::Batch { recipients }),
                json,
            )
        }
    };
    let options = match options {
        Ok(options) => options,
        Err(error) => {
            eprintln!("wechat-notify-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_load(&options)) {
        Ok(report) => {
            // A closed pipe (`| head`) is not a failure of the run.
            let mut stdout = std::io::stdout();
            let _ = if json {
                writeln!(stdout, "{}", report.to_json())
            } else {
                write!(stdout, "{report}")
            };
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wechat-notify-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
