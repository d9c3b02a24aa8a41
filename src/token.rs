//! The shared per-app access-token cache.
//!
//! CONTRACT STUB: signatures are fixed; bodies are being written.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    secret::Secret,
    wechat::{AppApi, FetchedToken, TokenMode, WechatError},
};

/// Where tokens come from: WeChat (via [`AppApi`]) in production, a fake in unit tests.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a token; `force_refresh` asks stable mode to revoke the current one.
    async fn fetch(&self, force_refresh: bool) -> Result<FetchedToken, WechatError>;
    /// The endpoint family in use.
    fn mode(&self) -> TokenMode;
}

#[async_trait]
impl TokenSource for AppApi {
    async fn fetch(&self, force_refresh: bool) -> Result<FetchedToken, WechatError> {
        self.fetch_token(force_refresh).await
    }

    fn mode(&self) -> TokenMode {
        self.token_mode()
    }
}

/// Tuning of the cache.
#[derive(Clone, Debug, Default)]
pub struct TokenOptions {}

/// One app's token cache. Shared by every RPC for that app.
pub struct TokenCache {}

impl TokenCache {
    /// Builds the cache for `app` (its configured name, used in logs and metric labels).
    pub fn new(app: &str, source: Arc<dyn TokenSource>, options: TokenOptions) -> Arc<Self> {
        let _ = (app, source, options);
        unimplemented!()
    }

    /// A token valid for at least the safety margin.
    pub async fn get(&self) -> Result<Secret, WechatError> {
        unimplemented!()
    }

    /// Drops `rejected` if it is still the cached token (compare-and-invalidate).
    pub async fn invalidate(&self, rejected: &Secret) {
        let _ = rejected;
        unimplemented!()
    }

    /// Time left before the cached token expires, if one is cached.
    pub fn time_to_expiry(&self) -> Option<Duration> {
        unimplemented!()
    }

    /// Starts the background refresher (renews before expiry); it stops when the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        unimplemented!()
    }
}
