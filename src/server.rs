//! The composition root: builds the apps and the service from a validated config, binds the
//! listeners, serves gRPC (NotifyService, health, reflection) and metrics, and runs the
//! shutdown sequence.
//!
//! Lifecycle:
//! 1. Config is valid (the CLI checked it), the listeners are bound and gRPC is served with
//!    health NOT_SERVING (over TLS when configured: `crate::tls`, whose files are then
//!    checked for changes until shutdown; callers identified by `crate::callers`).
//! 2. With `warm_tokens`, every app fetches its token; a failure stops the start (the CLI
//!    exits non-zero).
//! 3. SERVING; with a shared store (`NOTIFY_REDIS_URL`), only once Redis has answered.
//! 4. When shutdown begins: NOT_SERVING first. After SIGTERM the server keeps accepting
//!    connections and serving calls for `shutdown_delay` (a second signal ends the delay), so
//!    that probes and load balancers see it leave before its port closes; after SIGINT, or
//!    [`Running::shutdown`], there is no delay.
//! 5. Then the server stops accepting, health Watch streams end, and in-flight calls (and sends
//!    whose caller went away) drain for at most `shutdown_grace`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::HeaderName;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::{ServingStatus, server::HealthReporter};

mod health;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::{
    callers::{Callers, layer::CallersLayer},
    config::ServeConfig,
    grpc::{NotifyGrpc, SubscriptionsGrpc},
    idempotency::{IdempotencyStore, MemoryIdempotencyStore},
    pb,
    push::PushEndpoint,
    service::{AppSender, Notifier, SendError},
    signal::{Shutdown, Signal},
    store::{
        RedisStore, idempotency::RedisIdempotencyStore, limits::SharedLimits,
        token::RedisTokenStore,
    },
    subscriptions::{Ledger, MemoryLedger, RedisLedger},
    telemetry::{self, REQUEST_ID_HEADER, RpcTelemetryLayer, catalog},
    templates::{TemplateCache, TemplateOptions},
    tls::{self, ReloadingTls, TlsProblem},
    token::{TokenCache, TokenOptions},
    wechat::{ClientBuildError, WechatClient, WechatError},
};

/// How long the warm-up waits for the shared store before fetching tokens without it.
const WARM_UP_STORE_WAIT: Duration = Duration::from_secs(5);

/// The gRPC service name health answers for (besides `""`).
pub const SERVICE_NAME: &str = "notify.v1.NotifyService";
/// The subscriptions service, which health answers for too.
pub const SUBSCRIPTION_SERVICE_NAME: &str = "notify.v1.SubscriptionService";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the wechat client: {0}")]
    Client(#[source] ClientBuildError),
    /// `warm_tokens` was set and an app's token could not be fetched.
    #[error("cannot fetch a token for app {app}: {source}")]
    WarmUp { app: String, source: WechatError },
    /// Reflection could not be built from the descriptor set.
    #[error("cannot build reflection: {0}")]
    Reflection(String),
    /// The TLS files no longer load (they did when the config was checked).
    #[error("cannot load the tls files: {0}")]
    Tls(TlsProblem),
}

/// A started server.
pub struct Running {
    /// Where gRPC is served.
    pub grpc_addr: SocketAddr,
    /// Where `GET /metrics` is served.
    pub metrics_addr: SocketAddr,
    /// Where WeChat's pushes are received (`/wechat/push/{app}`), when configured.
    pub push_addr: Option<SocketAddr>,
    notifier: Arc<Notifier>,
    begin_shutdown: Option<oneshot::Sender<()>>,
    done: JoinHandle<Result<(), ServeError>>,
}

/// The gRPC server stopped by itself instead of being shut down.
#[derive(Debug, thiserror::Error)]
#[error("the grpc server stopped unexpectedly: {0}")]
pub struct ServeError(String);

impl Running {
    /// The service behind the gRPC face (for tests and embedding).
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// Begins shutdown at once (no shutdown delay: for tests and embedding) and waits until it
    /// is complete.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(begin) = self.begin_shutdown.take() {
            let _ = begin.send(());
        }
        self.wait_done().await
    }

    /// Waits until the server has shut down (after `shutdown_signal` resolved), or failed.
    pub async fn wait(mut self) -> Result<(), ServeError> {
        self.wait_done().await
    }

    async fn wait_done(&mut self) -> Result<(), ServeError> {
        match (&mut self.done).await {
            Ok(result) => result,
            Err(join_error) => Err(ServeError(join_error.to_string())),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(begin) = self.begin_shutdown.take() {
            let _ = begin.send(());
        }
    }
}

/// Where the service listens, as bound (a port 0 in the config is the port the system chose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddrs {
    /// gRPC.
    pub grpc: SocketAddr,
    /// `GET /metrics`.
    pub metrics: SocketAddr,
    /// WeChat's pushes, when configured.
    pub push: Option<SocketAddr>,
}

/// The service's listeners, bound once and handed to [`start_on`]: their addresses are known
/// (and can be told to others) before anything is served, and no port is ever released and
/// bound again in between.
#[derive(Debug)]
pub struct Listeners {
    /// Their addresses.
    pub addrs: ListenAddrs,
    grpc: TcpListener,
    metrics: TcpListener,
    push: Option<TcpListener>,
}

impl Listeners {
    /// Binds `listen`, `metrics_listen` and `push_listen` (when set) of `config`.
    pub async fn bind(config: &ServeConfig) -> Result<Self, StartError> {
        let grpc = bind(config.listen).await?;
        let metrics = bind(config.metrics_listen).await?;
        let push = match config.push_listen {
            Some(addr) => Some((bind(addr).await?, addr)),
            None => None,
        };
        let addrs = ListenAddrs {
            grpc: local_addr(&grpc, config.listen)?,
            metrics: local_addr(&metrics, config.metrics_listen)?,
            push: match &push {
                Some((listener, addr)) => Some(local_addr(listener, *addr)?),
                None => None,
            },
        };
        Ok(Self {
            addrs,
            grpc,
            metrics,
            push: push.map(|(listener, _)| listener),
        })
    }
}

/// Binds the listeners `config` names, then [`start_on`] them.
pub async fn start(
    config: ServeConfig,
    shutdown_signal: impl Future<Output = Shutdown> + Send + 'static,
) -> Result<Running, StartError> {
    let listeners = Listeners::bind(&config).await?;
    start_on(config, listeners, shutdown_signal).await
}

/// Builds everything from `config` and serves on `listeners` until `shutdown_signal` resolves or
/// [`Running::shutdown`] is called.
pub async fn start_on(
    config: ServeConfig,
    listeners: Listeners,
    shutdown_signal: impl Future<Output = Shutdown> + Send + 'static,
) -> Result<Running, StartError> {
    // First, so that every series below lands in the one recorder `/metrics` renders.
    let metrics_handle = telemetry::metrics_handle();
    let client = WechatClient::new(&config.client).map_err(StartError::Client)?;
    let tls = config
        .tls
        .clone()
        .map(ReloadingTls::new)
        .transpose()
        .map_err(StartError::Tls)?;
    let callers = build_callers(&config);
    let store = config.redis.as_ref().map(RedisStore::new);
    let store_upkeep = store.as_ref().map(RedisStore::spawn_upkeep);
    let apps = build_apps(&config, &client, store.as_ref());
    let idempotency: Arc<dyn IdempotencyStore<SendError>> = match &store {
        Some(store) => Arc::new(RedisIdempotencyStore::new(
            store.clone(),
            config.idempotency.ttl,
            config.idempotency.capacity,
        )),
        None => Arc::new(MemoryIdempotencyStore::new(
            config.idempotency.ttl,
            config.idempotency.capacity,
        )),
    };
    let ledger: Arc<dyn Ledger> = match &store {
        Some(store) => Arc::new(RedisLedger::new(store.clone())),
        None => Arc::new(MemoryLedger::default()),
    };
    let notifier = Arc::new(
        Notifier::new(apps.clone(), idempotency, config.max_batch_recipients).with_ledger(ledger),
    );

    let Listeners {
        addrs:
            ListenAddrs {
                grpc: grpc_addr,
                metrics: metrics_addr,
                push: push_addr,
            },
        grpc: grpc_listener,
        metrics: metrics_listener,
        push: push_listener,
    } = listeners;

    let health = HealthReporter::new();
    set_health(&health, ServingStatus::NotServing).await;
    // Cancelled once health says NOT_SERVING: stop accepting, end health watches, drain.
    let drain = CancellationToken::new();

    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|error| StartError::Reflection(error.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|error| StartError::Reflection(error.to_string()))?;

    let (begin_shutdown, shutdown_requested) = oneshot::channel::<()>();
    let grpc = tonic::transport::Server::builder()
        .layer(
            tower::ServiceBuilder::new()
                // Outermost first: take or make the request id, echo it back, then open the
                // call's span (which carries the id) and count the call.
                .layer(SetRequestIdLayer::new(
                    HeaderName::from_static(REQUEST_ID_HEADER),
                    MakeRequestUuid,
                ))
                .map_request(never_index_request_id)
                .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
                    REQUEST_ID_HEADER,
                )))
                .layer(RpcTelemetryLayer)
                // Inside telemetry, so a refused call is counted and logged with its caller.
                .layer(CallersLayer::new(callers.clone())),
        )
        .add_service(health::draining_health(&health, drain.clone()))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(NotifyGrpc::new(notifier.clone()).into_server())
        .add_service(SubscriptionsGrpc::new(notifier.clone(), drain.clone()).into_server());
    let tls_reloader = tls.as_ref().map(ReloadingTls::spawn_reloader);
    let grpc: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> = match tls {
        None => Box::pin(grpc.serve_with_incoming_shutdown(
            // TCP_NODELAY: a small answer must not wait for the client's delayed ACK (Nagle),
            // which showed in the tail latency at moderate load.
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            drain.clone().cancelled_owned(),
        )),
        Some(tls) => Box::pin(grpc.serve_with_incoming_shutdown(
            tls::incoming(grpc_listener, tls),
            drain.clone().cancelled_owned(),
        )),
    };
    let scraped_apps = apps.clone();
    let metrics = axum::serve(
        metrics_listener,
        telemetry::metrics_router(metrics_handle, move || sample_live_gauges(&scraped_apps)),
    );
    let metrics_upkeep = telemetry::spawn_metrics_upkeep(telemetry::metrics_handle());
    let metrics_task = tokio::spawn(async move {
        if let Err(error) = metrics.await {
            tracing::error!(%error, "metrics listener failed");
        }
    });
    let push_task = push_listener.map(|listener| {
        let pushing: Vec<_> = apps
            .iter()
            .zip(&config.apps)
            .filter_map(|(app, settings)| Some((app.clone(), settings.push.clone()?)))
            .collect();
        if pushing.is_empty() {
            tracing::warn!(
                "the push listener is on, but no app sets push_token: every push is refused"
            );
        }
        let router = PushEndpoint::new(notifier.clone(), pushing).router();
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "push listener failed");
            }
        })
    });
    // Serving already, so probes get a clear NOT_SERVING (not a timeout) during the warm-up.
    let mut serve_task = tokio::spawn(grpc);

    if config.warm_tokens
        && let Some(store) = &store
    {
        // A token another replica stored is used rather than fetching one more: give Redis a
        // moment to answer first (without it, the warm-up fetches from WeChat as usual).
        let _ = tokio::time::timeout(WARM_UP_STORE_WAIT, store.wait_connected()).await;
    }
    if config.warm_tokens
        && let Err(error) = warm_up(&apps).await
    {
        drain.cancel();
        serve_task.abort();
        metrics_task.abort();
        if let Some(upkeep) = &store_upkeep {
            upkeep.abort();
        }
        if let Some(push_task) = &push_task {
            push_task.abort();
        }
        if let Some(reloader) = &tls_reloader {
            reloader.abort();
        }
        return Err(error);
    }
    // With a shared store the refreshers start once Redis answers: started before, each
    // replica would fetch its own token instead of using (or making) the shared one.
    let refreshers = Arc::new(std::sync::Mutex::new(Vec::new()));
    if store.is_none() {
        spawn_refreshers(&apps, &refreshers);
    }

    // With a shared store, SERVING waits for Redis (the upkeep task logs why meanwhile): a
    // replica that cannot reach it would refuse every keyed send.
    let app_count = apps.len();
    let became_ready = match &store {
        None => {
            set_health(&health, ServingStatus::Serving).await;
            tracing::info!(%grpc_addr, %metrics_addr, push_addr = ?push_addr, apps = app_count, "serving");
            None
        }
        Some(store) => {
            let (store, health) = (store.clone(), health.clone());
            let (apps, refreshers) = (apps.clone(), refreshers.clone());
            Some(tokio::spawn(async move {
                store.wait_connected().await;
                spawn_refreshers(&apps, &refreshers);
                set_health(&health, ServingStatus::Serving).await;
                tracing::info!(%grpc_addr, %metrics_addr, push_addr = ?push_addr, apps = app_count, "serving");
            }))
        }
    };

    let grace = config.shutdown_grace;
    let configured_delay = config.shutdown_delay;
    let drained = notifier.clone();
    let done = tokio::spawn(async move {
        let mut signalled = None;
        let failure = tokio::select! {
            shutdown = shutdown_signal => {
                signalled = Some(shutdown);
                None
            }
            _ = shutdown_requested => None,
            served = &mut serve_task => Some(ServeError(match served {
                Ok(Ok(())) => "it stopped serving".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(join_error) => join_error.to_string(),
            })),
        };
        if let Some(failure) = &failure {
            tracing::error!(%failure, "grpc server failed");
        }
        if let Some(became_ready) = became_ready {
            became_ready.abort();
        }
        // NOT_SERVING first, so the mesh stops routing here. After SIGTERM keep serving for the
        // delay: a load balancer that has not yet seen this endpoint leave still gets answers,
        // and a new probe gets NOT_SERVING rather than a refused connection. Then stop
        // accepting and let the calls in flight finish, within the grace period.
        set_health(&health, ServingStatus::NotServing).await;
        let (delay, next_signal) = match signalled {
            Some(Shutdown {
                signal: Signal::Terminate,
                next_signal,
            }) => (configured_delay, Some(next_signal)),
            _ => (Duration::ZERO, None),
        };
        tracing::info!(
            delay_secs = delay.as_secs(),
            "shutdown begun: health is NOT_SERVING; serving on for the delay, then draining"
        );
        if let Some(next_signal) = next_signal.filter(|_| !delay.is_zero()) {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = next_signal => tracing::info!("second signal: the delay ends now"),
            }
        }
        tracing::info!(
            grace_secs = grace.as_secs(),
            "no longer accepting; draining the calls in flight"
        );
        drain.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        if failure.is_none()
            && tokio::time::timeout_at(deadline, &mut serve_task)
                .await
                .is_err()
        {
            tracing::warn!("grace period over with calls still in flight; closing them");
            serve_task.abort();
        }
        // Sends whose caller went away still finish at WeChat and are recorded.
        if tokio::time::timeout_at(deadline, drained.drain())
            .await
            .is_err()
        {
            tracing::warn!("grace period over with sends still running");
        }
        for refresher in refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            refresher.abort();
        }
        if let Some(upkeep) = store_upkeep {
            upkeep.abort();
        }
        metrics_task.abort();
        metrics_upkeep.abort();
        if let Some(push_task) = push_task {
            push_task.abort();
        }
        if let Some(reloader) = tls_reloader {
            reloader.abort();
        }
        tracing::info!("shutdown complete");
        failure.map_or(Ok(()), Err)
    });

    Ok(Running {
        grpc_addr,
        metrics_addr,
        push_addr,
        notifier,
        begin_shutdown: Some(begin_shutdown),
        done,
    })
}

/// The configured callers; with none, says once that the service is open.
fn build_callers(config: &ServeConfig) -> Arc<Callers> {
    let apps: Vec<(String, String)> = config
        .apps
        .iter()
        .map(|app| (app.name.clone(), app.appid.clone()))
        .collect();
    let callers = Callers::new(&config.callers, &apps);
    if callers.is_open() {
        tracing::warn!(
            "no callers configured: any client that reaches the grpc port may send to every \
             app (add [[callers]] to the apps file; NOTIFY_REQUIRE_CALLERS=true refuses to start \
             without them)"
        );
    } else {
        tracing::info!(
            callers = callers.len(),
            tls = config.tls.is_some(),
            trust_forwarded_client_cert = config.callers.trust_forwarded_client_cert,
            "callers configured: every notify.v1 call must identify itself"
        );
    }
    Arc::new(callers)
}

/// One [`AppSender`] per configured app, its series registered at zero; with a shared `store`, its
/// token, rate, pause and stop shared through it.
fn build_apps(
    config: &ServeConfig,
    client: &WechatClient,
    store: Option<&Arc<RedisStore>>,
) -> Vec<Arc<AppSender>> {
    // The `caller` values the app's message series start at zero with: the configured
    // callers, or `anonymous` when the service is open.
    let caller_labels: Vec<&str> = if config.callers.callers.is_empty() {
        vec![crate::config::ANONYMOUS]
    } else {
        config
            .callers
            .callers
            .iter()
            .map(|caller| caller.name.as_str())
            .collect()
    };
    config
        .apps
        .iter()
        .map(|app| {
            let api = client
                .app(
                    app.appid.clone(),
                    app.secret.clone(),
                    app.token_mode,
                    app.api_bases.clone(),
                )
                .with_metrics_label(&app.name);
            let source = Arc::new(api.clone());
            let tokens = match store {
                Some(store) => TokenCache::with_store(
                    &app.name,
                    source,
                    Arc::new(RedisTokenStore::new(store.clone(), &app.appid)),
                    TokenOptions::default(),
                ),
                None => TokenCache::new(&app.name, source, TokenOptions::default()),
            };
            catalog::register_app(&app.name, app.max_in_flight, &caller_labels);
            let templates = config.template_checks.then(|| {
                let options = TemplateOptions {
                    refresh_interval: config.template_refresh,
                    ..TemplateOptions::default()
                };
                TemplateCache::new(&app.name, Arc::new(api.clone()), tokens.clone(), options)
            });
            let built = AppSender::new(
                app.name.clone(),
                api,
                tokens,
                app.max_in_flight,
                app.rate_per_sec,
            )
            .with_subscription_check(app.subscription_check)
            .with_callers(config.callers.callers.len());
            let built = match store {
                Some(store) => built.with_shared_limits(SharedLimits::new(
                    store.clone(),
                    &app.appid,
                    app.rate_per_sec,
                )),
                None => built,
            };
            Arc::new(match templates {
                Some(templates) => built.with_templates(templates),
                None => built,
            })
        })
        .collect()
}

/// Starts every app's background token refresher, keeping the handles for the shutdown.
fn spawn_refreshers(apps: &[Arc<AppSender>], handles: &std::sync::Mutex<Vec<JoinHandle<()>>>) {
    let mut handles = handles.lock().unwrap_or_else(|e| e.into_inner());
    handles.extend(apps.iter().map(|app| app.tokens().spawn_refresher()));
}

/// Fetches every app's token; the first app that cannot get one stops the start.
async fn warm_up(apps: &[Arc<AppSender>]) -> Result<(), StartError> {
    for app in apps {
        app.tokens()
            .get()
            .await
            .map_err(|source| StartError::WarmUp {
                app: app.name.clone(),
                source,
            })?;
        tracing::info!(app = %app.name, "token warmed up");
    }
    Ok(())
}

/// Marks the call's `x-request-id` never-indexed for HPACK, so its echo in the answer is sent
/// as a literal. The id differs on every call: indexed, each answer would insert it into the
/// connection's header table (evicting entries that do repeat) after walking every earlier id
/// stored under the same name.
fn never_index_request_id<B>(mut request: http::Request<B>) -> http::Request<B> {
    if let Some(id) = request.headers_mut().get_mut(REQUEST_ID_HEADER) {
        id.set_sensitive(true);
    }
    request
}

/// Reflection over notify.v1, grpc.health.v1 and the google.rpc error details the statuses
/// carry (so grpcurl decodes BadRequest, ErrorInfo and RetryInfo instead of printing base64).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Gauges whose value is only known now: set at scrape time.
fn sample_live_gauges(apps: &[Arc<AppSender>]) {
    for app in apps {
        let expires_in = app.tokens().time_to_expiry().unwrap_or_default();
        catalog::set_token_expires_in(&app.name, expires_in);
        catalog::set_upstream_in_flight(&app.name, app.sends_in_flight());
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
    health
        .set_service_status(SUBSCRIPTION_SERVICE_NAME, status)
        .await;
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}
