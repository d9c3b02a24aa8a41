//! Envoy's `x-forwarded-client-cert` header: what a sidecar that terminated mTLS says about the
//! client certificate it verified.
//!
//! `By=spiffe://cluster/ns/a/sa/notify;Hash=ab12...;Subject="CN=shop,O=Example";URI=spiffe://cluster/ns/b/sa/shop;DNS=shop.b.svc`
//! Elements are separated by `,`, their pairs by `;`; a value may be quoted (`"..."`, with `\"`
//! for a quote) and is when it holds `,`, `;` or `=`. Keys are case-insensitive.
//! `DNS` and `URI` may repeat. When several proxies appended elements, the last is the one the
//! nearest proxy (the sidecar beside this service) added, and only that one is believed.

use std::borrow::Cow;

/// One element: the certificate one proxy verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element<'a> {
    /// `By`: the proxy's own certificate SAN.
    pub by: Option<Cow<'a, str>>,
    /// `Hash`: SHA-256 of the client certificate, hex.
    pub hash: Option<Cow<'a, str>>,
    /// `Subject`: the client certificate's subject DN.
    pub subject: Option<Cow<'a, str>>,
    /// `URI` SANs.
    pub uris: Vec<Cow<'a, str>>,
    /// `DNS` SANs.
    pub dns: Vec<Cow<'a, str>>,
}

impl Element<'_> {
    /// The `CN` of the subject DN, if any (`CN=shop,O=Example` -> `shop`).
    pub fn subject_common_name(&self) -> Option<&str> {
        let subject = self.subject.as_deref()?;
        split_unescaped(subject, ',')
            .map(str::trim)
            .find_map(|part| {
                let (key, value) = part.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("CN")
                    .then_some(value.trim())
            })
    }
}

/// The last element of the header, `None` when the header is malformed (an unterminated
/// quote, a pair without `=`, an empty element).
pub fn last_element(header: &str) -> Option<Element<'_>> {
    let mut last = None;
    for element in split_unquoted(header, ',') {
        last = Some(parse_element(element)?);
    }
    last
}

fn parse_element(text: &str) -> Option<Element<'_>> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut element = Element::default();
    for pair in split_unquoted(text, ';') {
        let (key, value) = pair.split_once('=')?;
        let value = unquote(value.trim())?;
        match key.trim().to_ascii_lowercase().as_str() {
            "by" => element.by = Some(value),
            "hash" => element.hash = Some(value),
            "subject" => element.subject = Some(value),
            "uri" => element.uris.push(value),
            "dns" => element.dns.push(value),
            // Cert and Chain (URL-encoded PEM) are not needed to name the caller.
            _ => {}
        }
    }
    Some(element)
}

/// Splits `text` at `separator` outside double quotes (a quoted `\"` does not end the quote).
/// An unterminated quote leaves the rest as one piece, which [`unquote`] then refuses.
fn split_unquoted(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if c == separator && !quoted => {
                pieces.push(&text[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces.into_iter()
}

/// Splits a DN at `separator` not preceded by a backslash (RFC 4514 escaping).
fn split_unescaped(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            _ if c == separator => {
                pieces.push(&text[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces.into_iter()
}

/// A value, its quotes removed and `\"` unescaped (Envoy escapes nothing else: a DN's own
/// RFC 4514 escapes such as `\,` are kept); `None` for an unterminated quote.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.contains('"')).then_some(Cow::Borrowed(value));
    };
    let inner = inner.strip_suffix('"')?;
    if !inner.contains('\\') {
        return (!inner.contains('"')).then_some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                '"' => out.push('"'),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            },
            '"' => return None,
            _ => out.push(c),
        }
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoys_documented_examples_parse() {
        let header = "By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject=\"/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client\";URI=http://testclient.lyft.com";
        let element = last_element(header).unwrap();
        assert_eq!(element.by.as_deref(), Some("http://frontend.lyft.com"));
        assert_eq!(element.uris, vec!["http://testclient.lyft.com"]);
        assert!(element.hash.unwrap().starts_with("468ed33b"));

        let two = "By=http://frontend.lyft.com;Hash=aa;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=bb;URI=http://frontend.lyft.com";
        let last = last_element(two).unwrap();
        assert_eq!(last.by.as_deref(), Some("http://backend.lyft.com"));
        assert_eq!(last.uris, vec!["http://frontend.lyft.com"]);
    }

    #[test]
    fn quoted_values_hold_separators_and_escapes() {
        let header = r#"Hash=cc;Subject="CN=shop\, inc,O=Example;x";URI=spiffe://c/ns/b/sa/shop;DNS=shop.b.svc;DNS=shop"#;
        let element = last_element(header).unwrap();
        assert_eq!(
            element.subject.as_deref(),
            Some("CN=shop\\, inc,O=Example;x")
        );
        assert_eq!(element.subject_common_name(), Some("shop\\, inc"));
        assert_eq!(element.dns, vec!["shop.b.svc", "shop"]);
        assert_eq!(element.uris, vec!["spiffe://c/ns/b/sa/shop"]);

        let escaped = last_element(r#"Subject="CN=a \"quoted\" name""#).unwrap();
        assert_eq!(escaped.subject_common_name(), Some("a \"quoted\" name"));
        // Keys are case-insensitive.
        let lower = last_element("subject=\"CN=shop\";uri=spiffe://x").unwrap();
        assert_eq!(lower.subject_common_name(), Some("shop"));
        assert_eq!(lower.uris, vec!["spiffe://x"]);
    }

    #[test]
    fn malformed_headers_name_nobody() {
        for header in [
            "",
            "Subject=\"CN=unterminated",
            "Hash",
            "URI=a\"b",
            "Hash=aa,,Hash=bb",
        ] {
            assert_eq!(last_element(header), None, "{header:?}");
        }
    }
}
