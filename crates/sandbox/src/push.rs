//! The sandbox playing WeChat's 消息推送: when the user answers the subscribe popup (the
//! control API's subscriptions), turns a template off from the settings (a revocation), or a
//! message is delivered, it pushes `subscribe_msg_popup_event`, `subscribe_msg_change_event`
//! or `subscribe_msg_sent_event` to the app's configured push URL, signed (and, per mode,
//! encrypted) exactly as WeChat does, in XML or JSON. Like WeChat it retries a push that got
//! no `success` within 5 s, 3 attempts in all.
//!
//! The signing and sealing are its own ([`seal`]), written from WeChat's description: the
//! service's push endpoint is checked against an independent writer of the format.

mod seal;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

pub use seal::PushMode;
pub(crate) use seal::SealingKey;
use seal::signature;

/// Attempts per push, as WeChat makes.
const PUSH_ATTEMPTS: u32 = 3;
/// How long one attempt waits for `success`, as WeChat does.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pushes remembered for `GET /sandbox/pushes`; the oldest go first.
const PUSH_LOG_CAPACITY: usize = 1_000;
/// The mini program's original id (`ToUserName`) in every push.
const ORIGINAL_ID: &str = "gh_sandbox00001";

/// The body format of an app's pushes (数据格式).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushFormat {
    /// XML, WeChat's default.
    #[default]
    Xml,
    /// JSON.
    Json,
}

/// Where and how the sandbox pushes one app's events (the app's 消息推送 settings).
#[derive(Clone)]
pub struct PushTarget {
    /// The URL WeChat would call.
    pub url: Url,
    /// The Token.
    pub token: String,
    /// The EncodingAESKey (43 characters); required unless the mode is plaintext.
    pub encoding_aes_key: Option<String>,
    /// The encryption mode.
    pub mode: PushMode,
    /// XML or JSON.
    pub format: PushFormat,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("url", &self.url.as_str())
            .field("mode", &self.mode)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// One push the sandbox made, for `GET /sandbox/pushes` and tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PushRecord {
    /// The app.
    pub appid: String,
    /// `subscribe_msg_popup_event`, `subscribe_msg_change_event` or `subscribe_msg_sent_event`.
    pub event: String,
    /// The user.
    pub openid: String,
    /// The template.
    pub template_id: String,
    /// `CreateTime`.
    pub create_time: u64,
    /// Attempts made.
    pub attempts: u32,
    /// True when an attempt was answered `success` (or an empty body) with HTTP 200.
    pub acknowledged: bool,
    /// The last attempt's HTTP status, 0 when none came.
    pub last_status: u16,
}

/// One event to push.
pub(crate) enum PushEvent {
    /// The user answered the popup for a template: `accept` or `reject`.
    Popup { status: &'static str },
    /// The user turned the template off from the settings.
    Change,
    /// A message was delivered.
    Sent { msgid: u64 },
}

/// The push side of a sandbox: the targets, an HTTP client and the log.
pub(crate) struct Pusher {
    targets: RwLock<HashMap<String, PushTarget>>,
    client: reqwest::Client,
    log: Mutex<VecDeque<PushRecord>>,
    /// The last `CreateTime` used: each push gets a later one, so no two share a dedupe key.
    last_create_time: Mutex<u64>,
}

impl Default for Pusher {
    fn default() -> Self {
        Self {
            targets: RwLock::default(),
            client: reqwest::Client::builder()
                .timeout(PUSH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            log: Mutex::default(),
            last_create_time: Mutex::new(0),
        }
    }
}

impl Pusher {
    /// Pushes the app's events to `target` from now on (`None`: no more pushes).
    pub(crate) fn set_target(&self, appid: &str, target: Option<PushTarget>) {
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        match target {
            Some(target) => targets.insert(appid.to_owned(), target),
            None => targets.remove(appid),
        };
    }

    /// The pushes made so far, oldest first.
    pub(crate) fn log(&self) -> Vec<PushRecord> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }

    fn next_create_time(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut last = self
            .last_create_time
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *last = now.max(*last + 1);
        *last
    }

    fn record(&self, record: PushRecord) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == PUSH_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Pushes `event` for the app in the background, if the app has a target.
    pub(crate) fn push(
        self: &std::sync::Arc<Self>,
        appid: &str,
        openid: &str,
        template_id: &str,
        event: PushEvent,
    ) {
        let Some(target) = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(appid)
            .cloned()
        else {
            return;
        };
        let create_time = self.next_create_time();
        let (name, fields) = event_fields(&event, template_id);
        let body = body(target.format, openid, create_time, name, &fields);
        let pusher = self.clone();
        let mut record = PushRecord {
            appid: appid.to_owned(),
            event: name.to_owned(),
            openid: openid.to_owned(),
            template_id: template_id.to_owned(),
            create_time,
            attempts: 0,
            acknowledged: false,
            last_status: 0,
        };
        tokio::spawn(async move {
            let request = match signed_request(&target, &record.appid, &body) {
                Ok(request) => request,
                Err(problem) => {
                    tracing::warn!(appid = %record.appid, problem, "sandbox push not made");
                    pusher.record(record);
                    return;
                }
            };
            while record.attempts < PUSH_ATTEMPTS && !record.acknowledged {
                record.attempts += 1;
                match pusher
                    .client
                    .post(request.url.clone())
                    .header("content-type", request.content_type)
                    .body(request.body.clone())
                    .send()
                    .await
                {
                    Ok(response) => {
                        record.last_status = response.status().as_u16();
                        let ok = response.status().is_success();
                        let text = response.text().await.unwrap_or_default();
                        record.acknowledged = ok && matches!(text.trim(), "success" | "");
                    }
                    Err(error) => {
                        tracing::debug!(%error, attempt = record.attempts, "sandbox push failed");
                    }
                }
            }
            tracing::debug!(event = %record.event, acknowledged = record.acknowledged, "sandbox push");
            pusher.record(record);
        });
    }
}

/// The event's name and its `List` fields.
fn event_fields(
    event: &PushEvent,
    template_id: &str,
) -> (&'static str, Vec<(&'static str, String)>) {
    let template = ("TemplateId", template_id.to_owned());
    match event {
        PushEvent::Popup { status } => (
            "subscribe_msg_popup_event",
            vec![
                template,
                ("SubscribeStatusString", (*status).to_owned()),
                ("PopupScene", "0".to_owned()),
            ],
        ),
        PushEvent::Change => (
            "subscribe_msg_change_event",
            vec![template, ("SubscribeStatusString", "reject".to_owned())],
        ),
        PushEvent::Sent { msgid } => (
            "subscribe_msg_sent_event",
            vec![
                template,
                ("MsgID", msgid.to_string()),
                ("ErrorCode", "0".to_owned()),
                ("ErrorStatus", "success".to_owned()),
            ],
        ),
    }
}

/// The plaintext body, as WeChat writes it: XML with one wrapper element per event type, or
/// JSON with a top-level `List` (one object, as WeChat sends a single template) and numbers as
/// strings.
fn body(
    format: PushFormat,
    openid: &str,
    create_time: u64,
    event: &str,
    fields: &[(&'static str, String)],
) -> String {
    match format {
        PushFormat::Xml => {
            let wrapper = match event {
                "subscribe_msg_popup_event" => "SubscribeMsgPopupEvent",
                "subscribe_msg_change_event" => "SubscribeMsgChangeEvent",
                _ => "SubscribeMsgSentEvent",
            };
            let list: String = fields
                .iter()
                .map(|(name, value)| format!("<{name}><![CDATA[{value}]]></{name}>"))
                .collect();
            format!(
                "<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName>\
                 <FromUserName><![CDATA[{openid}]]></FromUserName>\
                 <CreateTime>{create_time}</CreateTime>\
                 <MsgType><![CDATA[event]]></MsgType>\
                 <Event><![CDATA[{event}]]></Event>\
                 <{wrapper}><List>{list}</List></{wrapper}></xml>"
            )
        }
        PushFormat::Json => {
            let list: serde_json::Map<String, Value> = fields
                .iter()
                .map(|(name, value)| ((*name).to_owned(), Value::String(value.clone())))
                .collect();
            json!({
                "ToUserName": ORIGINAL_ID,
                "FromUserName": openid,
                "CreateTime": create_time.to_string(),
                "MsgType": "event",
                "Event": event,
                "List": list,
            })
            .to_string()
        }
    }
}

struct SignedRequest {
    url: Url,
    content_type: &'static str,
    body: String,
}

/// The URL with WeChat's query (`signature`, `timestamp`, `nonce`; encrypted modes add
/// `encrypt_type=aes` and `msg_signature`) and the body as the mode wants it.
fn signed_request(target: &PushTarget, appid: &str, plain: &str) -> Result<SignedRequest, String> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let nonce = fastrand::u32(100_000_000..1_000_000_000).to_string();
    let query_signature = signature(&[&target.token, &timestamp, &nonce]);
    let mut url = target.url.clone();
    url.query_pairs_mut()
        .append_pair("signature", &query_signature)
        .append_pair("timestamp", &timestamp)
        .append_pair("nonce", &nonce);
    let content_type = match target.format {
        PushFormat::Xml => "text/xml",
        PushFormat::Json => "application/json",
    };
    if target.mode == PushMode::Plaintext {
        return Ok(SignedRequest {
            url,
            content_type,
            body: plain.to_owned(),
        });
    }
    let key = target
        .encoding_aes_key
        .as_deref()
        .ok_or("an encrypted mode needs an EncodingAESKey")
        .and_then(|key| SealingKey::new(key).ok_or("a malformed EncodingAESKey"))?;
    let random: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let encrypt = key.seal(random, plain.as_bytes(), appid);
    let msg_signature = signature(&[&target.token, &timestamp, &nonce, &encrypt]);
    url.query_pairs_mut()
        .append_pair("encrypt_type", "aes")
        .append_pair("msg_signature", &msg_signature);
    let body = match (target.format, target.mode) {
        (PushFormat::Xml, PushMode::Safe) => format!(
            "<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
        // Compatible: the plaintext fields and the ciphertext side by side.
        (PushFormat::Xml, _) => plain.replacen(
            "</xml>",
            &format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
            1,
        ),
        (PushFormat::Json, PushMode::Safe) => {
            json!({"ToUserName": ORIGINAL_ID, "Encrypt": encrypt}).to_string()
        }
        (PushFormat::Json, _) => {
            let mut value: Value = serde_json::from_str(plain).unwrap_or_default();
            value["Encrypt"] = Value::String(encrypt);
            value.to_string()
        }
    };
    Ok(SignedRequest {
        url,
        content_type,
        body,
    })
}
