//! The pooled HTTP client and the per-app API handle.
//!
//! One `reqwest::Client` (rustls, no proxies from the environment, no redirects) is shared by
//! every app. Each call walks the app's API bases in order and moves to the next base **only**
//! when no connection could be made (the request was provably not sent). Any other transport
//! failure is [`WechatError::OutcomeUnknown`] and stops there: trying another base could deliver a
//! message twice.

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwapOption;

use serde::Deserialize;
use serde::de::IgnoredAny;
use tracing::{debug, warn};
use url::Url;

use super::{
    Endpoint, SubscribeMessage, WechatError,
    redact::{describe_reqwest_error, redact_url, scrub},
    templates::{TemplateInfo, parse_templates},
};
use crate::{secret::Secret, telemetry::catalog};

/// The longest `expires_in` accepted from a token endpoint. WeChat documents "within 7200
/// seconds"; anything beyond a day is a broken answer, not a long-lived token.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 60 * 60);

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
///
/// Keep `connect_timeout` below `request_timeout`: the request timeout runs from the start of
/// the request (connecting included), and a request timeout is reported as an unknown outcome
/// (never failed over), while a connect timeout moves on to the next API base.
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
    ///
    /// Proxies from the environment are ignored and redirects are not followed (a redirect would
    /// carry the access token to another host; WeChat never redirects). Never enable reqwest's
    /// `connection_verbose`: it traces raw request bytes, token and AppSecret included (hyper and
    /// h2 leave paths, headers and bodies out of their own logs).
    pub fn new(options: &ClientOptions) -> Result<Self, WechatError> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wechat-notify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| WechatError::Unreachable {
                endpoint: Endpoint::Send,
                detail: format!(
                    "http client could not be built: {}",
                    describe_reqwest_error(error, &[])
                ),
            })?;
        Ok(Self { http })
    }

    /// A handle for one app: its credentials, token mode and API bases (tried in order).
    pub fn app(&self, appid: String, secret: Secret, mode: TokenMode, bases: Vec<Url>) -> AppApi {
        AppApi {
            inner: Arc::new(AppInner {
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
    inner: Arc<AppInner>,
}

/// `Debug` is safe: [`Secret`] prints `[redacted]`.
#[derive(Debug)]
struct AppInner {
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

impl AppInner {
    fn duration_histogram(&self, endpoint: Endpoint) -> &metrics::Histogram {
        let index = match endpoint {
            Endpoint::Token => 0,
            Endpoint::Send => 1,
            Endpoint::Templates => 2,
        };
        self.durations[index]
            .get_or_init(|| catalog::upstream_request_duration(&self.metrics_app, endpoint.into()))
    }
}

/// The send endpoint's URL on each API base (same order) with one token in the query. Built once
/// per token instead of once per message: building and percent-encoding it showed in the
/// service's profile.
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

impl AppApi {
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
            inner: Arc::new(AppInner {
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
        let exchange = match inner.mode {
            TokenMode::Stable => {
                let body = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": inner.appid,
                    "secret": inner.secret.expose(),
                    "force_refresh": force_refresh,
                });
                self.exchange(Endpoint::Token, &secrets, |_, base| {
                    let url = endpoint_url(base, &["cgi-bin", "stable_token"]);
                    let request = inner.http.post(url.clone()).json(&body);
                    (url, request)
                })
                .await
            }
            TokenMode::Classic => {
                self.exchange(Endpoint::Token, &secrets, |_, base| {
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
        let fetched = parse_token_response(&exchange.result?, &secrets);
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
        let exchange = self
            .exchange(Endpoint::Send, &secrets, |index, _| {
                let url = send_urls.urls[index].clone();
                let request = inner.http.post(url.clone()).json(message);
                (url, request)
            })
            .await;
        let result = exchange
            .result
            .and_then(|body| parse_send_response(&body, &secrets));
        if let Err(WechatError::Api {
            errcode, ref rid, ..
        }) = result
        {
            debug!(app = %inner.metrics_app, errcode, rid = rid.as_deref().unwrap_or(""), "wechat send answered an errcode");
        }
        SendAttempt {
            requests: exchange.requests,
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
        let exchange = self
            .exchange(Endpoint::Templates, &secrets, |_, base| {
                let mut url = endpoint_url(base, &["wxaapi", "newtmpl", "gettemplate"]);
                url.query_pairs_mut()
                    .append_pair("access_token", token.expose());
                let request = inner.http.get(url.clone());
                (url, request)
            })
            .await;
        let result = exchange.result.and_then(|body| {
            parse_templates(&body, |value| {
                api_error(Endpoint::Templates, value, &secrets)
            })
        });
        if let Err(error) = &result {
            debug!(app = %inner.metrics_app, %error, "wechat template list failed");
        }
        result
    }

    /// Makes one logical request: tries each API base in order, moving on only when no
    /// connection could be made. Returns the body of a 2xx answer.
    async fn exchange(
        &self,
        endpoint: Endpoint,
        secrets: &[&Secret],
        build: impl Fn(usize, &Url) -> (Url, reqwest::RequestBuilder),
    ) -> Exchange {
        let inner = &*self.inner;
        let histogram = inner.duration_histogram(endpoint);
        let mut requests = 0;
        let mut last_connect_error = None;
        for (index, base) in inner.bases.iter().enumerate() {
            let (url, request) = build(index, base);
            requests += 1;
            let started = tokio::time::Instant::now();
            let response = request.send().await;
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    histogram.record(started.elapsed().as_secs_f64());
                    let connect_failed = error.is_connect();
                    let detail = describe_reqwest_error(error, secrets);
                    if connect_failed {
                        debug!(app = %inner.metrics_app, %endpoint, url = %redact_url(&url), %detail, "no connection to wechat api base, trying the next");
                        last_connect_error = Some(detail);
                        continue;
                    }
                    warn!(app = %inner.metrics_app, %endpoint, url = %redact_url(&url), %detail, "wechat request failed after connecting; outcome unknown");
                    return Exchange {
                        requests,
                        result: Err(WechatError::OutcomeUnknown { endpoint, detail }),
                    };
                }
            };
            let status = response.status();
            if !status.is_success() {
                histogram.record(started.elapsed().as_secs_f64());
                debug!(app = %inner.metrics_app, %endpoint, url = %redact_url(&url), status = status.as_u16(), "wechat answered an http error status");
                return Exchange {
                    requests,
                    result: Err(WechatError::HttpStatus {
                        endpoint,
                        status: status.as_u16(),
                    }),
                };
            }
            let body = response.bytes().await;
            histogram.record(started.elapsed().as_secs_f64());
            let result = body.map(|body| body.to_vec()).map_err(|error| {
                let detail = describe_reqwest_error(error, secrets);
                warn!(app = %inner.metrics_app, %endpoint, url = %redact_url(&url), %detail, "reading the wechat answer failed; outcome unknown");
                WechatError::OutcomeUnknown {
                    endpoint,
                    detail: format!("reading the answer failed: {detail}"),
                }
            });
            return Exchange { requests, result };
        }
        let detail = match last_connect_error {
            Some(detail) => {
                format!("no api base accepted a connection ({requests} tried), last: {detail}")
            }
            None => "no api base configured".to_string(),
        };
        Exchange {
            requests,
            result: Err(WechatError::Unreachable { endpoint, detail }),
        }
    }
}

/// What one logical request produced.
struct Exchange {
    requests: u32,
    result: Result<Vec<u8>, WechatError>,
}

/// `base` with `segments` appended to its path (a base may carry a path prefix, with or without a
/// trailing slash).
fn endpoint_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Parses a token endpoint answer. Works on a `serde_json::Value` and builds its own error
/// messages, so no part of a body holding a token is ever echoed into an error.
fn parse_token_response(body: &[u8], secrets: &[&Secret]) -> Result<FetchedToken, WechatError> {
    let invalid = |detail: String| WechatError::InvalidResponse {
        endpoint: Endpoint::Token,
        detail,
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| invalid(format!("body is not json ({} bytes)", body.len())))?;
    if !value.is_object() {
        return Err(invalid("body is not a json object".into()));
    }
    if let Some(error) = api_error(Endpoint::Token, &value, secrets)? {
        return Err(error);
    }
    let token = match value.get("access_token") {
        Some(serde_json::Value::String(token)) if !token.is_empty() => Secret::new(token.as_str()),
        Some(_) => return Err(invalid("access_token is not a non-empty string".into())),
        None => return Err(invalid("no access_token".into())),
    };
    let expires_in = match value.get("expires_in") {
        Some(serde_json::Value::Number(number)) => number.as_u64(),
        Some(serde_json::Value::String(text)) => text.trim().parse::<u64>().ok(),
        _ => None,
    }
    .map(Duration::from_secs)
    .ok_or_else(|| invalid("expires_in missing or not a whole number of seconds".into()))?;
    if expires_in.is_zero() || expires_in > MAX_EXPIRES_IN {
        return Err(invalid(format!(
            "expires_in {}s is outside 1..={}s",
            expires_in.as_secs(),
            MAX_EXPIRES_IN.as_secs()
        )));
    }
    Ok(FetchedToken { token, expires_in })
}

/// `Some(error)` when the answer carries a non-zero errcode.
fn api_error(
    endpoint: Endpoint,
    value: &serde_json::Value,
    secrets: &[&Secret],
) -> Result<Option<WechatError>, WechatError> {
    let Some(errcode) = value.get("errcode") else {
        return Ok(None);
    };
    let errcode = errcode
        .as_i64()
        .and_then(|code| i32::try_from(code).ok())
        .ok_or_else(|| WechatError::InvalidResponse {
            endpoint,
            detail: "errcode is not a 32-bit integer".into(),
        })?;
    if errcode == 0 {
        return Ok(None);
    }
    let errmsg = value.get("errmsg").and_then(|v| v.as_str()).unwrap_or("");
    Ok(Some(api_error_from(endpoint, errcode, errmsg, secrets)))
}

fn api_error_from(
    endpoint: Endpoint,
    errcode: i32,
    errmsg: &str,
    secrets: &[&Secret],
) -> WechatError {
    let errmsg = scrub(errmsg, secrets);
    WechatError::Api {
        endpoint,
        errcode,
        rid: parse_rid(&errmsg),
        errmsg,
    }
}

/// The send endpoint's answer. `msgid` may be a JSON number (u64, never read through f64) or a
/// string; anything else is ignored rather than failing a delivered message.
#[derive(Deserialize)]
struct SendResponse {
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
    #[serde(default)]
    msgid: Option<MsgId>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MsgId {
    Number(u64),
    Text(String),
    Other(IgnoredAny),
}

fn parse_send_response(body: &[u8], secrets: &[&Secret]) -> Result<Delivered, WechatError> {
    let invalid = |detail: String| WechatError::InvalidResponse {
        endpoint: Endpoint::Send,
        detail: scrub(detail, secrets),
    };
    let response: SendResponse = serde_json::from_slice(body)
        .map_err(|error| invalid(format!("{error} ({} bytes)", body.len())))?;
    let errcode = response
        .errcode
        .ok_or_else(|| invalid("no errcode".into()))?;
    if errcode != 0 {
        let errcode = i32::try_from(errcode)
            .map_err(|_| invalid(format!("errcode {errcode} is not a 32-bit integer")))?;
        let errmsg = response.errmsg.as_deref().unwrap_or("");
        return Err(api_error_from(Endpoint::Send, errcode, errmsg, secrets));
    }
    // WeChat took the message: from here on nothing may turn this into an error.
    let msgid = match response.msgid {
        None | Some(MsgId::Number(0)) => None,
        Some(MsgId::Number(msgid)) => Some(msgid),
        Some(MsgId::Text(text)) => match text.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(msgid) => Some(msgid),
            Err(_) if text.trim().is_empty() => None,
            Err(_) => {
                warn!("wechat answered a msgid that is not a u64; ignoring it");
                None
            }
        },
        Some(MsgId::Other(_)) => {
            warn!("wechat answered a msgid that is neither an integer nor a string; ignoring it");
            None
        }
    };
    Ok(Delivered { msgid })
}

/// The request id at the end of an errmsg: `"... rid: 6405a1b2-0b8f1a2c-3d4e5f60"`.
pub(crate) fn parse_rid(errmsg: &str) -> Option<String> {
    let mut search_end = errmsg.len();
    while let Some(index) = errmsg[..search_end].rfind("rid:") {
        let at_word_start = errmsg[..index]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == ',' || c == ';');
        if at_word_start {
            let rid = errmsg[index + 4..]
                .split_whitespace()
                .next()?
                .trim_end_matches([',', ';', '.', ')', ']']);
            return (!rid.is_empty()).then(|| rid.to_string());
        }
        search_end = index;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use axum::{
        Router,
        body::Bytes,
        extract::State,
        http::{Method, StatusCode, Uri},
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::wechat::{ErrorClass, MiniprogramState};

    const TOKEN: &str = "ACCESS-TOKEN-abc123";
    const APP_SECRET: &str = "APP-SECRET-xyz789";

    /// One request the responder saw.
    #[derive(Clone, Debug)]
    struct Seen {
        method: Method,
        path: String,
        query: Option<String>,
        body: Vec<u8>,
    }

    impl Seen {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
        fn query_pairs(&self) -> BTreeMap<String, String> {
            url::form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
                .into_owned()
                .collect()
        }
    }

    type Reply = Arc<dyn Fn(&Seen) -> (StatusCode, String) + Send + Sync>;

    #[derive(Clone)]
    struct Responder {
        seen: Arc<Mutex<Vec<Seen>>>,
        reply: Reply,
        delay: Duration,
    }

    /// A local HTTP server answering every request with `reply` after `delay`.
    struct Fake {
        base: Url,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Fake {
        async fn start(
            delay: Duration,
            reply: impl Fn(&Seen) -> (StatusCode, String) + Send + Sync + 'static,
        ) -> Fake {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let state = Responder {
                seen: seen.clone(),
                reply: Arc::new(reply),
                delay,
            };
            let router = Router::new().fallback(handle).with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
            tokio::spawn(async move { axum::serve(listener, router).await });
            Fake { base, seen }
        }

        async fn json(body: Value) -> Fake {
            let body = body.to_string();
            Fake::start(Duration::ZERO, move |_| (StatusCode::OK, body.clone())).await
        }

        fn requests(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn handle(
        State(state): State<Responder>,
        method: Method,
        uri: Uri,
        body: Bytes,
    ) -> (StatusCode, String) {
        let seen = Seen {
            method,
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            body: body.to_vec(),
        };
        state.seen.lock().unwrap().push(seen.clone());
        tokio::time::sleep(state.delay).await;
        (state.reply)(&seen)
    }

    /// A base URL on which nothing listens: bind a port, then drop the listener.
    async fn closed_base() -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        Url::parse(&format!("http://{addr}")).unwrap()
    }

    fn client() -> WechatClient {
        WechatClient::new(&ClientOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(200),
        })
        .unwrap()
    }

    fn app(mode: TokenMode, bases: Vec<Url>) -> AppApi {
        client().app("wxAPPID".into(), Secret::new(APP_SECRET), mode, bases)
    }

    fn message() -> SubscribeMessage {
        SubscribeMessage {
            touser: "oUSER".into(),
            template_id: "TMPL".into(),
            page: Some("pages/index?id=1".into()),
            data: BTreeMap::from([("thing1".to_string(), "hello".to_string())]),
            miniprogram_state: MiniprogramState::Developer,
            lang: None,
        }
    }

    /// Neither the access token nor the AppSecret may appear in an error's Display or Debug.
    fn assert_no_secrets(error: &WechatError) {
        for text in [format!("{error}"), format!("{error:?}")] {
            assert!(!text.contains(TOKEN), "token leaked: {text}");
            assert!(!text.contains(APP_SECRET), "secret leaked: {text}");
        }
    }

    #[tokio::test]
    async fn send_posts_the_exact_body_and_token_query() {
        let fake = Fake::json(json!({"errcode": 0, "errmsg": "ok", "msgid": 12345})).await;
        let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await;
        assert_eq!(attempt.requests, 1);
        assert_eq!(attempt.result.unwrap(), Delivered { msgid: Some(12345) });
        let seen = fake.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, Method::POST);
        assert_eq!(seen[0].path, "/cgi-bin/message/subscribe/send");
        assert_eq!(
            seen[0].query_pairs(),
            BTreeMap::from([("access_token".to_string(), TOKEN.to_string())])
        );
        assert_eq!(
            seen[0].json(),
            json!({
                "touser": "oUSER",
                "template_id": "TMPL",
                "page": "pages/index?id=1",
                "data": {"thing1": {"value": "hello"}},
                "miniprogram_state": "developer",
            })
        );
    }

    #[tokio::test]
    async fn base_with_a_path_prefix_keeps_it() {
        let fake = Fake::json(json!({"errcode": 0})).await;
        let base = fake.base.join("/prefix/").unwrap();
        let attempt = app(TokenMode::Stable, vec![base])
            .send(&Secret::new(TOKEN), &message())
            .await;
        attempt.result.unwrap();
        assert_eq!(
            fake.requests()[0].path,
            "/prefix/cgi-bin/message/subscribe/send"
        );
    }

    #[tokio::test]
    async fn msgid_above_2_pow_53_is_exact() {
        // 2^53 + 1 cannot be represented in an f64; u64::MAX neither.
        for msgid in [3248682510344192008_u64, (1 << 53) + 1, u64::MAX] {
            let body = format!(r#"{{"errcode":0,"errmsg":"ok","msgid":{msgid}}}"#);
            let fake = Fake::start(Duration::ZERO, move |_| (StatusCode::OK, body.clone())).await;
            let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
                .send(&Secret::new(TOKEN), &message())
                .await;
            assert_eq!(attempt.result.unwrap().msgid, Some(msgid));
        }
    }

    #[tokio::test]
    async fn msgid_as_string_absent_or_zero() {
        let cases = [
            (
                json!({"errcode": 0, "msgid": "3248682510344192008"}),
                Some(3248682510344192008),
            ),
            (json!({"errcode": 0, "errmsg": "ok"}), None),
            (json!({"errcode": 0, "msgid": 0}), None),
            (json!({"errcode": 0, "msgid": ""}), None),
            // Delivered even when the msgid is unusable: never an error after errcode 0.
            (json!({"errcode": 0, "msgid": {"weird": true}}), None),
            (json!({"errcode": 0, "msgid": -5}), None),
            (json!({"errcode": 0, "msgid": 1.5}), None),
            (json!({"errcode": 0, "msgid": [1, 2]}), None),
            (json!({"errcode": 0, "msgid": true}), None),
            (json!({"errcode": 0, "msgid": null}), None),
            (json!({"errcode": 0, "msgid": " 42 "}), Some(42)),
        ];
        for (body, expected) in cases {
            let fake = Fake::json(body.clone()).await;
            let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
                .send(&Secret::new(TOKEN), &message())
                .await;
            assert_eq!(attempt.result.unwrap().msgid, expected, "{body}");
        }
    }

    #[tokio::test]
    async fn errcode_is_parsed_with_its_rid() {
        let fake = Fake::json(json!({
            "errcode": 47003,
            "errmsg": "argument invalid! data.thing1.value rid: 6405a1b2-0b8f1a2c-3d4e5f60"
        }))
        .await;
        let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await;
        let error = attempt.result.unwrap_err();
        assert_eq!(
            error,
            WechatError::Api {
                endpoint: Endpoint::Send,
                errcode: 47003,
                errmsg: "argument invalid! data.thing1.value rid: 6405a1b2-0b8f1a2c-3d4e5f60"
                    .into(),
                rid: Some("6405a1b2-0b8f1a2c-3d4e5f60".into()),
            }
        );
        assert_eq!(error.class(), Some(ErrorClass::InvalidRequest));
        assert_no_secrets(&error);
    }

    #[tokio::test]
    async fn an_errmsg_with_escapes_is_read_whole() {
        // Escapes cannot be borrowed from the body: the errmsg is unescaped into its own text.
        let fake = Fake::json(json!({
            "errcode": 43101,
            "errmsg": "user refuse to accept the msg \"订阅\"\n rid: 6405a1b2-0b8f1a2c-3d4e5f60"
        }))
        .await;
        let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await;
        match attempt.result.unwrap_err() {
            WechatError::Api { errmsg, rid, .. } => {
                assert!(errmsg.contains("\"订阅\"\n"), "{errmsg}");
                assert_eq!(rid.as_deref(), Some("6405a1b2-0b8f1a2c-3d4e5f60"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rid_parsing() {
        assert_eq!(
            parse_rid("system error rid: abc-def"),
            Some("abc-def".into())
        );
        assert_eq!(parse_rid("rid: x1"), Some("x1".into()));
        assert_eq!(parse_rid("invalid credential, hint: [xyz]"), None);
        assert_eq!(parse_rid("grid: nope"), None);
        assert_eq!(parse_rid("a rid: "), None);
        assert_eq!(parse_rid("ok"), None);
    }

    #[tokio::test]
    async fn http_error_status_is_not_failed_over() {
        let fake = Fake::start(Duration::ZERO, |_| (StatusCode::BAD_GATEWAY, "bad".into())).await;
        let second = Fake::json(json!({"errcode": 0})).await;
        let attempt = app(
            TokenMode::Stable,
            vec![fake.base.clone(), second.base.clone()],
        )
        .send(&Secret::new(TOKEN), &message())
        .await;
        assert_eq!(attempt.requests, 1);
        let error = attempt.result.unwrap_err();
        assert_eq!(
            error,
            WechatError::HttpStatus {
                endpoint: Endpoint::Send,
                status: 502
            }
        );
        assert_no_secrets(&error);
        assert!(second.requests().is_empty());
    }

    #[tokio::test]
    async fn non_json_body_is_invalid_response() {
        let fake = Fake::start(Duration::ZERO, |_| {
            (
                StatusCode::OK,
                format!("<html>oops access_token={TOKEN}</html>"),
            )
        })
        .await;
        let attempt = app(TokenMode::Stable, vec![fake.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await;
        let error = attempt.result.unwrap_err();
        assert!(
            matches!(
                error,
                WechatError::InvalidResponse {
                    endpoint: Endpoint::Send,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_no_secrets(&error);
        // JSON that is not an object (serde would echo the value) is scrubbed too.
        let fake = Fake::json(json!(TOKEN)).await;
        let error = app(TokenMode::Stable, vec![fake.base.clone()])
            .send(&Secret::new(TOKEN), &message())
            .await
            .result
            .unwrap_err();
        assert!(
            matches!(error, WechatError::InvalidResponse { .. }),
            "{error:?}"
        );
        assert_no_secrets(&error);
    }

    #[tokio::test]
    async fn refused_connection_fails_over_to_the_next_base() {
        let second = Fake::json(json!({"errcode": 0, "msgid": 7})).await;
        let attempt = app(
            TokenMode::Stable,
            vec![closed_base().await, second.base.clone()],
        )
        .send(&Secret::new(TOKEN), &message())
        .await;
        assert_eq!(attempt.requests, 2);
        assert_eq!(attempt.result.unwrap().msgid, Some(7));
        assert_eq!(second.requests().len(), 1);
    }

    #[tokio::test]
    async fn all_bases_refusing_is_unreachable() {
        let attempt = app(
            TokenMode::Stable,
            vec![closed_base().await, closed_base().await],
        )
        .send(&Secret::new(TOKEN), &message())
        .await;
        assert_eq!(attempt.requests, 2);
        let error = attempt.result.unwrap_err();
        assert!(
            matches!(
                error,
                WechatError::Unreachable {
                    endpoint: Endpoint::Send,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_no_secrets(&error);

        let attempt = app(TokenMode::Stable, vec![])
            .send(&Secret::new(TOKEN), &message())
            .await;
        assert_eq!(attempt.requests, 0);
        assert!(matches!(
            attempt.result,
            Err(WechatError::Unreachable { .. })
        ));
    }

    #[tokio::test]
    async fn timeout_after_connecting_is_outcome_unknown_and_not_failed_over() {
        let slow = Fake::start(Duration::from_secs(2), |_| {
            (StatusCode::OK, r#"{"errcode":0}"#.into())
        })
        .await;
        let second = Fake::json(json!({"errcode": 0})).await;
        let attempt = app(
            TokenMode::Stable,
            vec![slow.base.clone(), second.base.clone()],
        )
        .send(&Secret::new(TOKEN), &message())
        .await;
        assert_eq!(attempt.requests, 1);
        let error = attempt.result.unwrap_err();
        assert!(
            matches!(
                error,
                WechatError::OutcomeUnknown {
                    endpoint: Endpoint::Send,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_no_secrets(&error);
        assert_eq!(
            slow.requests().len(),
            1,
            "the request reached the first base"
        );
        assert!(
            second.requests().is_empty(),
            "the second base must not be tried"
        );
    }

    /// A raw TCP server that reads one request, writes `reply` and closes the connection.
    async fn raw_base(reply: &'static str) -> (Url, Arc<Mutex<u32>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                *counter.lock().unwrap() += 1;
                let mut buffer = vec![0; 64 * 1024];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(reply.as_bytes()).await;
                drop(stream);
            }
        });
        (base, accepted)
    }

    #[tokio::test]
    async fn connection_closed_after_the_request_is_outcome_unknown() {
        let second = Fake::json(json!({"errcode": 0})).await;
        for reply in [
            // closed without any answer
            "",
            // answer cut short: the body never completes
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"errcode\"",
        ] {
            let (base, accepted) = raw_base(reply).await;
            let attempt = app(TokenMode::Stable, vec![base, second.base.clone()])
                .send(&Secret::new(TOKEN), &message())
                .await;
            assert_eq!(attempt.requests, 1);
            let error = attempt.result.unwrap_err();
            assert!(
                matches!(
                    error,
                    WechatError::OutcomeUnknown {
                        endpoint: Endpoint::Send,
                        ..
                    }
                ),
                "{reply:?}: {error:?}"
            );
            assert_no_secrets(&error);
            assert_eq!(*accepted.lock().unwrap(), 1, "sent exactly once");
        }
        assert!(
            second.requests().is_empty(),
            "the second base must not be tried"
        );
    }

    #[tokio::test]
    async fn stable_token_fetch() {
        let fake = Fake::json(json!({"access_token": TOKEN, "expires_in": 5400})).await;
        let api = app(TokenMode::Stable, vec![fake.base.clone()]);
        let fetched = api.fetch_token(true).await.unwrap();
        assert_eq!(fetched.token.expose(), TOKEN);
        assert_eq!(fetched.expires_in, Duration::from_secs(5400));
        assert!(!format!("{fetched:?}").contains(TOKEN));
        let seen = &fake.requests()[0];
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/cgi-bin/stable_token");
        assert_eq!(seen.query, None);
        assert_eq!(
            seen.json(),
            json!({
                "grant_type": "client_credential",
                "appid": "wxAPPID",
                "secret": APP_SECRET,
                "force_refresh": true,
            })
        );
        api.fetch_token(false).await.unwrap();
        assert_eq!(fake.requests()[1].json()["force_refresh"], false);
    }

    #[tokio::test]
    async fn classic_token_fetch() {
        let fake = Fake::json(json!({"access_token": TOKEN, "expires_in": 7200})).await;
        let fetched = app(TokenMode::Classic, vec![fake.base.clone()])
            .fetch_token(false)
            .await
            .unwrap();
        assert_eq!(fetched.expires_in, Duration::from_secs(7200));
        let seen = &fake.requests()[0];
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/cgi-bin/token");
        assert_eq!(
            seen.query_pairs(),
            BTreeMap::from([
                ("grant_type".to_string(), "client_credential".to_string()),
                ("appid".to_string(), "wxAPPID".to_string()),
                ("secret".to_string(), APP_SECRET.to_string()),
            ])
        );
    }

    #[tokio::test]
    async fn token_fetch_errors() {
        let cases = [
            json!({"errcode": 40013, "errmsg": "invalid appid rid: r-1"}),
            json!({"errcode": 40001, "errmsg": format!("invalid credential {APP_SECRET}")}),
            json!({"access_token": TOKEN}),
            json!({"access_token": TOKEN, "expires_in": 0}),
            json!({"access_token": TOKEN, "expires_in": 10_000_000}),
            json!({"access_token": TOKEN, "expires_in": 7.5}),
            json!({"access_token": "", "expires_in": 7200}),
            json!({"expires_in": 7200}),
            json!([TOKEN]),
        ];
        for mode in [TokenMode::Stable, TokenMode::Classic] {
            for body in &cases {
                let fake = Fake::json(body.clone()).await;
                let error = app(mode, vec![fake.base.clone()])
                    .fetch_token(false)
                    .await
                    .unwrap_err();
                assert_eq!(error.endpoint(), Endpoint::Token, "{body}");
                assert_no_secrets(&error);
                if body.get("errcode").is_some() {
                    assert_eq!(error.class(), Some(ErrorClass::Credential), "{body}");
                } else {
                    assert!(
                        matches!(error, WechatError::InvalidResponse { .. }),
                        "{body}: {error:?}"
                    );
                }
            }
        }
        let fake = Fake::json(json!({"errcode": 40013, "errmsg": "invalid appid rid: r-1"})).await;
        let error = app(TokenMode::Stable, vec![fake.base.clone()])
            .fetch_token(false)
            .await
            .unwrap_err();
        assert!(
            matches!(error, WechatError::Api { errcode: 40013, ref rid, .. } if rid.as_deref() == Some("r-1"))
        );
        // A string expires_in is accepted (honoured as given).
        let fake = Fake::json(json!({"access_token": TOKEN, "expires_in": "300"})).await;
        let fetched = app(TokenMode::Stable, vec![fake.base.clone()])
            .fetch_token(false)
            .await
            .unwrap();
        assert_eq!(fetched.expires_in, Duration::from_secs(300));
    }

    #[tokio::test]
    async fn token_fetch_fails_over_and_times_out_like_send() {
        let second = Fake::json(json!({"access_token": TOKEN, "expires_in": 7200})).await;
        for mode in [TokenMode::Stable, TokenMode::Classic] {
            app(mode, vec![closed_base().await, second.base.clone()])
                .fetch_token(false)
                .await
                .unwrap();
        }
        assert_eq!(second.requests().len(), 2);

        let slow = Fake::start(Duration::from_secs(2), |_| (StatusCode::OK, "{}".into())).await;
        for mode in [TokenMode::Stable, TokenMode::Classic] {
            let error = app(mode, vec![slow.base.clone()])
                .fetch_token(false)
                .await
                .unwrap_err();
            assert!(matches!(
                error,
                WechatError::OutcomeUnknown {
                    endpoint: Endpoint::Token,
                    ..
                }
            ));
            assert_no_secrets(&error);
            let error = app(mode, vec![closed_base().await])
                .fetch_token(false)
                .await
                .unwrap_err();
            assert!(matches!(
                error,
                WechatError::Unreachable {
                    endpoint: Endpoint::Token,
                    ..
                }
            ));
            assert_no_secrets(&error);
        }
        let failing = Fake::start(Duration::ZERO, |_| {
            (StatusCode::INTERNAL_SERVER_ERROR, String::new())
        })
        .await;
        let error = app(TokenMode::Classic, vec![failing.base.clone()])
            .fetch_token(false)
            .await
            .unwrap_err();
        assert_eq!(
            error,
            WechatError::HttpStatus {
                endpoint: Endpoint::Token,
                status: 500
            }
        );
    }

    #[tokio::test]
    async fn templates_are_listed_with_the_token_in_the_query() {
        let fake = Fake::json(json!({
            "errcode": 0,
            "errmsg": "ok",
            "data": [{
                "priTmplId": "T1",
                "title": "会议提醒",
                "content": "会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n",
                "example": "会议时间:2019年10月1日\n会议地点:A\n",
                "type": 2
            }]
        }))
        .await;
        let base = fake.base.join("/prefix/").unwrap();
        let templates = app(TokenMode::Stable, vec![closed_base().await, base])
            .templates(&Secret::new(TOKEN))
            .await
            .unwrap();
        assert_eq!(templates.len(), 1);
        assert_eq!(templates[0].id, "T1");
        assert_eq!(templates[0].keywords, ["date2", "thing1"]);
        assert_eq!(templates[0].kind, crate::wechat::TemplateKind::OneTime);
        let seen = fake.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, Method::GET);
        assert_eq!(seen[0].path, "/prefix/wxaapi/newtmpl/gettemplate");
        assert_eq!(
            seen[0].query_pairs(),
            BTreeMap::from([("access_token".to_string(), TOKEN.to_string())])
        );
    }

    #[tokio::test]
    async fn template_list_errors_carry_the_templates_endpoint_and_no_secrets() {
        let fake = Fake::json(json!({
            "errcode": 42001,
            "errmsg": format!("access_token expired {TOKEN} rid: 6405a1b2-0b8f1a2c")
        }))
        .await;
        let error = app(TokenMode::Stable, vec![fake.base.clone()])
            .templates(&Secret::new(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(error.endpoint(), Endpoint::Templates);
        assert_eq!(error.errcode(), Some(42001));
        assert_eq!(error.class(), Some(ErrorClass::TokenRejected));
        assert_no_secrets(&error);

        let fake = Fake::json(json!({"errcode": 48001, "errmsg": "api unauthorized"})).await;
        let error = app(TokenMode::Stable, vec![fake.base.clone()])
            .templates(&Secret::new(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(error.class(), Some(ErrorClass::Other));

        let failing =
            Fake::start(Duration::ZERO, |_| (StatusCode::BAD_GATEWAY, TOKEN.into())).await;
        let error = app(TokenMode::Stable, vec![failing.base.clone()])
            .templates(&Secret::new(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            WechatError::HttpStatus {
                endpoint: Endpoint::Templates,
                status: 502
            }
        );
        let garbled = Fake::start(Duration::ZERO, |_| {
            (StatusCode::OK, format!("{{\"data\": \"{TOKEN}\"}}"))
        })
        .await;
        let error = app(TokenMode::Stable, vec![garbled.base.clone()])
            .templates(&Secret::new(TOKEN))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                WechatError::InvalidResponse {
                    endpoint: Endpoint::Templates,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_no_secrets(&error);
    }

    #[tokio::test]
    async fn reqwest_errors_never_carry_the_url() {
        // Talk to reqwest directly to prove the raw error would have leaked, and ours does not.
        let base = closed_base().await;
        let url = format!("{base}cgi-bin/token?secret={APP_SECRET}&access_token={TOKEN}");
        let raw = reqwest::get(&url).await.unwrap_err();
        assert!(
            format!("{raw}").contains(APP_SECRET),
            "reqwest itself prints the url"
        );
        let described = describe_reqwest_error(raw, &[]);
        assert!(
            !described.contains(APP_SECRET) && !described.contains(TOKEN),
            "{described}"
        );
    }
}
