//! The settings of `serve` (one environment variable and one flag each), where each value came
//! from, and the parsers of their values.
//!
//! clap hands every value over as text; the parsers here turn it into its type, so that a
//! malformed value is a [`ConfigError`](super::ConfigError) (exit 64) that quotes the value as the
//! user wrote it (`NOTIFY_LISTEN=localhost:5006x` or `--listen localhost:5006x`) and says what was
//! expected, rather than a clap usage error naming only the flag.

use std::{collections::HashMap, fmt, net::SocketAddr, ops::RangeInclusive};

use clap::{ArgMatches, parser::ValueSource};

use crate::wechat::TokenMode;

/// A setting given by an environment variable or, equally, a flag of `serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Setting {
    /// The environment variable.
    pub env: &'static str,
    /// The `serve` flag.
    pub flag: &'static str,
}

impl Setting {
    /// clap's id of the flag's argument: the field name of `ServeArgs`.
    fn arg_id(self) -> String {
        self.flag.trim_start_matches('-').replace('-', "_")
    }

    /// Whether values of this setting must never be echoed.
    fn is_secret(self) -> bool {
        // A Redis URL may carry a password.
        self == settings::SECRET || self == settings::REDIS_URL
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.env, self.flag)
    }
}

macro_rules! settings {
    ($($(#[$doc:meta])* $name:ident = $env:literal, $flag:literal;)*) => {
        /// Every setting of `serve`, by environment variable and flag.
        pub mod settings {
            use super::Setting;
            $($(#[$doc])* pub const $name: Setting = Setting { env: $env, flag: $flag };)*
            /// All of them, in `--help` order.
            pub const ALL: &[Setting] = &[$($name),*];
        }
    };
}

settings! {
    /// The single app's AppID.
    APPID = "WECHAT_APPID", "--appid";
    /// The single app's AppSecret.
    SECRET = "WECHAT_SECRET", "--secret";
    /// A file holding the single app's AppSecret.
    SECRET_FILE = "WECHAT_SECRET_FILE", "--secret-file";
    /// API bases, comma-separated, in failover order.
    API_BASE = "WECHAT_API_BASE", "--api-base";
    /// Token endpoint family.
    TOKEN_MODE = "WECHAT_TOKEN_MODE", "--token-mode";
    /// The multi-app TOML file.
    CONFIG = "NOTIFY_CONFIG", "--config";
    /// gRPC listen address.
    LISTEN = "NOTIFY_LISTEN", "--listen";
    /// Metrics listen address.
    METRICS_LISTEN = "NOTIFY_METRICS_LISTEN", "--metrics-listen";
    /// Log line format.
    LOG_FORMAT = "NOTIFY_LOG_FORMAT", "--log-format";
    /// Concurrent upstream sends per app.
    MAX_IN_FLIGHT = "NOTIFY_MAX_IN_FLIGHT", "--max-in-flight";
    /// Sustained sends per second per app.
    RATE_PER_SEC = "NOTIFY_RATE_PER_SEC", "--rate-per-sec";
    /// BatchSend recipients per call.
    MAX_BATCH_RECIPIENTS = "NOTIFY_MAX_BATCH_RECIPIENTS", "--max-batch-recipients";
    /// Time to keep serving, health NOT_SERVING, after SIGTERM.
    SHUTDOWN_DELAY = "NOTIFY_SHUTDOWN_DELAY", "--shutdown-delay";
    /// Drain time after shutdown begins.
    SHUTDOWN_GRACE = "NOTIFY_SHUTDOWN_GRACE", "--shutdown-grace";
    /// Idempotency record lifetime.
    IDEMPOTENCY_TTL = "NOTIFY_IDEMPOTENCY_TTL", "--idempotency-ttl";
    /// Idempotency records kept.
    IDEMPOTENCY_CAPACITY = "NOTIFY_IDEMPOTENCY_CAPACITY", "--idempotency-capacity";
    /// Upstream connect timeout.
    CONNECT_TIMEOUT_MS = "WECHAT_CONNECT_TIMEOUT_MS", "--connect-timeout-ms";
    /// Upstream request timeout.
    REQUEST_TIMEOUT_MS = "WECHAT_REQUEST_TIMEOUT_MS", "--request-timeout-ms";
    /// Run the embedded sandbox.
    SANDBOX = "NOTIFY_SANDBOX", "--sandbox";
    /// Where the embedded sandbox listens.
    SANDBOX_LISTEN = "NOTIFY_SANDBOX_LISTEN", "--sandbox-listen";
    /// Fetch tokens before serving.
    WARM_TOKENS = "NOTIFY_WARM_TOKENS", "--warm-tokens";
    /// Check messages against the apps' template lists.
    TEMPLATE_CHECKS = "NOTIFY_TEMPLATE_CHECKS", "--template-checks";
    /// Template list refresh interval.
    TEMPLATE_REFRESH = "NOTIFY_TEMPLATE_REFRESH", "--template-refresh";
    /// Redis for the state shared by replicas.
    REDIS_URL = "NOTIFY_REDIS_URL", "--redis-url";
    /// Prefix of the shared keys.
    REDIS_KEY_PREFIX = "NOTIFY_REDIS_KEY_PREFIX", "--redis-key-prefix";
    /// Redis Cluster mode.
    REDIS_CLUSTER = "NOTIFY_REDIS_CLUSTER", "--redis-cluster";
    /// Where WeChat's event pushes are received.
    PUSH_LISTEN = "NOTIFY_PUSH_LISTEN", "--push-listen";
    /// What sends do with the subscription ledger.
    SUBSCRIPTION_CHECK = "NOTIFY_SUBSCRIPTION_CHECK", "--subscription-check";
    /// The gRPC port's certificate chain (PEM).
    TLS_CERT = "NOTIFY_TLS_CERT", "--tls-cert";
    /// The gRPC port's private key (PEM).
    TLS_KEY = "NOTIFY_TLS_KEY", "--tls-key";
    /// CA certificates that client certificates must chain to (PEM).
    TLS_CLIENT_CA = "NOTIFY_TLS_CLIENT_CA", "--tls-client-ca";
    /// Refuse to start with no `[[callers]]` configured.
    REQUIRE_CALLERS = "NOTIFY_REQUIRE_CALLERS", "--require-callers";
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The environment variable.
    Env,
    /// The flag.
    Flag,
}

/// Where each setting given by the user came from (settings left at their default are absent).
#[derive(Clone, Debug, Default)]
pub struct Sources(HashMap<Setting, Source>);

impl Sources {
    /// Reads the sources of every setting from `serve`'s parsed arguments.
    pub fn from_matches(matches: &ArgMatches) -> Self {
        let sources = settings::ALL
            .iter()
            .filter_map(|setting| {
                let source = match matches.value_source(&setting.arg_id())? {
                    ValueSource::EnvVariable => Source::Env,
                    ValueSource::CommandLine => Source::Flag,
                    _ => return None,
                };
                Some((*setting, source))
            })
            .collect();
        Self(sources)
    }

    /// `setting` holding `value`, as the user gave it.
    pub fn given(&self, setting: Setting, value: &str) -> Given {
        Given {
            setting,
            source: self.0.get(&setting).copied(),
            value: (!setting.is_secret()).then(|| value.to_owned()),
        }
    }

    /// `setting` as the user gave it, without its value (one that may hold a credential, or
    /// that the problem quotes itself).
    pub fn named(&self, setting: Setting) -> Given {
        Given {
            setting,
            source: self.0.get(&setting).copied(),
            value: None,
        }
    }
}

/// A setting as the user gave it, for an error message: `NOTIFY_LISTEN=:99999` when it came
/// from the environment, `--listen :99999` from a flag, and both names when the source is not
/// known. A secret's value is never shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given {
    setting: Setting,
    source: Option<Source>,
    value: Option<String>,
}

impl fmt::Display for Given {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Setting { env, flag } = self.setting;
        let Some(value) = &self.value else {
            return match self.source {
                Some(Source::Env) => write!(f, "{env}"),
                Some(Source::Flag) => write!(f, "{flag}"),
                None => write!(f, "{}", self.setting),
            };
        };
        // Quoted when it would be hard to see: empty, or with spaces or control characters.
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"');
        let value = if plain {
            value.clone()
        } else {
            format!("{value:?}")
        };
        match self.source {
            Some(Source::Env) => write!(f, "{env}={value}"),
            Some(Source::Flag) => write!(f, "{flag} {value}"),
            None => write!(f, "{} = {value}", self.setting),
        }
    }
}

/// The spellings a boolean setting accepts, in the order error messages list them.
pub const BOOLEAN_SPELLINGS: &str = "true, false, 1, 0, yes, no, on, off (any case)";

/// A boolean: one of [`BOOLEAN_SPELLINGS`]; empty counts as unset, so as `default`.
pub fn parse_bool(value: &str, default: bool) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "" => Ok(default),
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected one of {BOOLEAN_SPELLINGS}")),
    }
}

/// A listen address: `IP:PORT` (`[::1]:PORT` for IPv6), or `localhost:PORT` for loopback
/// (`127.0.0.1`). `example` is shown in the error.
pub fn parse_listen(value: &str, example: &str) -> Result<SocketAddr, String> {
    let expected = || format!("expected IP:PORT or localhost:PORT, e.g. {example}");
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(expected)?;
    if !host.eq_ignore_ascii_case("localhost") {
        return Err(expected());
    }
    let port: u16 = port.parse().map_err(|_| expected())?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A whole number within `range`, converted to the type the configuration keeps.
pub fn parse_number<T: TryFrom<u64>>(value: &str, range: RangeInclusive<u64>) -> Result<T, String> {
    let (start, end) = (*range.start(), *range.end());
    let expected = || format!("expected a whole number from {start} to {end}");
    let number: u64 = value.trim().parse().map_err(|_| expected())?;
    super::in_range(number, range).map_err(|_| expected())
}

/// One of the values of a clap `ValueEnum` (any case), named in the error.
pub fn parse_choice<T: clap::ValueEnum>(value: &str) -> Result<T, String> {
    T::from_str(value, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|variant| variant.to_possible_value())
            .map(|possible| possible.get_name().to_owned())
            .collect();
        format!("expected {}", names.join(" or "))
    })
}

/// The token endpoint setting (`stable` or `classic`, any case), as the client's mode.
pub fn parse_token_mode(value: &str) -> Result<TokenMode, String> {
    parse_choice(value).map(|setting| match setting {
        TokenModeSetting::Stable => TokenMode::Stable,
        TokenModeSetting::Classic => TokenMode::Classic,
    })
}

/// The values of the token mode setting; the client's [`TokenMode`] knows nothing of clap.
#[derive(Clone, Copy, clap::ValueEnum)]
enum TokenModeSetting {
    Stable,
    Classic,
}
