//! The push listener: WeChat's event pushes (消息推送) over HTTP, one path per app,
//! `/wechat/push/{app}` (name or appid).
//!
//! `GET` is WeChat's URL check: a valid `signature` is answered with `echostr`, verbatim.
//! `POST` is checked before anything else is read from it: `signature` over the app's Token,
//! then (encrypted modes) `msg_signature` over the `Encrypt` field, the AES-256-CBC ciphertext
//! and its trailing appid. A `timestamp` more than 5 minutes from now is refused (a replay; one
//! within that window is caught by the dedupe key). A push that passes is deduplicated (WeChat retries a push it got no
//! answer to within 5 s, 3 attempts in all), answered `success` at once, and applied to the
//! ledger after the answer. One that fails is answered 401 (signature) or 400 (anything else)
//! and counted in `wechat_notify_push_requests_total{result}`; the log names the reason, never
//! the body, the Token or the key. Event types the service does not use are acknowledged.
//!
//! This module translates HTTP to the service (like `crate::grpc` does gRPC); what a push
//! means is decided in `crate::service`.

mod event;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

pub use event::{EventKind, Format, ParseError, PushEvent, SentItem, format_of, parse};

use crate::{
    config::PushSettings,
    push_crypto::{self, PushMode},
    service::{AppSender, Notifier},
    subscriptions::PUSH_DEDUPE_TTL,
    telemetry::catalog::{self, PushResult, UNKNOWN_APP},
};

/// The largest push body accepted; WeChat's subscribe events are well under 4 KiB.
pub const MAX_PUSH_BODY_BYTES: usize = 64 * 1024;

/// One app that takes pushes.
struct PushApp {
    app: Arc<AppSender>,
    settings: PushSettings,
}

/// The push listener's state: the apps that take pushes, by name and by appid.
#[derive(Clone)]
pub struct PushEndpoint {
    apps: Arc<HashMap<String, Arc<PushApp>>>,
    notifier: Arc<Notifier>,
}

impl PushEndpoint {
    /// An endpoint for `apps` (each with its push settings), applying pushes through `notifier`.
    pub fn new(notifier: Arc<Notifier>, apps: Vec<(Arc<AppSender>, PushSettings)>) -> Self {
        let mut by_key = HashMap::new();
        for (app, settings) in apps {
            catalog::register_push_app(&app.name);
            let entry = Arc::new(PushApp { app, settings });
            by_key.insert(entry.app.name.clone(), entry.clone());
            by_key.insert(entry.app.appid.clone(), entry);
        }
        Self {
            apps: Arc::new(by_key),
            notifier,
        }
    }

    /// The routes, ready to serve.
    pub fn router(self) -> Router {
        Router::new()
            .route("/wechat/push/{app}", get(verify_url).post(receive))
            .layer(DefaultBodyLimit::max(MAX_PUSH_BODY_BYTES))
            .with_state(self)
    }
}

/// The query WeChat puts on every push.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PushQuery {
    signature: String,
    timestamp: String,
    nonce: String,
    echostr: Option<String>,
    encrypt_type: Option<String>,
    msg_signature: Option<String>,
}

/// A refused request: its status, result and reason (for the log; never a secret).
struct Refusal(StatusCode, PushResult, &'static str);

fn refuse(app: &str, refusal: Refusal) -> Response {
    let Refusal(status, result, reason) = refusal;
    catalog::count_push_request(app, result);
    tracing::warn!(app, result = result.label(), reason, "push refused");
    (status, reason).into_response()
}

fn unknown_app() -> Response {
    catalog::count_push_request(UNKNOWN_APP, PushResult::UnknownApp);
    tracing::warn!(reason = "no app takes pushes at this path", "push refused");
    (StatusCode::NOT_FOUND, "unknown app").into_response()
}

fn bad_signature(reason: &'static str) -> Refusal {
    Refusal(StatusCode::UNAUTHORIZED, PushResult::BadSignature, reason)
}

fn bad_request(reason: &'static str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, PushResult::BadRequest, reason)
}

async fn verify_url(
    State(endpoint): State<PushEndpoint>,
    Path(app): Path<String>,
    Query(query): Query<PushQuery>,
) -> Response {
    let Some(push) = endpoint.apps.get(&app) else {
        return unknown_app();
    };
    let name = &push.app.name;
    if let Err(refusal) = check_signature(&push.settings, &query) {
        return refuse(name, refusal);
    }
    let Some(echostr) = query.echostr else {
        return refuse(name, bad_request("echostr is missing"));
    };
    catalog::count_push_request(name, PushResult::Verified);
    tracing::info!(app = %name, "push url verified");
    // Verbatim, as plain text: anything else fails WeChat's check.
    echostr.into_response()
}

async fn receive(
    State(endpoint): State<PushEndpoint>,
    Path(app): Path<String>,
    Query(query): Query<PushQuery>,
    body: Bytes,
) -> Response {
    let Some(push) = endpoint.apps.get(&app).cloned() else {
        return unknown_app();
    };
    let name = push.app.name.clone();
    let event = match open(&push, &query, &body) {
        Ok(event) => event,
        Err(refusal) => return refuse(&name, refusal),
    };
    let claimed = match endpoint.notifier.claim_push(&push.app, &event).await {
        Ok(claimed) => claimed,
        Err(error) => {
            // Not answered success: WeChat retries, and a later attempt may find the store.
            tracing::warn!(app = %name, %error, "push not taken: the ledger is unavailable");
            return (StatusCode::SERVICE_UNAVAILABLE, "ledger unavailable").into_response();
        }
    };
    if !claimed {
        catalog::count_push_request(&name, PushResult::Duplicate);
        tracing::debug!(app = %name, "push retry ignored");
        return "success".into_response();
    }
    catalog::count_push_request(&name, PushResult::Accepted);
    let notifier = endpoint.notifier.clone();
    // Answered first, applied after: WeChat gives up (and retries) after 5 s.
    tokio::spawn(async move { notifier.apply_push(&push.app, event).await });
    "success".into_response()
}

/// Checks `signature` over the app's Token.
fn check_signature(settings: &PushSettings, query: &PushQuery) -> Result<(), Refusal> {
    if query.signature.is_empty() || query.timestamp.is_empty() || query.nonce.is_empty() {
        return Err(bad_signature("signature, timestamp or nonce is missing"));
    }
    let token = settings.token.expose();
    if !push_crypto::verify(&query.signature, &[token, &query.timestamp, &query.nonce]) {
        return Err(bad_signature(
            "signature does not match the app's push token",
        ));
    }
    // A push signed long ago is a replay: one within the window is caught by its dedupe key.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    match query.timestamp.parse::<u64>() {
        Ok(signed) if signed.abs_diff(now) <= PUSH_DEDUPE_TTL.as_secs() => Ok(()),
        _ => Err(Refusal(
            StatusCode::UNAUTHORIZED,
            PushResult::Stale,
            "timestamp is more than 5 minutes away from now",
        )),
    }
}

/// Verifies, decrypts and parses one push, in that order.
fn open(push: &PushApp, query: &PushQuery, body: &[u8]) -> Result<PushEvent, Refusal> {
    check_signature(&push.settings, query)?;
    let encrypted = query.encrypt_type.as_deref() == Some("aes");
    match (push.settings.mode, encrypted) {
        (PushMode::Plaintext, true) => {
            return Err(bad_request(
                "an encrypted push, but the app's push_mode is plaintext",
            ));
        }
        (PushMode::Safe, false) => {
            return Err(bad_request(
                "a plaintext push, but the app's push_mode is safe",
            ));
        }
        _ => {}
    }
    if !encrypted {
        return parse(body).map_err(|_| bad_request("the body is not a wechat event push"));
    }
    let Some(key) = &push.settings.aes_key else {
        return Err(bad_request(
            "an encrypted push, but the app has no push_aes_key",
        ));
    };
    let encrypt = event::encrypted_field(body)
        .map_err(|_| bad_request("the body is not a wechat event push"))?
        .ok_or(bad_request("the encrypted push has no Encrypt field"))?;
    let Some(msg_signature) = &query.msg_signature else {
        return Err(bad_signature("msg_signature is missing"));
    };
    let token = push.settings.token.expose();
    if !push_crypto::verify(
        msg_signature,
        &[token, &query.timestamp, &query.nonce, &encrypt],
    ) {
        return Err(bad_signature(
            "msg_signature does not match the encrypted body",
        ));
    }
    let plain = push_crypto::decrypt(key, &encrypt, &push.app.appid).map_err(|error| {
        bad_request(match error {
            push_crypto::DecryptError::WrongAppid => "the decrypted push is for another appid",
            _ => "the encrypted body cannot be decrypted with the app's push_aes_key",
        })
    })?;
    parse(&plain).map_err(|_| bad_request("the decrypted body is not a wechat event push"))
}
