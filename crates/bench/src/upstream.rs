//! A fixed-answer WeChat API for benchmarks: both token endpoints hand out one fixed token,
//! `gettemplate` lists the one template the generator uses, and the send endpoint answers `{"errcode":0,"errmsg":"ok","msgid":N}` without looking at the
//! message. Nothing is checked, recorded or locked, so it costs as little CPU as an HTTP server
//! can and the service is what gets measured. (`sandbox --fixed-answer` does the same with the
//! sandbox's bookkeeping: it parses and records every body.)

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::header::CONTENT_TYPE,
    response::IntoResponse,
    routing::{get, post},
};

/// The token every token request gets.
pub const BENCH_TOKEN: &str = "86_bench-fixed-answer-access-token";

/// The first msgid handed out, above 2^53 like WeChat's.
const FIRST_MSGID: u64 = 1 << 60;

const TOKEN_ANSWER: &str =
    r#"{"access_token":"86_bench-fixed-answer-access-token","expires_in":7200}"#;

/// The app's template list: the course reminder the generator sends, so the service's template
/// check takes its hot path (a listed template) as it would in production.
const TEMPLATES_ANSWER: &str = r#"{"errcode":0,"errmsg":"ok","data":[{"priTmplId":"sandbox-course-reminder","title":"课程提醒","content":"学员:{{phrase1.DATA}}\n上课时间:{{date5.DATA}}\n老师:{{phrase4.DATA}}\n","example":"学员:张三\n上课时间:2019年10月1日 15:01\n老师:李老师\n","type":2}]}"#;

/// The fixed-answer routes.
pub fn upstream_router() -> Router {
    let next_msgid = Arc::new(AtomicU64::new(FIRST_MSGID));
    Router::new()
        .route("/cgi-bin/token", get(token))
        .route("/cgi-bin/stable_token", post(token))
        .route("/cgi-bin/message/subscribe/send", post(send))
        .route("/wxaapi/newtmpl/gettemplate", get(templates))
        .with_state(next_msgid)
}

async fn token() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], TOKEN_ANSWER)
}

async fn templates() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], TEMPLATES_ANSWER)
}

// The body is taken so that the connection stays reusable; it is not read.
async fn send(State(next_msgid): State<Arc<AtomicU64>>, _body: Bytes) -> impl IntoResponse {
    let msgid = next_msgid.fetch_add(1, Ordering::Relaxed);
    (
        [(CONTENT_TYPE, "application/json")],
        format!(r#"{{"errcode":0,"errmsg":"ok","msgid":{msgid}}}"#),
    )
}

/// Serves the fixed-answer API on `listen` until `stop` resolves.
pub async fn serve_upstream(
    listen: SocketAddr,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "fixed-answer upstream listening on http://{}/",
        listener.local_addr()?
    );
    axum::serve(listener, upstream_router())
        .with_graceful_shutdown(stop)
        .await
}
