//! The shared-state settings: `NOTIFY_REDIS_URL`, `NOTIFY_REDIS_KEY_PREFIX`,
//! `NOTIFY_REDIS_CLUSTER`, or the apps file's `[redis]` table. A flag or environment variable
//! wins over the file, key by key.
//!
//! A Redis URL may carry a password, so no message here ever quotes one.

use url::Url;

use crate::secret::Secret;
pub use crate::store::RedisConfig;

/// Default `NOTIFY_REDIS_KEY_PREFIX`.
pub const DEFAULT_KEY_PREFIX: &str = "wechat-notify";
/// Longest key prefix accepted, in bytes.
pub const MAX_KEY_PREFIX_BYTES: usize = 64;

/// The redis settings as given (flags and environment, or the file), before validation.
#[derive(Clone, Debug, Default)]
pub(super) struct RedisSettings {
    pub url: Option<Secret>,
    pub key_prefix: Option<String>,
    pub cluster: Option<bool>,
}

impl RedisSettings {
    /// These settings, each unset one taken from `fallback` (the file's).
    pub fn or(self, fallback: RedisSettings) -> RedisSettings {
        RedisSettings {
            url: self.url.or(fallback.url),
            key_prefix: self.key_prefix.or(fallback.key_prefix),
            cluster: self.cluster.or(fallback.cluster),
        }
    }
}

/// Which of the redis settings is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RedisKey {
    Url,
    KeyPrefix,
    Cluster,
}

/// Validates the settings: `None` when no URL is set (in-process state).
pub(super) fn validate(settings: RedisSettings) -> Result<Option<RedisConfig>, (RedisKey, String)> {
    let Some(url) = settings.url.filter(|url| !url.expose().trim().is_empty()) else {
        if settings.key_prefix.is_some() || settings.cluster == Some(true) {
            return Err((
                RedisKey::Url,
                "not set, but the key prefix or cluster mode is; set the redis URL too".to_owned(),
            ));
        }
        return Ok(None);
    };
    let cluster = settings.cluster.unwrap_or(false);
    let urls: Vec<&str> = url.expose().split(',').map(str::trim).collect();
    for (index, entry) in urls.iter().enumerate() {
        let which = || {
            if urls.len() == 1 {
                "the URL".to_owned()
            } else {
                format!("URL {} of the list", index + 1)
            }
        };
        let transport = check_url(entry)
            .map_err(|problem| (RedisKey::Url, format!("{} {problem}", which())))?;
        if cluster && transport == Transport::Unix {
            return Err((
                RedisKey::Url,
                format!(
                    "{} is a unix socket; cluster nodes are reached over TCP (redis:// or rediss://)",
                    which()
                ),
            ));
        }
    }
    if urls.len() > 1 && !cluster {
        return Err((
            RedisKey::Cluster,
            format!(
                "false, but the redis URL lists {} nodes; a list of nodes is for cluster mode only",
                urls.len()
            ),
        ));
    }
    let key_prefix = settings
        .key_prefix
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
    check_key_prefix(&key_prefix).map_err(|problem| (RedisKey::KeyPrefix, problem))?;
    Ok(Some(RedisConfig {
        urls: urls.into_iter().map(Secret::new).collect(),
        cluster,
        key_prefix,
    }))
}

/// How a Redis URL reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// `redis://` or `rediss://`: TCP, TLS for `rediss`.
    Tcp,
    /// `redis+unix://` or `unix://`: a unix socket on this host (a sidecar, a local server).
    Unix,
}

/// A `redis://` or `rediss://` URL with a host, or a `redis+unix://` or `unix://` URL with a
/// socket path (the redis crate's forms: `redis+unix:///run/redis.sock?db=1&pass=...`). The
/// message never repeats the URL.
fn check_url(entry: &str) -> Result<Transport, String> {
    let url = Url::parse(entry).map_err(|error| {
        format!(
            "is not a URL ({error}); write it as redis[s]://[:password@]host[:port][/db] or \
             redis+unix:///path/to/redis.sock"
        )
    })?;
    match url.scheme() {
        "redis" | "rediss" if url.host().is_none() => Err("has no host".to_owned()),
        "redis" | "rediss" => Ok(Transport::Tcp),
        "redis+unix" | "unix" if url.path().len() <= 1 => Err("has no socket path".to_owned()),
        "redis+unix" | "unix" => Ok(Transport::Unix),
        other => Err(format!(
            "has the scheme `{}`; expected redis, rediss, redis+unix or unix",
            other.escape_debug()
        )),
    }
}

/// A key prefix: non-empty, short, printable, and free of `{` and `}` (which would move the
/// hash tag that keeps an app's keys in one cluster slot).
fn check_key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if prefix.len() > MAX_KEY_PREFIX_BYTES {
        return Err(format!(
            "must be at most {MAX_KEY_PREFIX_BYTES} bytes, got {}",
            prefix.len()
        ));
    }
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        return Err(format!(
            "`{}` contains whitespace, control characters or braces",
            prefix.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: Option<&str>, prefix: Option<&str>, cluster: Option<bool>) -> RedisSettings {
        RedisSettings {
            url: url.map(Secret::new),
            key_prefix: prefix.map(str::to_owned),
            cluster,
        }
    }

    #[test]
    fn unset_means_in_process_state() {
        assert!(validate(settings(None, None, None)).unwrap().is_none());
        assert!(validate(settings(Some(""), None, None)).unwrap().is_none());
    }

    #[test]
    fn a_url_gets_the_default_prefix() {
        let config = validate(settings(Some("rediss://:pw@redis:6380/0"), None, None))
            .unwrap()
            .unwrap();
        assert_eq!(config.key_prefix, DEFAULT_KEY_PREFIX);
        assert!(!config.cluster);
        assert_eq!(config.urls.len(), 1);
    }

    #[test]
    fn bad_values_name_the_key_and_never_the_password() {
        let (key, problem) =
            validate(settings(Some("http://:hunter2@redis"), None, None)).unwrap_err();
        assert_eq!(key, RedisKey::Url);
        assert!(problem.contains("scheme `http`"), "{problem}");
        assert!(!problem.contains("hunter2"));
        let (key, _) = validate(settings(Some("redis://a,redis://b"), None, None)).unwrap_err();
        assert_eq!(key, RedisKey::Cluster);
        assert!(
            validate(settings(Some("redis://a,redis://b"), None, Some(true)))
                .unwrap()
                .unwrap()
                .cluster
        );
        let (key, _) = validate(settings(Some("redis://a"), Some("a{b}"), None)).unwrap_err();
        assert_eq!(key, RedisKey::KeyPrefix);
        let (key, _) = validate(settings(None, Some("p"), None)).unwrap_err();
        assert_eq!(key, RedisKey::Url);
    }

    #[test]
    fn a_unix_socket_serves_one_redis_but_not_a_cluster() {
        for url in [
            "redis+unix:///run/redis/redis.sock",
            "unix:///run/redis/redis.sock?db=1&pass=hunter2",
        ] {
            let config = validate(settings(Some(url), None, None)).unwrap().unwrap();
            assert_eq!(config.urls[0].expose(), url);
        }
        let (key, problem) = validate(settings(Some("redis+unix://"), None, None)).unwrap_err();
        assert_eq!(key, RedisKey::Url);
        assert!(problem.contains("no socket path"), "{problem}");
        let (key, problem) = validate(settings(
            Some("redis://a:7000,unix:///run/redis.sock?pass=hunter2"),
            None,
            Some(true),
        ))
        .unwrap_err();
        assert_eq!(key, RedisKey::Url);
        assert!(
            problem.contains("URL 2 of the list is a unix socket"),
            "{problem}"
        );
        assert!(!problem.contains("hunter2"));
    }
}
