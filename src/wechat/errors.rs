//! What can go wrong talking to WeChat. What each failure means for a retry is decided in
//! [`super::class`].

use std::{fmt, sync::Arc};

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
/// get the same error). No variant ever holds an access token or an AppSecret: transport errors
/// lose their URL, errmsgs are scrubbed, and a body is never quoted.
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
    #[error("wechat {endpoint} unreachable: {}", unreachable_detail(*.tried))]
    Unreachable {
        endpoint: Endpoint,
        /// API bases tried (0: none is configured).
        tried: u32,
        /// Why the last one refused.
        #[source]
        last: Option<TransportError>,
    },
    /// WeChat answered with a non-success HTTP status.
    #[error("wechat {endpoint} answered http status {status}")]
    HttpStatus { endpoint: Endpoint, status: u16 },
    /// The request was written but no usable answer came (timeout, reset): WeChat may or may
    /// not have acted on it.
    #[error("wechat {endpoint} outcome unknown: {}", .source.what())]
    OutcomeUnknown {
        endpoint: Endpoint,
        #[source]
        source: TransportError,
    },
    /// WeChat answered 200 with a body that is not the JSON its API documents (not JSON, a
    /// field missing or of the wrong type, a value out of range). Only the client's parsers
    /// produce it, so it always describes a body that was actually received.
    #[error("wechat {endpoint} answered a malformed body: {detail}")]
    InvalidResponse {
        endpoint: Endpoint,
        /// What is wrong with it, in the parser's words (never a quote of the body).
        detail: String,
        /// The JSON parser's own error, when it quotes nothing of the body.
        #[source]
        source: Option<JsonError>,
    },
}

fn unreachable_detail(tried: u32) -> String {
    match tried {
        0 => "no api base configured".to_owned(),
        tried => format!("no api base accepted a connection ({tried} tried)"),
    }
}

impl WechatError {
    /// A body that is not what the endpoint documents, described in the parser's own words.
    pub(crate) fn invalid(endpoint: Endpoint, detail: impl Into<String>) -> Self {
        WechatError::InvalidResponse {
            endpoint,
            detail: detail.into(),
            source: None,
        }
    }

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

    /// Counts the error in `wechat_notify_wechat_errors_total` of `app` when WeChat answered it
    /// with an errcode.
    pub fn count_errcode(&self, app: &str) {
        if let Some(errcode) = self.errcode() {
            catalog::count_wechat_errcode(app, self.endpoint().into(), errcode);
        }
    }
}

/// A transport failure (no connection, a timeout, a reset) as reqwest reported it, without the
/// URL: reqwest puts the whole URL, access token included, into its errors. What is left (its
/// own message and hyper's and the operating system's below it) carries no part of the request.
///
/// Shared by every clone of the [`WechatError`] holding it, and compared by identity: clones of
/// one failure are equal, two failures are not.
#[derive(Clone, Debug, thiserror::Error)]
#[error(transparent)]
pub struct TransportError(Arc<reqwest::Error>);

impl TransportError {
    /// The only way in: drops the URL.
    pub(crate) fn new(error: reqwest::Error) -> Self {
        Self(Arc::new(error.without_url()))
    }

    /// True when no connection could be made: the request was provably not sent.
    pub fn is_connect(&self) -> bool {
        self.0.is_connect()
    }

    /// What went wrong, in a few words.
    pub fn what(&self) -> &'static str {
        if self.0.is_timeout() {
            "no answer within the request timeout"
        } else if self.0.is_body() || self.0.is_decode() {
            "the answer could not be read"
        } else if self.0.is_connect() {
            "no connection could be made"
        } else {
            "the connection failed after the request was written"
        }
    }
}

impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TransportError {}

/// serde_json's error for a body that is not JSON at all. Only syntax errors are kept: they
/// name a line and column, never a value, while a type error quotes the value it met (which may
/// be a token). Compared by identity, as [`TransportError`] is.
#[derive(Clone, Debug, thiserror::Error)]
#[error(transparent)]
pub struct JsonError(Arc<serde_json::Error>);

impl JsonError {
    /// The error, if it quotes nothing of the body (a syntax error or a premature end).
    pub(crate) fn quoting_nothing(error: serde_json::Error) -> Option<Self> {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof => Some(Self(Arc::new(error))),
            Category::Data | Category::Io => None,
        }
    }
}

impl PartialEq for JsonError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for JsonError {}

/// An error and its sources on one line, joined with `: ` (a source whose text the error
/// already ends with is left out: hyper and reqwest often repeat the inner message).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !written.ends_with(&text) {
                written.push_str(": ");
                written.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&written)
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
}
