//! The console: a page that shows the inbox the way a phone shows WeChat's 服务通知 (service
//! notifications), the refused sends and why, the counters, and buttons that play the user and
//! WeChat's bad days through the control API.
//!
//! Plain HTML, CSS and JavaScript modules, compiled into the binary: no build step. The page
//! reads and changes the sandbox only through the documented `/sandbox/...` routes, plus the
//! live stream of `/sandbox/events` (served here), so anything it does can be done with curl too. It renders
//! every value as text, and is served with a Content-Security-Policy that allows its own
//! scripts only, as a second line of defence.

use std::convert::Infallible;

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::Stream;
use tokio::{sync::broadcast::error::RecvError, time::MissedTickBehavior};

use crate::{
    Sandbox,
    events::{STATS_INTERVAL, resync_event},
};

/// Where the page is served (and `/`).
pub const CONSOLE_PATH: &str = "/sandbox/ui";

/// The page itself.
const INDEX_HTML: &str = include_str!("console/index.html");

/// The page's assets: name under `/sandbox/ui/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("console/console.css"),
    ),
    ("main.js", JS, include_str!("console/main.js")),
    ("api.js", JS, include_str!("console/api.js")),
    ("dom.js", JS, include_str!("console/dom.js")),
    ("inbox.js", JS, include_str!("console/inbox.js")),
    ("controls.js", JS, include_str!("console/controls.js")),
    ("stats.js", JS, include_str!("console/stats.js")),
];

const JS: &str = "text/javascript; charset=utf-8";

/// Its own scripts, styles and API only: no inline script, no other origin, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's routes, with full paths.
pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/", get(index))
        .route(CONSOLE_PATH, get(index))
        .route("/sandbox/ui/", get(index))
        .route("/sandbox/ui/{asset}", get(asset))
        .route("/sandbox/events", get(events))
}

async fn index() -> Response {
    let mut response = served("text/html; charset=utf-8", INDEX_HTML);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, content)) => served(content_type, content),
        None => (StatusCode::NOT_FOUND, "no such console asset").into_response(),
    }
}

/// A file of the page. Never cached: a rebuilt sandbox serves the new page at once.
fn served(content_type: &'static str, content: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        content,
    )
        .into_response()
}

/// `GET /sandbox/events`: the live events, and once a second the counters. A client too slow
/// to keep up loses the oldest events and is told to `resync`.
async fn events(
    State(sandbox): State<Sandbox>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (receiver, closing) = sandbox.inner.events.listen();
    let mut ticks = tokio::time::interval(STATS_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (sandbox, receiver, ticks, closing),
        |(sandbox, mut receiver, mut ticks, closing)| async move {
            let event = tokio::select! {
                () = closing.cancelled() => return None,
                received = receiver.recv() => match received {
                    Ok(event) => event.into_sse(),
                    Err(RecvError::Lagged(missed)) => resync_event(missed),
                    Err(RecvError::Closed) => return None,
                },
                _ = ticks.tick() => stats_event(&sandbox),
            };
            Some((Ok(event), (sandbox, receiver, ticks, closing)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn stats_event(sandbox: &Sandbox) -> Event {
    Event::default()
        .event("stats")
        .json_data(sandbox.stats())
        .unwrap_or_else(|_| resync_event(0))
}
