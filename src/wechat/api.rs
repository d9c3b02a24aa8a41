//! One app's view of the WeChat API: its credentials, token mode and API bases, and the three
//! calls the service makes (fetch a token, send a message, list the templates). Each call is
//! one logical request ([`super::http::exchange`]); none is retried here.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use arc_swap::ArcSwapOption;
use tracing::debug;
use url::Url;

use super::{
    Endpoint, SubscribeMessage, WechatClient, WechatError,
    http::{Caller, endpoint_url, exchange},
    wire::{
        Delivered, FetchedToken, TemplateInfo, parse_send_response, parse_templates,
        parse_token_response,
    },
};
use crate::{secret::Secret, telemetry::catalog};

/// Which token endpoint an app uses (the configuration maps its setting to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenMode {
    /// `POST /cgi-bin/stable_token`: safe with several replicas.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: each fetch invalidates the previous token minutes later.
    Classic,
}

/// The result of one `send`, with the number of HTTP requests it made (one per API base tried).
#[derive(Debug)]
pub struct SendAttempt {
    /// HTTP requests made (a failover to the next base counts).
    pub requests: u32,
    /// What WeChat said.
    pub result: Result<Delivered, WechatError>,
}

impl WechatClient {
    /// A handle for one app: its credentials, token mode and API bases (tried in order).
    pub fn app(
        &self,
        appid: String,
        secret: Secret,
        mode: TokenMode,
        bases: Vec<Url>,
    ) -> WechatApi {
        WechatApi {
            inner: Arc::new(ApiShared {
                http: self.http.clone(),
                metrics_app: appid.clone(),
                appid,
                secret,
                mode,
                bases,
                send_urls: ArcSwapOption::empty(),
                durations: Default::default(),
            }),
        }
    }
}

/// One app's view of the WeChat API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WechatApi {
    inner: Arc<ApiShared>,
}

/// `Debug` is safe: [`Secret`] prints `[redacted]`.
#[derive(Debug)]
struct ApiShared {
    http: reqwest::Client,
    appid: String,
    /// The `app` label on upstream metrics (the appid unless renamed).
    metrics_app: String,
    secret: Secret,
    mode: TokenMode,
    bases: Vec<Url>,
    /// The send URLs for the current token (see [`SendUrls`]).
    send_urls: ArcSwapOption<SendUrls>,
    /// The upstream latency histogram of each endpoint (token, send, templates), made on first
    /// use: a request then costs no registry lookup or `app` label allocation.
    durations: [OnceLock<metrics::Histogram>; 3],
}

impl ApiShared {
    /// Who is calling `endpoint`, for the exchange's logs and latency histogram.
    fn caller(&self, endpoint: Endpoint) -> Caller<'_> {
        let index = match endpoint {
            Endpoint::Token => 0,
            Endpoint::Send => 1,
            Endpoint::Templates => 2,
        };
        let duration = self.durations[index]
            .get_or_init(|| catalog::upstream_request_duration(&self.metrics_app, endpoint.into()));
        Caller {
            app: &self.metrics_app,
            endpoint,
            duration,
        }
    }
}

/// The send endpoint's URL on each API base (same order) with one token in the query. Built once
/// per token instead of once per message: building and percent-encoding it per message costs
/// more than the cache.
struct SendUrls {
    token: Secret,
    urls: Vec<Url>,
}

/// Redacted: the URLs carry the access token.
impl fmt::Debug for SendUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendUrls([redacted])")
    }
}

impl WechatApi {
    /// The app's appid.
    pub fn appid(&self) -> &str {
        &self.inner.appid
    }

    /// The app's token mode.
    pub fn token_mode(&self) -> TokenMode {
        self.inner.mode
    }

    /// The API bases, in the order they are tried.
    pub fn bases(&self) -> &[Url] {
        &self.inner.bases
    }

    /// The same app with `name` as the `app` label of its upstream metrics (default: the appid),
    /// so they line up with the token cache's metrics.
    pub fn with_metrics_label(self, name: &str) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(ApiShared {
                http: inner.http.clone(),
                appid: inner.appid.clone(),
                metrics_app: name.to_string(),
                secret: inner.secret.clone(),
                mode: inner.mode,
                bases: inner.bases.clone(),
                send_urls: ArcSwapOption::empty(),
                durations: Default::default(),
            }),
        }
    }

    /// Fetches a token from the mode's endpoint (`force_refresh` only applies to stable mode).
    pub async fn fetch_token(&self, force_refresh: bool) -> Result<FetchedToken, WechatError> {
        let inner = &*self.inner;
        let secrets = [&inner.secret];
        let caller = inner.caller(Endpoint::Token);
        let answered = match inner.mode {
            TokenMode::Stable => {
                let body = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": inner.appid,
                    "secret": inner.secret.expose(),
                    "force_refresh": force_refresh,
                });
                exchange(caller, &inner.bases, |_, base| {
                    let url = endpoint_url(base, &["cgi-bin", "stable_token"]);
                    let request = inner.http.post(url.clone()).json(&body);
                    (url, request)
                })
                .await
            }
            TokenMode::Classic => {
                exchange(caller, &inner.bases, |_, base| {
                    let mut url = endpoint_url(base, &["cgi-bin", "token"]);
                    url.query_pairs_mut()
                        .append_pair("grant_type", "client_credential")
                        .append_pair("appid", &inner.appid)
                        .append_pair("secret", inner.secret.expose());
                    let request = inner.http.get(url.clone());
                    (url, request)
                })
                .await
            }
        };
        let fetched = answered
            .result
            .and_then(|body| parse_token_response(&body, &secrets));
        if let Err(error) = &fetched {
            debug!(app = %inner.metrics_app, %error, "wechat token fetch failed");
        }
        fetched
    }

    /// Sends one subscribe message with the given token.
    pub async fn send(&self, token: &Secret, message: &SubscribeMessage) -> SendAttempt {
        let inner = &*self.inner;
        let secrets = [token, &inner.secret];
        let send_urls = self.send_urls(token);
        let answered = exchange(inner.caller(Endpoint::Send), &inner.bases, |index, _| {
            let url = send_urls.urls[index].clone();
            let request = inner.http.post(url.clone()).json(message);
            (url, request)
        })
        .await;
        let result = answered
            .result
            .and_then(|body| parse_send_response(&body, &secrets));
        if let Err(WechatError::Api {
            errcode, ref rid, ..
        }) = result
        {
            debug!(app = %inner.metrics_app, errcode, rid = rid.as_deref().unwrap_or(""), "wechat send answered an errcode");
        }
        SendAttempt {
            requests: answered.requests,
            result,
        }
    }

    /// The send URLs for `token`, from the cache unless the token changed.
    fn send_urls(&self, token: &Secret) -> Arc<SendUrls> {
        let inner = &*self.inner;
        if let Some(cached) = inner.send_urls.load_full()
            && cached.token == *token
        {
            return cached;
        }
        let urls = inner
            .bases
            .iter()
            .map(|base| {
                let mut url = endpoint_url(base, &["cgi-bin", "message", "subscribe", "send"]);
                url.query_pairs_mut()
                    .append_pair("access_token", token.expose());
                url
            })
            .collect();
        let built = Arc::new(SendUrls {
            token: token.clone(),
            urls,
        });
        inner.send_urls.store(Some(built.clone()));
        built
    }

    /// Lists the app's templates ("my templates", `GET /wxaapi/newtmpl/gettemplate`) with the
    /// given token. Reading is safe to repeat, but the client still fails over only when no
    /// connection could be made, like every call.
    pub async fn templates(&self, token: &Secret) -> Result<Vec<TemplateInfo>, WechatError> {
        let inner = &*self.inner;
        let secrets = [token, &inner.secret];
        let caller = inner.caller(Endpoint::Templates);
        let answered = exchange(caller, &inner.bases, |_, base| {
            let mut url = endpoint_url(base, &["wxaapi", "newtmpl", "gettemplate"]);
            url.query_pairs_mut()
                .append_pair("access_token", token.expose());
            let request = inner.http.get(url.clone());
            (url, request)
        })
        .await;
        let result = answered
            .result
            .and_then(|body| parse_templates(&body, &secrets));
        if let Err(error) = &result {
            debug!(app = %inner.metrics_app, %error, "wechat template list failed");
        }
        result
    }
}
