//! `serve --sandbox`: the embedded sandbox (the `wechat-notify-sandbox` crate) and the one app
//! the service sends to it with. The sandbox starts first, on its loopback address; its app is
//! then given to the configuration as the apps file would give it ([`AppSettings`]: a name, the
//! sandbox's appid, a fresh secret, the sandbox's address as API base, fresh push settings) and
//! checked like any other app.

use std::net::{Ipv4Addr, SocketAddr};

use base64::Engine;
use url::Url;
use wechat_notify_sandbox::{
    AppCredentials, PushFormat, PushMode, PushTarget, Sandbox, SandboxConfig, SandboxServer,
};

use crate::{
    config::{AppSettings, ConfigError, PushText, SandboxPlan, ServeConfig},
    secret::Secret,
};

/// Name of the app `serve --sandbox` configures.
pub const SANDBOX_APP_NAME: &str = "sandbox";

/// The running sandbox: the service sends to it for as long as it is kept.
pub struct EmbeddedSandbox {
    server: SandboxServer,
    appid: String,
    push: PushText,
}

impl EmbeddedSandbox {
    /// Where the sandbox listens (its port as bound).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Points the app's pushes at the service's push listener, bound at `push_addr`, so the
    /// whole loop (popup -> push -> ledger -> send) runs offline. Called before the service
    /// serves: a first popup must find its push URL.
    pub fn send_pushes_to(&self, push_addr: SocketAddr) {
        let url = push_url(push_addr);
        tracing::info!(%url, "embedded sandbox pushes subscription events to the service");
        self.server.sandbox().set_push_target(
            &self.appid,
            Some(PushTarget {
                url,
                token: self.push.token.clone(),
                encoding_aes_key: self.push.aes_key.clone(),
                mode: PushMode::Safe,
                format: PushFormat::Xml,
            }),
        );
    }
}

/// Why `serve --sandbox` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The sandbox could not listen.
    #[error("cannot start the embedded sandbox on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The sandbox's app was refused (a configuration error).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Starts the sandbox on the plan's address, auto-accepting subscriptions so a first send just
/// works, and returns the configuration with its app. Its pushes go nowhere until
/// [`EmbeddedSandbox::send_pushes_to`] is given the push listener as bound (port 0 resolved
/// then, by the one bind of the service's listeners).
pub async fn start(plan: SandboxPlan) -> Result<(ServeConfig, EmbeddedSandbox), StartError> {
    let appid = SandboxConfig::default().apps[0].appid.clone();
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let sandbox_config = SandboxConfig {
        auto_accept: true,
        apps: vec![AppCredentials::new(appid.clone(), secret.clone())],
        ..SandboxConfig::default()
    };
    let server = Sandbox::new(sandbox_config)
        .spawn(plan.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: plan.listen,
            source,
        })?;
    let push = PushText {
        token: uuid::Uuid::new_v4().simple().to_string(),
        aes_key: Some(encoding_aes_key()),
        mode: Some("safe".to_owned()),
    };
    let app = AppSettings {
        name: SANDBOX_APP_NAME.to_owned(),
        appid: appid.clone(),
        secret: Secret::new(secret),
        api_base: server.base_url().to_string(),
        push: Some(push.clone()),
    };
    let config = plan.into_config(app)?;
    tracing::info!(
        base_url = %server.base_url(),
        console = %server.base_url(),
        inbox = %format!("{}sandbox/inbox", server.base_url()),
        "embedded sandbox listening (a fake WeChat API for development)"
    );
    Ok((
        config,
        EmbeddedSandbox {
            server,
            appid,
            push,
        },
    ))
}

/// A fresh EncodingAESKey: 32 random bytes as 43 characters of base64, as the admin makes one.
fn encoding_aes_key() -> String {
    let key: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(key)
}

/// The service's push endpoint for the sandbox's app, on loopback when the listener is on every
/// address.
fn push_url(push_listen: SocketAddr) -> Url {
    let mut addr = push_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    Url::parse(&format!("http://{addr}/wechat/push/{SANDBOX_APP_NAME}"))
        .expect("a socket address makes a valid url")
}
