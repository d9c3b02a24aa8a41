//! A tower layer around every gRPC call: the call's span, carrying the method and the caller's
//! `x-request-id` (so every log line of the call has it) and, once the handler read the body,
//! the app and template, and (from `crate::callers`) the caller; RPC count and latency by
//! method, gRPC code and caller, and an in-flight gauge by method.

use std::{
    cell::Cell,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use super::catalog::{RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS_TOTAL};

/// The request id header: taken from the caller, generated when absent, echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Methods with a label of their own; anything else is `other`, so a caller cannot grow the
/// label set.
const KNOWN_METHODS: &[(&str, &str)] = &[
    ("/notify.v1.NotifyService/SendSubscribe", "SendSubscribe"),
    ("/notify.v1.NotifyService/BatchSend", "BatchSend"),
    (
        "/notify.v1.SubscriptionService/RecordSubscriptions",
        "RecordSubscriptions",
    ),
    (
        "/notify.v1.SubscriptionService/GetSubscriptions",
        "GetSubscriptions",
    ),
    ("/notify.v1.SubscriptionService/WatchEvents", "WatchEvents"),
    ("/grpc.health.v1.Health/Check", "HealthCheck"),
    ("/grpc.health.v1.Health/Watch", "HealthWatch"),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "Reflection",
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "Reflection",
    ),
];

#[cfg(test)]
fn method_label(path: &str) -> &'static str {
    METHOD_LABELS[method_index(path)]
}

/// Every method label, `other` last: the rows of the metric handle tables.
const METHOD_LABELS: [&str; 9] = [
    "SendSubscribe",
    "BatchSend",
    "RecordSubscriptions",
    "GetSubscriptions",
    "WatchEvents",
    "HealthCheck",
    "HealthWatch",
    "Reflection",
    "other",
];

/// The row of `path`'s label in [`METHOD_LABELS`].
fn method_index(path: &str) -> usize {
    let label = KNOWN_METHODS
        .iter()
        .find(|(known, _)| *known == path)
        .map_or("other", |(_, label)| label);
    METHOD_LABELS
        .iter()
        .position(|known| *known == label)
        .unwrap_or(METHOD_LABELS.len() - 1)
}

/// The RPC count and latency handles of one method and code.
struct Finished {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// RPC count and latency handles of one caller (`caller` label) by method and code, made on
/// first use and kept: a call then costs atomic updates instead of registry lookups. Calls no
/// configured caller made count under [`CallerRpcMetrics::anonymous`].
pub struct CallerRpcMetrics {
    caller: String,
    finished: [[OnceLock<Finished>; CODE_NAMES.len()]; METHOD_LABELS.len()],
}

impl CallerRpcMetrics {
    /// The handles of the configured caller `caller`.
    pub fn new(caller: &str) -> Self {
        Self {
            caller: caller.to_owned(),
            finished: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// The handles of calls no configured caller made (`caller="anonymous"`).
    pub fn anonymous() -> &'static Self {
        static ANONYMOUS: OnceLock<CallerRpcMetrics> = OnceLock::new();
        ANONYMOUS.get_or_init(|| Self::new(crate::config::ANONYMOUS))
    }

    fn finished(&self, method: usize, code: usize) -> &Finished {
        self.finished[method][code].get_or_init(|| {
            let labels = [
                ("method", METHOD_LABELS[method].to_owned()),
                ("code", CODE_NAMES[code].to_owned()),
                ("caller", self.caller.clone()),
            ];
            Finished {
                requests: metrics::counter!(RPC_REQUESTS_TOTAL, &labels),
                duration: metrics::histogram!(RPC_DURATION, &labels),
            }
        })
    }
}

tokio::task_local! {
    /// The caller of the call being handled, set by `crate::callers` through [`attribute_rpc`]:
    /// a slot in the call's own future, so handing it over allocates nothing.
    static CALL_CALLER: Cell<Option<Arc<CallerRpcMetrics>>>;
}

/// Counts the call being handled under `caller` in the RPC metrics. Called by the callers
/// layer, inside [`RpcTelemetryLayer`]; elsewhere it does nothing.
pub fn attribute_rpc(caller: &Arc<CallerRpcMetrics>) {
    let _ = CALL_CALLER.try_with(|slot| slot.set(Some(caller.clone())));
}

/// The in-flight gauge by method (the caller is not known yet when a call starts).
fn in_flight_handles() -> &'static [OnceLock<metrics::Gauge>; METHOD_LABELS.len()] {
    static HANDLES: OnceLock<[OnceLock<metrics::Gauge>; METHOD_LABELS.len()]> = OnceLock::new();
    HANDLES.get_or_init(|| std::array::from_fn(|_| OnceLock::new()))
}

/// gRPC code names, indexed by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as in metric labels and log lines.
pub fn code_name(code: tonic::Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The call's gRPC code: in the headers for an error (trailers-only answer), OK otherwise.
#[cfg(test)]
fn code_label<B>(response: &http::Response<B>) -> &'static str {
    CODE_NAMES[code_index(response)]
}

/// [`code_label`]'s index in [`CODE_NAMES`].
fn code_index<B>(response: &http::Response<B>) -> usize {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|code| *code < CODE_NAMES.len())
        .unwrap_or(0)
}

/// `INTERNAL` in [`CODE_NAMES`].
const INTERNAL: usize = 13;

/// One call counted in the in-flight gauge for as long as it lives.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter(method: usize) -> Self {
        let gauge = in_flight_handles()[method]
            .get_or_init(|| metrics::gauge!(RPC_IN_FLIGHT, "method" => METHOD_LABELS[method]))
            .clone();
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Adds [`RpcTelemetry`] around a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTelemetryLayer;

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

/// See [`RpcTelemetryLayer`].
#[derive(Clone, Debug)]
pub struct RpcTelemetry<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RpcTelemetry<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let method_row = method_index(request.uri().path());
        let method = METHOD_LABELS[method_row];
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        // The call's one span: the handler records what it learns from the body into the
        // empty fields (`NotifyGrpc::record_call`), rather than opening a span of its own.
        let span = tracing::info_span!(
            "rpc",
            method,
            request_id = %request_id,
            app = tracing::field::Empty,
            template_id = tracing::field::Empty,
            recipients = tracing::field::Empty,
            caller = tracing::field::Empty,
        );
        // The service that was polled ready handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            CALL_CALLER
                .scope(Cell::new(None), async move {
                    // Decremented on drop too: a call the client cancels is dropped mid-flight.
                    let _in_flight = InFlight::enter(method_row);
                    let started = Instant::now();
                    let result = inner.call(request).await;
                    let code = match &result {
                        Ok(response) => code_index(response),
                        Err(_) => INTERNAL,
                    };
                    let caller = CALL_CALLER.with(Cell::take);
                    let caller = caller.as_deref().unwrap_or(CallerRpcMetrics::anonymous());
                    let finished = caller.finished(method_row, code);
                    finished.requests.increment(1);
                    finished.duration.record(started.elapsed().as_secs_f64());
                    result
                })
                .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label("/notify.v1.NotifyService/SendSubscribe"),
            "SendSubscribe"
        );
        assert_eq!(method_label("/evil/o6_bmjrPTlm6_2sgVt7hMZOPfL2M"), "other");
        let error = http::Response::builder()
            .header("grpc-status", "9")
            .body(())
            .unwrap();
        assert_eq!(code_label(&error), "FAILED_PRECONDITION");
        assert_eq!(code_label(&http::Response::new(())), "OK");
        assert_eq!(CODE_NAMES[INTERNAL], "INTERNAL");
        for (_, label) in KNOWN_METHODS {
            assert!(METHOD_LABELS.contains(label));
        }
    }
}
