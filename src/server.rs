//! The composition root: builds the apps and the service from a validated config, binds the
//! listeners, serves gRPC (NotifyService, health, reflection) and metrics, and runs the
//! shutdown sequence.
//!
//! Lifecycle: health answers NOT_SERVING until the listeners are bound (and, with
//! `warm_tokens`, every app holds a token), then SERVING. When shutdown begins, health flips to
//! NOT_SERVING first, then the server stops accepting and in-flight calls drain for at most
//! `shutdown_grace`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use http::HeaderName;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::{
    config::ServeConfig,
    grpc::NotifyGrpc,
    idempotency::MemoryIdempotencyStore,
    pb,
    service::{App, Notifier},
    telemetry::{self, REQUEST_ID_HEADER, RpcTelemetryLayer},
    token::{TOKEN_EXPIRES_IN_SECONDS, TokenCache, TokenOptions},
    wechat::{WechatClient, WechatError},
};

/// The gRPC service name health answers for (besides `""`).
pub const SERVICE_NAME: &str = "notify.v1.NotifyService";

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
    Client(WechatError),
    /// `warm_tokens` was set and an app's token could not be fetched.
    #[error("cannot fetch a token for app {app}: {source}")]
    WarmUp { app: String, source: WechatError },
    /// Reflection could not be built from the descriptor set.
    #[error("cannot build reflection: {0}")]
    Reflection(String),
}

/// A started server.
pub struct Running {
    /// Where gRPC is served.
    pub grpc_addr: SocketAddr,
    /// Where `GET /metrics` is served.
    pub metrics_addr: SocketAddr,
    notifier: Arc<Notifier>,
    begin_shutdown: Option<oneshot::Sender<()>>,
    done: JoinHandle<()>,
}

impl Running {
    /// The service behind the gRPC face (for tests and embedding).
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// Begins shutdown and waits until it is complete.
    pub async fn shutdown(mut self) {
        if let Some(begin) = self.begin_shutdown.take() {
            let _ = begin.send(());
        }
        let _ = (&mut self.done).await;
    }

    /// Waits until the server has shut down (after `shutdown_signal` resolved).
    pub async fn wait(mut self) {
        let _ = (&mut self.done).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(begin) = self.begin_shutdown.take() {
            let _ = begin.send(());
        }
    }
}

/// Builds everything from `config`, binds, and serves until `shutdown_signal` resolves or
/// [`Running::shutdown`] is called.
pub async fn start(
    config: ServeConfig,
    shutdown_signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let client = WechatClient::new(&config.client).map_err(StartError::Client)?;
    let apps: Vec<Arc<App>> = config
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
            let tokens = TokenCache::new(&app.name, Arc::new(api.clone()), TokenOptions::default());
            Arc::new(App::new(
                app.name.clone(),
                api,
                tokens,
                app.max_in_flight,
                app.rate_per_sec,
            ))
        })
        .collect();
    let idempotency = Arc::new(MemoryIdempotencyStore::new(
        config.idempotency.ttl,
        config.idempotency.capacity,
    ));
    let notifier = Arc::new(Notifier::new(
        apps.clone(),
        idempotency,
        config.max_batch_recipients,
    ));

    let grpc_listener = bind(config.listen).await?;
    let metrics_listener = bind(config.metrics_listen).await?;
    let grpc_addr = local_addr(&grpc_listener, config.listen)?;
    let metrics_addr = local_addr(&metrics_listener, config.metrics_listen)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    if config.warm_tokens {
        for app in &apps {
            app.tokens()
                .get()
                .await
                .map_err(|source| StartError::WarmUp {
                    app: app.name.clone(),
                    source,
                })?;
            tracing::info!(app = %app.name, "token warmed up");
        }
    }
    let refreshers: Vec<_> = apps
        .iter()
        .map(|app| app.tokens().spawn_refresher())
        .collect();

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| StartError::Reflection(error.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|error| StartError::Reflection(error.to_string()))?;

    let (begin_shutdown, shutdown_requested) = oneshot::channel::<()>();
    let drain = CancellationToken::new();
    let grpc = tonic::transport::Server::builder()
        .layer(
            tower::ServiceBuilder::new()
                // Outermost first: take or make the request id, echo it back, then open the
                // call's span (which carries the id) and count the call.
                .layer(SetRequestIdLayer::new(
                    HeaderName::from_static(REQUEST_ID_HEADER),
                    MakeRequestUuid,
                ))
                .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
                    REQUEST_ID_HEADER,
                )))
                .layer(RpcTelemetryLayer),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(NotifyGrpc::new(notifier.clone()).into_server())
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: a small answer must not wait for the client's delayed ACK (Nagle),
            // which showed as tens of milliseconds of p99 at moderate load.
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            drain.clone().cancelled_owned(),
        );
    let token_caches: Vec<_> = apps.iter().map(|app| app.tokens().clone()).collect();
    let metrics = axum::serve(
        metrics_listener,
        telemetry::metrics_router(telemetry::metrics_handle(), move || {
            // Time to expiry is a live value: set it at scrape time.
            for tokens in &token_caches {
                let seconds = tokens.time_to_expiry().unwrap_or_default().as_secs_f64();
                metrics::gauge!(TOKEN_EXPIRES_IN_SECONDS, "app" => tokens.app().to_owned())
                    .set(seconds);
            }
        }),
    );
    let metrics_upkeep = telemetry::spawn_metrics_upkeep(telemetry::metrics_handle());
    let metrics_task = tokio::spawn(async move {
        if let Err(error) = metrics.await {
            tracing::error!(%error, "metrics listener failed");
        }
    });
    let mut serve_task = tokio::spawn(grpc);

    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(%grpc_addr, %metrics_addr, apps = apps.len(), "serving");

    let grace = config.shutdown_grace;
    let drained = notifier.clone();
    let done = tokio::spawn(async move {
        tokio::select! {
            () = shutdown_signal => {}
            _ = shutdown_requested => {}
            served = &mut serve_task => {
                if let Ok(Err(error)) = served {
                    tracing::error!(%error, "grpc server failed");
                }
            }
        }
        // NOT_SERVING first, so the mesh stops routing here, then stop accepting and let the
        // calls in flight finish, within one grace period in all.
        set_health(&health, ServingStatus::NotServing).await;
        tracing::info!(?grace, "shutdown begun: health is NOT_SERVING, draining");
        drain.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, &mut serve_task)
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
        for refresher in refreshers {
            refresher.abort();
        }
        metrics_task.abort();
        metrics_upkeep.abort();
        tracing::info!("shutdown complete");
    });

    Ok(Running {
        grpc_addr,
        metrics_addr,
        notifier,
        begin_shutdown: Some(begin_shutdown),
        done,
    })
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
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
