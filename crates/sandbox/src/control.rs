//! The control API under `/sandbox/`: what a test, a demo or the console uses to play the user
//! (subscriptions), look at the inbox and the refused sends, inject faults, revoke tokens and
//! read counters.
//!
//! Plain JSON, not WeChat-shaped: success is HTTP 200, a bad request HTTP 400 with
//! `{"error": "..."}`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

mod push;

use crate::{
    Sandbox,
    events::Changed,
    faults::{Fault, fault_json::FaultJson},
    params::is_valid_openid,
    state::{Grant, SubscriptionKey},
};

/// The control routes, with full paths.
pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/sandbox", get(overview))
        .route("/sandbox/", get(overview))
        .route(
            "/sandbox/subscriptions",
            post(record_subscription).get(list_subscriptions),
        )
        .route(
            "/sandbox/auto-accept",
            get(get_auto_accept).post(set_auto_accept),
        )
        .route("/sandbox/inbox", get(inbox).delete(clear_inbox))
        .route("/sandbox/failures", get(failures).delete(clear_failures))
        .route(
            "/sandbox/faults",
            get(list_faults).post(inject_fault).delete(clear_faults),
        )
        .route("/sandbox/tokens/revoke", post(revoke_tokens))
        .route("/sandbox/stats", get(stats))
        .route("/sandbox/templates", get(templates))
        .route("/sandbox/sends", get(sends))
        .merge(push::routes())
}

/// A refused control request.
struct ControlError(StatusCode, String);

impl ControlError {
    fn bad_request(message: impl Into<String>) -> Self {
        ControlError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ControlResult = Result<Json<Value>, ControlError>;

/// Parses a JSON body; an empty body reads as `{}`.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ControlError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ControlError::bad_request(format!("bad json: {e}")))
}

impl Sandbox {
    /// The given appid if configured; the only app when none is given and exactly one exists.
    fn resolve_appid(&self, appid: Option<&str>) -> Result<String, ControlError> {
        let apps = &self.inner.config.apps;
        match appid {
            Some(appid) if apps.iter().any(|a| a.appid == appid) => Ok(appid.to_string()),
            Some(appid) => Err(ControlError::bad_request(format!("unknown appid {appid}"))),
            None if apps.len() == 1 => Ok(apps[0].appid.clone()),
            None => Err(ControlError::bad_request(
                "appid is required when several apps are configured",
            )),
        }
    }
}

async fn overview(State(sandbox): State<Sandbox>) -> Json<Value> {
    let config = sandbox.config();
    let listen = sandbox.inner.listen.get();
    Json(json!({
        "sandbox": "fake WeChat API for development; not WeChat",
        "apps": config.apps.iter().map(|a| &a.appid).collect::<Vec<_>>(),
        "templates": sandbox.inner.templates().iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        "auto_accept": sandbox.auto_accept(),
        "daily_quota": config.daily_quota,
        "minute_limit": config.minute_limit,
        // Where it was served (null when only routed in-process); `exposed` when that is not
        // a loopback address, which the console shows as a warning.
        "listen": listen.map(|addr| addr.to_string()),
        "exposed": listen.is_some_and(|addr| !addr.ip().is_loopback()),
        "console": "/sandbox/ui",
        "routes": [
            "POST /sandbox/subscriptions", "GET /sandbox/subscriptions",
            "GET|POST /sandbox/auto-accept", "GET|DELETE /sandbox/inbox",
            "GET|DELETE /sandbox/failures",
            "GET|POST|DELETE /sandbox/faults", "POST /sandbox/tokens/revoke",
            "GET /sandbox/stats", "GET /sandbox/templates", "GET /sandbox/sends",
            "GET /sandbox/events", "GET /sandbox/ui",
            "GET /sandbox/pushes", "POST /sandbox/push-target",
        ],
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionRequest {
    appid: Option<String>,
    openid: String,
    template_id: String,
    /// What `wx.requestSubscribeMessage` reported for the template.
    status: String,
    count: Option<u32>,
    /// Where the user answered: `popup` (the default for accept) or `change` (turned off from
    /// the settings, the default for reject): it decides which event is pushed.
    event: Option<String>,
}

async fn record_subscription(State(sandbox): State<Sandbox>, body: Bytes) -> ControlResult {
    let request: SubscriptionRequest = parse_body(&body)?;
    let appid = sandbox.resolve_appid(request.appid.as_deref())?;
    if !is_valid_openid(&request.openid) {
        return Err(ControlError::bad_request(
            "openid must be 28 characters of [A-Za-z0-9_-]",
        ));
    }
    if sandbox
        .inner
        .template(&appid, &request.template_id)
        .is_none()
    {
        return Err(ControlError::bad_request(format!(
            "app {appid} has no template {}",
            request.template_id
        )));
    }
    // `acceptWithAudio` and any other `accept*` value count as accepted; `ban` and `filter`
    // grant nothing and change nothing.
    let grant = match request.status.as_str() {
        s if s.starts_with("accept") => Some(Grant::Accept {
            count: request.count.unwrap_or(1),
        }),
        "reject" => Some(Grant::Reject),
        "ban" | "filter" => None,
        other => {
            return Err(ControlError::bad_request(format!(
                "status must be accept, reject, ban or filter, not {other:?}"
            )));
        }
    };
    if request.count == Some(0) {
        return Err(ControlError::bad_request("count must be at least 1"));
    }
    let from_settings = match (request.event.as_deref(), grant) {
        (None | Some("change"), Some(Grant::Reject)) => true,
        (None | Some("popup"), _) => false,
        (Some("change"), _) => {
            return Err(ControlError::bad_request(
                "event change goes with status reject (a user turns templates off, never on, from the settings)",
            ));
        }
        (Some(other), _) => {
            return Err(ControlError::bad_request(format!(
                "event must be popup or change, not {other:?}"
            )));
        }
    };
    match grant {
        Some(_) if from_settings => {
            sandbox.revoke(&appid, &request.openid, &request.template_id);
        }
        Some(grant) => sandbox.subscribe(&appid, &request.openid, &request.template_id, grant),
        None => {}
    }
    Ok(Json(subscription_json(
        &sandbox,
        &appid,
        &request.openid,
        &request.template_id,
    )))
}

fn subscription_json(sandbox: &Sandbox, appid: &str, openid: &str, template_id: &str) -> Value {
    let key = SubscriptionKey {
        appid: appid.to_string(),
        openid: openid.to_string(),
        template_id: template_id.to_string(),
    };
    let subscription = sandbox
        .inner
        .lock()
        .subscriptions
        .get(&key)
        .copied()
        .unwrap_or_default();
    json!({
        "appid": appid,
        "openid": openid,
        "template_id": template_id,
        "one_time_remaining": subscription.one_time,
        "long_term": subscription.long_term,
        "rejected": subscription.rejected,
    })
}

#[derive(Deserialize)]
struct Filter {
    appid: Option<String>,
    openid: Option<String>,
    template_id: Option<String>,
    /// Only the latest this many (inbox and failures).
    limit: Option<usize>,
}

/// The last `limit` items (all without a limit), oldest first.
fn latest(items: Vec<Value>, limit: Option<usize>) -> Vec<Value> {
    let skip = limit.map_or(0, |limit| items.len().saturating_sub(limit));
    items.into_iter().skip(skip).collect()
}

fn keep(filter: &Filter, appid: &str, openid: &str, template_id: &str) -> bool {
    filter.appid.as_deref().is_none_or(|a| a == appid)
        && filter.openid.as_deref().is_none_or(|o| o == openid)
        && filter
            .template_id
            .as_deref()
            .is_none_or(|t| t == template_id)
}

async fn list_subscriptions(
    State(sandbox): State<Sandbox>,
    Query(filter): Query<Filter>,
) -> Json<Value> {
    let state = sandbox.inner.lock();
    let subscriptions: Vec<Value> = state
        .subscriptions
        .iter()
        .filter(|(k, _)| keep(&filter, &k.appid, &k.openid, &k.template_id))
        .map(|(k, s)| {
            json!({
                "appid": k.appid,
                "openid": k.openid,
                "template_id": k.template_id,
                "one_time_remaining": s.one_time,
                "long_term": s.long_term,
                "rejected": s.rejected,
            })
        })
        .collect();
    Json(json!({ "subscriptions": subscriptions }))
}

async fn get_auto_accept(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({"enabled": sandbox.auto_accept()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoAcceptRequest {
    enabled: bool,
}

async fn set_auto_accept(State(sandbox): State<Sandbox>, body: Bytes) -> ControlResult {
    let request: AutoAcceptRequest = parse_body(&body)?;
    sandbox.set_auto_accept(request.enabled);
    Ok(Json(json!({"enabled": request.enabled})))
}

async fn inbox(State(sandbox): State<Sandbox>, Query(filter): Query<Filter>) -> Json<Value> {
    let messages: Vec<Value> = sandbox
        .inner
        .lock()
        .inbox
        .iter()
        .filter(|m| keep(&filter, &m.appid, &m.openid, &m.template_id))
        .map(|m| serde_json::to_value(m).unwrap_or_default())
        .collect();
    Json(json!({ "messages": latest(messages, filter.limit) }))
}

async fn clear_inbox(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({"cleared": sandbox.clear_inbox()}))
}

async fn failures(State(sandbox): State<Sandbox>, Query(filter): Query<Filter>) -> Json<Value> {
    let failures: Vec<Value> = sandbox
        .inner
        .lock()
        .failures
        .iter()
        .filter(|f| {
            // A filter on a field the request did not carry leaves the failure out.
            let field = |value: &Option<String>| value.as_deref().unwrap_or_default().to_owned();
            keep(
                &filter,
                &field(&f.appid),
                &field(&f.openid),
                &field(&f.template_id),
            )
        })
        .map(|f| serde_json::to_value(f).unwrap_or_default())
        .collect();
    Json(json!({ "failures": latest(failures, filter.limit) }))
}

async fn clear_failures(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({"cleared": sandbox.clear_failed_sends()}))
}

async fn list_faults(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({"faults": sandbox.faults()}))
}

async fn inject_fault(State(sandbox): State<Sandbox>, body: Bytes) -> ControlResult {
    let request: FaultJson = parse_body(&body)?;
    let fault = Fault::from(request);
    fault.validate().map_err(ControlError::bad_request)?;
    if let Some(appid) = &fault.appid {
        sandbox.resolve_appid(Some(appid))?;
    }
    let id = sandbox.inner.lock().faults.add(fault);
    sandbox.changed(Changed::Faults);
    Ok(Json(json!({ "id": id })))
}

async fn clear_faults(State(sandbox): State<Sandbox>) -> Json<Value> {
    let cleared = sandbox.inner.lock().faults.clear();
    sandbox.changed(Changed::Faults);
    Json(json!({ "cleared": cleared }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    appid: Option<String>,
}

async fn revoke_tokens(State(sandbox): State<Sandbox>, body: Bytes) -> ControlResult {
    let request: RevokeRequest = parse_body(&body)?;
    let appid = sandbox.resolve_appid(request.appid.as_deref())?;
    let revoked = sandbox.revoke_app_tokens(&appid);
    Ok(Json(json!({"appid": appid, "revoked": revoked})))
}

async fn stats(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(serde_json::to_value(sandbox.stats()).unwrap_or_default())
}

#[derive(Deserialize)]
struct TemplatesQuery {
    appid: Option<String>,
}

async fn templates(
    State(sandbox): State<Sandbox>,
    Query(query): Query<TemplatesQuery>,
) -> ControlResult {
    let appid = match query.appid {
        Some(appid) => Some(sandbox.resolve_appid(Some(&appid))?),
        None => None,
    };
    let templates: Vec<Value> = sandbox
        .inner
        .templates()
        .iter()
        .filter(|t| appid.as_deref().is_none_or(|a| t.belongs_to(a)))
        .map(|t| {
            json!({
                "id": t.id,
                "title": t.title,
                "kind": t.kind,
                "type": t.kind.wire_type(),
                "content": t.content,
                "example": t.example_text(),
                "keywords": t.keywords(),
                "enum_values": t.enum_values,
                "appids": t.appids,
            })
        })
        .collect();
    Ok(Json(json!({ "templates": templates })))
}

async fn sends(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({"sends": sandbox.send_requests()}))
}

/// Unknown control routes and wrong methods.
pub(crate) fn unknown_route() -> Response {
    ControlError(StatusCode::NOT_FOUND, "no such sandbox route".to_string()).into_response()
}
