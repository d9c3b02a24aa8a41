//! The token endpoints (`GET /cgi-bin/token`, `POST /cgi-bin/stable_token`) and
//! `GET /wxaapi/newtmpl/gettemplate`.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    Sandbox,
    faults::FaultEndpoint,
    params::query_param,
    reply::Reply,
    state::{Inner, Mutable},
    tokens::{Family, Issued, TokenCheck, token_prefix},
};

/// What a token call asked for.
#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

pub(crate) async fn classic_token(
    State(sandbox): State<Sandbox>,
    RawQuery(query): RawQuery,
) -> Response {
    let request = TokenRequest {
        grant_type: query_param(query.as_deref(), "grant_type"),
        appid: query_param(query.as_deref(), "appid"),
        secret: query_param(query.as_deref(), "secret"),
        force_refresh: false,
    };
    answer(&sandbox.inner, Family::Classic, Some(request)).await
}

pub(crate) async fn stable_token(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    // A body that is not JSON, or has a field of the wrong type, is 47001.
    let request = serde_json::from_slice::<TokenRequest>(&body).ok();
    answer(&sandbox.inner, Family::Stable, request).await
}

async fn answer(inner: &Inner, family: Family, request: Option<TokenRequest>) -> Response {
    let (reply, latency) = issue(inner, family, request, Instant::now());
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    reply.into_response()
}

fn issue(
    inner: &Inner,
    family: Family,
    request: Option<TokenRequest>,
    now: Instant,
) -> (Reply, Option<Duration>) {
    let mut state = inner.lock();
    let appid = request.as_ref().and_then(|r| r.appid.as_deref());
    if let Some(appid) = appid.filter(|a| inner.app_secret(a).is_some()) {
        let fetches = state.token_fetches(appid);
        match family {
            Family::Classic => fetches.classic += 1,
            Family::Stable => fetches.stable += 1,
        }
    }
    let mut latency = None;
    if let Some(action) = state.faults.take(FaultEndpoint::Token, appid, None) {
        latency = action.latency;
        if let Some(answer) = action.answer {
            tracing::info!(appid, "token call answered by an injected fault");
            return (answer.into(), latency);
        }
    }
    let Some(request) = &request else {
        return (Reply::errcode(47001), latency);
    };
    let reply = match check_credentials(inner, request) {
        Err(errcode) => {
            tracing::info!(appid, errcode, "token call refused");
            Reply::errcode(errcode)
        }
        Ok(appid) => issue_token(inner, &mut state, family, appid, request, now),
    };
    (reply, latency)
}

/// The credential checks, in order: grant_type (40002), appid present (41002), secret present
/// (41004), appid known (40013), secret right (40125).
fn check_credentials<'r>(inner: &Inner, request: &'r TokenRequest) -> Result<&'r str, i32> {
    if request.grant_type.as_deref() != Some("client_credential") {
        return Err(40002);
    }
    let appid = request
        .appid
        .as_deref()
        .filter(|a| !a.is_empty())
        .ok_or(41002)?;
    let secret = request
        .secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(41004)?;
    let expected = inner.app_secret(appid).ok_or(40013)?;
    if secret != expected {
        return Err(40125);
    }
    Ok(appid)
}

fn issue_token(
    inner: &Inner,
    state: &mut Mutable,
    family: Family,
    appid: &str,
    request: &TokenRequest,
    now: Instant,
) -> Reply {
    let issued: Issued = match family {
        Family::Classic => state.tokens.issue_classic(appid, now),
        Family::Stable => {
            let day = inner.sandbox_day(now);
            match state.tokens.stable(appid, request.force_refresh, now, day) {
                Ok(issued) => issued,
                Err(_capped) => {
                    tracing::info!(appid, "force refresh refused: daily cap reached");
                    return Reply::errcode(45009);
                }
            }
        }
    };
    if issued.forced {
        state.token_fetches(appid).force_refreshes += 1;
    }
    tracing::info!(
        appid,
        family = ?family,
        token = token_prefix(&issued.token),
        fresh = issued.fresh,
        forced = issued.forced,
        expires_in = issued.expires_in,
        "access token handed out"
    );
    Reply::Json(json!({"access_token": issued.token, "expires_in": issued.expires_in}))
}

pub(crate) async fn get_template(
    State(sandbox): State<Sandbox>,
    RawQuery(query): RawQuery,
) -> Reply {
    let inner = &sandbox.inner;
    let token = query_param(query.as_deref(), "access_token");
    let (reply, latency) = {
        let mut state = inner.lock();
        state.stats.template_requests += 1;
        let appid = match state.tokens.check(token.as_deref(), Instant::now()) {
            TokenCheck::Valid { appid } => appid,
            rejected => return Reply::errcode(rejected.errcode().unwrap_or(40014)),
        };
        // Checked after the token, as for send: a fault never hides a token problem.
        match state
            .faults
            .take(FaultEndpoint::Templates, Some(&appid), None)
        {
            Some(action) => match action.answer {
                Some(answer) => {
                    tracing::info!(appid, "template list answered by an injected fault");
                    (answer.into(), action.latency)
                }
                None => (template_list(inner, &appid), action.latency),
            },
            None => (template_list(inner, &appid), None),
        }
    };
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    reply
}

/// The `gettemplate` answer for `appid`: its templates only.
fn template_list(inner: &Inner, appid: &str) -> Reply {
    let data: Vec<Value> = inner
        .templates()
        .iter()
        .filter(|t| t.belongs_to(appid))
        .map(|t| t.to_wire())
        .collect();
    Reply::Json(json!({"errcode": 0, "errmsg": "ok", "data": data}))
}
