//! Sends the sandbox refused, kept beside the inbox so that a person can see why a message did
//! not arrive: the errcode and errmsg (with its rid) the sender got, and the cause in words.

use serde::Serialize;

/// A send request answered with an error instead of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedSend {
    /// `touser` of the request, when it was a string.
    pub openid: Option<String>,
    /// The app of the request's token, when the token was known.
    pub appid: Option<String>,
    /// `template_id` of the request, when it was a string.
    pub template_id: Option<String>,
    /// The errcode answered (`None` for an injected HTTP status).
    pub errcode: Option<i64>,
    /// The errmsg answered, with its ` rid: ...`.
    pub errmsg: Option<String>,
    /// The HTTP status answered, when it was not 200 (an injected fault).
    pub http_status: Option<u16>,
    /// True when an injected fault answered instead of the sandbox's checks.
    pub injected: bool,
    /// Why, in words, for a person reading the console.
    pub cause: String,
    /// Answer time, unix milliseconds.
    pub time_unix_ms: u64,
}

/// What an errcode of the send endpoint means, for a person.
pub(crate) fn cause_of(errcode: i64) -> String {
    let cause = match errcode {
        -1 => "WeChat is busy (system error); the sender may retry later",
        40001 => "the access token was superseded or revoked; the sender should fetch a new one",
        40003 => "touser is not an openid (28 characters of A-Z, a-z, 0-9, _ and -)",
        40014 => "the access token was never issued by this sandbox",
        40037 => "template_id is not one of this app's templates",
        41001 => "the request carried no access token",
        41030 => "page is not one of the mini program's pages",
        42001 => "the access token has expired",
        43101 => "the user holds no subscription to this template",
        45009 => "the app's daily send quota is used up",
        45011 => "the app's per-minute send limit is reached; retry next minute",
        47001 => "the request body is not a JSON object",
        47003 => "a field is invalid; the errmsg names it",
        48001 => "the app is not authorized for this API",
        _ => return format!("errcode {errcode}: not one the sandbox answers by itself"),
    };
    cause.to_string()
}

/// The cause of a failure, with the injected fault named as such.
pub(crate) fn describe(errcode: Option<i64>, http_status: Option<u16>, injected: bool) -> String {
    match (errcode, http_status) {
        (_, Some(status)) => format!(
            "injected fault: HTTP {status} with a body that is not JSON, as a failing gateway \
             answers"
        ),
        (Some(errcode), None) if injected => format!("injected fault: {}", cause_of(errcode)),
        (Some(errcode), None) => cause_of(errcode),
        (None, None) if injected => {
            "injected fault: the connection was reset before an answer was written".to_string()
        }
        (None, None) => "no answer".to_string(),
    }
}

/// Why a send was refused with 43101 by the subscription check: a reject, or no grant left.
pub(crate) fn not_subscribed(rejected: bool) -> String {
    if rejected {
        "the user rejected this template (wx.requestSubscribeMessage reported reject); \
         auto-accept does not override a reject"
            .to_string()
    } else {
        "the user holds no subscription to this template: no one-time accept is left, and \
         auto-accept is off"
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_say_what_happened_and_name_injected_faults() {
        assert!(describe(Some(43101), None, false).contains("no subscription"));
        assert!(not_subscribed(true).contains("rejected"));
        assert!(not_subscribed(false).contains("auto-accept is off"));
        assert!(describe(Some(45011), None, false).contains("per-minute"));
        assert_eq!(
            describe(Some(-1), None, true),
            format!("injected fault: {}", cause_of(-1))
        );
        assert!(describe(None, Some(502), true).starts_with("injected fault: HTTP 502"));
        assert!(describe(Some(12345), None, true).contains("errcode 12345"));
    }
}
