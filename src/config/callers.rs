//! The `[[callers]]` tables of the apps file and its global `trust_forwarded_client_cert`:
//! who may call the service, how each proves itself, and what each may do.
//!
//! Same habits as `file.rs`: every message names its key (`callers[1].token_env`), unknown keys
//! are refused by name, and no message quotes a token. A token is hashed as soon as it is read;
//! only its SHA-256 is kept.

use std::{collections::HashSet, path::Path};

use sha2::{Digest, Sha256};
use toml::{Table, Value};

use super::{ConfigError, RATE_PER_SEC_RANGE, check_identifier};

/// The keys of a `[[callers]]` table.
const CALLER_KEYS: &[&str] = &[
    "name",
    "token_sha256",
    "token_env",
    "token_file",
    "tls_subject",
    "tls_san",
    "apps",
    "templates",
    "rpcs",
    "rate_per_sec",
    "max_batch",
];

/// The keys that give a caller's bearer token; at most one.
const TOKEN_KEYS: &[&str] = &["token_sha256", "token_env", "token_file"];

/// The values of `rpcs`.
pub const RPC_NAMES: &[&str] = &["send", "batch", "subscriptions"];

/// The name metrics give a call that no configured caller made; no caller may take it.
pub const ANONYMOUS: &str = crate::telemetry::catalog::ANONYMOUS_CALLER;

/// Allowed `max_batch`.
pub const MAX_BATCH_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000;

/// A bearer token at least this long: anything shorter is guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The SHA-256 of a bearer token. `Debug` does not print it: a digest of a short token is as
/// good as the token to anyone who can guess.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest([redacted])")
    }
}

/// One RPC group a caller may be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `notify.v1.NotifyService/SendSubscribe`.
    Send,
    /// `notify.v1.NotifyService/BatchSend`.
    Batch,
    /// Everything under `notify.v1.SubscriptionService/`.
    Subscriptions,
}

impl Rpc {
    /// Its name in `rpcs` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Send => "send",
            Rpc::Batch => "batch",
            Rpc::Subscriptions => "subscriptions",
        }
    }
}

/// One `[[callers]]` table.
#[derive(Clone, Debug)]
pub struct CallerConfig {
    /// Its name in logs, metrics and refusals.
    pub name: String,
    /// The digest of its bearer token, if it uses one.
    pub token: Option<TokenDigest>,
    /// Client certificate subject common names that identify it.
    pub tls_subjects: Vec<String>,
    /// Client certificate SANs (DNS names or URIs, e.g. SPIFFE ids) that identify it.
    pub tls_sans: Vec<String>,
    /// The apps it may use, by name or appid.
    pub apps: Vec<String>,
    /// The templates it may send; `None` means any.
    pub templates: Option<Vec<String>>,
    /// The RPC groups it may call; every one when the key is left out.
    pub rpcs: Vec<Rpc>,
    /// Its own sustained messages per second, checked before the app's.
    pub rate_per_sec: Option<u32>,
    /// The most recipients one of its BatchSend calls may carry.
    pub max_batch: Option<usize>,
}

/// Every caller, and whether `x-forwarded-client-cert` is believed.
#[derive(Clone, Debug, Default)]
pub struct CallersConfig {
    /// The callers; empty means the service is open.
    pub callers: Vec<CallerConfig>,
    /// Believe a sidecar's `x-forwarded-client-cert` header as the client certificate.
    pub trust_forwarded_client_cert: bool,
    /// `NOTIFY_REQUIRE_CALLERS`: refuse to start with no caller configured.
    pub require_callers: bool,
}

/// Reads the callers of an apps file, `document` its parsed top level. `directory` is where
/// a relative `token_file` is looked for; `env` looks up `token_env`.
pub(super) fn load_callers(
    path: &Path,
    directory: &Path,
    document: &Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CallersConfig, ConfigError> {
    let error = |key: &str, problem: String| ConfigError::FileKey {
        path: path.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let trust_forwarded_client_cert = match document.get("trust_forwarded_client_cert") {
        None => false,
        Some(Value::Boolean(trust)) => *trust,
        Some(other) => {
            return Err(error(
                "trust_forwarded_client_cert",
                format!("must be true or false, got {}", other.type_str()),
            ));
        }
    };
    let tables = match document.get("callers") {
        None => &Vec::new(),
        Some(Value::Array(tables)) => tables,
        Some(_) => {
            return Err(error(
                "callers",
                "must be an array of tables, written [[callers]]".to_owned(),
            ));
        }
    };
    let mut callers = Vec::with_capacity(tables.len());
    let mut names = HashSet::new();
    for (index, value) in tables.iter().enumerate() {
        let Value::Table(table) = value else {
            return Err(error(
                &format!("callers[{index}]"),
                format!("must be a table, got {}", value.type_str()),
            ));
        };
        let at = |key: &str| {
            let key = format!("callers[{index}].{key}");
            move |problem: String| error(&key, problem)
        };
        let caller = caller(table, directory, env, &at)?;
        if !names.insert(caller.name.clone()) {
            return Err(at("name")(format!(
                "`{}` names another caller too; each caller needs its own name",
                caller.name
            )));
        }
        callers.push(caller);
    }
    check_identities_unique(&callers)
        .map_err(|(index, key, problem)| error(&format!("callers[{index}].{key}"), problem))?;
    Ok(CallersConfig {
        callers,
        trust_forwarded_client_cert,
        require_callers: false,
    })
}

fn caller<'a, F, E>(
    table: &Table,
    directory: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    at: &'a F,
) -> Result<CallerConfig, ConfigError>
where
    F: Fn(&str) -> E,
    E: FnOnce(String) -> ConfigError + 'a,
{
    if let Some(key) = table
        .keys()
        .find(|key| !CALLER_KEYS.contains(&key.as_str()))
    {
        return Err(at(key)(format!(
            "unknown key; expected one of {}",
            CALLER_KEYS.join(", ")
        )));
    }
    let name = match table.get("name") {
        Some(value) => string(value).map_err(at("name"))?.to_owned(),
        None => return Err(at("name")("required".to_owned())),
    };
    check_identifier(&name).map_err(at("name"))?;
    if name == ANONYMOUS {
        return Err(at("name")(format!(
            "`{ANONYMOUS}` is what metrics call unidentified calls; choose another name"
        )));
    }

    let given: Vec<&str> = TOKEN_KEYS
        .iter()
        .copied()
        .filter(|key| table.contains_key(*key))
        .collect();
    let token = match given.as_slice() {
        [] => None,
        [key] => Some(token(key, &table[*key], directory, env).map_err(at(key))?),
        _ => {
            return Err(at(given[1])(format!(
                "{} exclude each other; set one",
                given.join(" and ")
            )));
        }
    };
    let tls_subjects = optional_strings(table, "tls_subject")
        .map_err(at("tls_subject"))?
        .unwrap_or_default();
    let tls_sans = optional_strings(table, "tls_san")
        .map_err(at("tls_san"))?
        .unwrap_or_default();
    if token.is_none() && tls_subjects.is_empty() && tls_sans.is_empty() {
        return Err(at("name")(
            "this caller cannot identify itself: set one of token_sha256, token_env, token_file, \
             tls_subject or tls_san"
                .to_owned(),
        ));
    }
    let apps = match optional_strings(table, "apps").map_err(at("apps"))? {
        Some(apps) if !apps.is_empty() => apps,
        _ => {
            return Err(at("apps")(
                "required: the apps (names or appids) this caller may use".to_owned(),
            ));
        }
    };
    let templates = optional_strings(table, "templates").map_err(at("templates"))?;
    if templates.as_ref().is_some_and(Vec::is_empty) {
        return Err(at("templates")(
            "an empty list allows nothing; leave the key out to allow every template".to_owned(),
        ));
    }
    let rpcs = match optional_strings(table, "rpcs").map_err(at("rpcs"))? {
        None => vec![Rpc::Send, Rpc::Batch, Rpc::Subscriptions],
        Some(names) => names
            .iter()
            .map(|name| rpc(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at("rpcs"))?,
    };
    let rate_per_sec = table
        .get("rate_per_sec")
        .map(|value| integer(value, RATE_PER_SEC_RANGE))
        .transpose()
        .map_err(at("rate_per_sec"))?;
    let max_batch = table
        .get("max_batch")
        .map(|value| integer(value, MAX_BATCH_RANGE))
        .transpose()
        .map_err(at("max_batch"))?;
    Ok(CallerConfig {
        name,
        token,
        tls_subjects,
        tls_sans,
        apps,
        templates,
        rpcs,
        rate_per_sec,
        max_batch,
    })
}

/// The digest of the token that `key` gives. Never echoes the token.
fn token(
    key: &str,
    value: &Value,
    directory: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokenDigest, String> {
    let text = string(value)?;
    match key {
        "token_sha256" => parse_digest(text),
        "token_env" => {
            let Some(token) = env(text) else {
                return Err(format!("environment variable {text} is not set"));
            };
            check_token(&token).map_err(|problem| format!("environment variable {text}: {problem}"))
        }
        _ => {
            let path = directory.join(text);
            let contents = std::fs::read_to_string(&path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
            check_token(contents.trim_end_matches(['\n', '\r']))
                .map_err(|problem| format!("{problem} (in {})", path.display()))
        }
    }
}

/// A token read in full: long enough, and something that fits in an HTTP header as sent.
fn check_token(token: &str) -> Result<TokenDigest, String> {
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!("the token is shorter than {MIN_TOKEN_BYTES} bytes"));
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("the token holds whitespace, control or non-ASCII characters".to_owned());
    }
    Ok(TokenDigest::of(token.as_bytes()))
}

/// 64 hex digits, as `sha256sum` prints them.
fn parse_digest(text: &str) -> Result<TokenDigest, String> {
    let problem = || {
        "must be 64 hex digits, the SHA-256 of the token (printf %s \"$TOKEN\" | sha256sum)"
            .to_owned()
    };
    if text.len() != 64 {
        return Err(problem());
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).map_err(|_| problem())?;
    }
    Ok(TokenDigest(digest))
}

fn rpc(name: &str) -> Result<Rpc, String> {
    match name {
        "send" => Ok(Rpc::Send),
        "batch" => Ok(Rpc::Batch),
        "subscriptions" => Ok(Rpc::Subscriptions),
        other => Err(format!(
            "`{}` is not an RPC group; expected one of {}",
            other.escape_debug(),
            RPC_NAMES.join(", ")
        )),
    }
}

/// A string or an array of strings; `None` when the key is absent.
fn optional_strings(table: &Table, key: &str) -> Result<Option<Vec<String>>, String> {
    let Some(value) = table.get(key) else {
        return Ok(None);
    };
    let items = match value {
        Value::String(one) => vec![one.clone()],
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(format!("must hold strings, got {}", other.type_str())),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "must be a string or an array of strings, got {}",
                other.type_str()
            ));
        }
    };
    if let Some(empty) = items.iter().position(String::is_empty) {
        return Err(format!("entry {empty} is empty"));
    }
    Ok(Some(items))
}

fn string(value: &Value) -> Result<&str, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("must be a string, got {}", other.type_str())),
    }
}

fn integer<T: TryFrom<u64>>(
    value: &Value,
    range: std::ops::RangeInclusive<u64>,
) -> Result<T, String> {
    match value {
        Value::Integer(number) => match u64::try_from(*number) {
            Ok(number) => super::in_range(number, range),
            Err(_) => Err(format!(
                "must be from {} to {}, got {number}",
                range.start(),
                range.end()
            )),
        },
        other => Err(format!("must be an integer, got {}", other.type_str())),
    }
}

/// No token, subject or SAN may identify two callers: which one a call is would be a guess.
fn check_identities_unique(callers: &[CallerConfig]) -> Result<(), (usize, &'static str, String)> {
    let mut tokens: Vec<(TokenDigest, usize)> = Vec::new();
    let mut names: Vec<(&str, &str, usize)> = Vec::new();
    for (index, caller) in callers.iter().enumerate() {
        if let Some(token) = caller.token {
            if let Some((_, owner)) = tokens.iter().find(|(known, _)| *known == token) {
                return Err((
                    index,
                    "token",
                    format!("the same token identifies callers[{owner}]; give each its own"),
                ));
            }
            tokens.push((token, index));
        }
        for (key, values) in [
            ("tls_subject", &caller.tls_subjects),
            ("tls_san", &caller.tls_sans),
        ] {
            for value in values {
                if let Some((_, _, owner)) = names
                    .iter()
                    .find(|(kind, known, owner)| *kind == key && *known == value && *owner != index)
                {
                    return Err((
                        index,
                        if key == "tls_subject" {
                            "tls_subject"
                        } else {
                            "tls_san"
                        },
                        format!("`{value}` identifies callers[{owner}] too"),
                    ));
                }
                names.push((key, value, index));
            }
        }
    }
    Ok(())
}
