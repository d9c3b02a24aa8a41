//! Serving a sandbox: its routes (WeChat's paths, the control API, the console) and a server on
//! a socket that stops when dropped.

use std::{io, net::SocketAddr, time::Duration};

use axum::{
    Router,
    http::Uri,
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use url::Url;

use crate::{Sandbox, console, control, endpoints, guard, reply, send};

/// How long [`SandboxServer::shutdown`] lets in-flight requests finish before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Sandbox {
    /// The WeChat routes and the control routes, ready to serve or to call in-process; the
    /// control routes refuse browser attacks (`guard`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/token", get(endpoints::classic_token))
            .route("/cgi-bin/stable_token", post(endpoints::stable_token))
            .route("/cgi-bin/message/subscribe/send", post(send::send))
            .route("/wxaapi/newtmpl/gettemplate", get(endpoints::get_template))
            .merge(control::routes())
            .merge(console::routes())
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .layer(middleware::from_fn_with_state(
                self.clone(),
                guard::browser_guard,
            ))
            .with_state(self.clone())
    }

    /// Binds `addr` (port 0 picks a free port) and serves in a background task until the
    /// returned server is shut down or dropped. Warns when `addr` is not a loopback address.
    pub async fn spawn(self, addr: SocketAddr) -> io::Result<SandboxServer> {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "sandbox listening on a non-loopback address; it is a fake wechat api for development, never expose it"
            );
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let _first_address_kept = self.inner.listen.set(addr);
        let (stop, stopped) = oneshot::channel::<()>();
        let router = self.router();
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            // Resolves on an explicit stop and when the server handle is dropped; then the
            // console's live streams end, so the graceful shutdown need not wait for them.
            let signal = async move {
                let _ = stopped.await;
                inner.events.close();
            };
            axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await
        });
        Ok(SandboxServer {
            addr,
            sandbox: self,
            stop,
            task,
        })
    }
}

/// Unknown paths and wrong methods: WeChat's errcode 404 (HTTP 200), or a plain 404 under
/// `/sandbox`.
async fn not_found(uri: Uri) -> Response {
    if uri.path() == "/sandbox" || uri.path().starts_with("/sandbox/") {
        return control::unknown_route();
    }
    reply::Reply::errcode(404).into_response()
}

/// A sandbox served on a socket. Dropping it stops the server too.
#[derive(Debug)]
pub struct SandboxServer {
    /// The bound address (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    sandbox: Sandbox,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl SandboxServer {
    /// The API base to point a WeChat client at, e.g. `http://127.0.0.1:8089/`.
    pub fn base_url(&self) -> Url {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Url::parse(&format!("http://{addr}/")).expect("a socket address makes a valid url")
    }

    /// The sandbox being served.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Stops accepting, lets in-flight requests finish (for at most 5 s), then returns.
    pub async fn shutdown(self) {
        let SandboxServer { stop, mut task, .. } = self;
        let _ = stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "sandbox server failed"),
            Ok(Err(join_error)) => tracing::warn!(%join_error, "sandbox server task failed"),
            Err(_elapsed) => {
                tracing::warn!("sandbox requests still in flight after the grace period; cut");
                task.abort();
            }
        }
    }
}
