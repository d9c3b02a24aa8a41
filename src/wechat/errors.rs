//! What can go wrong talking to WeChat, and the class of each errcode.

use std::fmt;

use crate::telemetry::catalog;

/// Which WeChat endpoint an error came from: the same errcode can mean different things on each
/// (40001 is a wrong AppSecret on the token endpoint, a stale token on the send endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /cgi-bin/token` or `POST /cgi-bin/stable_token`.
    Token,
    /// `POST /cgi-bin/message/subscribe/send`.
    Send,
    /// `GET /wxaapi/newtmpl/gettemplate` (the app's template list).
    Templates,
}

impl Endpoint {
    /// The `endpoint` label of metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Send => "send",
            Endpoint::Templates => "templates",
        }
    }
}

impl From<Endpoint> for catalog::Endpoint {
    fn from(endpoint: Endpoint) -> Self {
        match endpoint {
            Endpoint::Token => catalog::Endpoint::Token,
            Endpoint::Send => catalog::Endpoint::Send,
            Endpoint::Templates => catalog::Endpoint::Templates,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A failed WeChat call. Cheap to clone (waiters on one token fetch or one idempotency key all
/// get the same error). No variant ever holds an access token or an AppSecret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered with a non-zero errcode.
    #[error("wechat {endpoint} answered errcode {errcode}: {errmsg}")]
    Api {
        endpoint: Endpoint,
        errcode: i32,
        errmsg: String,
        /// The request id at the end of `errmsg` (`rid: ...`), for WeChat's rid lookup.
        rid: Option<String>,
    },
    /// No connection could be made to any API base: the request was provably not sent.
    #[error("wechat {endpoint} unreachable: {detail}")]
    Unreachable { endpoint: Endpoint, detail: String },
    /// WeChat answered with a non-success HTTP status.
    #[error("wechat {endpoint} answered http status {status}")]
    HttpStatus { endpoint: Endpoint, status: u16 },
    /// The request was written but no usable answer came (timeout, reset): WeChat may or may
    /// not have acted on it.
    #[error("wechat {endpoint} outcome unknown: {detail}")]
    OutcomeUnknown { endpoint: Endpoint, detail: String },
    /// WeChat answered 200 with a body that is not the JSON its API documents (not JSON, a
    /// field missing or of the wrong type, a value out of range). Only the client's parsers
    /// produce it, so it always describes a body that was actually received.
    #[error("wechat {endpoint} answered a malformed body: {detail}")]
    InvalidResponse { endpoint: Endpoint, detail: String },
}

/// How the service should treat a WeChat errcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// `-1` system busy: WeChat did not take the request; retry with backoff.
    Busy,
    /// `40001`, `42001`, `40014` on an endpoint called with a token (send, templates): drop the
    /// token, refresh, retry once.
    TokenRejected,
    /// `45009`: the daily quota is used up.
    DailyQuota,
    /// `45011`: the per-minute limit was hit.
    MinuteQuota,
    /// The token endpoint rejected the app's credentials or this host (40013, 40125, 40164, ...):
    /// needs a human, never hammered.
    Credential,
    /// The request itself is wrong (40003 openid, 40037 template, 47003 data, 41030 page).
    InvalidRequest,
    /// `43101`: the user holds no subscription to this template.
    NotSubscribed,
    /// Anything else.
    Other,
}

impl ErrorClass {
    /// Classifies an errcode from the given endpoint.
    pub fn of(endpoint: Endpoint, errcode: i32) -> ErrorClass {
        match (endpoint, errcode) {
            (_, -1) => ErrorClass::Busy,
            (_, 45009) => ErrorClass::DailyQuota,
            (_, 45011) => ErrorClass::MinuteQuota,
            // On the token endpoint every other errcode is about the credentials, the caller's
            // IP or the account: 40001 there is a wrong AppSecret, not a stale token.
            (Endpoint::Token, _) => ErrorClass::Credential,
            // A token is rejected the same way wherever it is used.
            (Endpoint::Send | Endpoint::Templates, 40001 | 42001 | 40014) => {
                ErrorClass::TokenRejected
            }
            (Endpoint::Send, 40003 | 40037 | 47003 | 41030) => ErrorClass::InvalidRequest,
            (Endpoint::Send, 43101) => ErrorClass::NotSubscribed,
            (Endpoint::Send | Endpoint::Templates, _) => ErrorClass::Other,
        }
    }
}

impl WechatError {
    /// The endpoint the error came from.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            WechatError::Api { endpoint, .. }
            | WechatError::Unreachable { endpoint, .. }
            | WechatError::HttpStatus { endpoint, .. }
            | WechatError::OutcomeUnknown { endpoint, .. }
            | WechatError::InvalidResponse { endpoint, .. } => *endpoint,
        }
    }

    /// WeChat's errcode, when WeChat answered with one.
    pub fn errcode(&self) -> Option<i32> {
        match self {
            WechatError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// The errcode's class, when WeChat answered with one.
    pub fn class(&self) -> Option<ErrorClass> {
        self.errcode()
            .map(|errcode| ErrorClass::of(self.endpoint(), errcode))
    }

    /// Counts the error in `wechat_notify_wechat_errors_total` of `app` when WeChat answered it
    /// with an errcode.
    pub fn count_errcode(&self, app: &str) {
        if let Some(errcode) = self.errcode() {
            catalog::count_wechat_errcode(app, self.endpoint().into(), errcode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_label_endpoints_as_logs_do() {
        for endpoint in [Endpoint::Token, Endpoint::Send, Endpoint::Templates] {
            assert_eq!(catalog::Endpoint::from(endpoint).label(), endpoint.label());
        }
    }

    #[test]
    fn the_same_errcode_means_different_things_per_endpoint() {
        assert_eq!(
            ErrorClass::of(Endpoint::Send, 40001),
            ErrorClass::TokenRejected
        );
        assert_eq!(
            ErrorClass::of(Endpoint::Token, 40001),
            ErrorClass::Credential
        );
        assert_eq!(ErrorClass::of(Endpoint::Token, -1), ErrorClass::Busy);
        assert_eq!(
            ErrorClass::of(Endpoint::Send, 43101),
            ErrorClass::NotSubscribed
        );
        assert_eq!(
            ErrorClass::of(Endpoint::Send, 47003),
            ErrorClass::InvalidRequest
        );
        assert_eq!(
            ErrorClass::of(Endpoint::Send, 45009),
            ErrorClass::DailyQuota
        );
        assert_eq!(
            ErrorClass::of(Endpoint::Send, 45011),
            ErrorClass::MinuteQuota
        );
        assert_eq!(ErrorClass::of(Endpoint::Send, 48001), ErrorClass::Other);
        assert_eq!(
            ErrorClass::of(Endpoint::Templates, 42001),
            ErrorClass::TokenRejected
        );
        assert_eq!(
            ErrorClass::of(Endpoint::Templates, 48001),
            ErrorClass::Other
        );
        assert_eq!(
            ErrorClass::of(Endpoint::Templates, 47003),
            ErrorClass::Other,
            "only a send's own data can be invalid"
        );
    }
}
