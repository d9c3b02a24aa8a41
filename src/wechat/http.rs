//! The HTTP exchange: one pooled `reqwest::Client` shared by every app, and one logical request
//! walked over an app's API bases in order. It moves to the next base only when
//! [`class::next_base`] says the request was provably not sent; any other transport failure is
//! [`WechatError::OutcomeUnknown`] and stops there, since trying another base could deliver a
//! message twice.

use std::time::Duration;

use tracing::{debug, warn};
use url::Url;

use super::{Endpoint, ErrorChain, TransportError, WechatError, class, redact::redact_url};

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

/// The shared HTTP client could not be built (its TLS backend did not initialise): a fault of
/// this host, before any request to WeChat.
#[derive(Debug, thiserror::Error)]
#[error("the http client could not be built: {0}")]
pub struct ClientBuildError(#[source] reqwest::Error);

/// The one pooled HTTP client (rustls), shared by every app. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WechatClient {
    pub(super) http: reqwest::Client,
}

impl WechatClient {
    /// Builds the shared client.
    ///
    /// Proxies from the environment are ignored and redirects are not followed (a redirect would
    /// carry the access token to another host; WeChat never redirects). Never enable reqwest's
    /// `connection_verbose`: it traces raw request bytes, token and AppSecret included (hyper and
    /// h2 leave paths, headers and bodies out of their own logs).
    pub fn new(options: &ClientOptions) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wechat-notify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientBuildError)?;
        Ok(Self { http })
    }
}

/// What one logical request produced.
pub(super) struct Exchange {
    /// HTTP requests made (a move to the next base counts).
    pub requests: u32,
    /// The body of a 2xx answer.
    pub result: Result<Vec<u8>, WechatError>,
}

/// Who is asking, for logs and the latency histogram.
pub(super) struct Caller<'a> {
    /// The `app` label and log field.
    pub app: &'a str,
    pub endpoint: Endpoint,
    /// The upstream latency histogram of this app and endpoint.
    pub duration: &'a metrics::Histogram,
}

/// Makes one logical request: `build` gives the URL and request for each API base (by index),
/// tried in order while no connection could be made.
pub(super) async fn exchange(
    caller: Caller<'_>,
    bases: &[Url],
    build: impl Fn(usize, &Url) -> (Url, reqwest::RequestBuilder),
) -> Exchange {
    let Caller {
        app,
        endpoint,
        duration,
    } = caller;
    let mut requests = 0;
    let mut last_refusal = None;
    for (index, base) in bases.iter().enumerate() {
        let (url, request) = build(index, base);
        requests += 1;
        let started = tokio::time::Instant::now();
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                duration.record(started.elapsed().as_secs_f64());
                let error = TransportError::new(error);
                if class::next_base(&error) {
                    debug!(app, %endpoint, url = %redact_url(&url), error = %ErrorChain(&error), "no connection to wechat api base, trying the next");
                    last_refusal = Some(error);
                    continue;
                }
                warn!(app, %endpoint, url = %redact_url(&url), error = %ErrorChain(&error), "wechat request failed after connecting; outcome unknown");
                let result = Err(WechatError::OutcomeUnknown {
                    endpoint,
                    source: error,
                });
                return Exchange { requests, result };
            }
        };
        let status = response.status();
        if !status.is_success() {
            duration.record(started.elapsed().as_secs_f64());
            debug!(app, %endpoint, url = %redact_url(&url), status = status.as_u16(), "wechat answered an http error status");
            let result = Err(WechatError::HttpStatus {
                endpoint,
                status: status.as_u16(),
            });
            return Exchange { requests, result };
        }
        let body = response.bytes().await;
        duration.record(started.elapsed().as_secs_f64());
        let result = body.map(|body| body.to_vec()).map_err(|error| {
            let error = TransportError::new(error);
            warn!(app, %endpoint, url = %redact_url(&url), error = %ErrorChain(&error), "reading the wechat answer failed; outcome unknown");
            WechatError::OutcomeUnknown {
                endpoint,
                source: error,
            }
        });
        return Exchange { requests, result };
    }
    let result = Err(WechatError::Unreachable {
        endpoint,
        tried: requests,
        last: last_refusal,
    });
    Exchange { requests, result }
}

/// `base` with `segments` appended to its path (a base may carry a path prefix, with or without a
/// trailing slash).
pub(super) fn endpoint_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}
