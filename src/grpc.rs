//! `notify.v1.NotifyService` over tonic: translates protobuf to the service's types and back.
//! No business rules here; `crate::status` picks the status codes.

mod subscriptions;

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::field::display;

use crate::{
    callers::{Ask, Grant, Refusal},
    pb::{self, notify_service_server::NotifyService},
    service::{BatchRequest, Notifier, Receipt, RecipientInput, SendError, SendRequest},
    status::{code_of, refusal_status, status_of},
    telemetry::code_name,
    wechat::MiniprogramState,
};

pub use subscriptions::SubscriptionsGrpc;

/// The gRPC face of a [`Notifier`].
#[derive(Clone)]
pub struct NotifyGrpc {
    notifier: Arc<Notifier>,
}

impl NotifyGrpc {
    /// Serves `notifier`.
    pub fn new(notifier: Arc<Notifier>) -> Self {
        Self { notifier }
    }

    /// The `app` log field: the configured name the request resolves to (also when the caller
    /// left `app` empty), or what the caller sent when it names no app.
    fn app_label<'a>(&'a self, requested: &'a str) -> &'a str {
        self.notifier.app_name(requested).unwrap_or(requested)
    }

    /// Records what the body says into the call's span (`telemetry::RpcTelemetryLayer` opened
    /// it with these fields empty), so every line of the call carries them; returns the span.
    fn record_call(&self, app: &str, template_id: &str) -> tracing::Span {
        let span = tracing::Span::current();
        span.record("app", display(self.app_label(app)));
        span.record("template_id", display(template_id));
        span
    }

    /// What the call's caller may do (`crate::callers::layer` put it there). Without the layer
    /// (no callers configured, or a test serving this service alone) the call is open.
    fn grant<T>(request: &Request<T>) -> Grant {
        request
            .extensions()
            .get::<Grant>()
            .cloned()
            .unwrap_or(Grant::Open)
    }

    /// Checks `ask` against the call's caller; `Ok(caller)` with who to attribute it to.
    fn admit(
        &self,
        grant: &Grant,
        ask: Ask<'_>,
        started: std::time::Instant,
    ) -> Result<Option<crate::service::CallerRef>, Status> {
        let Some(caller) = grant.caller() else {
            return Ok(None);
        };
        // The configured name the request resolves to (also when it left `app` empty).
        let ask = Ask {
            app: self.notifier.app_name(ask.requested_app),
            ..ask
        };
        match caller.check(ask) {
            Ok(()) => Ok(Some(caller.attribution().clone())),
            Err(refusal) => Err(refused(&refusal, started)),
        }
    }

    /// The tonic service, ready to add to a router.
    pub fn into_server(self) -> pb::notify_service_server::NotifyServiceServer<Self> {
        pb::notify_service_server::NotifyServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// A request is at most 16 MiB.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

#[tonic::async_trait]
impl NotifyService for NotifyGrpc {
    async fn send_subscribe(
        &self,
        request: Request<pb::SendSubscribeRequest>,
    ) -> Result<Response<pb::SendSubscribeResponse>, Status> {
        let started = std::time::Instant::now();
        let deadline = deadline_of(request.metadata());
        let grant = Self::grant(&request);
        let request = request.into_inner();
        self.record_call(&request.app, &request.template_id);
        let caller = self.admit(
            &grant,
            Ask {
                app: None,
                requested_app: &request.app,
                template_id: Some(&request.template_id),
                messages: 1,
                batch: false,
            },
            started,
        )?;
        let state = miniprogram_state(request.miniprogram_state, "miniprogram_state")
            .map_err(|error| failed(&error, started))?;
        let result = self
            .notifier
            .send(
                SendRequest {
                    app: request.app,
                    touser: request.touser,
                    template_id: request.template_id,
                    page: request.page,
                    data: request.data,
                    miniprogram_state: state,
                    lang: request.lang,
                    idempotency_key: request.idempotency_key,
                    caller,
                },
                deadline,
            )
            .await;
        match result {
            Ok(receipt) => {
                tracing::info!(
                    code = "OK",
                    msgid = receipt.msgid,
                    attempts = receipt.attempts,
                    deduplicated = receipt.deduplicated,
                    latency_ms = started.elapsed().as_millis() as u64,
                    "message sent"
                );
                Ok(Response::new(send_response(receipt)))
            }
            Err(error) => Err(failed(&error, started)),
        }
    }

    async fn batch_send(
        &self,
        request: Request<pb::BatchSendRequest>,
    ) -> Result<Response<pb::BatchSendResponse>, Status> {
        let started = std::time::Instant::now();
        let deadline = deadline_of(request.metadata());
        let grant = Self::grant(&request);
        let request = request.into_inner();
        self.record_call(&request.app, &request.template_id)
            .record("recipients", request.recipients.len());
        let caller = self.admit(
            &grant,
            Ask {
                app: None,
                requested_app: &request.app,
                template_id: Some(&request.template_id),
                messages: request.recipients.len(),
                batch: true,
            },
            started,
        )?;
        let state = miniprogram_state(request.miniprogram_state, "miniprogram_state")
            .map_err(|error| failed(&error, started))?;
        let batch = BatchRequest {
            app: request.app,
            template_id: request.template_id,
            page: request.page,
            data: request.data,
            recipients: request
                .recipients
                .into_iter()
                .map(|recipient| RecipientInput {
                    touser: recipient.touser,
                    data: recipient.data,
                    page: recipient.page,
                })
                .collect(),
            miniprogram_state: state,
            lang: request.lang,
            idempotency_key: request.idempotency_key,
            caller,
        };
        let outcomes = self
            .notifier
            .batch_send(batch, deadline)
            .await
            .map_err(|error| failed(&error, started))?;
        let results: Vec<_> = outcomes
            .into_iter()
            .map(|outcome| recipient_result(outcome.touser, outcome.result))
            .collect();
        let succeeded = results.iter().filter(|result| result.code == 0).count() as u32;
        let failed = results.len() as u32 - succeeded;
        tracing::info!(
            code = "OK",
            succeeded,
            failed,
            latency_ms = started.elapsed().as_millis() as u64,
            "batch sent"
        );
        Ok(Response::new(pb::BatchSendResponse {
            results,
            succeeded,
            failed,
        }))
    }
}

fn send_response(receipt: Receipt) -> pb::SendSubscribeResponse {
    pb::SendSubscribeResponse {
        msgid: receipt.msgid.unwrap_or(0),
        attempts: receipt.attempts,
        deduplicated: receipt.deduplicated,
    }
}

fn recipient_result(touser: String, result: Result<Receipt, SendError>) -> pb::RecipientResult {
    match result {
        Ok(receipt) => pb::RecipientResult {
            touser,
            code: 0,
            wechat_errcode: 0,
            message: String::new(),
            msgid: receipt.msgid.unwrap_or(0),
            attempts: receipt.attempts,
            deduplicated: receipt.deduplicated,
        },
        Err(error) => pb::RecipientResult {
            touser,
            code: code_of(&error) as i32,
            wechat_errcode: error.wechat_errcode().unwrap_or(0),
            message: error.to_string(),
            msgid: 0,
            attempts: error.attempts,
            deduplicated: false,
        },
    }
}

/// Logs the call's one line for a failure and turns it into the call's status.
fn failed(error: &SendError, started: std::time::Instant) -> Status {
    log_failure(error, started);
    status_of(error)
}

/// Logs the call's one line for a refusal and turns it into the call's status.
fn refused(refusal: &Refusal, started: std::time::Instant) -> Status {
    let status = refusal_status(refusal);
    tracing::info!(
        code = code_name(status.code()),
        latency_ms = started.elapsed().as_millis() as u64,
        error = %refusal,
        "call refused"
    );
    status
}

fn log_failure(error: &SendError, started: std::time::Instant) {
    tracing::info!(
        code = code_name(code_of(error)),
        wechat_errcode = error.wechat_errcode(),
        rid = error.wechat_rid(),
        attempts = error.attempts,
        latency_ms = started.elapsed().as_millis() as u64,
        error = %error,
        "message not sent"
    );
}

fn miniprogram_state(value: i32, field: &str) -> Result<MiniprogramState, SendError> {
    match pb::MiniprogramState::try_from(value) {
        Ok(pb::MiniprogramState::Unspecified) => Ok(MiniprogramState::Unspecified),
        Ok(pb::MiniprogramState::Developer) => Ok(MiniprogramState::Developer),
        Ok(pb::MiniprogramState::Trial) => Ok(MiniprogramState::Trial),
        Ok(pb::MiniprogramState::Formal) => Ok(MiniprogramState::Formal),
        Err(_) => Err(SendError::invalid_field(
            field,
            format!("{value} is not a MiniprogramState value"),
        )),
    }
}

/// The caller's deadline, from the `grpc-timeout` header.
fn deadline_of(metadata: &MetadataMap) -> Option<Instant> {
    let timeout = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(timeout).map(|timeout| Instant::now() + timeout)
}

/// Parses gRPC's `TimeoutValue TimeoutUnit` (at most 8 digits, then one of `HMSmun`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3_600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
