//! The tower layer that identifies every `notify.v1.*` call before its handler runs.
//!
//! It sits inside `telemetry::RpcTelemetryLayer`, so a refused call is still counted and
//! logged: it records the caller's name into the call's span (`caller`) and puts the caller's
//! RPC metric handles into the response extensions, where the telemetry layer finds them.
//! Calls outside `notify.v1` (health, reflection) pass untouched.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::{
    TryFutureExt,
    future::{Either, Ready, ready},
};
use tower::{Layer, Service};
use tracing::field::display;

use super::{Callers, Grant, Refusal, rpc_of};
use crate::tls::TlsConnectInfo;

/// Header of the bearer token.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// Header in which a sidecar forwards the client certificate it verified.
pub const FORWARDED_CLIENT_CERT_HEADER: &str = "x-forwarded-client-cert";
/// The path prefix of every call that needs an identity.
const NOTIFY_PREFIX: &str = "/notify.v1.";

/// Adds [`CallersService`] around a service.
#[derive(Clone)]
pub struct CallersLayer {
    callers: Arc<Callers>,
}

impl CallersLayer {
    /// Identifies calls as one of `callers`.
    pub fn new(callers: Arc<Callers>) -> Self {
        Self { callers }
    }
}

impl<S> Layer<S> for CallersLayer {
    type Service = CallersService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallersService {
            inner,
            callers: self.callers.clone(),
        }
    }
}

/// See [`CallersLayer`].
#[derive(Clone)]
pub struct CallersService<S> {
    inner: S,
    callers: Arc<Callers>,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for CallersService<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    ResponseBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    #[allow(clippy::type_complexity)]
    type Future = Either<
        Ready<Result<Self::Response, Self::Error>>,
        futures::future::MapOk<
            S::Future,
            Box<dyn FnOnce(http::Response<ResponseBody>) -> http::Response<ResponseBody> + Send>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        if !path.starts_with(NOTIFY_PREFIX) {
            return Either::Right(
                self.inner
                    .call(request)
                    .map_ok(Box::new(|response| response)),
            );
        }
        if self.callers.is_open() {
            request.extensions_mut().insert(Grant::Open);
            return Either::Right(
                self.inner
                    .call(request)
                    .map_ok(Box::new(|response| response)),
            );
        }
        let rpc = rpc_of(path);
        let headers = request.headers();
        let identified = self.callers.identify(
            headers
                .get(AUTHORIZATION_HEADER)
                .map(|value| value.as_bytes()),
            request
                .extensions()
                .get::<TlsConnectInfo>()
                .and_then(|info| info.peer.as_deref()),
            headers
                .get(FORWARDED_CLIENT_CERT_HEADER)
                .and_then(|value| value.to_str().ok()),
        );
        let caller = match identified {
            Ok(caller) => caller,
            Err(refusal) => return Either::Left(ready(Ok(refuse(&refusal)))),
        };
        tracing::Span::current().record("caller", display(&caller.name));
        if let Some(rpc) = rpc
            && let Err(refusal) = caller.check_rpc(rpc)
        {
            let mut response = refuse(&refusal);
            response
                .extensions_mut()
                .insert(caller.rpc_metrics().clone());
            return Either::Left(ready(Ok(response)));
        }
        let metrics = caller.rpc_metrics().clone();
        request.extensions_mut().insert(Grant::Caller(caller));
        Either::Right(
            self.inner
                .call(request)
                .map_ok(Box::new(move |mut response| {
                    response.extensions_mut().insert(metrics);
                    response
                })),
        )
    }
}

/// The refusal as a complete gRPC answer, with the call's one log line.
fn refuse<B: Default>(refusal: &Refusal) -> http::Response<B> {
    let status = crate::error::refusal_status(refusal);
    tracing::info!(
        code = crate::telemetry::code_name(status.code()),
        error = %refusal,
        "call refused"
    );
    status.into_http()
}
