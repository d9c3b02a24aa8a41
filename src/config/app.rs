//! One app's settings: what an app is ([`AppConfig`]), the flags' per-app settings that apps
//! leave out ([`AppDefaults`]), and the checks every app passes, whether the apps file, the
//! one-app flags or the command line ([`AppSettings`]: the embedded sandbox's app) gives it.

use url::Url;

use super::ConfigError;
use crate::{
    push_crypto::{AesKey, PushMode},
    secret::Secret,
    subscriptions::SubscriptionCheck,
    validation::MAX_ID_BYTES,
    wechat::TokenMode,
};

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
    /// What sends do with the subscription ledger.
    pub subscription_check: SubscriptionCheck,
    /// WeChat's event pushes to `/wechat/push/{app}`; `None` refuses them.
    pub push: Option<PushSettings>,
}

/// An app's 消息推送 settings, as set in the mini program's admin.
#[derive(Clone, Debug)]
pub struct PushSettings {
    /// The Token (only used for signatures; redacted in Debug).
    pub token: Secret,
    /// The key of the EncodingAESKey; `None` in plaintext mode.
    pub aes_key: Option<AesKey>,
    /// The encryption mode.
    pub mode: PushMode,
}

/// The per-app settings given by flags (`WECHAT_API_BASE`, `WECHAT_TOKEN_MODE`,
/// `NOTIFY_MAX_IN_FLIGHT`, `NOTIFY_RATE_PER_SEC`, `NOTIFY_SUBSCRIPTION_CHECK`): the single
/// app's settings, and the defaults of TOML apps and of the sandbox's app for what they leave
/// out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppDefaults {
    /// API bases, tried in order.
    pub api_bases: Vec<Url>,
    /// Token endpoint family.
    pub token_mode: TokenMode,
    /// Concurrent upstream sends at most, per app.
    pub max_in_flight: usize,
    /// Sustained sends per second, per app.
    pub rate_per_sec: u32,
    /// What sends do with the subscription ledger (`NOTIFY_SUBSCRIPTION_CHECK`).
    pub subscription_check: SubscriptionCheck,
}

impl AppDefaults {
    /// An app with these settings.
    pub fn app(&self, name: String, appid: String, secret: Secret) -> AppConfig {
        AppConfig {
            name,
            appid,
            secret,
            api_bases: self.api_bases.clone(),
            token_mode: self.token_mode,
            max_in_flight: self.max_in_flight,
            rate_per_sec: self.rate_per_sec,
            subscription_check: self.subscription_check,
            push: None,
        }
    }
}

/// One app given by the command line rather than by the apps file: the embedded sandbox's,
/// whose API base is the sandbox's own address. Its values are text, as in an `[[apps]]`
/// table, and are checked by the same rules; what it leaves out comes from the flags'
/// per-app settings ([`AppDefaults`]), as for an app of the file.
#[derive(Clone, Debug)]
pub struct AppSettings {
    /// The name callers use (`name`).
    pub name: String,
    /// The AppID (`appid`).
    pub appid: String,
    /// The AppSecret (`secret`; redacted in Debug).
    pub secret: Secret,
    /// API base URLs, comma-separated (`api_base`).
    pub api_base: String,
    /// The 消息推送 settings, if the app receives pushes.
    pub push: Option<PushText>,
}

/// An app's 消息推送 settings as text (`push_token`, `push_aes_key`, `push_mode`).
#[derive(Clone)]
pub struct PushText {
    /// The Token.
    pub token: String,
    /// The EncodingAESKey (43 characters), for the encrypted modes.
    pub aes_key: Option<String>,
    /// `plaintext`, `compatible` or `safe`; unset: `safe` with a key, `plaintext` without.
    pub mode: Option<String>,
}

impl std::fmt::Debug for PushText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushText")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl AppSettings {
    /// The app, checked key by key as an `[[apps]]` table is; a refusal names the app and the
    /// key (never its value, which may be a secret).
    pub(super) fn check(self, defaults: &AppDefaults) -> Result<AppConfig, ConfigError> {
        let refused = |key: &'static str| {
            let app = self.name.clone();
            move |problem: String| ConfigError::App { app, key, problem }
        };
        check_identifier(&self.appid).map_err(refused("appid"))?;
        check_identifier(&self.name).map_err(refused("name"))?;
        check_secret(self.secret.expose()).map_err(refused("secret"))?;
        let api_bases = parse_api_base_list(&self.api_base).map_err(refused("api_base"))?;
        let push = match &self.push {
            Some(push) => Some(
                push_settings(&push.token, push.aes_key.as_deref(), push.mode.as_deref())
                    .map_err(|(key, problem)| refused(key)(problem))?,
            ),
            None => None,
        };
        let mut app = defaults.app(self.name.clone(), self.appid.clone(), self.secret.clone());
        app.api_bases = api_bases;
        app.push = push;
        Ok(app)
    }
}

/// The push settings from `push_token`, `push_aes_key` and `push_mode`: a token (3 to 32
/// letters and digits, as WeChat's admin allows) with, for the encrypted modes, the
/// 43-character EncodingAESKey. The mode defaults to `safe` with a key and `plaintext` without.
/// A refusal names the key at fault, and never quotes the token or the key.
pub(super) fn push_settings(
    token: &str,
    aes_key: Option<&str>,
    mode: Option<&str>,
) -> Result<PushSettings, (&'static str, String)> {
    if !(3..=32).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err((
            "push_token",
            "must be 3 to 32 letters and digits (as in WeChat's push settings)".to_owned(),
        ));
    }
    let aes_key = aes_key
        .map(|key| {
            AesKey::from_encoding_key(key)
                .map_err(|problem| ("push_aes_key", format!("the EncodingAESKey {problem}")))
        })
        .transpose()?;
    let mode = match mode {
        Some(text) => PushMode::parse(text).ok_or_else(|| {
            (
                "push_mode",
                format!(
                    "must be \"plaintext\", \"compatible\" or \"safe\", got \"{}\"",
                    text.escape_debug()
                ),
            )
        })?,
        None if aes_key.is_some() => PushMode::Safe,
        None => PushMode::Plaintext,
    };
    if mode != PushMode::Plaintext && aes_key.is_none() {
        return Err((
            "push_aes_key",
            "is required by the compatible and safe push modes".to_owned(),
        ));
    }
    Ok(PushSettings {
        token: Secret::new(token),
        aes_key,
        mode,
    })
}

/// An appid or app name: non-empty, at most [`MAX_ID_BYTES`] (what a request's `app` may hold),
/// no whitespace or control characters (most likely a copy-and-paste accident).
pub(super) fn check_identifier(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > MAX_ID_BYTES {
        return Err(format!(
            "must be at most {MAX_ID_BYTES} bytes, got {}",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` contains whitespace or control characters",
            value.escape_debug()
        ));
    }
    Ok(())
}

/// An AppSecret: non-empty, no whitespace or control characters. Never echoes the value.
pub(super) fn check_secret(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the secret is empty".to_owned());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the secret contains whitespace or control characters".to_owned());
    }
    Ok(())
}

/// Reads a secret file; trailing newlines (`\n`, `\r\n`) are not part of the secret.
pub(super) fn read_secret_file(path: &std::path::Path) -> Result<Secret, String> {
    let contents = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let secret = contents.trim_end_matches(['\n', '\r']);
    check_secret(secret).map_err(|problem| format!("{problem} (in {})", path.display()))?;
    Ok(Secret::new(secret))
}

/// A comma-separated list of API bases, in failover order.
pub(super) fn parse_api_base_list(value: &str) -> Result<Vec<Url>, String> {
    parse_api_bases(value.split(','))
}

/// API bases, in failover order: at least one, each an http(s) URL without credentials, query
/// or fragment, none twice. A path is kept as a prefix and given a trailing `/`, so that joining
/// `cgi-bin/token` onto `https://proxy.example/wechat` keeps the `wechat/`.
pub(super) fn parse_api_bases<'a>(
    entries: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Url>, String> {
    let mut bases: Vec<Url> = Vec::new();
    for entry in entries {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("empty entry in the list of URLs".to_owned());
        }
        let base = parse_api_base(entry)?;
        if bases.contains(&base) {
            return Err(format!("{base} is listed twice"));
        }
        bases.push(base);
    }
    if bases.is_empty() {
        return Err("at least one URL is required".to_owned());
    }
    Ok(bases)
}

fn parse_api_base(entry: &str) -> Result<Url, String> {
    let mut url = Url::parse(entry).map_err(|error| {
        format!("`{entry}` is not a URL ({error}); write it as https://host[:port][/path]")
    })?;
    // Checked first, so the error below never repeats a password.
    if !url.username().is_empty() || url.password().is_some() {
        return Err("an API base must not contain credentials".to_owned());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{entry}` is not an http or https URL"));
    }
    if url.host().is_none() {
        return Err(format!("`{entry}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{entry}` must not have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}
