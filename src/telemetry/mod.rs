//! Logs (tracing, text or JSON) and metrics (Prometheus text format on `GET /metrics`).

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Keeps the log writer thread running; dropping it flushes the lines still queued. Hold it
/// until the process is done logging.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global tracing subscriber: `RUST_LOG` filters (default `info`), `format` picks
/// text or JSON lines on stderr. Later calls are no-ops.
///
/// Lines are formatted on the calling thread and written by one writer thread, in batches
/// (buffered, flushed whenever its queue runs empty), so the one-line-per-RPC log costs no
/// write syscall per call on the request path. Nothing is dropped: when stderr cannot keep up,
/// callers wait, as they would on a direct write.
pub fn init_logging(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(writer))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(writer),
            )
            .try_init(),
    };
    // Already installed (a test harness or an earlier call): keep that one, stop this writer.
    LogGuard {
        _writer: installed.ok().map(|()| guard),
    }
}

/// Upstream latency buckets, in seconds: WeChat usually answers within tens of milliseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use) and its renderer.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("latency buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; this handle then renders nothing,
            // which is visible on /metrics rather than fatal.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds, until aborted.
/// The recorder keeps every raw sample until upkeep or a scrape drains it, so without this a
/// service nobody scrapes grows without bound: 8 bytes per sample, two samples per message,
/// ~24 MB a minute at 25,000 messages/s. (`build_recorder` leaves upkeep to the caller.)
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

mod rpc;

pub use rpc::{REQUEST_ID_HEADER, RpcTelemetryLayer};
