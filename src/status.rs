//! The one place that turns a failed send into a gRPC status: the code, the `wechat-errcode`
//! and `retry-after` trailers, and the `ErrorInfo` / `BadRequest` details.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::{
    callers::Refusal,
    service::{ErrorKind, NotStarted, SendError},
    wechat::{Endpoint, ErrorClass, WechatError},
};

/// ErrorInfo domain for errors WeChat answered.
pub const WECHAT_DOMAIN: &str = "weixin.qq.com";
/// ErrorInfo domain for errors of this service.
pub const SERVICE_DOMAIN: &str = "wechat-notify";
/// Trailer carrying WeChat's errcode (decimal).
pub const ERRCODE_METADATA: &str = "wechat-errcode";
/// Trailer carrying a retry delay in whole seconds.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// The gRPC code for a failed send (also the `code` of a BatchSend recipient result).
pub fn code_of(error: &SendError) -> Code {
    match &error.kind {
        ErrorKind::Invalid(_) => Code::InvalidArgument,
        ErrorKind::UnknownApp(_) => Code::NotFound,
        ErrorKind::Throttled { .. } => Code::ResourceExhausted,
        ErrorKind::NotStarted(NotStarted::DeadlineExceeded) => Code::DeadlineExceeded,
        ErrorKind::NotStarted(NotStarted::Cancelled) => Code::Cancelled,
        ErrorKind::NotStarted(NotStarted::DailyQuotaExhausted | NotStarted::DailyQuotaStopped) => {
            Code::ResourceExhausted
        }
        ErrorKind::StoreUnavailable => Code::Unavailable,
        ErrorKind::Token(upstream) | ErrorKind::Upstream(upstream) => upstream_code(upstream),
        ErrorKind::NotSubscribed(_) => Code::FailedPrecondition,
        ErrorKind::LedgerUnavailable(_) => Code::Unavailable,
    }
}

fn upstream_code(error: &WechatError) -> Code {
    if let Some(class) = error.class() {
        return match class {
            ErrorClass::InvalidRequest => Code::InvalidArgument,
            ErrorClass::NotSubscribed | ErrorClass::Credential => Code::FailedPrecondition,
            ErrorClass::DailyQuota | ErrorClass::MinuteQuota => Code::ResourceExhausted,
            // -1 still failing after the retries, or a token rejected even after a refresh.
            ErrorClass::Busy | ErrorClass::TokenRejected => Code::Unavailable,
            ErrorClass::Other => Code::Unknown,
        };
    }
    match error {
        // Fetching a token sends no message: whatever went wrong, nothing was delivered.
        _ if error.endpoint() == Endpoint::Token => Code::Unavailable,
        WechatError::Unreachable { .. } | WechatError::HttpStatus { .. } => Code::Unavailable,
        // Written, but no readable answer: WeChat may have delivered it.
        WechatError::OutcomeUnknown { .. } | WechatError::InvalidResponse { .. } => Code::Unknown,
        WechatError::Api { .. } => Code::Unknown,
    }
}

/// True when a send was written to WeChat but no usable answer came back.
fn outcome_unknown(error: &WechatError) -> bool {
    error.endpoint() == Endpoint::Send
        && matches!(
            error,
            WechatError::OutcomeUnknown { .. } | WechatError::InvalidResponse { .. }
        )
}

/// How long the caller should wait before trying again, where known: until the WeChat quota
/// that stopped the send resets (45011, 45009), or the service's own hint.
pub fn retry_after(error: &SendError) -> Option<Duration> {
    if let Some(resets_at) = error.quota_resets_at {
        return Some(resets_at.saturating_duration_since(tokio::time::Instant::now()));
    }
    match &error.kind {
        ErrorKind::Throttled { retry_after, .. } => *retry_after,
        ErrorKind::StoreUnavailable => Some(Duration::from_secs(1)),
        _ => None,
    }
}

/// ErrorInfo reason for an errcode class.
fn reason(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Busy => "SYSTEM_BUSY",
        ErrorClass::TokenRejected => "TOKEN_REJECTED",
        ErrorClass::DailyQuota => "DAILY_QUOTA_EXHAUSTED",
        ErrorClass::MinuteQuota => "MINUTE_QUOTA_EXHAUSTED",
        ErrorClass::Credential => "CREDENTIALS_REJECTED",
        ErrorClass::InvalidRequest => "INVALID_REQUEST",
        ErrorClass::NotSubscribed => "NOT_SUBSCRIBED",
        ErrorClass::Other => "WECHAT_ERROR",
    }
}

/// The status for a request that cannot be decoded (a string that is not UTF-8, malformed
/// protobuf): the caller's fault, so INVALID_ARGUMENT, with a BadRequest naming the field when
/// it is known.
pub fn undecodable_status(field: Option<&str>, description: &str) -> Status {
    let Some(field) = field else {
        return Status::invalid_argument(format!("the request cannot be decoded: {description}"));
    };
    let details = ErrorDetails::with_bad_request(vec![FieldViolation::new(
        field,
        format!("cannot be decoded: {description}"),
    )]);
    Status::with_error_details(
        Code::InvalidArgument,
        format!("the request cannot be decoded: {field}: {description}"),
        details,
    )
}

/// The full status for a failed SendSubscribe.
pub fn status_of(error: &SendError) -> Status {
    let code = code_of(error);
    let mut metadata = MetadataMap::new();
    let mut details = ErrorDetails::new();
    match &error.kind {
        ErrorKind::Invalid(violations) => {
            details.set_bad_request(
                violations
                    .iter()
                    .map(|violation| {
                        FieldViolation::new(violation.field.clone(), violation.description.clone())
                    })
                    .collect::<Vec<_>>(),
            );
        }
        ErrorKind::UnknownApp(_) => {
            details.set_error_info("APP_NOT_FOUND", SERVICE_DOMAIN, HashMap::new());
        }
        ErrorKind::Throttled { .. } => {
            details.set_error_info("RATE_LIMITED", SERVICE_DOMAIN, HashMap::new());
        }
        ErrorKind::NotStarted(_) => {}
        ErrorKind::NotSubscribed(_) => {
            details.set_error_info("NOT_SUBSCRIBED", SERVICE_DOMAIN, HashMap::new());
        }
        ErrorKind::StoreUnavailable | ErrorKind::LedgerUnavailable(_) => {
            details.set_error_info("STORE_UNAVAILABLE", SERVICE_DOMAIN, HashMap::new());
        }
        ErrorKind::Token(upstream) | ErrorKind::Upstream(upstream) => match upstream {
            WechatError::Api {
                errcode,
                errmsg,
                rid,
                endpoint,
            } => {
                if let Ok(value) = errcode.to_string().parse() {
                    metadata.insert(ERRCODE_METADATA, value);
                }
                let mut info = HashMap::from([
                    ("errcode".to_owned(), errcode.to_string()),
                    ("errmsg".to_owned(), errmsg.clone()),
                    ("endpoint".to_owned(), endpoint.to_string()),
                ]);
                if let Some(rid) = rid {
                    info.insert("rid".to_owned(), rid.clone());
                }
                details.set_error_info(
                    reason(ErrorClass::of(*endpoint, *errcode)),
                    WECHAT_DOMAIN,
                    info,
                );
            }
            _ if outcome_unknown(upstream) => {
                details.set_error_info("OUTCOME_UNKNOWN", SERVICE_DOMAIN, HashMap::new());
            }
            _ => {
                details.set_error_info("UPSTREAM_UNAVAILABLE", SERVICE_DOMAIN, HashMap::new());
            }
        },
    }
    if let Some(delay) = retry_after(error) {
        // Whole seconds, rounded up: a caller waiting this long will not be turned away again.
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        if let Ok(value) = seconds.to_string().parse() {
            metadata.insert(RETRY_AFTER_METADATA, value);
        }
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details_and_metadata(code, error.to_string(), details, metadata)
}

/// ErrorInfo reason of a call its caller may not make.
pub const CALLER_NOT_ALLOWED: &str = "CALLER_NOT_ALLOWED";
/// ErrorInfo reason of a call without a caller identity.
pub const CALLER_UNAUTHENTICATED: &str = "CALLER_UNAUTHENTICATED";
/// ErrorInfo reason of a call over its caller's own `rate_per_sec`.
pub const CALLER_RATE_LIMITED: &str = "CALLER_RATE_LIMITED";

/// The status of a refused call: UNAUTHENTICATED without an identity, PERMISSION_DENIED with
/// ErrorInfo `CALLER_NOT_ALLOWED` (metadata `caller` and `lacks`) for a call its caller may
/// not make, RESOURCE_EXHAUSTED (`CALLER_RATE_LIMITED`, with `retry-after`) over its rate.
pub fn refusal_status(refusal: &Refusal) -> Status {
    let mut details = ErrorDetails::new();
    let mut metadata = MetadataMap::new();
    let code = match refusal {
        Refusal::Unauthenticated(_) => {
            details.set_error_info(CALLER_UNAUTHENTICATED, SERVICE_DOMAIN, HashMap::new());
            Code::Unauthenticated
        }
        Refusal::NotAllowed { caller, lacks } => {
            details.set_error_info(
                CALLER_NOT_ALLOWED,
                SERVICE_DOMAIN,
                HashMap::from([
                    ("caller".to_owned(), caller.to_string()),
                    ("lacks".to_owned(), lacks.clone()),
                ]),
            );
            Code::PermissionDenied
        }
        Refusal::RateLimited {
            caller,
            retry_after,
        } => {
            details.set_error_info(
                CALLER_RATE_LIMITED,
                SERVICE_DOMAIN,
                HashMap::from([("caller".to_owned(), caller.to_string())]),
            );
            if let Some(delay) = retry_after {
                let seconds = (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)).max(1);
                if let Ok(value) = seconds.to_string().parse() {
                    metadata.insert(RETRY_AFTER_METADATA, value);
                }
                details.set_retry_info(Some(*delay));
            }
            Code::ResourceExhausted
        }
    };
    Status::with_error_details_and_metadata(code, refusal.to_string(), details, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::fake::answered as api;

    fn upstream(error: WechatError) -> SendError {
        SendError::new(ErrorKind::Upstream(error), 1)
    }

    #[test]
    fn every_row_of_the_error_table_has_its_code() {
        let send = |errcode| upstream(api(Endpoint::Send, errcode));
        for (errcode, code) in [
            (40003, Code::InvalidArgument),
            (40037, Code::InvalidArgument),
            (47003, Code::InvalidArgument),
            (41030, Code::InvalidArgument),
            (43101, Code::FailedPrecondition),
            (45009, Code::ResourceExhausted),
            (45011, Code::ResourceExhausted),
            (-1, Code::Unavailable),
            (40001, Code::Unavailable),
            (42001, Code::Unavailable),
            (40014, Code::Unavailable),
            (48001, Code::Unknown),
        ] {
            assert_eq!(code_of(&send(errcode)), code, "errcode {errcode}");
        }
        for errcode in [40013, 40125, 40164, 40243, 40001] {
            let token = SendError::new(ErrorKind::Token(api(Endpoint::Token, errcode)), 0);
            assert_eq!(
                code_of(&token),
                Code::FailedPrecondition,
                "errcode {errcode}"
            );
        }
        // A request reqwest refuses to build stands in for any transport failure.
        let transport = reqwest::Client::new().get("no-scheme").build().unwrap_err();
        let unknown = upstream(WechatError::OutcomeUnknown {
            endpoint: Endpoint::Send,
            source: crate::wechat::TransportError::new(transport),
        });
        assert_eq!(code_of(&unknown), Code::Unknown);
        let status = status_of(&unknown);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "OUTCOME_UNKNOWN"
        );
        let unreachable = upstream(WechatError::Unreachable {
            endpoint: Endpoint::Send,
            tried: 1,
            last: None,
        });
        assert_eq!(code_of(&unreachable), Code::Unavailable);
        let http = upstream(WechatError::HttpStatus {
            endpoint: Endpoint::Send,
            status: 502,
        });
        assert_eq!(code_of(&http), Code::Unavailable);
    }

    #[test]
    fn wechat_errors_carry_the_errcode_trailer_and_error_info() {
        let status = status_of(&upstream(api(Endpoint::Send, 43101)));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.metadata().get(ERRCODE_METADATA).unwrap(), "43101");
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.domain, WECHAT_DOMAIN);
        assert_eq!(info.metadata["errcode"], "43101");
        assert!(info.metadata["errmsg"].contains("43101"));
    }

    #[test]
    fn ledger_refusals_are_failed_precondition_not_subscribed() {
        let status = status_of(&SendError::new(
            ErrorKind::NotSubscribed("the user rejected this template"),
            0,
        ));
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("NOT_SUBSCRIBED", SERVICE_DOMAIN)
        );
        assert!(
            status.metadata().get(ERRCODE_METADATA).is_none(),
            "wechat was not called"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quota_errors_say_when_to_retry() {
        let mut error = upstream(api(Endpoint::Send, 45011));
        error.quota_resets_at = Some(tokio::time::Instant::now() + Duration::from_millis(14_200));
        let status = status_of(&error);
        let seconds = status.metadata().get(RETRY_AFTER_METADATA).unwrap();
        assert_eq!(seconds, "15", "whole seconds, rounded up");
        let info = status.get_error_details().retry_info().cloned().unwrap();
        assert_eq!(info.retry_delay, Some(Duration::from_millis(14_200)));
        // The mapping reads no clock of its own: without the reset time, no retry-after.
        let status = status_of(&upstream(api(Endpoint::Send, 45011)));
        assert!(status.metadata().get(RETRY_AFTER_METADATA).is_none());
    }

    #[test]
    fn validation_errors_name_each_field() {
        let error = SendError::invalid(vec![
            crate::validation::FieldViolation {
                field: "touser".into(),
                description: "is required".into(),
            },
            crate::validation::FieldViolation {
                field: "data.thing1".into(),
                description: "too long".into(),
            },
        ]);
        let status = status_of(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<_> = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|violation| violation.field.clone())
            .collect();
        assert_eq!(fields, ["touser", "data.thing1"]);
    }
}
