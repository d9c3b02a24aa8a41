//! A tower layer around every gRPC call: the call's span, carrying the method and the caller's
//! `x-request-id` (so every log line of the call has it) and, once the handler read the body,
//! the app and template, and (from `crate::callers`) the caller; RPC count and latency by
//! method, gRPC code and caller, and an in-flight gauge by method.

use std::{
    cell::Cell,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use super::catalog::{CallerRpcMetrics, InFlight, RpcMethod};

/// The request id header: taken from the caller, generated when absent, echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

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

/// The call's gRPC code: in the headers for an error (trailers-only answer), OK otherwise
/// (also for a status number gRPC does not define).
fn response_code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .filter(|code| (0..=16).contains(code))
        .map_or(tonic::Code::Ok, tonic::Code::from)
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
        let method = RpcMethod::from_path(request.uri().path());
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        // The call's one span: the handler records what it learns from the body into the
        // empty fields (`NotifyGrpc::record_call`), rather than opening a span of its own.
        let span = tracing::info_span!(
            "rpc",
            method = method.label(),
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
                    let _in_flight = InFlight::enter(method);
                    let started = Instant::now();
                    let result = inner.call(request).await;
                    let code = match &result {
                        Ok(response) => response_code(response),
                        Err(_) => tonic::Code::Internal,
                    };
                    let caller = CALL_CALLER.with(Cell::take);
                    let caller = caller.as_deref().unwrap_or(CallerRpcMetrics::anonymous());
                    caller.record(method, code, started.elapsed());
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
    fn the_code_is_read_from_the_answer() {
        let error = http::Response::builder()
            .header("grpc-status", "9")
            .body(())
            .unwrap();
        assert_eq!(response_code(&error), tonic::Code::FailedPrecondition);
        assert_eq!(response_code(&http::Response::new(())), tonic::Code::Ok);
        let unknown = http::Response::builder()
            .header("grpc-status", "99")
            .body(())
            .unwrap();
        assert_eq!(response_code(&unknown), tonic::Code::Ok);
    }
}
