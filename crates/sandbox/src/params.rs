//! Request parameters that both the WeChat endpoints and the control API read: query
//! parameters and the shape of an openid. Below `send`, `endpoints` and `control`, so that none
//! of them borrows from another.

/// One query parameter, percent-decoded; `None` when absent.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// True for a well-formed openid: exactly 28 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_openid(openid: &str) -> bool {
    openid.len() == 28
        && openid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEMO_OPENID;

    #[test]
    fn query_params_are_decoded() {
        let query = Some("grant_type=client_credential&secret=a%2Bb&x=");
        assert_eq!(query_param(query, "secret").as_deref(), Some("a+b"));
        assert_eq!(query_param(query, "x").as_deref(), Some(""));
        assert_eq!(query_param(query, "appid"), None);
        assert_eq!(query_param(None, "appid"), None);
    }

    #[test]
    fn openids_are_28_url_safe_characters() {
        assert!(is_valid_openid(DEMO_OPENID));
        assert!(!is_valid_openid(&DEMO_OPENID[1..]));
        assert!(!is_valid_openid(&format!("{}!", &DEMO_OPENID[1..])));
        assert!(!is_valid_openid(""));
    }
}
