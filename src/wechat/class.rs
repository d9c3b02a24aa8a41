//! The one place that reads a WeChat answer for what comes next: the class of each errcode, and
//! whether (and how) a failed call may be tried again. Every retry in the service asks here:
//! the client's move to the next API base, the delivery loop, the token fetches and the
//! template cache. How long to wait before trying again is `crate::retry`'s.
//!
//! The rule underneath: a send is never repeated unless WeChat provably did not take it, while
//! a token fetch or a template list (reads, safe to repeat) is retried on any transient failure.

use super::{Endpoint, TransportError, WechatError};

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

/// What may follow a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient: try the same call again after a backoff (`crate::retry::Backoff`). WeChat
    /// said it did not take it (-1), or the call is a read that is safe to repeat.
    Backoff,
    /// The access token was rejected: report it to the token cache, then try once more.
    NewToken,
    /// Throttled for the minute (45011): nothing more for this app until the next minute.
    NextMinute,
    /// Throttled for the day (45009): nothing more for this app until the quota day ends.
    NextQuotaDay,
    /// Final: the same call would get the same answer (credentials, the request itself), or
    /// repeating it could deliver a message twice.
    Never,
}

impl WechatError {
    /// The errcode's class, when WeChat answered with one.
    pub fn class(&self) -> Option<ErrorClass> {
        self.errcode()
            .map(|errcode| ErrorClass::of(self.endpoint(), errcode))
    }

    /// What may follow this failure.
    pub fn retry(&self) -> Retry {
        // Token fetches and template lists read: repeating one never does anything twice.
        let repeatable = self.endpoint() != Endpoint::Send;
        match self {
            WechatError::Api { .. } => match self.class() {
                Some(ErrorClass::Busy) => Retry::Backoff,
                Some(ErrorClass::TokenRejected) => Retry::NewToken,
                Some(ErrorClass::MinuteQuota) => Retry::NextMinute,
                Some(ErrorClass::DailyQuota) => Retry::NextQuotaDay,
                _ => Retry::Never,
            },
            // A send that reached no API base was not taken either, but the client has already
            // tried every base; the caller's own retry comes with its own deadline.
            WechatError::Unreachable { .. } | WechatError::OutcomeUnknown { .. } if repeatable => {
                Retry::Backoff
            }
            WechatError::HttpStatus { status, .. } if repeatable && *status >= 500 => {
                Retry::Backoff
            }
            // A send written without a usable answer may have been delivered; an answer that
            // does not parse would not parse the next time.
            WechatError::Unreachable { .. }
            | WechatError::OutcomeUnknown { .. }
            | WechatError::HttpStatus { .. }
            | WechatError::InvalidResponse { .. } => Retry::Never,
        }
    }
}

/// Whether a request that failed in transport on one API base goes to the next base at once:
/// only when no connection could be made, so the request was provably not sent. Anything else
/// (a timeout, a reset after writing) may have reached WeChat, and another base could deliver
/// the message twice.
pub(crate) fn next_base(error: &TransportError) -> bool {
    error.is_connect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::fake::answered as api;

    #[test]
    fn the_same_errcode_means_different_things_per_endpoint() {
        // Only a send's own data can be invalid: 47003 from the template list is just "other".
        let table = [
            (Endpoint::Send, 40001, ErrorClass::TokenRejected),
            (Endpoint::Token, 40001, ErrorClass::Credential),
            (Endpoint::Token, -1, ErrorClass::Busy),
            (Endpoint::Send, 43101, ErrorClass::NotSubscribed),
            (Endpoint::Send, 47003, ErrorClass::InvalidRequest),
            (Endpoint::Send, 45009, ErrorClass::DailyQuota),
            (Endpoint::Send, 45011, ErrorClass::MinuteQuota),
            (Endpoint::Send, 48001, ErrorClass::Other),
            (Endpoint::Templates, 42001, ErrorClass::TokenRejected),
            (Endpoint::Templates, 48001, ErrorClass::Other),
            (Endpoint::Templates, 47003, ErrorClass::Other),
        ];
        for (endpoint, errcode, class) in table {
            assert_eq!(
                ErrorClass::of(endpoint, errcode),
                class,
                "{endpoint:?} {errcode}"
            );
        }
    }

    #[test]
    fn errcodes_decide_the_same_on_every_endpoint_that_can_answer_them() {
        for endpoint in [Endpoint::Send, Endpoint::Token, Endpoint::Templates] {
            assert_eq!(api(endpoint, -1).retry(), Retry::Backoff, "{endpoint}");
            assert_eq!(
                api(endpoint, 45011).retry(),
                Retry::NextMinute,
                "{endpoint}"
            );
            assert_eq!(
                api(endpoint, 45009).retry(),
                Retry::NextQuotaDay,
                "{endpoint}"
            );
        }
        for endpoint in [Endpoint::Send, Endpoint::Templates] {
            for errcode in [40001, 42001, 40014] {
                assert_eq!(api(endpoint, errcode).retry(), Retry::NewToken);
            }
        }
        for errcode in [40001, 40013, 40125, 40164, 48001] {
            assert_eq!(api(Endpoint::Token, errcode).retry(), Retry::Never);
        }
        for errcode in [40003, 40037, 47003, 41030, 43101, 48001] {
            assert_eq!(api(Endpoint::Send, errcode).retry(), Retry::Never);
        }
    }

    #[test]
    fn only_reads_are_repeated_after_an_unknown_outcome_or_a_server_error() {
        for (endpoint, expected) in [
            (Endpoint::Send, Retry::Never),
            (Endpoint::Token, Retry::Backoff),
            (Endpoint::Templates, Retry::Backoff),
        ] {
            let unreachable = WechatError::Unreachable {
                endpoint,
                tried: 2,
                last: None,
            };
            assert_eq!(unreachable.retry(), expected, "{endpoint}");
            let server = WechatError::HttpStatus {
                endpoint,
                status: 502,
            };
            assert_eq!(server.retry(), expected, "{endpoint}");
            let client = WechatError::HttpStatus {
                endpoint,
                status: 404,
            };
            assert_eq!(client.retry(), Retry::Never, "{endpoint}");
            let garbled = WechatError::invalid(endpoint, "body is not json");
            assert_eq!(garbled.retry(), Retry::Never, "{endpoint}");
        }
    }
}
