//! The tower layer that identifies every `notify.v1.*` call before its handler runs.
//!
//! It sits inside `telemetry::RpcTelemetryLayer`, so a refused call is still counted and
//! logged: it records the caller's name into the call's span (`caller`) and hands the caller's
//! RPC metric handles to the telemetry layer (`telemetry::attribute_rpc`). The handler gets a
//! [`Grant`] in the request extensions: the one allocation the check adds. Calls outside
//! `notify.v1` (health, reflection) pass untouched.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};
use tracing::field::display;

use super::{Callers, Grant, Refusal, rpc_of};
use crate::{telemetry::attribute_rpc, tls::TlsConnectInfo};

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
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        // Not notify.v1 (health, reflection), or no callers: nothing to check or hand over (a
        // handler that finds no grant takes the call as open).
        if !path.starts_with(NOTIFY_PREFIX) || self.callers.is_open() {
            return Either::Right(self.inner.call(request));
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
        attribute_rpc(caller.rpc_metrics());
        if let Some(rpc) = rpc
            && let Err(refusal) = caller.check_rpc(rpc)
        {
            return Either::Left(ready(Ok(refuse(&refusal))));
        }
        request.extensions_mut().insert(Grant::Caller(caller));
        Either::Right(self.inner.call(request))
    }
}

/// The refusal as a complete gRPC answer, with the call's one log line.
fn refuse<B: Default>(refusal: &Refusal) -> http::Response<B> {
    let status = crate::status::refusal_status(refusal);
    tracing::info!(
        code = crate::telemetry::code_name(status.code()),
        error = %refusal,
        "call refused"
    );
    status.into_http()
}
