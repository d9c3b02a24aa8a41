//! Where the sandbox pushes an app's events (`POST /sandbox/push-target`: the app's 消息推送
//! settings, as in WeChat's admin) and what it pushed (`GET /sandbox/pushes`).

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{ControlError, ControlResult};
use crate::{
    Sandbox,
    push::{PushFormat, PushMode, PushTarget, SealingKey},
};

/// `GET /sandbox/pushes` and `POST /sandbox/push-target`.
pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/sandbox/pushes", get(list_pushes))
        .route("/sandbox/push-target", post(set_target))
}

/// The body of `POST /sandbox/push-target`: the app's 消息推送 settings, as in WeChat's admin.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRequest {
    appid: Option<String>,
    /// Where to push; `null` (or absent) stops the app's pushes.
    url: Option<String>,
    #[serde(default)]
    token: String,
    encoding_aes_key: Option<String>,
    /// `plaintext`, `compatible` or `safe` (the default with a key; plaintext without).
    mode: Option<String>,
    /// `xml` (the default) or `json`.
    format: Option<String>,
}

fn refused(message: &str) -> ControlResult {
    Err(ControlError::bad_request(message))
}

async fn set_target(State(sandbox): State<Sandbox>, body: Bytes) -> ControlResult {
    let request: TargetRequest = serde_json::from_slice(&body)
        .map_err(|error| ControlError::bad_request(format!("bad json: {error}")))?;
    let appid = sandbox.resolve_appid(request.appid.as_deref())?;
    let Some(url) = request.url else {
        sandbox.set_push_target(&appid, None);
        return Ok(Json(json!({"appid": appid, "pushing": false})));
    };
    let Ok(url) = Url::parse(&url) else {
        return refused("url must be an absolute http(s) URL");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return refused("url must be an absolute http(s) URL");
    }
    if !(3..=32).contains(&request.token.len())
        || !request.token.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return refused("token must be 3 to 32 letters and digits");
    }
    let mode = match request.mode.as_deref() {
        Some(mode) => match PushMode::from_name(mode) {
            Some(mode) => mode,
            None => return refused("mode must be plaintext, compatible or safe"),
        },
        None if request.encoding_aes_key.is_some() => PushMode::Safe,
        None => PushMode::Plaintext,
    };
    match (&request.encoding_aes_key, mode) {
        (None, PushMode::Compatible | PushMode::Safe) => {
            return refused("compatible and safe modes need encoding_aes_key");
        }
        (Some(key), _) if SealingKey::new(key).is_none() => {
            return refused("encoding_aes_key must be 43 characters of base64");
        }
        _ => {}
    }
    let format = match request.format.as_deref() {
        None | Some("xml") => PushFormat::Xml,
        Some("json") => PushFormat::Json,
        Some(_) => return refused("format must be xml or json"),
    };
    let answer = json!({"appid": appid, "pushing": true, "url": url.as_str(), "format": format});
    sandbox.set_push_target(
        &appid,
        Some(PushTarget {
            url,
            token: request.token,
            encoding_aes_key: request.encoding_aes_key,
            mode,
            format,
        }),
    );
    Ok(Json(answer))
}

async fn list_pushes(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({ "pushes": sandbox.pushes() }))
}
