//! A tower layer around every gRPC call: a span carrying the method and the caller's
//! `x-request-id` (so every log line of the call has it), RPC count and latency by method and
//! gRPC code, and an in-flight gauge.

use std::{
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

fn method_label(path: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|(known, _)| *known == path)
        .map_or("other", |(_, label)| label)
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
fn code_label<B>(response: &http::Response<B>) -> &'static str {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok())
        .and_then(|code| CODE_NAMES.get(code).copied())
        .unwrap_or("OK")
}

/// One call counted in the in-flight gauge for as long as it lives.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter(method: &'static str) -> Self {
        let gauge = metrics::gauge!(RPC_IN_FLIGHT, "method" => method);
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
        let method = method_label(request.uri().path());
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let span = tracing::info_span!("rpc", method, request_id = %request_id);
        // The service that was polled ready handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                // Decremented on drop too: a call the client cancels is dropped mid-flight.
                let _in_flight = InFlight::enter(method);
                let started = Instant::now();
                let result = inner.call(request).await;
                let code = match &result {
                    Ok(response) => code_label(response),
                    Err(_) => "INTERNAL",
                };
                let labels = [("method", method), ("code", code)];
                metrics::counter!(RPC_REQUESTS_TOTAL, &labels).increment(1);
                metrics::histogram!(RPC_DURATION, &labels).record(started.elapsed().as_secs_f64());
                result
            }
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
    }
}
