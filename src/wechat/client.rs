//! The pooled HTTP client and the per-app API handle.
//!
//! CONTRACT STUB: signatures are fixed; bodies are being written.

use std::{sync::Arc, time::Duration};

use url::Url;

use super::{SubscribeMessage, WechatError};
use crate::secret::Secret;

/// Which token endpoint an app uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// `POST /cgi-bin/stable_token`: safe with several replicas.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: each fetch invalidates the previous token minutes later.
    Classic,
}

/// Timeouts and pool settings of the one shared HTTP client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Time allowed to establish a connection to one API base.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, once connected.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The one pooled HTTP client (rustls), shared by every app. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WechatClient {
    http: reqwest::Client,
}

impl WechatClient {
    /// Builds the shared client.
    pub fn new(options: &ClientOptions) -> Result<Self, WechatError> {
        let _ = options;
        unimplemented!()
    }

    /// A handle for one app: its credentials, token mode and API bases (tried in order).
    pub fn app(&self, appid: String, secret: Secret, mode: TokenMode, bases: Vec<Url>) -> AppApi {
        let _ = (&self.http, appid, secret, mode, bases);
        unimplemented!()
    }
}

/// A freshly fetched access token.
#[derive(Clone, Debug)]
pub struct FetchedToken {
    /// The token (redacted in Debug).
    pub token: Secret,
    /// WeChat's `expires_in`.
    pub expires_in: Duration,
}

/// A message WeChat accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// WeChat's `msgid`, when it sent one.
    pub msgid: Option<u64>,
}

/// The result of one `send`, with the number of HTTP requests it made (one per API base tried).
#[derive(Debug)]
pub struct SendAttempt {
    /// HTTP requests made (a failover to the next base counts).
    pub requests: u32,
    /// What WeChat said.
    pub result: Result<Delivered, WechatError>,
}

/// One app's view of the WeChat API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppApi {
    inner: Arc<()>,
}

impl AppApi {
    /// The app's appid.
    pub fn appid(&self) -> &str {
        unimplemented!()
    }

    /// The app's token mode.
    pub fn token_mode(&self) -> TokenMode {
        unimplemented!()
    }

    /// Fetches a token from the mode's endpoint (`force_refresh` only applies to stable mode).
    pub async fn fetch_token(&self, force_refresh: bool) -> Result<FetchedToken, WechatError> {
        let _ = (force_refresh, &self.inner);
        unimplemented!()
    }

    /// Sends one subscribe message with the given token.
    pub async fn send(&self, token: &Secret, message: &SubscribeMessage) -> SendAttempt {
        let _ = (token, message);
        unimplemented!()
    }
}
