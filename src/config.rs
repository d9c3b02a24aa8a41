//! Typed, validated configuration: command line, environment and the multi-app TOML file.
//!
//! Two steps. clap gathers flags and environment variables into [`ServeArgs`] as text, and
//! records where each came from ([`Sources`]). [`ServeArgs::into_config`] then parses every
//! value and checks ranges and consistency, reads secret files and the TOML file, and returns a
//! [`ServePlan`], or a [`ConfigError`] whose message names what the user set
//! (`NOTIFY_LISTEN=localhost:5006x`, `--max-in-flight 0`, or the TOML key) and what was expected.
//! It binds and starts nothing, so `main` can exit 64 before any port is bound.
//!
//! The plan is the [`ServeConfig`] itself, or with `--sandbox` everything but the app: that one
//! is the embedded sandbox's, known once the sandbox listens, and the command line gives it as
//! [`AppSettings`] ([`SandboxPlan::into_config`]), checked like any app of the apps file.
//! docs/configuration.md is the operator's reference.

mod app;
mod callers;
mod file;
mod redis;
mod setting;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, time::Duration};

pub use self::redis::{DEFAULT_KEY_PREFIX, MAX_KEY_PREFIX_BYTES, RedisConfig};
use self::redis::{RedisKey, RedisSettings};
pub use callers::{
    ANONYMOUS, CallerConfig, CallersConfig, MAX_BATCH_RANGE, MIN_TOKEN_BYTES, RPC_NAMES, Rpc,
    TokenDigest,
};
pub use setting::{BOOLEAN_SPELLINGS, Given, Setting, Source, Sources, settings};
use setting::{parse_bool, parse_choice, parse_listen, parse_number, parse_token_mode};

use self::app::{check_identifier, check_secret, parse_api_base_list, read_secret_file};
use crate::{secret::Secret, tls::TlsFiles, wechat::ClientOptions};
pub use app::{AppConfig, AppDefaults, AppSettings, PushSettings, PushText};

/// WeChat's general API domain, the default API base.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";
/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
/// Default metrics listen address.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9464";
/// Default gRPC listen address of `serve --sandbox`, a local development run: loopback only.
pub const DEFAULT_SANDBOX_MODE_LISTEN: &str = "127.0.0.1:50051";
/// Default metrics listen address of `serve --sandbox`.
pub const DEFAULT_SANDBOX_MODE_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Default address of the embedded sandbox of `serve --sandbox`.
pub const DEFAULT_SANDBOX_LISTEN: &str = "127.0.0.1:8089";

/// Allowed `max_in_flight`, per app.
pub const MAX_IN_FLIGHT_RANGE: RangeInclusive<u64> = 1..=10_000;
/// Allowed `rate_per_sec`, per app.
pub const RATE_PER_SEC_RANGE: RangeInclusive<u64> = 1..=1_000_000;
/// Allowed BatchSend recipients per call.
pub const MAX_BATCH_RECIPIENTS_RANGE: RangeInclusive<u64> = 1..=100_000;
/// Allowed shutdown grace, in seconds.
pub const SHUTDOWN_GRACE_RANGE: RangeInclusive<u64> = 0..=3_600;
/// Allowed shutdown delay, in seconds.
pub const SHUTDOWN_DELAY_RANGE: RangeInclusive<u64> = 0..=3_600;
/// Allowed idempotency TTL, in seconds: at least the promised 24 hours, at most 30 days.
pub const IDEMPOTENCY_TTL_RANGE: RangeInclusive<u64> = 86_400..=2_592_000;
/// Allowed idempotency records kept.
pub const IDEMPOTENCY_CAPACITY_RANGE: RangeInclusive<u64> = 1..=100_000_000;
/// Allowed connect timeout, in milliseconds.
pub const CONNECT_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=60_000;
/// Allowed request timeout, in milliseconds.
pub const REQUEST_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=600_000;
/// Allowed template list refresh interval, in seconds: from a minute to a day.
pub const TEMPLATE_REFRESH_RANGE: RangeInclusive<u64> = 60..=86_400;

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
    /// The apps.
    pub apps: Vec<AppConfig>,
    /// Fetch every app's token before reporting SERVING; exit non-zero on bad credentials.
    pub warm_tokens: bool,
    /// BatchSend recipients per call at most.
    pub max_batch_recipients: usize,
    /// How long the server keeps accepting and serving after SIGTERM, with health
    /// NOT_SERVING, so that load balancers see it leave before its port closes.
    pub shutdown_delay: Duration,
    /// How long in-flight calls may take to drain once the server stops accepting.
    pub shutdown_grace: Duration,
    /// Idempotency record keeping.
    pub idempotency: IdempotencyOptions,
    /// Upstream HTTP client settings.
    pub client: ClientOptions,
    /// Check messages against each app's template list (`gettemplate`) before sending.
    pub template_checks: bool,
    /// How often each app's template list is reloaded in the background.
    pub template_refresh: Duration,
    /// Where the state shared by replicas lives; `None`: in this process only.
    pub redis: Option<RedisConfig>,
    /// Where WeChat's event pushes are received (HTTP); `None` for no push listener.
    pub push_listen: Option<SocketAddr>,
    /// Who may call, and what each caller may do (docs/callers.md).
    pub callers: CallersConfig,
    /// TLS on the gRPC port; `None` serves plaintext.
    pub tls: Option<TlsFiles>,
}

/// `serve`'s settings, checked, before anything is bound.
#[derive(Debug)]
pub enum ServePlan {
    /// The apps are configured (flags or the apps file): the configuration.
    Configured(ServeConfig),
    /// `--sandbox`: the service sends to an embedded sandbox, whose one app exists once the
    /// sandbox listens.
    Sandbox(SandboxPlan),
}

/// `serve --sandbox`, checked: where the sandbox and the push listener go, and everything but
/// the sandbox's app, which [`SandboxPlan::into_config`] adds.
#[derive(Debug)]
pub struct SandboxPlan {
    /// Where the embedded sandbox listens (`NOTIFY_SANDBOX_LISTEN`, loopback by default).
    pub listen: SocketAddr,
    /// Where the push listener will listen, for the sandbox's pushes: `NOTIFY_PUSH_LISTEN`, or
    /// by default a loopback port (port 0: any free one).
    pub push_listen: SocketAddr,
    /// The flags' per-app settings, for what the sandbox's app leaves out.
    app_defaults: AppDefaults,
    /// Everything else; its apps are empty until the sandbox's is added.
    config: ServeConfig,
}

impl SandboxPlan {
    /// The log line format.
    pub fn log_format(&self) -> LogFormat {
        self.config.log_format
    }

    /// The configuration with `app`, the sandbox's, checked like an app of the apps file, and
    /// the push listener on [`Self::push_listen`].
    pub fn into_config(self, app: AppSettings) -> Result<ServeConfig, ConfigError> {
        let app = app.check(&self.app_defaults)?;
        Ok(ServeConfig {
            apps: vec![app],
            push_listen: Some(self.push_listen),
            ..self.config
        })
    }
}

/// Why the configuration was refused. Every message names the environment variable and flag,
/// or the TOML file and key, at fault; none contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or environment variable has a malformed or out-of-range value.
    #[error("{given}: {problem}")]
    Value {
        /// The setting and its value, as the user gave it.
        given: Given,
        /// What is wrong and what was expected, lowercase.
        problem: String,
    },
    /// A flag or environment variable is missing or cannot be used.
    #[error("{setting}: {problem}")]
    Invalid {
        /// The setting at fault.
        setting: Setting,
        /// What is wrong, lowercase.
        problem: String,
    },
    /// Settings given together that exclude each other.
    #[error("{0}")]
    Conflict(String),
    /// Neither an app nor the sandbox is configured.
    #[error(
        "no app configured: set WECHAT_APPID (--appid) with WECHAT_SECRET (--secret) or \
         WECHAT_SECRET_FILE (--secret-file) for one app, or NOTIFY_CONFIG (--config) to a TOML \
         file with one [[apps]] table per app, or NOTIFY_SANDBOX=true (--sandbox) to run against \
         the embedded sandbox"
    )]
    NoApp,
    /// The TOML file cannot be read or is not TOML.
    #[error("NOTIFY_CONFIG (--config) {}: {problem}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, lowercase.
        problem: String,
    },
    /// An app the command line gave (the embedded sandbox's) has a bad value.
    #[error("the app {app}: {key}: {problem}")]
    App {
        /// The app's name.
        app: String,
        /// The key, as the apps file would name it (`api_base`).
        key: &'static str,
        /// What is wrong, lowercase.
        problem: String,
    },
    /// A key of the TOML file has a bad value.
    #[error("{}: {key}: {problem}", .path.display())]
    FileKey {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `apps[1].secret_env` (apps are numbered from 0).
        key: String,
        /// What is wrong, lowercase.
        problem: String,
    },
}

/// The flags (and environment variables) of `serve`, as text: [`ServeArgs::into_config`]
/// parses each value, so that a malformed one is refused with the value as the user wrote it
/// and the expected form (exit 64), whichever way it was given.
///
/// `Debug` is safe to print: the secret is a [`Secret`].
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// AppID of the one app (for several apps, use --config)
    #[arg(long, env = "WECHAT_APPID", value_name = "APPID")]
    pub appid: Option<String>,

    /// AppSecret of the one app; prefer --secret-file, since flags show in the process list
    #[arg(
        long,
        env = "WECHAT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        value_parser = parse_secret
    )]
    pub secret: Option<Secret>,

    /// File holding the one app's AppSecret (a trailing newline is ignored)
    #[arg(long, env = "WECHAT_SECRET_FILE", value_name = "FILE", value_parser = parse_path)]
    pub secret_file: Option<PathBuf>,

    /// WeChat API base URLs, comma-separated, tried in order when one cannot be reached;
    /// also the default of TOML apps
    #[arg(long, env = "WECHAT_API_BASE", value_name = "URLS", default_value = DEFAULT_API_BASE)]
    pub api_base: String,

    /// Token endpoint: stable (POST /cgi-bin/stable_token) or classic (GET /cgi-bin/token);
    /// also the default of TOML apps
    #[arg(
        long,
        env = "WECHAT_TOKEN_MODE",
        value_name = "MODE",
        default_value = "stable"
    )]
    pub token_mode: String,

    /// TOML file configuring several apps, one [[apps]] table each
    #[arg(long = "config", env = "NOTIFY_CONFIG", value_name = "FILE", value_parser = parse_path)]
    pub config: Option<PathBuf>,

    /// gRPC listen address, IP:PORT or localhost:PORT [default: 0.0.0.0:50051; with --sandbox
    /// 127.0.0.1:50051]
    #[arg(long, env = "NOTIFY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Metrics (Prometheus, GET /metrics) listen address [default: 0.0.0.0:9464; with
    /// --sandbox 127.0.0.1:9464]
    #[arg(long, env = "NOTIFY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Log line format: text or json
    #[arg(
        long,
        env = "NOTIFY_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: String,

    /// Concurrent upstream sends at most, per app (1-10000); also the default of TOML apps
    #[arg(
        long,
        env = "NOTIFY_MAX_IN_FLIGHT",
        value_name = "N",
        default_value = "64"
    )]
    pub max_in_flight: String,

    /// Sustained sends per second, per app (1-1000000); also the default of TOML apps
    #[arg(
        long,
        env = "NOTIFY_RATE_PER_SEC",
        value_name = "N",
        default_value = "500"
    )]
    pub rate_per_sec: String,

    /// BatchSend recipients per call at most (1-100000)
    #[arg(
        long,
        env = "NOTIFY_MAX_BATCH_RECIPIENTS",
        value_name = "N",
        default_value = "10000"
    )]
    pub max_batch_recipients: String,

    /// Seconds to keep serving after SIGTERM, with health NOT_SERVING, before the listener
    /// closes (0-3600); SIGINT (Ctrl-C) skips it
    #[arg(
        long,
        env = "NOTIFY_SHUTDOWN_DELAY",
        value_name = "SECONDS",
        default_value = "5"
    )]
    pub shutdown_delay: String,

    /// Seconds in-flight calls may take to finish once the listener closed (0-3600)
    #[arg(
        long,
        env = "NOTIFY_SHUTDOWN_GRACE",
        value_name = "SECONDS",
        default_value = "25"
    )]
    pub shutdown_grace: String,

    /// Seconds a successful send is remembered by its idempotency key (86400-2592000)
    #[arg(
        long,
        env = "NOTIFY_IDEMPOTENCY_TTL",
        value_name = "SECONDS",
        default_value = "86400"
    )]
    pub idempotency_ttl: String,

    /// Idempotency records kept at most; the oldest go first (1-100000000)
    #[arg(
        long,
        env = "NOTIFY_IDEMPOTENCY_CAPACITY",
        value_name = "N",
        default_value = "1000000"
    )]
    pub idempotency_capacity: String,

    /// Milliseconds allowed to connect to a WeChat API base (1-60000)
    #[arg(
        long,
        env = "WECHAT_CONNECT_TIMEOUT_MS",
        value_name = "MS",
        default_value = "3000"
    )]
    pub connect_timeout_ms: String,

    /// Milliseconds allowed for a whole WeChat request once connected (1-600000)
    #[arg(
        long,
        env = "WECHAT_REQUEST_TIMEOUT_MS",
        value_name = "MS",
        default_value = "10000"
    )]
    pub request_timeout_ms: String,

    /// Run the embedded fake WeChat API and send to it, all on loopback; no credentials needed
    #[arg(
        long,
        env = "NOTIFY_SANDBOX",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub sandbox: String,

    /// Where the embedded sandbox listens with --sandbox (keep it loopback)
    #[arg(
        long,
        env = "NOTIFY_SANDBOX_LISTEN",
        value_name = "ADDR",
        default_value = DEFAULT_SANDBOX_LISTEN
    )]
    pub sandbox_listen: String,

    /// Fetch every app's token before reporting SERVING; exit non-zero on bad credentials
    #[arg(
        long,
        env = "NOTIFY_WARM_TOKENS",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub warm_tokens: String,

    /// Check messages against each app's template list (gettemplate) before sending; false
    /// never calls gettemplate and leaves keyword and template checks to WeChat
    #[arg(
        long,
        env = "NOTIFY_TEMPLATE_CHECKS",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true"
    )]
    pub template_checks: String,

    /// Seconds between background reloads of each app's template list (60-86400)
    #[arg(
        long,
        env = "NOTIFY_TEMPLATE_REFRESH",
        value_name = "SECONDS",
        default_value = "600"
    )]
    pub template_refresh: String,

    /// Redis (redis:// or rediss://) holding the state shared by replicas: tokens, idempotency
    /// records, rate limits, pauses; unset keeps all state in this process
    #[arg(
        long,
        env = "NOTIFY_REDIS_URL",
        hide_env_values = true,
        value_name = "URL",
        value_parser = parse_secret
    )]
    pub redis_url: Option<Secret>,

    /// Prefix of every shared key (default wechat-notify); replicas with the same Redis and
    /// prefix behave as one service
    #[arg(long, env = "NOTIFY_REDIS_KEY_PREFIX", value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,

    /// The Redis is a Redis Cluster; --redis-url names any node, or lists several, comma-separated
    #[arg(
        long,
        env = "NOTIFY_REDIS_CLUSTER",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub redis_cluster: Option<String>,

    /// Where WeChat's event pushes are received (HTTP, /wechat/push/{app}); unset: no
    /// push listener. Apps set push_token, push_aes_key and push_mode in the apps file
    #[arg(long, env = "NOTIFY_PUSH_LISTEN", value_name = "ADDR")]
    pub push_listen: Option<String>,

    /// What sends do with the subscription ledger: off, observe (record, never block) or
    /// enforce (refuse a send the ledger knows cannot be delivered); also the default of TOML apps
    #[arg(
        long,
        env = "NOTIFY_SUBSCRIPTION_CHECK",
        value_name = "MODE",
        default_value = "observe"
    )]
    pub subscription_check: String,

    /// Where each value came from, for error messages: [`Sources::from_matches`] of `serve`'s
    /// parsed arguments (unknown, and both names shown, when left empty).
    #[arg(skip)]
    pub sources: Sources,

    /// Certificate chain (PEM) for TLS on the gRPC port; reloaded when the file changes
    #[arg(long, env = "NOTIFY_TLS_CERT", value_name = "FILE", value_parser = parse_path)]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert; reloaded when the file changes
    #[arg(long, env = "NOTIFY_TLS_KEY", value_name = "FILE", value_parser = parse_path)]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to (mutual TLS); reloaded
    /// when the file changes
    #[arg(long, env = "NOTIFY_TLS_CLIENT_CA", value_name = "FILE", value_parser = parse_path)]
    pub tls_client_ca: Option<PathBuf>,

    /// Refuse to start unless the apps file configures at least one [[callers]] table
    /// [possible values: true, false, 1, 0, yes, no, on, off]
    #[arg(
        long,
        env = "NOTIFY_REQUIRE_CALLERS",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub require_callers: String,
}

fn parse_secret(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value))
}

/// A path; unlike clap's own parser, it lets an empty value through, to count as unset.
fn parse_path(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

impl ServeArgs {
    /// Validates the settings, reads secret files and the TOML file (`secret_env` looks in the
    /// process environment), and returns the configuration, or with `--sandbox` the plan that
    /// awaits the sandbox's app.
    pub fn into_config(self) -> Result<ServePlan, ConfigError> {
        self.into_config_with_env(|name| std::env::var(name).ok())
    }

    /// [`Self::into_config`], looking environment variables named by `secret_env` up with `env`.
    pub fn into_config_with_env(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServePlan, ConfigError> {
        use settings::*;

        let sources = &self.sources;
        let number = |setting: Setting, text: &str, range: RangeInclusive<u64>| {
            checked(sources, setting, text, parse_number::<u64>(text, range))
        };
        let boolean = |setting: Setting, text: &str, default: bool| {
            checked(sources, setting, text, parse_bool(text, default))
        };

        let sandbox = boolean(SANDBOX, &self.sandbox, false)?;
        // `serve --sandbox` is a local development run: loopback unless told otherwise.
        let (default_listen, default_metrics_listen) = if sandbox {
            (
                DEFAULT_SANDBOX_MODE_LISTEN,
                DEFAULT_SANDBOX_MODE_METRICS_LISTEN,
            )
        } else {
            (DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN)
        };
        let listen_text = self.listen.as_deref().unwrap_or(default_listen);
        let listen = checked(
            sources,
            LISTEN,
            listen_text,
            parse_listen(listen_text, DEFAULT_LISTEN),
        )?;
        let metrics_listen_text = self
            .metrics_listen
            .as_deref()
            .unwrap_or(default_metrics_listen);
        let metrics_listen = checked(
            sources,
            METRICS_LISTEN,
            metrics_listen_text,
            parse_listen(metrics_listen_text, DEFAULT_METRICS_LISTEN),
        )?;
        let sandbox_listen = checked(
            sources,
            SANDBOX_LISTEN,
            &self.sandbox_listen,
            parse_listen(&self.sandbox_listen, DEFAULT_SANDBOX_LISTEN),
        )?;
        let log_format = checked(
            sources,
            LOG_FORMAT,
            &self.log_format,
            parse_choice(&self.log_format),
        )?;

        let app_defaults = AppDefaults {
            // Named, not quoted: a URL may hold credentials (the parser never repeats them).
            api_bases: parse_api_base_list(&self.api_base)
                .map_err(|problem| named(sources, API_BASE, problem))?,
            token_mode: checked(
                sources,
                TOKEN_MODE,
                &self.token_mode,
                parse_token_mode(&self.token_mode),
            )?,
            max_in_flight: as_usize(number(
                MAX_IN_FLIGHT,
                &self.max_in_flight,
                MAX_IN_FLIGHT_RANGE,
            )?),
            rate_per_sec: number(RATE_PER_SEC, &self.rate_per_sec, RATE_PER_SEC_RANGE)?
                .try_into()
                .unwrap_or(u32::MAX),
            subscription_check: checked(
                sources,
                SUBSCRIPTION_CHECK,
                &self.subscription_check,
                parse_choice(&self.subscription_check),
            )?,
        };
        let max_batch_recipients = as_usize(number(
            MAX_BATCH_RECIPIENTS,
            &self.max_batch_recipients,
            MAX_BATCH_RECIPIENTS_RANGE,
        )?);
        let shutdown_delay = number(SHUTDOWN_DELAY, &self.shutdown_delay, SHUTDOWN_DELAY_RANGE)?;
        let shutdown_grace = number(SHUTDOWN_GRACE, &self.shutdown_grace, SHUTDOWN_GRACE_RANGE)?;
        let idempotency_ttl = number(
            IDEMPOTENCY_TTL,
            &self.idempotency_ttl,
            IDEMPOTENCY_TTL_RANGE,
        )?;
        let idempotency_capacity = number(
            IDEMPOTENCY_CAPACITY,
            &self.idempotency_capacity,
            IDEMPOTENCY_CAPACITY_RANGE,
        )?;
        let connect_timeout_ms = number(
            CONNECT_TIMEOUT_MS,
            &self.connect_timeout_ms,
            CONNECT_TIMEOUT_MS_RANGE,
        )?;
        let request_timeout_ms = number(
            REQUEST_TIMEOUT_MS,
            &self.request_timeout_ms,
            REQUEST_TIMEOUT_MS_RANGE,
        )?;
        let template_refresh = number(
            TEMPLATE_REFRESH,
            &self.template_refresh,
            TEMPLATE_REFRESH_RANGE,
        )?;
        let warm_tokens = boolean(WARM_TOKENS, &self.warm_tokens, false)?;
        let template_checks = boolean(TEMPLATE_CHECKS, &self.template_checks, true)?;

        let redis_cluster = match self
            .redis_cluster
            .as_deref()
            .filter(|text| !text.is_empty())
        {
            Some(text) => Some(boolean(REDIS_CLUSTER, text, false)?),
            None => None,
        };

        // Empty counts as unset: no push listener.
        let push_listen = match self.push_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(checked(
                sources,
                PUSH_LISTEN,
                text,
                parse_listen(text, "0.0.0.0:8090"),
            )?),
        };
        let require_callers = boolean(REQUIRE_CALLERS, &self.require_callers, false)?;
        let (apps, mut callers, file_redis) = self.apps(sandbox, &app_defaults, &env)?;
        callers.require_callers = require_callers;
        if require_callers && callers.callers.is_empty() {
            return Err(named(
                sources,
                REQUIRE_CALLERS,
                format!(
                    "no caller is configured: add [[callers]] tables to the file of {CONFIG}, \
                     or unset {REQUIRE_CALLERS} to run open"
                ),
            ));
        }
        let tls = self.tls()?;
        let flag_redis = RedisSettings {
            url: self.redis_url.clone(),
            key_prefix: self.redis_key_prefix.clone(),
            cluster: redis_cluster,
        };
        let redis = redis::validate(flag_redis.or(file_redis)).map_err(|(key, problem)| {
            let setting = match key {
                RedisKey::Url => REDIS_URL,
                RedisKey::KeyPrefix => REDIS_KEY_PREFIX,
                RedisKey::Cluster => REDIS_CLUSTER,
            };
            let file = self
                .config
                .as_deref()
                .filter(|path| !path.as_os_str().is_empty());
            let problem = match file {
                Some(path) => format!("{problem} (or the [redis] table of {})", path.display()),
                None => problem,
            };
            // Named, not quoted: the URL may hold a password (the problem never repeats it).
            named(sources, setting, problem)
        })?;

        let config = ServeConfig {
            listen,
            metrics_listen,
            log_format,
            apps,
            warm_tokens,
            max_batch_recipients,
            shutdown_delay: Duration::from_secs(shutdown_delay),
            shutdown_grace: Duration::from_secs(shutdown_grace),
            idempotency: IdempotencyOptions {
                ttl: Duration::from_secs(idempotency_ttl),
                capacity: idempotency_capacity,
            },
            client: ClientOptions {
                connect_timeout: Duration::from_millis(connect_timeout_ms),
                request_timeout: Duration::from_millis(request_timeout_ms),
            },
            template_checks,
            template_refresh: Duration::from_secs(template_refresh),
            redis,
            push_listen,
            callers,
            tls,
        };
        if !sandbox {
            return Ok(ServePlan::Configured(config));
        }
        Ok(ServePlan::Sandbox(SandboxPlan {
            listen: sandbox_listen,
            push_listen: push_listen
                .unwrap_or_else(|| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))),
            app_defaults,
            config,
        }))
    }

    /// The TLS files, each read once here so a bad one exits 64 before any port is bound.
    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        use settings::*;

        let given =
            |path: &Option<PathBuf>| path.clone().filter(|path| !path.as_os_str().is_empty());
        let (cert, key, client_ca) = (
            given(&self.tls_cert),
            given(&self.tls_key),
            given(&self.tls_client_ca),
        );
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                if client_ca.is_some() {
                    return Err(named(
                        &self.sources,
                        TLS_CLIENT_CA,
                        format!("needs TLS: set {TLS_CERT} and {TLS_KEY} too"),
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(named(
                    &self.sources,
                    TLS_KEY,
                    format!("not set, but {TLS_CERT} is"),
                ));
            }
            (None, Some(_)) => {
                return Err(named(
                    &self.sources,
                    TLS_CERT,
                    format!("not set, but {TLS_KEY} is"),
                ));
            }
        };
        let files = TlsFiles {
            cert,
            key,
            client_ca,
        };
        crate::tls::load(&files).map_err(|problem| {
            let setting = match problem.file {
                crate::tls::TlsFile::Cert => TLS_CERT,
                crate::tls::TlsFile::Key => TLS_KEY,
                crate::tls::TlsFile::ClientCa => TLS_CLIENT_CA,
            };
            named(&self.sources, setting, problem.problem)
        })?;
        Ok(Some(files))
    }

    /// The apps (none with the sandbox, the TOML file's, or the one app of the flags), the
    /// callers (the TOML file's, also beside the sandbox) and the file's `[redis]` table, if any.
    fn apps(
        &self,
        sandbox: bool,
        defaults: &AppDefaults,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<AppConfig>, CallersConfig, RedisSettings), ConfigError> {
        use settings::*;

        // An empty value counts as unset: templated environments often produce `NAME=`.
        let appid = self.appid.as_deref().filter(|appid| !appid.is_empty());
        let secret = self.secret.as_ref().filter(|secret| !secret.is_empty());
        let secret_file = self
            .secret_file
            .as_deref()
            .filter(|path| !path.as_os_str().is_empty());
        let config = self
            .config
            .as_deref()
            .filter(|path| !path.as_os_str().is_empty());

        let single_app_settings: Vec<Setting> = [
            (APPID, appid.is_some()),
            (SECRET, secret.is_some()),
            (SECRET_FILE, secret_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(setting, given)| given.then_some(setting))
        .collect();

        if sandbox {
            let given = single_app_settings;
            if !given.is_empty() {
                return Err(ConfigError::Conflict(format!(
                    "{SANDBOX} configures the sandbox's apps itself; remove {}",
                    list(&given)
                )));
            }
            // Beside the sandbox, the file may configure callers and [redis] (not apps).
            let (callers, redis) = match config {
                Some(path) => {
                    let loaded = file::load(path, defaults, env, false)?;
                    (loaded.callers, loaded.redis)
                }
                None => (CallersConfig::default(), RedisSettings::default()),
            };
            return Ok((Vec::new(), callers, redis));
        }

        if let Some(path) = config {
            if !single_app_settings.is_empty() {
                return Err(ConfigError::Conflict(format!(
                    "{CONFIG} configures the apps; remove {} (one-app settings), or put that app \
                     in the file",
                    list(&single_app_settings)
                )));
            }
            let loaded = file::load(path, defaults, env, true)?;
            return Ok((loaded.apps, loaded.callers, loaded.redis));
        }

        let Some(appid) = appid else {
            if single_app_settings.is_empty() {
                return Err(ConfigError::NoApp);
            }
            return Err(invalid(
                APPID,
                format!("not set, but {} is", list(&single_app_settings)),
            ));
        };
        let sources = &self.sources;
        check_identifier(appid).map_err(|problem| named(sources, APPID, problem))?;
        let secret = match (secret, secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(format!(
                    "{SECRET} and {SECRET_FILE} are both set; set one"
                )));
            }
            (Some(secret), None) => {
                check_secret(secret.expose()).map_err(|problem| named(sources, SECRET, problem))?;
                secret.clone()
            }
            (None, Some(path)) => {
                read_secret_file(path).map_err(|problem| named(sources, SECRET_FILE, problem))?
            }
            (None, None) => {
                return Err(invalid(
                    SECRET,
                    format!("not set; {APPID} needs {SECRET} or {SECRET_FILE}"),
                ));
            }
        };
        Ok((
            vec![defaults.app(appid.to_owned(), appid.to_owned(), secret)],
            CallersConfig::default(),
            RedisSettings::default(),
        ))
    }
}

/// `parsed`, or the error that quotes `text` as the user gave it for `setting`.
fn checked<T>(
    sources: &Sources,
    setting: Setting,
    text: &str,
    parsed: Result<T, String>,
) -> Result<T, ConfigError> {
    parsed.map_err(|problem| ConfigError::Value {
        given: sources.given(setting, text),
        problem,
    })
}

/// The error of `setting`, named as the user gave it but without its value.
fn named(sources: &Sources, setting: Setting, problem: String) -> ConfigError {
    ConfigError::Value {
        given: sources.named(setting),
        problem,
    }
}

fn invalid(setting: Setting, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        problem: problem.into(),
    }
}

/// `A (--a), B (--b)`.
fn list(settings: &[Setting]) -> String {
    let names: Vec<String> = settings.iter().map(Setting::to_string).collect();
    names.join(", ")
}

/// A count that fits in memory: the ranges above keep every one far below `usize::MAX`.
fn as_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// `value` when it lies in `range`, converted to the type the configuration keeps.
fn in_range<T: TryFrom<u64>>(value: u64, range: RangeInclusive<u64>) -> Result<T, String> {
    let out_of_range = || {
        format!(
            "must be from {} to {}, got {value}",
            range.start(),
            range.end()
        )
    };
    if !range.contains(&value) {
        return Err(out_of_range());
    }
    T::try_from(value).map_err(|_| out_of_range())
}
