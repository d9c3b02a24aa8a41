//! What a sandbox is configured with: apps, token timing, templates, pages, quotas.

use std::{fmt, time::Duration};

use crate::templates::{Template, default_templates};

/// AppID of the default sandbox app.
pub const DEFAULT_APPID: &str = "wxsandbox000000001";
/// AppSecret of the default sandbox app.
pub const DEFAULT_SECRET: &str = "sandbox-secret";
/// A well-formed openid for demos: 28 characters of `[A-Za-z0-9_-]`.
pub const DEMO_OPENID: &str = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M";
/// Delivered messages kept in the inbox; the oldest go first.
pub const INBOX_CAPACITY: usize = 10_000;
/// Refused sends kept by [`super::Sandbox::failed_sends`]; the oldest go first.
pub const FAILED_SENDS_CAPACITY: usize = 10_000;
/// Send requests kept by [`super::Sandbox::send_requests`]; the oldest go first.
pub const RECORDED_SENDS_CAPACITY: usize = 10_000;
/// Force refreshes of `stable_token` allowed per app and sandbox day.
pub const FORCE_REFRESH_DAILY_LIMIT: u32 = 20;
/// A force refresh within this long of the previous one refreshes nothing.
pub const FORCE_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// One mini program the sandbox knows.
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredentials {
    /// The AppID.
    pub appid: String,
    /// The AppSecret the token endpoints expect.
    pub secret: String,
}

impl AppCredentials {
    /// An app with these credentials.
    pub fn new(appid: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            appid: appid.into(),
            secret: secret.into(),
        }
    }
}

impl fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppCredentials")
            .field("appid", &self.appid)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Everything a [`super::Sandbox`] is built from.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Known apps; the token endpoints refuse any other appid (40013).
    pub apps: Vec<AppCredentials>,
    /// Lifetime of every issued token (`expires_in` of a fresh token).
    pub token_lifetime: Duration,
    /// How long a classic token stays valid after a newer classic fetch supersedes it.
    pub classic_overlap: Duration,
    /// A stable token this close to expiry is rolled over by the next normal-mode call.
    pub stable_rollover: Duration,
    /// The templates ("my templates" of each app).
    pub templates: Vec<Template>,
    /// The mini program's pages; `Some` makes a send with any other `page` fail with 41030.
    pub pages: Option<Vec<String>>,
    /// Deliver a send with no subscription as if the user had just accepted once.
    pub auto_accept: bool,
    /// Send calls allowed per app and sandbox day (45009 beyond).
    pub daily_quota: Option<u64>,
    /// Send calls allowed per app and sandbox minute (45011 beyond).
    pub minute_limit: Option<u64>,
    /// Answer `msgid` as a JSON string instead of a number.
    pub msgid_as_string: bool,
    /// Skip every check and answer ok with a msgid (benchmarks); faults still apply.
    pub fixed_answer: bool,
}

impl Default for SandboxConfig {
    /// One app ([`DEFAULT_APPID`], [`DEFAULT_SECRET`]), the default templates, 7200 s tokens,
    /// 5 min classic overlap and stable rollover, no page list, no quotas, and auto-accept on
    /// (what `serve --sandbox` and tests want; the standalone CLI turns it off).
    fn default() -> Self {
        Self {
            apps: vec![AppCredentials::new(DEFAULT_APPID, DEFAULT_SECRET)],
            token_lifetime: Duration::from_secs(7200),
            classic_overlap: Duration::from_secs(300),
            stable_rollover: Duration::from_secs(300),
            templates: default_templates(),
            pages: None,
            auto_accept: true,
            daily_quota: None,
            minute_limit: None,
            msgid_as_string: false,
            fixed_answer: false,
        }
    }
}

impl SandboxConfig {
    /// Checks the configuration is coherent (the sandbox itself trusts it).
    pub fn validate(&self) -> Result<(), String> {
        if self.apps.is_empty() {
            return Err("at least one app is required".to_string());
        }
        for (i, app) in self.apps.iter().enumerate() {
            if app.appid.trim().is_empty() || app.secret.is_empty() {
                return Err("an app needs a non-empty appid and secret".to_string());
            }
            if self.apps[..i].iter().any(|a| a.appid == app.appid) {
                return Err(format!("app {} is configured twice", app.appid));
            }
        }
        if self.token_lifetime < Duration::from_secs(1) {
            return Err("token lifetime must be at least 1 s".to_string());
        }
        if self.stable_rollover >= self.token_lifetime {
            return Err("stable rollover must be shorter than the token lifetime".to_string());
        }
        for (i, template) in self.templates.iter().enumerate() {
            template.validate()?;
            if let Some(unknown) = template
                .appids
                .iter()
                .find(|appid| !self.apps.iter().any(|a| &a.appid == *appid))
            {
                return Err(format!(
                    "template {} names unknown app {unknown}",
                    template.id
                ));
            }
            let clash = self.templates[..i].iter().any(|earlier| {
                earlier.id == template.id
                    && self
                        .apps
                        .iter()
                        .any(|a| earlier.belongs_to(&a.appid) && template.belongs_to(&a.appid))
            });
            if clash {
                return Err(format!("template {} is defined twice", template.id));
            }
        }
        if let Some(pages) = &self.pages
            && pages.iter().any(|p| p.trim().is_empty())
        {
            return Err("pages must not be empty".to_string());
        }
        if self.daily_quota == Some(0) || self.minute_limit == Some(0) {
            return Err("quotas must be at least 1".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::{Template, TemplateKind};

    #[test]
    fn default_is_valid_and_debug_hides_secrets() {
        let config = SandboxConfig::default();
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains(DEFAULT_SECRET));
    }

    #[test]
    fn incoherent_configs_are_refused() {
        let mut twice = SandboxConfig::default();
        twice.apps.push(AppCredentials::new(DEFAULT_APPID, "x"));
        assert!(twice.validate().is_err());

        let mut rollover = SandboxConfig::default();
        rollover.stable_rollover = rollover.token_lifetime;
        assert!(rollover.validate().is_err());

        let mut foreign = SandboxConfig::default();
        foreign.templates.push(
            Template::new("x", "x", "{{thing1.DATA}}", TemplateKind::OneTime)
                .for_apps(&["wxunknown"]),
        );
        assert!(foreign.validate().is_err());

        let mut duplicate = SandboxConfig::default();
        duplicate.templates.push(duplicate.templates[0].clone());
        assert!(duplicate.validate().is_err());
    }
}
