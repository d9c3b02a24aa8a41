//! The app's template list (`GET /wxaapi/newtmpl/gettemplate`): what each template's keywords
//! are, which kind it is and which values its enum keywords allow.
//!
//! Parsing is strict about the list's shape (a template without an id makes the whole answer
//! unusable: the service would otherwise refuse sends to it as unknown) and lenient about the
//! details of one template (content it cannot read leaves the keywords unknown, which only
//! means fewer checks).

use std::collections::BTreeMap;

use super::api_error;
use crate::{
    secret::Secret,
    wechat::{Endpoint, WechatError},
};

/// Subscription kind of a template (WeChat's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateKind {
    /// `2`: one-time (一次性订阅), each accept allows one message.
    OneTime,
    /// `3`: long-term (长期订阅).
    LongTerm,
    /// Any other `type`, or none.
    Other(i64),
}

impl TemplateKind {
    fn from_wire(value: Option<&serde_json::Value>) -> Self {
        let number = match value {
            Some(serde_json::Value::Number(number)) => number.as_i64(),
            Some(serde_json::Value::String(text)) => text.trim().parse().ok(),
            _ => None,
        };
        match number {
            Some(2) => TemplateKind::OneTime,
            Some(3) => TemplateKind::LongTerm,
            other => TemplateKind::Other(other.unwrap_or(0)),
        }
    }
}

/// One of the app's templates ("my templates").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateInfo {
    /// `priTmplId`: the `template_id` of a send.
    pub id: String,
    /// Title, e.g. `订单状态通知`.
    pub title: String,
    /// One-time or long-term.
    pub kind: TemplateKind,
    /// The data keys, in content order (`{{thing1.DATA}}` is `thing1`). Empty when the content
    /// holds no placeholder this parser recognises: the keywords are then unknown.
    pub keywords: Vec<String>,
    /// Allowed values of enum keywords, by key (`enum_string2`); only non-empty lists of
    /// keywords the content has.
    pub enum_values: BTreeMap<String, Vec<String>>,
}

impl TemplateInfo {
    /// True when the content told which keywords the template has.
    pub fn keywords_known(&self) -> bool {
        !self.keywords.is_empty()
    }
}

/// The data keys of a template's content, in order and without repeats: each `{{key.DATA}}`
/// whose key is made of ASCII letters, digits and `_`. Anything else between braces is text.
pub fn content_keywords(content: &str) -> Vec<String> {
    let mut keywords: Vec<String> = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("{{") {
        let after_open = &rest[start + 2..];
        let Some(close) = after_open.find("}}") else {
            break;
        };
        let inner = after_open[..close].trim();
        match inner.strip_suffix(".DATA").map(str::trim) {
            Some(key) if is_keyword_key(key) => {
                if !keywords.iter().any(|known| known == key) {
                    keywords.push(key.to_owned());
                }
                rest = &after_open[close + 2..];
            }
            // Not a placeholder: keep scanning right after these braces, so `{{{{a.DATA}}`
            // still finds `a`.
            _ => rest = after_open,
        }
    }
    keywords
}

fn is_keyword_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses a `gettemplate` answer (`secrets` scrubbed from an errmsg). Builds its own error
/// messages: nothing of the body is echoed.
pub(crate) fn parse_templates(
    body: &[u8],
    secrets: &[&Secret],
) -> Result<Vec<TemplateInfo>, WechatError> {
    let invalid = |detail: &str| WechatError::invalid(Endpoint::Templates, detail);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| invalid("body is not json"))?;
    if !value.is_object() {
        return Err(invalid("body is not a json object"));
    }
    if let Some(error) = api_error(Endpoint::Templates, &value, secrets)? {
        return Err(error);
    }
    let items = value
        .get("data")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| invalid("no data array"))?;
    items
        .iter()
        .map(|item| parse_template(item).ok_or_else(|| invalid("a template has no priTmplId")))
        .collect()
}

/// One entry of `data`; `None` when it has no usable id.
fn parse_template(item: &serde_json::Value) -> Option<TemplateInfo> {
    let id = item.get("priTmplId")?.as_str()?.trim();
    if id.is_empty() {
        return None;
    }
    let text = |field: &str| {
        item.get(field)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    };
    let keywords = content_keywords(text("content"));
    let mut enum_values = BTreeMap::new();
    let enum_lists = item
        .get("keywordEnumValueList")
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for list in enum_lists {
        let Some(code) = list.get("keywordCode").and_then(serde_json::Value::as_str) else {
            continue;
        };
        // `enum_string2.DATA` in WeChat's example; a bare key is taken as well.
        let key = code.trim();
        let key = key.strip_suffix(".DATA").unwrap_or(key).trim();
        let values: Vec<String> = list
            .get("enumValueList")
            .and_then(serde_json::Value::as_array)
            .map(|values| {
                values
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // A list for a keyword the content lacks, or an empty one, cannot be checked against:
        // ignored rather than turned into a refusal.
        if !values.is_empty() && keywords.iter().any(|known| known == key) {
            enum_values.insert(key.to_owned(), values);
        }
    }
    Some(TemplateInfo {
        id: id.to_owned(),
        title: text("title").to_owned(),
        kind: TemplateKind::from_wire(item.get("type")),
        keywords,
        enum_values,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keywords_come_from_the_content_in_order() {
        assert_eq!(
            content_keywords("会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n"),
            ["date2", "thing1"]
        );
        assert_eq!(
            content_keywords("订单号:{{character_string13.DATA}}\n电话:{{phone_number4.DATA}}"),
            ["character_string13", "phone_number4"]
        );
        // Spaces inside the braces, repeats, and text that only looks like a placeholder.
        assert_eq!(
            content_keywords("{{ thing1.DATA }} {{thing1.DATA}} {{x}} {{a b.DATA}} {{.DATA}}"),
            ["thing1"]
        );
        assert_eq!(content_keywords("{{{{name3.DATA}}"), ["name3"]);
        assert_eq!(
            content_keywords("no placeholders {{thing1.DATA"),
            Vec::<String>::new()
        );
        assert_eq!(content_keywords(""), Vec::<String>::new());
    }

    #[test]
    fn a_template_list_is_parsed() {
        let body = json!({
            "errcode": 0,
            "errmsg": "ok",
            "data": [
                {
                    "priTmplId": "T-status",
                    "title": "订单状态通知",
                    "content": "订单号:{{character_string1.DATA}}\n订单状态:{{enum_string2.DATA}}\n",
                    "example": "订单号:1\n订单状态:已发货\n",
                    "type": 2,
                    "keywordEnumValueList": [
                        {"keywordCode": "enum_string2.DATA", "enumValueList": ["待发货", "已发货"]},
                        {"keywordCode": "enum_string9.DATA", "enumValueList": ["not in content"]},
                        {"keywordCode": "character_string1.DATA", "enumValueList": []}
                    ]
                },
                {"priTmplId": "T-long", "title": "办理进度", "content": "{{thing1.DATA}}", "type": "3"},
                {"priTmplId": "T-odd", "content": "nothing to see", "type": 7}
            ]
        });
        let templates = parse_templates(body.to_string().as_bytes(), &[]).unwrap();
        assert_eq!(templates.len(), 3);
        let status = &templates[0];
        assert_eq!(status.id, "T-status");
        assert_eq!(status.title, "订单状态通知");
        assert_eq!(status.kind, TemplateKind::OneTime);
        assert_eq!(status.keywords, ["character_string1", "enum_string2"]);
        assert_eq!(
            status.enum_values,
            BTreeMap::from([(
                "enum_string2".to_owned(),
                vec!["待发货".to_owned(), "已发货".to_owned()]
            )])
        );
        assert_eq!(templates[1].kind, TemplateKind::LongTerm);
        assert!(templates[1].enum_values.is_empty());
        assert_eq!(templates[2].kind, TemplateKind::Other(7));
        assert!(!templates[2].keywords_known());
    }

    #[test]
    fn an_unusable_answer_is_an_invalid_response() {
        for body in [
            "not json".to_owned(),
            json!(["T"]).to_string(),
            json!({"errcode": 0}).to_string(),
            json!({"errcode": 0, "data": {"priTmplId": "T"}}).to_string(),
            json!({"data": [{"priTmplId": "T"}, {"title": "no id"}]}).to_string(),
            json!({"data": [{"priTmplId": " "}]}).to_string(),
        ] {
            let error = parse_templates(body.as_bytes(), &[]).unwrap_err();
            assert!(
                matches!(
                    error,
                    WechatError::InvalidResponse {
                        endpoint: Endpoint::Templates,
                        ..
                    }
                ),
                "{body}: {error:?}"
            );
        }
        // No templates at all is an answer, not an error.
        let empty = json!({"errcode": 0, "errmsg": "ok", "data": []}).to_string();
        assert_eq!(parse_templates(empty.as_bytes(), &[]).unwrap(), []);
    }
}
