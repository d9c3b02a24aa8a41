//! WeChat's wire format: the send request's body ([`message`]), and the parsers of what the
//! token, send and template list endpoints answer, errcode and `rid` included.
//!
//! The parsers build their own error messages: a body may hold a token, so no part of one is
//! ever echoed into an error, and an errmsg has the call's secrets scrubbed from it.

mod message;
mod template_list;

use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use tracing::warn;

pub use self::{
    message::{MiniprogramState, SubscribeMessage},
    template_list::{TemplateInfo, TemplateKind, content_keywords},
};
use super::{Endpoint, JsonError, WechatError, redact::scrub};
use crate::secret::Secret;
pub(crate) use template_list::parse_templates;

/// The longest `expires_in` accepted from a token endpoint. WeChat documents "within 7200
/// seconds"; anything beyond a day is a broken answer, not a long-lived token.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 60 * 60);

/// A freshly fetched access token.
#[derive(Clone, Debug)]
pub struct FetchedToken {
    /// The token (redacted in Debug).
    pub token: Secret,
    /// WeChat's `expires_in`.
    pub expires_in: Duration,
}

/// A message WeChat accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// WeChat's `msgid`, when it sent one.
    pub msgid: Option<u64>,
}

/// Parses a token endpoint answer. Works on a `serde_json::Value` and builds its own error
/// messages, so no part of a body holding a token is ever echoed into an error.
pub(crate) fn parse_token_response(
    body: &[u8],
    secrets: &[&Secret],
) -> Result<FetchedToken, WechatError> {
    let invalid = |detail: String| WechatError::invalid(Endpoint::Token, detail);
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| invalid(format!("body is not json ({} bytes)", body.len())))?;
    if !value.is_object() {
        return Err(invalid("body is not a json object".into()));
    }
    if let Some(error) = api_error(Endpoint::Token, &value, secrets)? {
        return Err(error);
    }
    let token = match value.get("access_token") {
        Some(serde_json::Value::String(token)) if !token.is_empty() => Secret::new(token.as_str()),
        Some(_) => return Err(invalid("access_token is not a non-empty string".into())),
        None => return Err(invalid("no access_token".into())),
    };
    let expires_in = match value.get("expires_in") {
        Some(serde_json::Value::Number(number)) => number.as_u64(),
        Some(serde_json::Value::String(text)) => text.trim().parse::<u64>().ok(),
        _ => None,
    }
    .map(Duration::from_secs)
    .ok_or_else(|| invalid("expires_in missing or not a whole number of seconds".into()))?;
    if expires_in.is_zero() || expires_in > MAX_EXPIRES_IN {
        return Err(invalid(format!(
            "expires_in {}s is outside 1..={}s",
            expires_in.as_secs(),
            MAX_EXPIRES_IN.as_secs()
        )));
    }
    Ok(FetchedToken { token, expires_in })
}

/// `Some(error)` when the answer carries a non-zero errcode.
fn api_error(
    endpoint: Endpoint,
    value: &serde_json::Value,
    secrets: &[&Secret],
) -> Result<Option<WechatError>, WechatError> {
    let Some(errcode) = value.get("errcode") else {
        return Ok(None);
    };
    let errcode = errcode
        .as_i64()
        .and_then(|code| i32::try_from(code).ok())
        .ok_or_else(|| WechatError::invalid(endpoint, "errcode is not a 32-bit integer"))?;
    if errcode == 0 {
        return Ok(None);
    }
    let errmsg = value.get("errmsg").and_then(|v| v.as_str()).unwrap_or("");
    Ok(Some(api_error_from(endpoint, errcode, errmsg, secrets)))
}

fn api_error_from(
    endpoint: Endpoint,
    errcode: i32,
    errmsg: &str,
    secrets: &[&Secret],
) -> WechatError {
    let errmsg = scrub(errmsg, secrets);
    WechatError::Api {
        endpoint,
        errcode,
        rid: parse_rid(&errmsg),
        errmsg,
    }
}

/// The send endpoint's answer. `msgid` may be a JSON number (u64, never read through f64) or a
/// string; anything else is ignored rather than failing a delivered message.
#[derive(Deserialize)]
struct SendResponse {
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
    #[serde(default)]
    msgid: Option<MsgId>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MsgId {
    Number(u64),
    Text(String),
    Other(IgnoredAny),
}

/// Parses the send endpoint's answer (`secrets` scrubbed from an errmsg).
pub(crate) fn parse_send_response(
    body: &[u8],
    secrets: &[&Secret],
) -> Result<Delivered, WechatError> {
    let response: SendResponse = serde_json::from_slice(body).map_err(|error| {
        let source = JsonError::quoting_nothing(error);
        let what = match source {
            Some(_) => "body is not json",
            None => "body is not the send endpoint's answer",
        };
        WechatError::InvalidResponse {
            endpoint: Endpoint::Send,
            detail: format!("{what} ({} bytes)", body.len()),
            source,
        }
    })?;
    let errcode = response
        .errcode
        .ok_or_else(|| WechatError::invalid(Endpoint::Send, "no errcode"))?;
    if errcode != 0 {
        let errcode = i32::try_from(errcode).map_err(|_| {
            WechatError::invalid(
                Endpoint::Send,
                format!("errcode {errcode} is not a 32-bit integer"),
            )
        })?;
        let errmsg = response.errmsg.as_deref().unwrap_or("");
        return Err(api_error_from(Endpoint::Send, errcode, errmsg, secrets));
    }
    // WeChat took the message: from here on nothing may turn this into an error.
    let msgid = match response.msgid {
        None | Some(MsgId::Number(0)) => None,
        Some(MsgId::Number(msgid)) => Some(msgid),
        Some(MsgId::Text(text)) => match text.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(msgid) => Some(msgid),
            Err(_) if text.trim().is_empty() => None,
            Err(_) => {
                warn!("wechat answered a msgid that is not a u64; ignoring it");
                None
            }
        },
        Some(MsgId::Other(_)) => {
            warn!("wechat answered a msgid that is neither an integer nor a string; ignoring it");
            None
        }
    };
    Ok(Delivered { msgid })
}

/// The request id at the end of an errmsg: `"... rid: 6405a1b2-0b8f1a2c-3d4e5f60"`.
pub(crate) fn parse_rid(errmsg: &str) -> Option<String> {
    let mut search_end = errmsg.len();
    while let Some(index) = errmsg[..search_end].rfind("rid:") {
        let at_word_start = errmsg[..index]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == ',' || c == ';');
        if at_word_start {
            let rid = errmsg[index + 4..]
                .split_whitespace()
                .next()?
                .trim_end_matches([',', ';', '.', ')', ']']);
            return (!rid.is_empty()).then(|| rid.to_string());
        }
        search_end = index;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn rid_parsing() {
        assert_eq!(
            parse_rid("system error rid: abc-def"),
            Some("abc-def".into())
        );
        assert_eq!(parse_rid("rid: x1"), Some("x1".into()));
        assert_eq!(parse_rid("invalid credential, hint: [xyz]"), None);
        assert_eq!(parse_rid("grid: nope"), None);
        assert_eq!(parse_rid("a rid: "), None);
        assert_eq!(parse_rid("ok"), None);
    }

    #[test]
    fn a_send_answer_that_is_not_json_keeps_the_parser_error_as_its_source() {
        let error = parse_send_response(b"<html>oops</html>", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "wechat send answered a malformed body: body is not json (17 bytes)"
        );
        let source = error.source().expect("the json error").to_string();
        assert!(source.contains("line 1 column 1"), "{source}");
    }

    #[test]
    fn a_send_answer_of_the_wrong_shape_quotes_nothing_of_it() {
        // serde's own message would quote the string, which could be a token.
        let error = parse_send_response(br#""ACCESS-TOKEN""#, &[]).unwrap_err();
        assert!(error.source().is_none());
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains("ACCESS-TOKEN"), "{text}");
        }
    }
}
