//! What a web page in the developer's browser could otherwise do to a sandbox on their machine.
//! The control API has no authentication (it is a development tool), so two browser attacks
//! are refused under `/sandbox/`:
//!
//! - **Cross-site requests**: a page of another origin posting to the control API (inject a
//!   fault, revoke tokens, push events into the service). Browsers name the page's origin in
//!   `Origin` on such requests; any method but GET and HEAD from an origin other than the
//!   sandbox's own is refused.
//! - **DNS rebinding**: a page whose own name was made to resolve to 127.0.0.1 is same-origin
//!   with itself, so it passes the first check; but it addresses the sandbox by its own name.
//!   While the sandbox listens on loopback, a request to any host but a loopback address or
//!   `localhost` is refused.
//!
//! Clients that are not browsers (curl, the service, the tests) send no `Origin` and address
//! the sandbox by its address, so nothing documented changes for them. A sandbox told to listen
//! beyond loopback is exposed by choice (it warns); the host check is off there, since its
//! clients may use any name for it (a container's, say).

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::Sandbox;

/// Refuses, under `/sandbox/`, cross-origin changes and (on loopback) foreign host names.
pub(crate) async fn browser_guard(
    State(sandbox): State<Sandbox>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path != "/sandbox" && !path.starts_with("/sandbox/") {
        return next.run(request).await;
    }
    let listens_on_loopback = sandbox
        .inner
        .listen
        .get()
        .is_some_and(|addr| addr.ip().is_loopback());
    if let Some(refusal) = refusal(request.method(), request.headers(), listens_on_loopback) {
        tracing::warn!(path, refusal, "sandbox refused a browser request");
        return (StatusCode::FORBIDDEN, Json(json!({ "error": refusal }))).into_response();
    }
    next.run(request).await
}

/// Why a request is refused, if it is.
fn refusal(method: &Method, headers: &HeaderMap, listens_on_loopback: bool) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    if listens_on_loopback
        && let Some(host) = host
        && !is_loopback_host(host)
    {
        return Some(format!(
            "host {host:?} is not a loopback address: the sandbox answers only to 127.0.0.1, [::1] or localhost (DNS rebinding)"
        ));
    }
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let same_origin = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.parse::<Uri>().ok())
        .and_then(|origin| origin.authority().map(|a| a.as_str().to_owned()))
        .is_some_and(|authority| host.is_some_and(|host| authority.eq_ignore_ascii_case(host)));
    (!same_origin).then(|| {
        format!(
            "cross-origin request refused: origin {origin:?} is not this sandbox ({})",
            host.unwrap_or("no host")
        )
    })
}

/// `localhost`, `127.0.0.1` or `[::1]` (any loopback address), with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::SandboxConfig;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), value.parse().unwrap()))
            .collect()
    }

    #[test]
    fn loopback_hosts_are_names_of_this_machine_only() {
        for host in [
            "127.0.0.1:8089",
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:8089",
            "LOCALHOST",
            "[::1]:8089",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8089",
            "localhost.evil.example",
            "10.0.0.1:8089",
            "[::2]:8089",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn cross_origin_changes_are_refused_and_reads_and_plain_clients_are_not() {
        let host = (header::HOST, "127.0.0.1:8089");
        let refused = |method: Method, pairs: &[(header::HeaderName, &str)]| {
            refusal(&method, &headers(pairs), true).is_some()
        };
        // curl, the service, the tests: no Origin.
        assert!(!refused(Method::POST, std::slice::from_ref(&host)));
        // The console: same origin.
        let console = (header::ORIGIN, "http://127.0.0.1:8089");
        assert!(!refused(Method::POST, &[host.clone(), console.clone()]));
        assert!(!refused(Method::DELETE, &[host.clone(), console]));
        // Another page: its changes are refused, its reads are not (the browser keeps their
        // answers from it anyway: no CORS headers).
        let other = (header::ORIGIN, "https://evil.example");
        assert!(refused(Method::POST, &[host.clone(), other.clone()]));
        assert!(refused(Method::DELETE, &[host.clone(), other.clone()]));
        assert!(!refused(Method::GET, &[host.clone(), other]));
        // Another port of this machine is another origin; so is an opaque one.
        assert!(refused(
            Method::POST,
            &[host.clone(), (header::ORIGIN, "http://127.0.0.1:3000")]
        ));
        assert!(refused(Method::POST, &[host, (header::ORIGIN, "null")]));
        // DNS rebinding: same-origin with itself, but not a loopback name.
        let rebound = [
            (header::HOST, "evil.example:8089"),
            (header::ORIGIN, "http://evil.example:8089"),
        ];
        assert!(refused(Method::POST, &rebound));
        assert!(refused(Method::GET, &rebound[..1]));
        // Listening beyond loopback, by choice: any name, still no cross-origin changes.
        let exposed = |method: Method, pairs: &[(header::HeaderName, &str)]| {
            refusal(&method, &headers(pairs), false).is_some()
        };
        assert!(!exposed(Method::GET, &[(header::HOST, "sandbox:8089")]));
        assert!(!exposed(
            Method::POST,
            &[
                (header::HOST, "sandbox:8089"),
                (header::ORIGIN, "http://sandbox:8089")
            ]
        ));
        assert!(exposed(
            Method::POST,
            &[
                (header::HOST, "sandbox:8089"),
                (header::ORIGIN, "http://evil.example")
            ]
        ));
    }

    /// Through a served sandbox: the control API refuses a cross-site POST and a rebound host,
    /// changes nothing for them, and serves curl-like clients and WeChat's paths as before.
    #[tokio::test]
    async fn a_served_sandbox_refuses_browser_attacks_on_its_control_api() {
        let server = Sandbox::new(SandboxConfig::default())
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let base = server.base_url();
        let client = reqwest::Client::new();
        let auto_accept = base.join("sandbox/auto-accept").unwrap();
        let set = |enabled: bool, origin: Option<&str>| {
            let mut request = client
                .post(auto_accept.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .body(json!({ "enabled": enabled }).to_string());
            if let Some(origin) = origin {
                request = request.header(header::ORIGIN, origin);
            }
            request.send()
        };
        let enabled = || async {
            let body = client
                .get(auto_accept.clone())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["enabled"]
                .as_bool()
                .unwrap()
        };

        let before = enabled().await;
        let refused = set(!before, Some("https://evil.example")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let body = refused.text().await.unwrap();
        assert!(body.contains("cross-origin request refused"), "{body}");
        assert_eq!(
            enabled().await,
            before,
            "the refused request changed nothing"
        );

        let rebound = client
            .get(base.join("sandbox/inbox").unwrap())
            .header(header::HOST, format!("evil.example:{}", server.addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), StatusCode::FORBIDDEN);

        let same_origin = base.as_str().trim_end_matches('/').to_owned();
        assert_eq!(
            set(!before, Some(&same_origin)).await.unwrap().status(),
            200
        );
        assert_eq!(enabled().await, !before);
        assert_eq!(set(before, None).await.unwrap().status(), 200);
        assert_eq!(enabled().await, before);

        // WeChat's paths are not the control API: untouched.
        let token = client
            .get(base.join("cgi-bin/token").unwrap())
            .header(header::HOST, "api.weixin.qq.com")
            .send()
            .await
            .unwrap();
        assert_eq!(token.status(), StatusCode::OK);
        server.shutdown().await;
    }
}
