//! Why a message was not delivered. The gRPC code for each is chosen in one place:
//! `crate::status`.

use std::time::Duration;

use tokio::time::Instant;

use crate::{validation::FieldViolation, wechat::WechatError};

/// Why a send did not happen, or failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// Fields are missing, too long or break their keyword rule. Nothing was sent.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldViolation>),
    /// `app` names no configured app.
    #[error("app {0:?} is not configured")]
    UnknownApp(String),
    /// No access token could be had for the app.
    #[error("could not get an access token: {0}")]
    Token(WechatError),
    /// WeChat did not deliver the message (an errcode, an HTTP status, no answer).
    #[error("{0}")]
    Upstream(WechatError),
    /// The app's limits did not admit the send in time; nothing was sent.
    #[error("not sent: {reason}")]
    Throttled {
        reason: &'static str,
        retry_after: Option<Duration>,
    },
    /// The send was never started.
    #[error("not sent: {0}")]
    NotStarted(NotStarted),
    /// A keyed send whose idempotency record could not be checked (the shared store is
    /// unreachable): not risked, since it might be a duplicate. Nothing was sent.
    #[error("not sent: the idempotency store is unreachable, so a duplicate cannot be ruled out")]
    StoreUnavailable,
    /// Under `subscription_check = enforce`, the ledger knows WeChat would answer 43101;
    /// nothing was sent.
    #[error("not sent: {0}")]
    NotSubscribed(&'static str),
    /// The subscription ledger's store could not be used.
    #[error("{0}")]
    LedgerUnavailable(String),
}

/// Why a send was never started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotStarted {
    /// The caller's deadline passed first.
    #[error("the call's deadline passed before this send started")]
    DeadlineExceeded,
    /// The caller cancelled the call first.
    #[error("the call was cancelled before this send started")]
    Cancelled,
    /// WeChat answered 45009 (daily quota) earlier in the same batch.
    #[error("wechat's daily quota (45009) was exhausted earlier in this batch")]
    DailyQuotaExhausted,
    /// WeChat answered 45009 (daily quota) to a replica sharing this app's state earlier today.
    #[error(
        "wechat's daily quota (45009) was exhausted for this app; sends resume when the quota day ends"
    )]
    DailyQuotaStopped,
}

/// A failed send, with the upstream attempts it made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct SendError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// HTTP requests made to WeChat's send endpoint before giving up.
    pub attempts: u32,
    /// When the WeChat quota that stopped this send resets (the next minute after a 45011, the
    /// end of the quota day after a 45009), on the app's quota clock; `None` when no quota
    /// stopped it.
    pub quota_resets_at: Option<Instant>,
}

impl From<crate::idempotency::StoreUnavailable> for SendError {
    fn from(_: crate::idempotency::StoreUnavailable) -> Self {
        Self::new(ErrorKind::StoreUnavailable, 0)
    }
}

impl SendError {
    /// An error after `attempts` upstream requests.
    pub fn new(kind: ErrorKind, attempts: u32) -> Self {
        Self {
            kind,
            attempts,
            quota_resets_at: None,
        }
    }

    /// A request rejected before anything was sent.
    pub fn invalid(violations: Vec<FieldViolation>) -> Self {
        Self::new(ErrorKind::Invalid(violations), 0)
    }

    /// One bad field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::invalid(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// WeChat's errcode, when WeChat answered with one.
    pub fn wechat_errcode(&self) -> Option<i32> {
        match &self.kind {
            ErrorKind::Token(error) | ErrorKind::Upstream(error) => error.errcode(),
            _ => None,
        }
    }
}

impl SendError {
    /// WeChat's request id (`rid`) for the failed call, for its rid lookup.
    pub fn wechat_rid(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Token(WechatError::Api { rid, .. })
            | ErrorKind::Upstream(WechatError::Api { rid, .. }) => rid.as_deref(),
            _ => None,
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}
