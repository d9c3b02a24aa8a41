//! The request body of `subscribeMessage.send`.
//!
//! [`SubscribeMessage`] serializes to exactly the JSON body WeChat's send endpoint takes:
//! `{"touser", "template_id", "page"?, "data": {"k": {"value": "v"}}, "miniprogram_state"?, "lang"?}`.
//! Optional fields are omitted (not `null`) when unset, so WeChat applies its defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser::SerializeMap};

/// Which build of the mini program the card opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MiniprogramState {
    /// Not set: omitted on the wire, WeChat's default (formal).
    #[default]
    Unspecified,
    /// `developer` (开发版).
    Developer,
    /// `trial` (体验版).
    Trial,
    /// `formal` (正式版).
    Formal,
}

impl MiniprogramState {
    /// The wire value, `None` when unspecified (the field is then omitted).
    pub fn as_wire(self) -> Option<&'static str> {
        match self {
            MiniprogramState::Unspecified => None,
            MiniprogramState::Developer => Some("developer"),
            MiniprogramState::Trial => Some("trial"),
            MiniprogramState::Formal => Some("formal"),
        }
    }

    /// True when unspecified (omitted on the wire).
    pub fn is_unspecified(&self) -> bool {
        *self == MiniprogramState::Unspecified
    }
}

impl Serialize for MiniprogramState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_wire() {
            Some(value) => serializer.serialize_str(value),
            None => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for MiniprogramState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Option::<String>::deserialize(deserializer)?;
        match value.as_deref() {
            None | Some("") => Ok(MiniprogramState::Unspecified),
            Some("developer") => Ok(MiniprogramState::Developer),
            Some("trial") => Ok(MiniprogramState::Trial),
            Some("formal") => Ok(MiniprogramState::Formal),
            Some(other) => Err(de::Error::unknown_variant(
                other,
                &["developer", "trial", "formal"],
            )),
        }
    }
}

/// One subscribe message, as WeChat's send endpoint receives it.
///
/// `page` and `lang` are omitted on the wire when `None` or empty (an empty value would only make
/// WeChat reject the message or ignore it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeMessage {
    /// Recipient openid.
    pub touser: String,
    /// Private template id.
    pub template_id: String,
    /// Page opened from the card; omitted on the wire when `None`.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub page: Option<String>,
    /// Keyword -> value; each value is wrapped as `{"value": ...}` on the wire.
    #[serde(
        serialize_with = "serialize_data",
        deserialize_with = "deserialize_data"
    )]
    pub data: BTreeMap<String, String>,
    /// Which build the card opens; omitted on the wire when unspecified.
    #[serde(default, skip_serializing_if = "MiniprogramState::is_unspecified")]
    pub miniprogram_state: MiniprogramState,
    /// `zh_CN`, `en_US`, `zh_HK` or `zh_TW`; omitted on the wire when `None`.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub lang: Option<String>,
}

fn is_none_or_empty(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(str::is_empty)
}

/// One keyword's entry in `data`: `{"value": "..."}`.
#[derive(Serialize)]
struct DataValueRef<'a> {
    value: &'a str,
}

/// `{"value": "..."}` as WeChat's doc shows it; unknown fields such as a stray `color` (from the
/// retired template-message API) are ignored.
#[derive(Deserialize)]
struct DataValue {
    value: String,
}

fn serialize_data<S: Serializer>(
    data: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(data.len()))?;
    for (key, value) in data {
        map.serialize_entry(key, &DataValueRef { value })?;
    }
    map.end()
}

fn deserialize_data<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let wrapped = BTreeMap::<String, DataValue>::deserialize(deserializer)?;
    Ok(wrapped
        .into_iter()
        .map(|(key, entry)| (key, entry.value))
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message() -> SubscribeMessage {
        SubscribeMessage {
            touser: "oUSER".into(),
            template_id: "TMPL".into(),
            page: None,
            data: BTreeMap::from([
                ("thing1".to_string(), "数学课".to_string()),
                ("date2".to_string(), "2019年10月1日 15:01".to_string()),
            ]),
            miniprogram_state: MiniprogramState::Unspecified,
            lang: None,
        }
    }

    #[test]
    fn minimal_message_omits_optional_fields() {
        let value = serde_json::to_value(message()).unwrap();
        assert_eq!(
            value,
            json!({
                "touser": "oUSER",
                "template_id": "TMPL",
                "data": {
                    "thing1": {"value": "数学课"},
                    "date2": {"value": "2019年10月1日 15:01"},
                },
            })
        );
    }

    #[test]
    fn full_message_has_every_field() {
        let mut message = message();
        message.page = Some("pages/order/detail?id=42".into());
        message.miniprogram_state = MiniprogramState::Trial;
        message.lang = Some("en_US".into());
        let value = serde_json::to_value(&message).unwrap();
        assert_eq!(value["page"], "pages/order/detail?id=42");
        assert_eq!(value["miniprogram_state"], "trial");
        assert_eq!(value["lang"], "en_US");
        assert_eq!(value.as_object().unwrap().len(), 6);
        // The text is UTF-8, not \u-escaped, and round-trips.
        let text = serde_json::to_string(&message).unwrap();
        assert!(text.contains("数学课"));
        assert_eq!(
            serde_json::from_str::<SubscribeMessage>(&text).unwrap(),
            message
        );
    }

    #[test]
    fn every_state_has_its_wire_name() {
        for (state, wire) in [
            (MiniprogramState::Developer, "developer"),
            (MiniprogramState::Trial, "trial"),
            (MiniprogramState::Formal, "formal"),
        ] {
            let mut message = message();
            message.miniprogram_state = state;
            assert_eq!(
                serde_json::to_value(message).unwrap()["miniprogram_state"],
                wire
            );
        }
    }

    #[test]
    fn empty_page_and_lang_are_omitted() {
        let mut message = message();
        message.page = Some(String::new());
        message.lang = Some(String::new());
        let value = serde_json::to_value(message).unwrap();
        assert!(value.get("page").is_none());
        assert!(value.get("lang").is_none());
    }

    #[test]
    fn deserializes_what_wechat_receives() {
        let body = json!({
            "touser": "o1",
            "template_id": "t1",
            "data": {"thing1": {"value": "x", "color": "#173177"}},
            "miniprogram_state": "developer",
        });
        let parsed: SubscribeMessage = serde_json::from_value(body).unwrap();
        assert_eq!(parsed.data["thing1"], "x");
        assert_eq!(parsed.miniprogram_state, MiniprogramState::Developer);
        assert_eq!(parsed.page, None);
        assert!(
            serde_json::from_value::<SubscribeMessage>(
                json!({"touser": "o", "template_id": "t", "data": {}, "miniprogram_state": "beta"})
            )
            .is_err()
        );
    }
}
