//! Typed, validated configuration: command line, environment and the multi-app TOML file.
//!
//! CONTRACT STUB: the types are fixed; parsing is being written.

use std::{net::SocketAddr, time::Duration};

use url::Url;

use crate::{
    secret::Secret,
    wechat::{ClientOptions, TokenMode},
};

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One configured WeChat app.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Name callers use in `app` (the appid itself also works).
    pub name: String,
    /// The mini program's AppID.
    pub appid: String,
    /// The AppSecret (redacted in Debug).
    pub secret: Secret,
    /// API bases, tried in order when a connection cannot be made.
    pub api_bases: Vec<Url>,
    /// Token endpoint family.
    pub token_mode: TokenMode,
    /// Concurrent upstream sends at most, per app.
    pub max_in_flight: usize,
    /// Sustained sends per second, per app; bursts of at most one second's worth.
    pub rate_per_sec: u32,
}

/// Idempotency record keeping.
#[derive(Clone, Debug)]
pub struct IdempotencyOptions {
    /// How long a success is remembered (at least 24 h).
    pub ttl: Duration,
    /// Records kept at most; the oldest go first when full.
    pub capacity: u64,
}

/// Everything `serve` needs, validated.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Metrics (Prometheus) listen address.
    pub metrics_listen: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// The apps; empty with `sandbox`, which configures its own.
    pub apps: Vec<AppConfig>,
    /// Run the embedded sandbox and send to it.
    pub sandbox: bool,
    /// Fetch every app's token before reporting SERVING; exit non-zero on bad credentials.
    pub warm_tokens: bool,
    /// BatchSend recipients per call at most.
    pub max_batch_recipients: usize,
    /// How long in-flight calls may take to drain after shutdown begins.
    pub shutdown_grace: Duration,
    /// Idempotency record keeping.
    pub idempotency: IdempotencyOptions,
    /// Upstream HTTP client settings.
    pub client: ClientOptions,
}
