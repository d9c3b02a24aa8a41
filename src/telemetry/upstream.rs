//! Upstream metrics that wrap a piece rather than live inside it.

use std::sync::Arc;

use async_trait::async_trait;

use super::catalog::count_wechat_error;
use crate::{
    secret::Secret,
    templates::TemplateSource,
    token::TokenSource,
    wechat::{FetchedToken, TemplateInfo, TokenMode, WechatError},
};

/// A [`TokenSource`] that counts every errcode the token endpoint answers (each attempt, so
/// a retried `-1` counts each time) in `wechat_notify_wechat_errors_total{endpoint="token"}`.
pub struct CountTokenErrcodes {
    app: String,
    inner: Arc<dyn TokenSource>,
}

impl CountTokenErrcodes {
    /// Wraps `inner`, labelling its errcodes with `app`.
    pub fn new(app: &str, inner: Arc<dyn TokenSource>) -> Self {
        Self {
            app: app.to_owned(),
            inner,
        }
    }
}

#[async_trait]
impl TokenSource for CountTokenErrcodes {
    async fn fetch(&self, force_refresh: bool) -> Result<FetchedToken, WechatError> {
        let result = self.inner.fetch(force_refresh).await;
        if let Err(error) = &result {
            count_wechat_error(&self.app, error);
        }
        result
    }

    fn mode(&self) -> TokenMode {
        self.inner.mode()
    }
}

/// A [`TemplateSource`] that counts every errcode the template list answers in
/// `wechat_notify_wechat_errors_total{endpoint="templates"}`.
pub struct CountTemplateErrcodes {
    app: String,
    inner: Arc<dyn TemplateSource>,
}

impl CountTemplateErrcodes {
    /// Wraps `inner`, labelling its errcodes with `app`.
    pub fn new(app: &str, inner: Arc<dyn TemplateSource>) -> Self {
        Self {
            app: app.to_owned(),
            inner,
        }
    }
}

#[async_trait]
impl TemplateSource for CountTemplateErrcodes {
    async fn templates(&self, token: &Secret) -> Result<Vec<TemplateInfo>, WechatError> {
        let result = self.inner.templates(token).await;
        if let Err(error) = &result {
            count_wechat_error(&self.app, error);
        }
        result
    }
}
