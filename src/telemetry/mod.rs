//! Logs (tracing, text or JSON lines) and metrics (Prometheus text format on `GET /metrics`).
//!
//! - [`init_logging`]: the global subscriber; JSON lines carry every enclosing span's fields
//!   (`request_id`, `method`, `app`, ...) at the top level ([`FlatJson`]).
//! - [`metrics_handle`]: the global Prometheus recorder, with every metric described
//!   ([`catalog`] lists them all) so `/metrics` is self-explanatory.
//! - [`RpcTelemetryLayer`]: the per-call span, RPC count, latency and in-flight gauge.

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::PrometheusHandle;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter,
    fmt::{self, MakeWriter, format::JsonFields},
    prelude::*,
};

use crate::config::LogFormat;

pub mod catalog;
mod json;
mod rpc;

pub use catalog::{CallerRpcMetrics, code_name};
pub use json::FlatJson;
pub use rpc::{REQUEST_ID_HEADER, RpcTelemetryLayer, attribute_rpc};

/// Keeps the log writer thread running; dropping it flushes the lines still queued. Hold it
/// until the process is done logging.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global tracing subscriber on stderr: `RUST_LOG` filters (default `info`),
/// `format` picks text or JSON lines. Later calls are no-ops.
///
/// Lines are formatted on the calling thread and written by tracing-appender's writer thread,
/// so a call never waits on a write syscall. It is built not lossy: when stderr cannot keep up,
/// callers wait, as they would on a direct write, rather than lines being dropped.
pub fn init_logging(format: LogFormat) -> LogGuard {
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    // Already installed (a test harness or an earlier call): keep that one, stop this writer.
    let installed = init_logging_to(format, writer, ansi);
    LogGuard {
        _writer: installed.then_some(guard),
    }
}

/// Like [`init_logging`], writing to `writer` (tests capture the lines this way); `ansi` colours
/// text lines. Returns false when a subscriber was already installed (that one is kept).
pub fn init_logging_to<W>(format: LogFormat, writer: W, ansi: bool) -> bool
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(writer))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(FlatJson)
                    .with_writer(writer),
            )
            .try_init(),
    };
    installed.is_ok()
}

/// The process-wide Prometheus recorder (installed and described on first use) and its
/// renderer.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = catalog::recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; this handle then renders nothing,
            // which is visible on /metrics rather than fatal.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            catalog::install();
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds, until aborted.
/// The recorder keeps every raw sample until upkeep or a scrape drains it, so without this a
/// service nobody scrapes grows without bound: 8 bytes per sample, two samples per message.
/// (`build_recorder` leaves upkeep to the caller.)
pub fn spawn_metrics_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    })
}

/// `GET /metrics` in the Prometheus text format; `before_render` updates live gauges.
pub fn metrics_router(
    handle: PrometheusHandle,
    before_render: impl Fn() + Clone + Send + Sync + 'static,
) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            let before_render = before_render.clone();
            async move {
                before_render();
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}
