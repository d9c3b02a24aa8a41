//! WeChat-shaped answers: HTTP 200 with `errcode`/`errmsg`, errmsgs ending in ` rid: ...`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    Json,
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::faults::FaultAnswer;

/// One answer of a WeChat endpoint.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    /// HTTP 200 with a JSON body, as WeChat answers both success and errors.
    Json(Value),
    /// Another HTTP status (an injected fault), with a non-JSON body.
    Http { status: u16, body: Option<String> },
    /// No answer: the connection is closed (an injected fault).
    Reset,
}

impl Reply {
    /// An error answer: `errcode`, and `message` followed by a fresh rid.
    pub fn error(errcode: i32, message: &str) -> Reply {
        Reply::Json(json!({
            "errcode": errcode,
            "errmsg": format!("{message} rid: {}", rid()),
        }))
    }

    /// An error answer with WeChat's usual message for the errcode.
    pub fn errcode(errcode: i32) -> Reply {
        Reply::error(errcode, errmsg(errcode))
    }

    /// 47003 naming the offending field the way WeChat does (`data.thing1.value`).
    pub fn argument_invalid(field: &str) -> Reply {
        Reply::error(47003, &format!("argument invalid! {field}"))
    }

    /// The errcode of a JSON answer (0 for a success, `None` for an HTTP fault).
    pub fn errcode_of(&self) -> Option<i64> {
        match self {
            Reply::Json(value) => Some(value.get("errcode").and_then(Value::as_i64).unwrap_or(0)),
            Reply::Http { .. } | Reply::Reset => None,
        }
    }
}

impl From<FaultAnswer> for Reply {
    fn from(answer: FaultAnswer) -> Self {
        match answer {
            FaultAnswer::Reset => Reply::Reset,
            FaultAnswer::Http { status, body } => Reply::Http { status, body },
            FaultAnswer::Errcode {
                errcode,
                errmsg: Some(message),
            } => Reply::error(errcode, &message),
            FaultAnswer::Errcode {
                errcode,
                errmsg: None,
            } => Reply::errcode(errcode),
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Json(value) => Json(value).into_response(),
            Reply::Http { status, body } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = body.unwrap_or_else(|| html_error_page(status));
                (
                    status,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    body,
                )
                    .into_response()
            }
            // A body that fails before its first byte makes hyper close the connection with
            // no complete answer: the client sees a reset, whatever it had read so far.
            Reply::Reset => Response::new(Body::from_stream(futures::stream::once(async {
                Err::<Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "sandbox injected a connection reset",
                ))
            }))),
        }
    }
}

/// What a gateway in front of WeChat answers when it fails: an HTML page, not JSON.
fn html_error_page(status: StatusCode) -> String {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n\
         </body>\r\n</html>\r\n"
    )
}

/// WeChat's usual errmsg for an errcode (without the rid).
pub(crate) fn errmsg(errcode: i32) -> &'static str {
    match errcode {
        -1 => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40003 => "invalid openid",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40037 => "invalid template_id",
        40125 => "invalid appsecret",
        40164 => "invalid ip, not in whitelist",
        41001 => "access_token missing",
        41002 => "appid missing",
        41004 => "appsecret missing",
        41030 => "invalid page",
        42001 => "access_token expired",
        43101 => "user refuse to accept the msg",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit mustslower retry next minute",
        47001 => "data format error",
        47003 => "argument invalid!",
        48001 => "api unauthorized",
        // WeChat's answer to a wrong method ("check GET/POST"); also used for unknown paths.
        404 => "404 not found",
        _ => "sandbox injected error",
    }
}

/// A request id like WeChat's: the unix time in hex, then two random 32-bit words.
pub(crate) fn rid() -> String {
    format!(
        "{:08x}-{:08x}-{:08x}",
        (unix_ms() / 1000) & 0xffff_ffff,
        fastrand::u32(..),
        fastrand::u32(..)
    )
}

/// Milliseconds since the unix epoch (wall clock, for inbox and record timestamps).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_end_with_a_rid() {
        let Reply::Json(value) = Reply::argument_invalid("data.thing1.value") else {
            panic!("not json");
        };
        assert_eq!(value["errcode"], 47003);
        let errmsg = value["errmsg"].as_str().unwrap();
        let (message, rid) = errmsg.split_once(" rid: ").unwrap();
        assert_eq!(message, "argument invalid! data.thing1.value");
        let parts: Vec<_> = rid.split('-').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts
                .iter()
                .all(|p| p.len() == 8 && p.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }
}
