//! The events WeChat pushes, parsed from XML or JSON with every documented quirk: JSON's
//! `List` as an object or an array, numbers (`CreateTime`, `PopupScene`, `ErrorCode`, `MsgID`)
//! as numbers or strings; XML's one `<List>` element per template.

use serde::Deserialize;
use serde_json::Value;

/// An event push, as far as the service cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushEvent {
    /// `FromUserName`: the user's openid.
    pub openid: String,
    /// `CreateTime`, as WeChat wrote it (part of the dedupe key).
    pub create_time: String,
    /// What happened.
    pub kind: EventKind,
}

/// The event types the service applies; any other is [`EventKind::Other`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `subscribe_msg_popup_event`: (template id, `SubscribeStatusString`) per template.
    Popup(Vec<(String, String)>),
    /// `subscribe_msg_change_event`: (template id, `SubscribeStatusString`) per template.
    Change(Vec<(String, String)>),
    /// `subscribe_msg_sent_event`: one result per template.
    Sent(Vec<SentItem>),
    /// Any other `MsgType`/`Event`, named for the log and the counter.
    Other(String),
}

/// One `subscribe_msg_sent_event` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentItem {
    /// `TemplateId`.
    pub template_id: String,
    /// `MsgID`.
    pub msgid: u64,
    /// `ErrorCode`: 0 = delivered.
    pub errcode: i32,
    /// `ErrorStatus`.
    pub status: String,
}

impl PushEvent {
    /// The key WeChat's retries of this push share: openid, CreateTime, the event and its
    /// templates (and msgids).
    pub fn dedupe_key(&self) -> String {
        let mut key = format!("{}\n{}\n", self.openid, self.create_time);
        match &self.kind {
            EventKind::Popup(items) | EventKind::Change(items) => {
                key.push_str(if matches!(self.kind, EventKind::Popup(_)) {
                    "popup"
                } else {
                    "change"
                });
                for (template, status) in items {
                    key.push_str(&format!("\n{template}={status}"));
                }
            }
            EventKind::Sent(items) => {
                key.push_str("sent");
                for item in items {
                    key.push_str(&format!("\n{}={}", item.template_id, item.msgid));
                }
            }
            EventKind::Other(name) => key.push_str(name),
        }
        key
    }
}

/// Why a body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Neither XML nor JSON, or not the shape WeChat sends.
    #[error("the body is not a wechat push ({0})")]
    Malformed(String),
    /// A field the event needs is missing or has the wrong type.
    #[error("field {0} is missing or malformed")]
    Field(&'static str),
}

/// A body's format, by its first non-blank byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `<xml>...`.
    Xml,
    /// `{...}`.
    Json,
}

/// The format of `body`, if it is one.
pub fn format_of(body: &[u8]) -> Option<Format> {
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'<') => Some(Format::Xml),
        Some(b'{') => Some(Format::Json),
        _ => None,
    }
}

/// The `Encrypt` field of an encrypted body (`None` when it has none).
pub fn encrypted_field(body: &[u8]) -> Result<Option<String>, ParseError> {
    Ok(match format_of(body) {
        Some(Format::Xml) => xml_envelope(body)?.encrypt,
        Some(Format::Json) => json_value(body)?
            .get("Encrypt")
            .and_then(Value::as_str)
            .map(str::to_owned),
        None => return Err(ParseError::Malformed("neither xml nor json".into())),
    })
}

/// Parses a plaintext event body.
pub fn parse(body: &[u8]) -> Result<PushEvent, ParseError> {
    match format_of(body) {
        Some(Format::Xml) => from_xml(xml_envelope(body)?),
        Some(Format::Json) => from_json(&json_value(body)?),
        None => Err(ParseError::Malformed("neither xml nor json".into())),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct XmlEnvelope {
    #[serde(rename = "FromUserName")]
    from_user: Option<String>,
    #[serde(rename = "CreateTime")]
    create_time: Option<String>,
    #[serde(rename = "MsgType")]
    msg_type: Option<String>,
    #[serde(rename = "Event")]
    event: Option<String>,
    #[serde(rename = "Encrypt")]
    encrypt: Option<String>,
    #[serde(rename = "SubscribeMsgPopupEvent")]
    popup: Option<XmlList>,
    #[serde(rename = "SubscribeMsgChangeEvent")]
    change: Option<XmlList>,
    #[serde(rename = "SubscribeMsgSentEvent")]
    sent: Option<XmlList>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct XmlList {
    #[serde(rename = "List")]
    items: Vec<XmlItem>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct XmlItem {
    #[serde(rename = "TemplateId")]
    template_id: Option<String>,
    #[serde(rename = "SubscribeStatusString")]
    status_string: Option<String>,
    #[serde(rename = "MsgID")]
    msgid: Option<String>,
    #[serde(rename = "ErrorCode")]
    errcode: Option<String>,
    #[serde(rename = "ErrorStatus")]
    error_status: Option<String>,
}

fn xml_envelope(body: &[u8]) -> Result<XmlEnvelope, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::Malformed("not utf-8".into()))?;
    quick_xml::de::from_str(text).map_err(|error| ParseError::Malformed(format!("xml: {error}")))
}

fn json_value(body: &[u8]) -> Result<Value, ParseError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ParseError::Malformed(format!("json: {error}")))?;
    if !value.is_object() {
        return Err(ParseError::Malformed("json: not an object".into()));
    }
    Ok(value)
}

fn from_xml(envelope: XmlEnvelope) -> Result<PushEvent, ParseError> {
    let openid = non_empty(envelope.from_user).ok_or(ParseError::Field("FromUserName"))?;
    let create_time = non_empty(envelope.create_time).unwrap_or_default();
    let event = envelope.event.unwrap_or_default();
    let items = |list: Option<XmlList>| list.map(|list| list.items).unwrap_or_default();
    let kind = match (envelope.msg_type.as_deref().map(str::trim), event.trim()) {
        (Some("event"), "subscribe_msg_popup_event") => {
            EventKind::Popup(statuses(items(envelope.popup))?)
        }
        (Some("event"), "subscribe_msg_change_event") => {
            EventKind::Change(statuses(items(envelope.change))?)
        }
        (Some("event"), "subscribe_msg_sent_event") => EventKind::Sent(
            items(envelope.sent)
                .into_iter()
                .map(|item| {
                    sent_item(
                        item.template_id,
                        item.msgid.as_deref(),
                        item.errcode.as_deref(),
                        item.error_status,
                    )
                })
                .collect::<Result<_, _>>()?,
        ),
        (msg_type, event) => EventKind::Other(other_name(msg_type, event)),
    };
    Ok(PushEvent {
        openid,
        create_time,
        kind,
    })
}

fn statuses(items: Vec<XmlItem>) -> Result<Vec<(String, String)>, ParseError> {
    items
        .into_iter()
        .map(|item| {
            Ok((
                non_empty(item.template_id).ok_or(ParseError::Field("TemplateId"))?,
                non_empty(item.status_string).ok_or(ParseError::Field("SubscribeStatusString"))?,
            ))
        })
        .collect()
}

fn from_json(value: &Value) -> Result<PushEvent, ParseError> {
    let openid = text(value.get("FromUserName")).ok_or(ParseError::Field("FromUserName"))?;
    let create_time = text(value.get("CreateTime")).unwrap_or_default();
    let msg_type = text(value.get("MsgType"));
    let event = text(value.get("Event")).unwrap_or_default();
    // `List` comes as one object or as an array of them.
    let items: Vec<&Value> = match value.get("List") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(item @ Value::Object(_)) => vec![item],
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(ParseError::Field("List")),
    };
    let statuses = || -> Result<Vec<(String, String)>, ParseError> {
        items
            .iter()
            .map(|item| {
                Ok((
                    text(item.get("TemplateId")).ok_or(ParseError::Field("TemplateId"))?,
                    text(item.get("SubscribeStatusString"))
                        .ok_or(ParseError::Field("SubscribeStatusString"))?,
                ))
            })
            .collect()
    };
    let kind = match (msg_type.as_deref(), event.as_str()) {
        (Some("event"), "subscribe_msg_popup_event") => EventKind::Popup(statuses()?),
        (Some("event"), "subscribe_msg_change_event") => EventKind::Change(statuses()?),
        (Some("event"), "subscribe_msg_sent_event") => EventKind::Sent(
            items
                .iter()
                .map(|item| {
                    sent_item(
                        text(item.get("TemplateId")),
                        text(item.get("MsgID")).as_deref(),
                        text(item.get("ErrorCode")).as_deref(),
                        text(item.get("ErrorStatus")),
                    )
                })
                .collect::<Result<_, _>>()?,
        ),
        (msg_type, event) => EventKind::Other(other_name(msg_type, event)),
    };
    Ok(PushEvent {
        openid,
        create_time,
        kind,
    })
}

fn sent_item(
    template_id: Option<String>,
    msgid: Option<&str>,
    errcode: Option<&str>,
    status: Option<String>,
) -> Result<SentItem, ParseError> {
    Ok(SentItem {
        template_id: non_empty(template_id).ok_or(ParseError::Field("TemplateId"))?,
        msgid: msgid
            .and_then(|msgid| msgid.trim().parse().ok())
            .ok_or(ParseError::Field("MsgID"))?,
        errcode: errcode
            .and_then(|code| code.trim().parse().ok())
            .ok_or(ParseError::Field("ErrorCode"))?,
        status: status.unwrap_or_default(),
    })
}

/// A JSON string or number as text (WeChat writes numbers either way).
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.trim().to_owned()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// `msgtype/event` for an event the service does not apply, bounded for a log field.
fn other_name(msg_type: Option<&str>, event: &str) -> String {
    format!("{}/{}", msg_type.unwrap_or(""), event)
        .chars()
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_with_one_or_several_lists_and_cdata() {
        let one = br#"<xml><ToUserName><![CDATA[gh_1]]></ToUserName>
            <FromUserName><![CDATA[oUser]]></FromUserName><CreateTime>1620963428</CreateTime>
            <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_change_event]]></Event>
            <SubscribeMsgChangeEvent><List><TemplateId><![CDATA[T1]]></TemplateId>
            <SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString></List>
            </SubscribeMsgChangeEvent></xml>"#;
        let event = parse(one).unwrap();
        assert_eq!(event.openid, "oUser");
        assert_eq!(event.create_time, "1620963428");
        assert_eq!(
            event.kind,
            EventKind::Change(vec![("T1".into(), "reject".into())])
        );

        let two = b"<xml><FromUserName>oUser</FromUserName><CreateTime>1</CreateTime>\
            <MsgType>event</MsgType><Event>subscribe_msg_popup_event</Event>\
            <SubscribeMsgPopupEvent>\
            <List><TemplateId>T1</TemplateId><SubscribeStatusString>accept</SubscribeStatusString><PopupScene>0</PopupScene></List>\
            <List><TemplateId>T2</TemplateId><SubscribeStatusString>reject</SubscribeStatusString><PopupScene>0</PopupScene></List>\
            </SubscribeMsgPopupEvent></xml>";
        assert_eq!(
            parse(two).unwrap().kind,
            EventKind::Popup(vec![
                ("T1".into(), "accept".into()),
                ("T2".into(), "reject".into())
            ])
        );
    }

    #[test]
    fn json_list_as_object_or_array_and_numbers_either_way() {
        let object = br#"{"FromUserName":"oUser","CreateTime":"1620963428","MsgType":"event",
            "Event":"subscribe_msg_sent_event","List":{"TemplateId":"T1",
            "MsgID":"1864323726461255680","ErrorCode":"0","ErrorStatus":"success"}}"#;
        let array = br#"{"FromUserName":"oUser","CreateTime":1620963428,"MsgType":"event",
            "Event":"subscribe_msg_sent_event","List":[{"TemplateId":"T1",
            "MsgID":1864323726461255680,"ErrorCode":0,"ErrorStatus":"success"}]}"#;
        let expected = EventKind::Sent(vec![SentItem {
            template_id: "T1".into(),
            msgid: 1_864_323_726_461_255_680,
            errcode: 0,
            status: "success".into(),
        }]);
        let from_object = parse(object).unwrap();
        let from_array = parse(array).unwrap();
        assert_eq!(from_object.kind, expected);
        assert_eq!(from_array.kind, expected);
        // The same event, however written, has the same dedupe key.
        assert_eq!(from_object.dedupe_key(), from_array.dedupe_key());
    }

    #[test]
    fn other_events_are_named_and_broken_bodies_refused() {
        let text = b"<xml><FromUserName>oUser</FromUserName><CreateTime>1</CreateTime>\
            <MsgType>text</MsgType><Content>hello</Content></xml>";
        assert_eq!(parse(text).unwrap().kind, EventKind::Other("text/".into()));
        let no_user = br#"{"MsgType":"event","Event":"subscribe_msg_popup_event"}"#;
        assert_eq!(parse(no_user), Err(ParseError::Field("FromUserName")));
        let no_template = br#"{"FromUserName":"o","MsgType":"event",
            "Event":"subscribe_msg_popup_event","List":{"SubscribeStatusString":"accept"}}"#;
        assert_eq!(parse(no_template), Err(ParseError::Field("TemplateId")));
        let bad_msgid =
            br#"{"FromUserName":"o","MsgType":"event","Event":"subscribe_msg_sent_event",
            "List":{"TemplateId":"T","MsgID":"x","ErrorCode":0}}"#;
        assert_eq!(parse(bad_msgid), Err(ParseError::Field("MsgID")));
        assert!(matches!(parse(b"hello"), Err(ParseError::Malformed(_))));
        assert!(matches!(
            parse(b"<xml><unclosed></xml>"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(parse(b"[1,2]"), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn the_encrypt_field_is_found_in_either_format() {
        let xml = b"<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[abc=]]></Encrypt></xml>";
        assert_eq!(encrypted_field(xml).unwrap().as_deref(), Some("abc="));
        let json = br#"{"ToUserName":"gh","Encrypt":"abc="}"#;
        assert_eq!(encrypted_field(json).unwrap().as_deref(), Some("abc="));
        assert_eq!(encrypted_field(br#"{"ToUserName":"gh"}"#).unwrap(), None);
    }
}
