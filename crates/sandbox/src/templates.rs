//! The sandbox's "my templates" list: id, title, content with `{{key.DATA}}` placeholders, kind
//! and enum value lists. Keywords and their types are parsed from the content, as a client of
//! `gettemplate` would do.

use std::{collections::BTreeMap, fmt, path::Path};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

/// Subscription kind of a template (WeChat's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TemplateKind {
    /// 一次性订阅, `type` 2: each accept allows one message.
    OneTime,
    /// 长期订阅, `type` 3: one accept allows any number of messages.
    LongTerm,
}

impl TemplateKind {
    /// WeChat's `type` number.
    pub fn wire_type(self) -> u8 {
        match self {
            TemplateKind::OneTime => 2,
            TemplateKind::LongTerm => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TemplateKind::OneTime => "one-time",
            TemplateKind::LongTerm => "long-term",
        }
    }
}

impl fmt::Display for TemplateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for TemplateKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// In TOML a kind is WeChat's number (`2`, `3`) or a name (`"one-time"`, `"long-term"`).
impl<'de> Deserialize<'de> for TemplateKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(i64),
            Name(String),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Number(2) => Ok(TemplateKind::OneTime),
            Repr::Number(3) => Ok(TemplateKind::LongTerm),
            Repr::Name(name) if name == "one-time" || name == "one_time" => {
                Ok(TemplateKind::OneTime)
            }
            Repr::Name(name) if name == "long-term" || name == "long_term" => {
                Ok(TemplateKind::LongTerm)
            }
            _ => Err(serde::de::Error::custom(
                "kind must be 2, 3, \"one-time\" or \"long-term\"",
            )),
        }
    }
}

/// One subscribe-message template of the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The private template id (`priTmplId`), the `template_id` of a send.
    pub id: String,
    /// Title, e.g. `课程提醒`.
    pub title: String,
    /// Content with one `{{key.DATA}}` placeholder per keyword, e.g. `学员:{{phrase1.DATA}}\n`.
    pub content: String,
    /// One-time or long-term.
    pub kind: TemplateKind,
    /// Allowed values of enum keywords (`enum_string2` -> values).
    #[serde(default)]
    pub enum_values: BTreeMap<String, Vec<String>>,
    /// Example text shown by `gettemplate`; generated from sample values when `None`.
    #[serde(default)]
    pub example: Option<String>,
    /// Apps that have this template; empty means every configured app.
    #[serde(default)]
    pub appids: Vec<String>,
}

/// One keyword of a template, parsed from its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Keyword {
    /// The data key, e.g. `thing1`.
    pub key: String,
    /// The keyword type: the key without its trailing digits, e.g. `thing`.
    #[serde(rename = "type")]
    pub keyword_type: String,
    /// The label in front of the placeholder, e.g. `上课时间`.
    pub label: String,
}

impl Template {
    /// A template with no enum lists, example or app restriction.
    pub fn new(
        id: impl Into<String>,
        title: impl Into<String>,
        content: impl Into<String>,
        kind: TemplateKind,
    ) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            content: content.into(),
            kind,
            enum_values: BTreeMap::new(),
            example: None,
            appids: Vec::new(),
        }
    }

    /// Sets the allowed values of an enum keyword.
    pub fn with_enum(mut self, key: impl Into<String>, values: &[&str]) -> Self {
        self.enum_values
            .insert(key.into(), values.iter().map(|v| v.to_string()).collect());
        self
    }

    /// Restricts the template to these apps.
    pub fn for_apps(mut self, appids: &[&str]) -> Self {
        self.appids = appids.iter().map(|a| a.to_string()).collect();
        self
    }

    /// True when `appid` has this template.
    pub fn belongs_to(&self, appid: &str) -> bool {
        self.appids.is_empty() || self.appids.iter().any(|a| a == appid)
    }

    /// The keywords, in content order.
    pub fn keywords(&self) -> Vec<Keyword> {
        placeholders(&self.content)
            .into_iter()
            .map(|p| Keyword {
                keyword_type: keyword_type(p.key).to_string(),
                key: p.key.to_string(),
                label: p.label.to_string(),
            })
            .collect()
    }

    /// The content with each `{{key.DATA}}` replaced by `data[key]` (placeholders without a
    /// value are left as they are).
    pub fn render(&self, data: &BTreeMap<String, String>) -> String {
        let mut out = String::with_capacity(self.content.len());
        let mut rest = self.content.as_str();
        while let Some((before, key, after)) = next_placeholder(rest) {
            out.push_str(before);
            match data.get(key) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("{{");
                    out.push_str(key);
                    out.push_str(".DATA}}");
                }
            }
            rest = after;
        }
        out.push_str(rest);
        out
    }

    /// The example text: the configured one, or the content rendered with sample values.
    pub fn example_text(&self) -> String {
        if let Some(example) = &self.example {
            return example.clone();
        }
        let samples = self
            .keywords()
            .into_iter()
            .map(|k| {
                let value = match self.enum_values.get(&k.key).and_then(|v| v.first()) {
                    Some(first) => first.clone(),
                    None => sample_value(&k.keyword_type).to_string(),
                };
                (k.key, value)
            })
            .collect();
        self.render(&samples)
    }

    /// The template as `gettemplate` lists it.
    pub fn to_wire(&self) -> Value {
        let mut item = json!({
            "priTmplId": self.id,
            "title": self.title,
            "content": self.content,
            "example": self.example_text(),
            "type": self.kind.wire_type(),
        });
        if !self.enum_values.is_empty() {
            let list: Vec<Value> = self
                .enum_values
                .iter()
                .map(|(key, values)| {
                    json!({"keywordCode": format!("{key}.DATA"), "enumValueList": values})
                })
                .collect();
            item["keywordEnumValueList"] = Value::Array(list);
        }
        item
    }

    /// Checks the template is usable: an id, a title, at least one well-formed keyword, no
    /// duplicate keys, enum lists only for keywords of the content and never empty.
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.id;
        if id.trim().is_empty() || id.len() > 128 {
            return Err(format!("template id {id:?} must be 1 to 128 bytes"));
        }
        if self.title.trim().is_empty() {
            return Err(format!("template {id}: title is empty"));
        }
        let keywords = self.keywords();
        if keywords.is_empty() {
            return Err(format!(
                "template {id}: content has no {{{{key.DATA}}}} placeholder"
            ));
        }
        for (i, keyword) in keywords.iter().enumerate() {
            if !is_well_formed_key(&keyword.key) {
                return Err(format!(
                    "template {id}: keyword {:?} is not a type name followed by digits",
                    keyword.key
                ));
            }
            if keywords[..i].iter().any(|k| k.key == keyword.key) {
                return Err(format!(
                    "template {id}: keyword {} appears twice",
                    keyword.key
                ));
            }
        }
        for (key, values) in &self.enum_values {
            if !keywords.iter().any(|k| &k.key == key) {
                return Err(format!(
                    "template {id}: enum_values names {key}, which is not in the content"
                ));
            }
            if values.is_empty() {
                return Err(format!("template {id}: enum_values for {key} is empty"));
            }
        }
        Ok(())
    }
}

/// The keyword type of a data key: the key without its trailing ASCII digits.
pub fn keyword_type(key: &str) -> &str {
    key.trim_end_matches(|c: char| c.is_ascii_digit())
}

fn is_well_formed_key(key: &str) -> bool {
    let base = keyword_type(key);
    !base.is_empty()
        && base.len() < key.len()
        && base.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

struct Placeholder<'a> {
    key: &'a str,
    label: &'a str,
}

/// Splits `text` at its first `{{key.DATA}}`: (text before, key, text after).
fn next_placeholder(text: &str) -> Option<(&str, &str, &str)> {
    let start = text.find("{{")?;
    let close = text[start..].find("}}")? + start;
    let inner = &text[start + 2..close];
    match inner.strip_suffix(".DATA") {
        Some(key) if !key.is_empty() => Some((&text[..start], key, &text[close + 2..])),
        // Not a placeholder: keep scanning after the braces.
        _ => {
            let (before, key, after) = next_placeholder(&text[start + 2..])?;
            let skipped = start + 2 + before.len();
            Some((&text[..skipped], key, after))
        }
    }
}

fn placeholders(content: &str) -> Vec<Placeholder<'_>> {
    let mut found = Vec::new();
    let mut rest = content;
    while let Some((before, key, after)) = next_placeholder(rest) {
        // The label is the text on the same line in front of the placeholder, without the
        // colon WeChat puts between label and value.
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let label = before[line_start..]
            .trim()
            .trim_end_matches([':', '：'])
            .trim();
        found.push(Placeholder { key, label });
        rest = after;
    }
    found
}

/// A value WeChat accepts for a keyword type, for generated examples.
fn sample_value(keyword_type: &str) -> &'static str {
    match keyword_type {
        "thing" => "示例内容",
        "number" => "42",
        "letter" => "ABC",
        "symbol" => "%",
        "character_string" => "SBX-20191001-0001",
        "time" => "15:01",
        "date" => "2019年10月1日 15:01",
        "amount" => "￥99.50",
        "phone_number" => "+86-0766-66888866",
        "car_number" => "粤A8Z888挂",
        "name" => "张三",
        "phrase" => "配送中",
        _ => "示例",
    }
}

/// Id of the default one-time course reminder (`phrase1` student, `date5` time, `phrase4` teacher).
pub const COURSE_REMINDER: &str = "sandbox-course-reminder";
/// Id of the default one-time shipping notice.
pub const ORDER_SHIPPED: &str = "sandbox-order-shipped";
/// Id of the default one-time appointment confirmation.
pub const APPOINTMENT: &str = "sandbox-appointment";
/// Id of the default long-term (kind 3) service notice.
pub const SERVICE_NOTICE: &str = "sandbox-service-notice";
/// Id of the default one-time order status notice, whose `enum_string2` has an enum list.
pub const ORDER_STATUS: &str = "sandbox-order-status";

/// The templates every sandbox has unless configured otherwise (see docs/sandbox.md).
pub fn default_templates() -> Vec<Template> {
    vec![
        Template::new(
            COURSE_REMINDER,
            "课程提醒",
            "学员:{{phrase1.DATA}}\n上课时间:{{date5.DATA}}\n老师:{{phrase4.DATA}}\n",
            TemplateKind::OneTime,
        ),
        Template::new(
            ORDER_SHIPPED,
            "订单发货通知",
            "订单号:{{character_string1.DATA}}\n商品名称:{{thing2.DATA}}\n发货时间:{{date3.DATA}}\n订单状态:{{phrase4.DATA}}\n",
            TemplateKind::OneTime,
        ),
        Template::new(
            APPOINTMENT,
            "预约成功通知",
            "预约项目:{{thing1.DATA}}\n预约时间:{{time2.DATA}}\n预约地点:{{thing3.DATA}}\n预约人:{{name4.DATA}}\n",
            TemplateKind::OneTime,
        ),
        Template::new(
            SERVICE_NOTICE,
            "办理进度提醒",
            "办理事项:{{thing1.DATA}}\n办理状态:{{phrase2.DATA}}\n更新时间:{{date3.DATA}}\n",
            TemplateKind::LongTerm,
        ),
        Template::new(
            ORDER_STATUS,
            "订单状态通知",
            "订单号:{{character_string1.DATA}}\n订单状态:{{enum_string2.DATA}}\n备注:{{thing3.DATA}}\n",
            TemplateKind::OneTime,
        )
        .with_enum("enum_string2", &["待发货", "已发货", "已签收"]),
    ]
}

/// A `--templates` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatesFile {
    /// Keep the default templates next to the file's.
    #[serde(default)]
    include_defaults: bool,
    #[serde(default)]
    templates: Vec<Template>,
}

/// Parses a templates TOML document: `[[templates]]` tables, and `include_defaults = true` to
/// keep the default set as well (otherwise the file's templates replace it).
pub fn parse_templates(toml_text: &str) -> Result<Vec<Template>, String> {
    let file: TemplatesFile = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    let mut templates = if file.include_defaults {
        default_templates()
    } else {
        Vec::new()
    };
    templates.extend(file.templates);
    if templates.is_empty() {
        return Err("no templates defined".to_string());
    }
    for template in &templates {
        template.validate()?;
    }
    Ok(templates)
}

/// Reads and parses a templates file.
pub fn load_templates(path: &Path) -> Result<Vec<Template>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read templates file {}: {e}", path.display()))?;
    parse_templates(&text).map_err(|e| format!("templates file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_parsed_from_content_in_order() {
        let template = &default_templates()[0];
        let keywords = template.keywords();
        let keys: Vec<_> = keywords.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["phrase1", "date5", "phrase4"]);
        assert_eq!(keywords[1].keyword_type, "date");
        assert_eq!(keywords[1].label, "上课时间");
        assert_eq!(keyword_type("character_string13"), "character_string");
    }

    #[test]
    fn render_replaces_placeholders_and_keeps_missing_ones() {
        let template = Template::new(
            "t",
            "t",
            "a:{{thing1.DATA}}, b:{{date2.DATA}} {{x}}",
            TemplateKind::OneTime,
        );
        let data = BTreeMap::from([("thing1".to_string(), "课".to_string())]);
        assert_eq!(template.render(&data), "a:课, b:{{date2.DATA}} {{x}}");
    }

    #[test]
    fn every_default_template_is_valid_and_ids_are_unique() {
        let templates = default_templates();
        for template in &templates {
            template.validate().unwrap();
        }
        let mut ids: Vec<_> = templates.iter().map(|t| &t.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), templates.len());
        assert!(templates.iter().any(|t| t.kind == TemplateKind::LongTerm));
    }

    #[test]
    fn wire_shape_matches_gettemplate() {
        let status = default_templates()
            .into_iter()
            .find(|t| t.id == ORDER_STATUS)
            .unwrap();
        let wire = status.to_wire();
        assert_eq!(wire["type"], 2);
        assert_eq!(
            wire["keywordEnumValueList"][0]["keywordCode"],
            "enum_string2.DATA"
        );
        assert!(wire["example"].as_str().unwrap().contains("待发货"));
    }

    #[test]
    fn toml_files_replace_or_extend_the_defaults() {
        let text = r#"
            [[templates]]
            id = "t1"
            title = "到货提醒"
            content = "商品:{{thing1.DATA}}\n状态:{{enum_string2.DATA}}\n"
            kind = "long-term"
            enum_values = { enum_string2 = ["到货", "缺货"] }
        "#;
        let only = parse_templates(text).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].kind, TemplateKind::LongTerm);
        let with_defaults = parse_templates(&format!("include_defaults = true\n{text}")).unwrap();
        assert_eq!(with_defaults.len(), default_templates().len() + 1);
        let numeric = text.replace("\"long-term\"", "2");
        assert_eq!(
            parse_templates(&numeric).unwrap()[0].kind,
            TemplateKind::OneTime
        );
    }

    #[test]
    fn invalid_templates_are_refused() {
        let no_keywords = Template::new("t", "t", "plain", TemplateKind::OneTime);
        assert!(no_keywords.validate().is_err());
        let bad_enum = Template::new("t", "t", "{{thing1.DATA}}", TemplateKind::OneTime)
            .with_enum("enum_string9", &["a"]);
        assert!(bad_enum.validate().is_err());
        let bad_key = Template::new("t", "t", "{{Thing.DATA}}", TemplateKind::OneTime);
        assert!(bad_key.validate().is_err());
        assert!(parse_templates("[[templates]]\nid = \"x\"\n").is_err());
    }
}
