//! The multi-app TOML file (`NOTIFY_CONFIG`): one `[[apps]]` table per app, an optional
//! `[redis]` table for the state shared by replicas, and the callers (`[[callers]]`,
//! `trust_forwarded_client_cert`; see `callers.rs`).
//!
//! Read into a `toml::Table` and then key by key, rather than through serde, so that every
//! message names its key (`apps[1].secret_env`), unknown keys are refused by name, and no
//! message ever quotes a value that might be a secret (syntax errors give a line and column, not
//! the offending line).

use std::{collections::HashMap, ops::RangeInclusive, path::Path};

use toml::{Table, Value};
use url::Url;

use super::{
    ConfigError, MAX_IN_FLIGHT_RANGE, RATE_PER_SEC_RANGE,
    app::{
        AppConfig, AppDefaults, PushSettings, check_identifier, check_secret, parse_api_base_list,
        parse_api_bases, push_settings, read_secret_file,
    },
    callers::{CallersConfig, load_callers},
    in_range,
    redis::RedisSettings,
};
use crate::{secret::Secret, subscriptions::SubscriptionCheck, wechat::TokenMode};

/// The keys of an `[[apps]]` table.
const APP_KEYS: &[&str] = &[
    "name",
    "appid",
    "secret",
    "secret_env",
    "secret_file",
    "api_base",
    "token_mode",
    "max_in_flight",
    "rate_per_sec",
    "subscription_check",
    "push_token",
    "push_aes_key",
    "push_mode",
];

/// The keys of the `[redis]` table.
const REDIS_KEYS: &[&str] = &["url", "key_prefix", "cluster"];

/// The keys that give an app's secret; exactly one is required.
const SECRET_KEYS: &[&str] = &["secret", "secret_env", "secret_file"];

/// The top-level keys of the file.
const TOP_KEYS: &[&str] = &["apps", "redis", "callers", "trust_forwarded_client_cert"];

/// What the file configures.
pub(super) struct FileConfig {
    /// The apps; empty only when they were not wanted (the sandbox configures its own).
    pub apps: Vec<AppConfig>,
    /// The callers.
    pub callers: CallersConfig,
    /// The `[redis]` table as given.
    pub redis: RedisSettings,
}

/// Reads and validates the TOML file at `path`. Keys an app leaves out come from `defaults`;
/// `env` looks up the variables named by `secret_env` and `token_env`. With `apps_wanted`
/// false (the sandbox configures the apps), the file must not hold `[[apps]]`.
pub(super) fn load(
    path: &Path,
    defaults: &AppDefaults,
    env: &dyn Fn(&str) -> Option<String>,
    apps_wanted: bool,
) -> Result<FileConfig, ConfigError> {
    let file_error = |problem: String| ConfigError::File {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| file_error(format!("cannot read the file: {error}")))?;
    let document: Table = toml::from_str(&text).map_err(|error| {
        let position = error
            .span()
            .map(|span| line_and_column(&text, span.start))
            .unwrap_or_default();
        file_error(format!("invalid TOML{position}: {}", error.message()))
    })?;

    let reader = FileReader {
        path,
        // A relative `secret_file` is relative to the directory of the file that names it.
        directory: path.parent().unwrap_or(Path::new("")),
        defaults,
        env,
    };
    if let Some(key) = document
        .keys()
        .find(|key| !TOP_KEYS.contains(&key.as_str()))
    {
        return Err(reader.error(
            key,
            format!("unknown key; expected one of {}", TOP_KEYS.join(", ")),
        ));
    }
    let redis = match document.get("redis") {
        Some(Value::Table(table)) => reader.redis(table)?,
        Some(other) => {
            return Err(reader.error(
                "redis",
                format!("must be a table, written [redis], got {}", other.type_str()),
            ));
        }
        None => RedisSettings::default(),
    };
    let callers = load_callers(path, reader.directory, &document, env)?;
    if !apps_wanted {
        if document.contains_key("apps") {
            return Err(reader.error(
                "apps",
                "the sandbox configures its own apps; with NOTIFY_SANDBOX (--sandbox) the file \
                 may hold only callers and [redis]",
            ));
        }
        return Ok(FileConfig {
            apps: Vec::new(),
            callers,
            redis,
        });
    }
    let tables = match document.get("apps") {
        Some(Value::Array(tables)) if !tables.is_empty() => tables,
        Some(Value::Array(_)) | None => {
            return Err(reader.error("apps", "at least one [[apps]] table is required"));
        }
        Some(_) => {
            return Err(reader.error("apps", "must be an array of tables, written [[apps]]"));
        }
    };
    let mut apps = Vec::with_capacity(tables.len());
    for (index, value) in tables.iter().enumerate() {
        let Value::Table(table) = value else {
            return Err(reader.error(
                &format!("apps[{index}]"),
                format!("must be a table, got {}", value.type_str()),
            ));
        };
        apps.push(reader.app(index, table)?);
    }
    reader.check_unique(&apps)?;
    reader.check_caller_apps(&apps, &callers)?;
    Ok(FileConfig {
        apps,
        callers,
        redis,
    })
}

/// ` at line L, column C` (both from 1) for a byte offset into `text`.
fn line_and_column(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(" at line {line}, column {column}")
}

struct FileReader<'a> {
    path: &'a Path,
    directory: &'a Path,
    defaults: &'a AppDefaults,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl FileReader<'_> {
    fn error(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::FileKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }

    /// One `[[apps]]` table, the `index`th (from 0).
    fn app(&self, index: usize, table: &Table) -> Result<AppConfig, ConfigError> {
        let at = |key: &str| {
            let key = format!("apps[{index}].{key}");
            move |problem: String| self.error(&key, problem)
        };

        if let Some(key) = table.keys().find(|key| !APP_KEYS.contains(&key.as_str())) {
            return Err(at(key)(format!(
                "unknown key; expected one of {}",
                APP_KEYS.join(", ")
            )));
        }

        let appid = match table.get("appid") {
            Some(value) => string(value).map_err(at("appid"))?.to_owned(),
            None => return Err(at("appid")("required".to_owned())),
        };
        check_identifier(&appid).map_err(at("appid"))?;
        let name = match table.get("name") {
            Some(value) => string(value).map_err(at("name"))?.to_owned(),
            None => appid.clone(),
        };
        check_identifier(&name).map_err(at("name"))?;

        let secret = self.secret(index, table)?;
        let mut app = self.defaults.app(name, appid, secret);
        if let Some(value) = table.get("api_base") {
            app.api_bases = api_bases(value).map_err(at("api_base"))?;
        }
        if let Some(value) = table.get("token_mode") {
            app.token_mode = token_mode(value).map_err(at("token_mode"))?;
        }
        if let Some(value) = table.get("max_in_flight") {
            app.max_in_flight = integer(value, MAX_IN_FLIGHT_RANGE).map_err(at("max_in_flight"))?;
        }
        if let Some(value) = table.get("rate_per_sec") {
            app.rate_per_sec = integer(value, RATE_PER_SEC_RANGE).map_err(at("rate_per_sec"))?;
        }
        if let Some(value) = table.get("subscription_check") {
            app.subscription_check = subscription_check(value).map_err(at("subscription_check"))?;
        }
        app.push = self.push(index, table)?;
        Ok(app)
    }

    /// The `[redis]` table, as given (validated with the flags' settings).
    fn redis(&self, table: &Table) -> Result<RedisSettings, ConfigError> {
        let at = |key: &str| {
            let key = format!("redis.{key}");
            move |problem: String| self.error(&key, problem)
        };
        if let Some(key) = table.keys().find(|key| !REDIS_KEYS.contains(&key.as_str())) {
            return Err(at(key)(format!(
                "unknown key; expected one of {}",
                REDIS_KEYS.join(", ")
            )));
        }
        let mut settings = RedisSettings::default();
        if let Some(value) = table.get("url") {
            settings.url = Some(Secret::new(string(value).map_err(at("url"))?));
        }
        if let Some(value) = table.get("key_prefix") {
            settings.key_prefix = Some(string(value).map_err(at("key_prefix"))?.to_owned());
        }
        settings.cluster = match table.get("cluster") {
            Some(Value::Boolean(cluster)) => Some(*cluster),
            Some(other) => {
                return Err(at("cluster")(format!(
                    "must be true or false, got {}",
                    other.type_str()
                )));
            }
            None => None,
        };
        Ok(settings)
    }

    /// The push settings from `push_token`, `push_aes_key` and `push_mode` (see
    /// [`push_settings`]): none of them, or a token with what it needs.
    fn push(&self, index: usize, table: &Table) -> Result<Option<PushSettings>, ConfigError> {
        let at = |key: &str| {
            let key = format!("apps[{index}].{key}");
            move |problem: String| self.error(&key, problem)
        };
        let text = |key: &str| {
            table
                .get(key)
                .map(|value| string(value).map_err(at(key)))
                .transpose()
        };
        let Some(token) = text("push_token")? else {
            if let Some(key) = ["push_aes_key", "push_mode"]
                .into_iter()
                .find(|key| table.contains_key(*key))
            {
                return Err(at(key)("needs push_token".to_owned()));
            }
            return Ok(None);
        };
        let (aes_key, mode) = (text("push_aes_key")?, text("push_mode")?);
        push_settings(token, aes_key, mode)
            .map(Some)
            .map_err(|(key, problem)| at(key)(problem))
    }

    /// The secret from exactly one of `secret`, `secret_env` and `secret_file`.
    fn secret(&self, index: usize, table: &Table) -> Result<Secret, ConfigError> {
        let given: Vec<&str> = SECRET_KEYS
            .iter()
            .copied()
            .filter(|key| table.contains_key(*key))
            .collect();
        let (key, value) = match given.as_slice() {
            [key] => (*key, &table[*key]),
            [] => {
                return Err(self.error(
                    &format!("apps[{index}]"),
                    "needs one of secret, secret_env or secret_file",
                ));
            }
            _ => {
                return Err(self.error(
                    &format!("apps[{index}]"),
                    format!("{} exclude each other; set one", given.join(" and ")),
                ));
            }
        };
        let at = |problem: String| self.error(&format!("apps[{index}].{key}"), problem);
        let text = string(value).map_err(at)?;
        match key {
            "secret" => {
                check_secret(text).map_err(at)?;
                Ok(Secret::new(text))
            }
            "secret_env" => {
                check_env_name(text).map_err(at)?;
                let Some(secret) = (self.env)(text) else {
                    return Err(at(format!("environment variable {text} is not set")));
                };
                check_secret(&secret)
                    .map_err(|problem| at(format!("environment variable {text}: {problem}")))?;
                Ok(Secret::new(secret))
            }
            _ => read_secret_file(&self.directory.join(text)).map_err(at),
        }
    }

    /// Callers name an app by its name or its appid, so no name or appid may stand for two apps.
    fn check_unique(&self, apps: &[AppConfig]) -> Result<(), ConfigError> {
        let mut owners: HashMap<&str, usize> = HashMap::new();
        for (index, app) in apps.iter().enumerate() {
            for (key, identifier) in [("name", &app.name), ("appid", &app.appid)] {
                if let Some(&owner) = owners.get(identifier.as_str())
                    && owner != index
                {
                    return Err(self.error(
                        &format!("apps[{index}].{key}"),
                        format!(
                            "`{identifier}` is already the name or appid of apps[{owner}]; \
                             callers may use either, so each must be unique"
                        ),
                    ));
                }
                owners.insert(identifier, index);
            }
        }
        Ok(())
    }
}

impl FileReader<'_> {
    /// Every app a caller is allowed names a configured app (a typo would refuse every call).
    fn check_caller_apps(
        &self,
        apps: &[AppConfig],
        callers: &CallersConfig,
    ) -> Result<(), ConfigError> {
        for (index, caller) in callers.callers.iter().enumerate() {
            for allowed in &caller.apps {
                let known = apps
                    .iter()
                    .any(|app| app.name == *allowed || app.appid == *allowed);
                if !known {
                    return Err(self.error(
                        &format!("callers[{index}].apps"),
                        format!(
                            "`{}` is not the name or appid of an app in this file",
                            allowed.escape_debug()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn string(value: &Value) -> Result<&str, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("must be a string, got {}", other.type_str())),
    }
}

fn integer<T: TryFrom<u64>>(value: &Value, range: RangeInclusive<u64>) -> Result<T, String> {
    match value {
        Value::Integer(number) => match u64::try_from(*number) {
            Ok(number) => in_range(number, range),
            Err(_) => Err(format!(
                "must be from {} to {}, got {number}",
                range.start(),
                range.end()
            )),
        },
        other => Err(format!("must be an integer, got {}", other.type_str())),
    }
}

/// A comma-separated string, or an array of strings (one URL each).
fn api_bases(value: &Value) -> Result<Vec<Url>, String> {
    match value {
        Value::String(list) => parse_api_base_list(list),
        Value::Array(items) => {
            let entries = items
                .iter()
                .map(|item| match item {
                    Value::String(entry) => Ok(entry.as_str()),
                    other => Err(format!("must hold strings, got {}", other.type_str())),
                })
                .collect::<Result<Vec<&str>, String>>()?;
            parse_api_bases(entries)
        }
        other => Err(format!(
            "must be a string or an array of strings, got {}",
            other.type_str()
        )),
    }
}

fn token_mode(value: &Value) -> Result<TokenMode, String> {
    match string(value)? {
        "stable" => Ok(TokenMode::Stable),
        "classic" => Ok(TokenMode::Classic),
        other => Err(format!(
            "must be \"stable\" or \"classic\", got \"{}\"",
            other.escape_debug()
        )),
    }
}

fn subscription_check(value: &Value) -> Result<SubscriptionCheck, String> {
    let text = string(value)?;
    SubscriptionCheck::parse(text).ok_or_else(|| {
        format!(
            "must be \"off\", \"observe\" or \"enforce\", got \"{}\"",
            text.escape_debug()
        )
    })
}

/// An environment variable name: non-empty, no `=` or NUL (which no variable name can hold).
fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!(
            "\"{}\" is not an environment variable name",
            name.escape_debug()
        ));
    }
    Ok(())
}
