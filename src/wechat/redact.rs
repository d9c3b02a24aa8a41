//! Keeping access tokens and AppSecrets out of everything that gets printed.
//!
//! WeChat puts the access token in the URL query (and the classic token endpoint the AppSecret),
//! so every URL we print goes through [`redact_url`], every errmsg WeChat answers goes through
//! [`scrub`], and a transport error keeps no URL at all (`TransportError`).

use url::{Position, Url, form_urlencoded};

use crate::secret::Secret;

/// What replaces a secret value.
pub const REDACTED: &str = "[redacted]";

/// Query parameters whose values are credentials (compared case-insensitively).
const SENSITIVE_QUERY_KEYS: &[&str] = &[
    "access_token",
    "authorizer_access_token",
    "component_access_token",
    "secret",
    "appsecret",
    "component_appsecret",
];

fn is_sensitive(key: &str) -> bool {
    SENSITIVE_QUERY_KEYS
        .iter()
        .any(|sensitive| sensitive.eq_ignore_ascii_case(key))
}

/// The URL as text with the values of `access_token`, `secret` (and similar) query parameters
/// and any userinfo password replaced by `[redacted]`. Use it wherever a URL is logged.
pub fn redact_url(url: &Url) -> String {
    let mut without_password;
    let url = if url.password().is_some() {
        without_password = url.clone();
        // Only fails for URLs that cannot have a password, which this one has.
        let _ = without_password.set_password(Some(REDACTED));
        &without_password
    } else {
        url
    };
    let mut out = url[..Position::AfterPath].to_string();
    if let Some(query) = url.query() {
        out.push('?');
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            let raw_key = pair.split_once('=').map_or(pair, |(key, _)| key);
            let key = form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .map(|(key, _)| key.into_owned())
                .unwrap_or_default();
            if is_sensitive(&key) {
                out.push_str(raw_key);
                out.push('=');
                out.push_str(REDACTED);
            } else {
                out.push_str(pair);
            }
        }
    }
    if let Some(fragment) = url.fragment() {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// `text` with every occurrence of each secret (raw or form-urlencoded) replaced by
/// `[redacted]`. Empty secrets are skipped.
pub fn scrub(text: impl Into<String>, secrets: &[&Secret]) -> String {
    let mut text = text.into();
    for secret in secrets {
        let raw = secret.expose();
        if raw.is_empty() {
            continue;
        }
        if text.contains(raw) {
            text = text.replace(raw, REDACTED);
        }
        let encoded: String = form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        if encoded != raw && text.contains(&encoded) {
            text = text.replace(&encoded, REDACTED);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_token_and_secret_query_values() {
        let url = Url::parse(
            "https://api.weixin.qq.com/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=S3CR3T",
        )
        .unwrap();
        assert_eq!(
            redact_url(&url),
            "https://api.weixin.qq.com/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=[redacted]"
        );
        let url = Url::parse(
            "https://api.weixin.qq.com/cgi-bin/message/subscribe/send?access_token=T0K%2BEN#frag",
        )
        .unwrap();
        let redacted = redact_url(&url);
        assert_eq!(
            redacted,
            "https://api.weixin.qq.com/cgi-bin/message/subscribe/send?access_token=[redacted]#frag"
        );
        assert!(!redacted.contains("T0K"));
    }

    #[test]
    fn redacts_encoded_keys_and_passwords() {
        let url = Url::parse("http://user:pw@127.0.0.1:8080/x?Access%5FToken=abc&keep=1").unwrap();
        let redacted = redact_url(&url);
        assert!(!redacted.contains("abc"), "{redacted}");
        assert!(!redacted.contains(":pw@"), "{redacted}");
        assert!(redacted.ends_with("keep=1"), "{redacted}");
    }

    #[test]
    fn leaves_urls_without_secrets_alone() {
        let url = Url::parse("http://127.0.0.1:1/cgi-bin/stable_token").unwrap();
        assert_eq!(redact_url(&url), "http://127.0.0.1:1/cgi-bin/stable_token");
    }

    #[test]
    fn scrub_replaces_raw_and_encoded_forms() {
        let secret = Secret::new("a+b/c");
        let text = scrub(
            "raw a+b/c and encoded a%2Bb%2Fc",
            &[&secret, &Secret::new("")],
        );
        assert_eq!(text, "raw [redacted] and encoded [redacted]");
    }
}
