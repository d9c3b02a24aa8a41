//! A faithful fake of the WeChat API, for local runs, demos and tests. A development tool:
//! production code never imports it, and it must never be exposed.
//!
//! It serves WeChat's own paths and JSON shapes (`/cgi-bin/token`, `/cgi-bin/stable_token`,
//! `/cgi-bin/message/subscribe/send`, `/wxaapi/newtmpl/gettemplate`) with WeChat's errcodes,
//! plus a control API under `/sandbox/` and a console page at `/` (see `docs/sandbox.md`).
//!
//! Modules: [`config`] and [`templates`] (what it is built from), `tokens` (token rules),
//! `send` (the send checks), `endpoints` (the token and template endpoints), `state`
//! (subscriptions, inbox, counters), `failures` (refused sends and their causes), `faults`,
//! `control` (the `/sandbox/` routes), `events` (the live stream), `console` (the page),
//! [`cli`] (`wechat-notify sandbox`). Below them all, `params` and `reply` (what a request
//! reads and how WeChat answers), so that imports only point down.

pub mod cli;
pub mod config;
mod console;
mod control;
mod endpoints;
mod events;
mod failures;
mod faults;
mod params;
mod push;
mod reply;
mod send;
mod state;
pub mod templates;
mod tokens;

use std::{fmt, io, net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use axum::{
    Router,
    http::Uri,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::Instant};
use url::Url;

pub use cli::{SandboxArgs, run};
pub use config::{DEFAULT_APPID, DEFAULT_SECRET, DEMO_OPENID, SandboxApp, SandboxConfig};
pub use events::{EVENTS_CAPACITY, STATS_INTERVAL};
pub use failures::FailedSend;
pub use faults::{ActiveFault, Fault, FaultEndpoint};
pub use params::is_valid_openid;
pub use push::{PushFormat, PushRecord, PushTarget};
pub use state::{Grant, InboxMessage, QuotaLeft, RecordedSend, SandboxStats, TokenFetches};
pub use templates::{Keyword, Template, TemplateKind};

use events::{Changed, SandboxEvent};
use state::{Inner, SubscriptionKey};

/// How long [`SandboxServer::shutdown`] lets in-flight requests finish before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A sandbox: its state and the HTTP routes over it. Cheap to clone (all clones share state).
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
    /// WeChat's pushes to the apps' push URLs (`push`).
    pusher: Arc<push::Pusher>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("apps", &self.inner.config.apps)
            .finish_non_exhaustive()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new(SandboxConfig::default())
    }
}

impl Sandbox {
    /// A sandbox with this configuration (trusted as is; see [`SandboxConfig::validate`]).
    pub fn new(config: SandboxConfig) -> Sandbox {
        Sandbox {
            inner: Arc::new(Inner::new(config)),
            pusher: Arc::default(),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The WeChat routes and the control routes, ready to serve or to call in-process.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/token", get(endpoints::classic_token))
            .route("/cgi-bin/stable_token", post(endpoints::stable_token))
            .route("/cgi-bin/message/subscribe/send", post(send::send))
            .route("/wxaapi/newtmpl/gettemplate", get(endpoints::get_template))
            .merge(control::routes())
            .merge(console::routes())
            .merge(push::routes())
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
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

    /// Delivered messages, oldest first; only those to `openid` when given.
    pub fn inbox(&self, openid: Option<&str>) -> Vec<InboxMessage> {
        self.inner
            .lock()
            .inbox
            .iter()
            .filter(|m| openid.is_none_or(|o| m.openid == o))
            .cloned()
            .collect()
    }

    /// Empties the inbox; returns how many messages it held.
    pub fn clear_inbox(&self) -> usize {
        let cleared = {
            let mut state = self.inner.lock();
            let cleared = state.inbox.len();
            state.inbox.clear();
            cleared
        };
        self.changed(Changed::Inbox);
        cleared
    }

    /// Refused sends (errcode, errmsg, cause), oldest first; only those to `openid` when given.
    pub fn failed_sends(&self, openid: Option<&str>) -> Vec<FailedSend> {
        self.inner
            .lock()
            .failures
            .iter()
            .filter(|f| openid.is_none_or(|o| f.openid.as_deref() == Some(o)))
            .cloned()
            .collect()
    }

    /// Forgets the refused sends; returns how many there were.
    pub fn clear_failed_sends(&self) -> usize {
        let cleared = {
            let mut state = self.inner.lock();
            let cleared = state.failures.len();
            state.failures.clear();
            cleared
        };
        self.changed(Changed::Failures);
        cleared
    }

    /// Tells the console's live streams that a part of the sandbox changed.
    fn changed(&self, what: Changed) {
        self.inner.events.publish(|| SandboxEvent::Changed(what));
    }

    /// The counters.
    pub fn stats(&self) -> SandboxStats {
        self.inner.stats()
    }

    /// Records what the user answered in `wx.requestSubscribeMessage` for a template.
    pub fn subscribe(&self, appid: &str, openid: &str, template_id: &str, grant: Grant) {
        let kind = self.inner.template(appid, template_id).map(|t| t.kind);
        let key = SubscriptionKey {
            appid: appid.to_string(),
            openid: openid.to_string(),
            template_id: template_id.to_string(),
        };
        self.inner.lock().subscribe(key, kind, grant);
        self.changed(Changed::Subscriptions);
        // The popup push WeChat makes for the same answer: one per accepted message.
        let (status, pushes) = match grant {
            Grant::Accept { count } => ("accept", count),
            Grant::Reject => ("reject", 1),
        };
        for _ in 0..pushes {
            self.pusher.push(
                appid,
                openid,
                template_id,
                push::PushEvent::Popup { status },
            );
        }
    }

    /// The user turns the template off from the settings: every grant is gone (as a reject),
    /// and WeChat pushes `subscribe_msg_change_event`.
    pub fn revoke(&self, appid: &str, openid: &str, template_id: &str) {
        let kind = self.inner.template(appid, template_id).map(|t| t.kind);
        let key = SubscriptionKey {
            appid: appid.to_string(),
            openid: openid.to_string(),
            template_id: template_id.to_string(),
        };
        self.inner.lock().subscribe(key, kind, Grant::Reject);
        self.changed(Changed::Subscriptions);
        self.pusher
            .push(appid, openid, template_id, push::PushEvent::Change);
    }

    /// Injects a fault; faults apply in injection order, the first matching one per call.
    ///
    /// # Panics
    /// If the fault can never do anything (see [`Fault::validate`]): a bug in the test.
    pub fn inject(&self, fault: Fault) {
        if let Err(problem) = fault.validate() {
            panic!("invalid sandbox fault {fault:?}: {problem}");
        }
        self.inner.lock().faults.add(fault);
        self.changed(Changed::Faults);
    }

    /// The injected faults still active.
    pub fn faults(&self) -> Vec<ActiveFault> {
        self.inner.lock().faults.list()
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
        self.changed(Changed::Faults);
    }

    /// Makes every current token of `appid` (both families) answer 40001 from now on.
    pub fn revoke_tokens(&self, appid: &str) {
        self.revoke_app_tokens(appid);
    }

    fn revoke_app_tokens(&self, appid: &str) -> usize {
        let revoked = self.inner.lock().tokens.revoke_app(appid, Instant::now());
        tracing::info!(appid, revoked, "sandbox tokens revoked");
        self.changed(Changed::Tokens);
        revoked
    }

    /// Turns auto-accept on or off: a send with no subscription is delivered as if the user
    /// had just accepted once (an explicit reject still answers 43101).
    pub fn set_auto_accept(&self, on: bool) {
        self.inner.auto_accept.store(on, Ordering::SeqCst);
        self.changed(Changed::AutoAccept);
    }

    /// Whether auto-accept is on.
    pub fn auto_accept(&self) -> bool {
        self.inner.auto_accept.load(Ordering::SeqCst)
    }

    /// Adds a template while running, as if created in WeChat's console: the next
    /// `gettemplate` lists it and sends may use it. Refused (with the reason) when the template
    /// is malformed, names an unknown app or reuses an id of one of its apps.
    pub fn add_template(&self, template: Template) -> Result<(), String> {
        let id = template.id.clone();
        self.inner.add_template(template)?;
        tracing::info!(template_id = id, "sandbox template added");
        self.changed(Changed::Templates);
        Ok(())
    }

    /// Every send request as received (the last 10,000), oldest first.
    pub fn send_requests(&self) -> Vec<RecordedSend> {
        self.inner.lock().sends.iter().cloned().collect()
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
