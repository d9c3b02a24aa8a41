//! `wechat-sandbox` (and `wechat-notify sandbox`): the fake WeChat API on its own.

use std::{fmt, future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    Sandbox, SandboxServer,
    config::{AppCredentials, SandboxConfig},
    templates::load_templates,
};

/// Flags of `wechat-sandbox` (and `wechat-notify sandbox`).
#[derive(Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on. Keep it loopback: this is a fake WeChat API for development.
    #[arg(long, env = "SANDBOX_LISTEN", default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// An app the sandbox knows, as APPID:SECRET (repeatable; default: the sandbox app).
    #[arg(long = "app", value_name = "APPID:SECRET")]
    pub apps: Vec<String>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 7200)]
    pub token_lifetime: u64,
    /// TOML file of templates (`[[templates]]` tables); replaces the defaults unless it sets
    /// `include_defaults = true`.
    #[arg(long, value_name = "FILE")]
    pub templates: Option<PathBuf>,
    /// The mini program's pages (comma-separated); sends to other pages fail with 41030.
    #[arg(long, value_delimiter = ',', value_name = "PAGE,...")]
    pub pages: Option<Vec<String>>,
    /// Deliver sends to users who hold no subscription, as if they had just accepted once.
    #[arg(long)]
    pub auto_accept: bool,
    /// Send calls allowed per app and day (45009 beyond).
    #[arg(long, value_name = "N")]
    pub daily_quota: Option<u64>,
    /// Send calls allowed per app and minute (45011 beyond).
    #[arg(long, value_name = "N")]
    pub minute_limit: Option<u64>,
    /// Answer msgid as a JSON string instead of a number.
    #[arg(long)]
    pub msgid_as_string: bool,
    /// Skip every check and answer ok with a msgid (for benchmarks).
    #[arg(long)]
    pub fixed_answer: bool,
}

impl fmt::Debug for SandboxArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apps: Vec<&str> = self
            .apps
            .iter()
            .map(|app| app.split_once(':').map_or(app.as_str(), |(appid, _)| appid))
            .collect();
        f.debug_struct("SandboxArgs")
            .field("listen", &self.listen)
            .field("apps", &apps)
            .field("token_lifetime", &self.token_lifetime)
            .field("templates", &self.templates)
            .field("pages", &self.pages)
            .field("auto_accept", &self.auto_accept)
            .field("daily_quota", &self.daily_quota)
            .field("minute_limit", &self.minute_limit)
            .field("msgid_as_string", &self.msgid_as_string)
            .field("fixed_answer", &self.fixed_answer)
            .finish()
    }
}

impl SandboxArgs {
    /// The validated configuration (reads the templates file). Auto-accept is off unless
    /// `--auto-accept` is given.
    pub fn into_config(self) -> Result<SandboxConfig, String> {
        let mut config = SandboxConfig {
            auto_accept: self.auto_accept,
            daily_quota: self.daily_quota,
            minute_limit: self.minute_limit,
            msgid_as_string: self.msgid_as_string,
            fixed_answer: self.fixed_answer,
            token_lifetime: Duration::from_secs(self.token_lifetime),
            ..SandboxConfig::default()
        };
        if !self.apps.is_empty() {
            config.apps = self
                .apps
                .iter()
                .map(|app| parse_app(app))
                .collect::<Result<_, _>>()?;
        }
        // Keep the rollover window (and the classic overlap) inside short lifetimes.
        let lifetime = config.token_lifetime;
        config.stable_rollover = config.stable_rollover.min(lifetime / 2);
        config.classic_overlap = config.classic_overlap.min(lifetime);
        if let Some(path) = &self.templates {
            config.templates = load_templates(path)?;
        }
        if let Some(pages) = self.pages {
            config.pages = Some(pages.into_iter().map(|p| p.trim().to_string()).collect());
        }
        config.validate()?;
        Ok(config)
    }
}

fn parse_app(app: &str) -> Result<AppCredentials, String> {
    match app.split_once(':') {
        Some((appid, secret)) if !appid.is_empty() && !secret.is_empty() => {
            Ok(AppCredentials::new(appid, secret))
        }
        _ => {
            let appid = app.split(':').next().unwrap_or_default();
            Err(format!("--app {appid}:...: expected APPID:SECRET"))
        }
    }
}

/// Starts the sandbox: validates the flags, binds (port 0 picks a free port) and serves in the
/// background. The returned server holds the bound address, so whoever asked for port 0 learns
/// the real one without a second bind.
pub async fn start(
    args: SandboxArgs,
) -> Result<SandboxServer, Box<dyn std::error::Error + Send + Sync>> {
    let listen = args.listen;
    let config = args.into_config()?;
    let appids: Vec<&str> = config.apps.iter().map(|a| a.appid.as_str()).collect();
    tracing::info!(
        apps = ?appids,
        templates = config.templates.len(),
        auto_accept = config.auto_accept,
        fixed_answer = config.fixed_answer,
        "sandbox configured"
    );
    let server = Sandbox::new(config).spawn(listen).await?;
    tracing::info!(base_url = %server.base_url(), console = %server.base_url(), "sandbox listening");
    Ok(server)
}

/// Serves a started sandbox until `shutdown` resolves, then drains in-flight requests.
pub async fn serve_until(server: SandboxServer, shutdown: impl Future<Output = ()>) {
    shutdown.await;
    tracing::info!("sandbox shutting down");
    server.shutdown().await;
}

/// [`start`], then [`serve_until`] `shutdown` resolves: what `wechat-sandbox` runs.
pub async fn run(
    args: SandboxArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    serve_until(start(args).await?, shutdown).await;
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C): what stops `wechat-sandbox`.
pub async fn stop_signal() {
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received"),
        interrupted = tokio::signal::ctrl_c() => match interrupted {
            Ok(()) => tracing::info!("SIGINT received"),
            Err(error) => {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: SandboxArgs,
    }

    fn parse(args: &[&str]) -> Result<SandboxConfig, String> {
        let mut argv = vec!["sandbox"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .sandbox
            .into_config()
    }

    #[test]
    fn defaults_are_loopback_one_app_and_no_auto_accept() {
        let cli = Cli::try_parse_from(["sandbox"]).unwrap();
        assert!(cli.sandbox.listen.ip().is_loopback() || std::env::var("SANDBOX_LISTEN").is_ok());
        let config = cli.sandbox.into_config().unwrap();
        assert_eq!(config.apps.len(), 1);
        assert!(!config.auto_accept);
        assert_eq!(config.token_lifetime, Duration::from_secs(7200));
    }

    #[test]
    fn flags_become_config() {
        let config = parse(&[
            "--app",
            "wxa:sa",
            "--app",
            "wxb:s:b",
            "--token-lifetime",
            "60",
            "--pages",
            "pages/a, pages/b",
            "--auto-accept",
            "--daily-quota",
            "10",
            "--minute-limit",
            "2",
            "--fixed-answer",
        ])
        .unwrap();
        assert_eq!(config.apps[1], AppCredentials::new("wxb", "s:b"));
        assert_eq!(config.token_lifetime, Duration::from_secs(60));
        assert!(config.stable_rollover < config.token_lifetime);
        assert_eq!(
            config.pages,
            Some(vec!["pages/a".to_string(), "pages/b".to_string()])
        );
        assert!(config.auto_accept && config.fixed_answer);
        assert_eq!(
            (config.daily_quota, config.minute_limit),
            (Some(10), Some(2))
        );
    }

    #[test]
    fn bad_flags_are_refused_without_echoing_secrets() {
        let error = parse(&["--app", "wxa"]).unwrap_err();
        assert!(error.contains("APPID:SECRET"));
        assert!(parse(&["--app", "wxa:s", "--app", "wxa:t"]).is_err());
        assert!(parse(&["--daily-quota", "0"]).is_err());
        assert!(parse(&["--templates", "/nonexistent/templates.toml"]).is_err());
        let args = Cli::try_parse_from(["sandbox", "--app", "wxa:topsecret"]).unwrap();
        assert!(!format!("{:?}", args.sandbox).contains("topsecret"));
    }

    #[test]
    fn templates_file_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("templates.toml");
        std::fs::write(
            &path,
            "[[templates]]\nid = \"mine\"\ntitle = \"t\"\ncontent = \"a:{{thing1.DATA}}\"\nkind = 2\n",
        )
        .unwrap();
        let config = parse(&["--templates", path.to_str().unwrap()]).unwrap();
        assert_eq!(config.templates.len(), 1);
        assert_eq!(config.templates[0].id, "mine");
    }
}
