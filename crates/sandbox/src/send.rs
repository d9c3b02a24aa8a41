//! `POST /cgi-bin/message/subscribe/send`: the checks WeChat makes, in its order, then delivery
//! to the inbox.
//!
//! Order: token (41001, 40014, 40001, 42001); injected faults; quotas (45009, 45011); body is
//! JSON (47001); `touser` (40003); `template_id` (40037); `data` (47003); `page` (41030);
//! `miniprogram_state` and `lang` (47003); subscription (43101).
//!
//! A delivery goes to the inbox, a refusal to the failed sends, and either to the console's
//! live events.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::{
    Sandbox,
    events::SandboxEvent,
    failures::{self, FailedSend},
    faults::FaultEndpoint,
    inbox::InboxMessage,
    keywords,
    params::{is_valid_openid, query_param},
    reply::{Reply, unix_ms},
    state::{Inner, Mutable, QuotaExceeded, RecordedSend, SubscriptionKey},
    templates::{Keyword, Template},
    tokens::{TokenCheck, token_prefix},
};

/// Values WeChat accepts for `miniprogram_state`.
const MINIPROGRAM_STATES: &[&str] = &["developer", "trial", "formal"];
/// Values WeChat accepts for `lang`, the language of the card's "进入小程序查看" label.
const LANGS: &[&str] = &["zh_CN", "en_US", "zh_HK", "zh_TW"];

pub(crate) async fn send(
    State(sandbox): State<Sandbox>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let inner = &sandbox.inner;
    let _in_flight = inner.enter_send();
    let token = query_param(query.as_deref(), "access_token");
    let outcome = process(inner, token.as_deref(), &body, Instant::now());
    if let Some(delivered) = &outcome.delivered {
        sandbox.pusher.push(
            &delivered.appid,
            &delivered.openid,
            &delivered.template_id,
            crate::push::PushEvent::Sent {
                msgid: delivered.msgid,
            },
        );
    }
    if let Some(latency) = outcome.latency {
        tokio::time::sleep(latency).await;
    }
    outcome.reply.into_response()
}

struct Outcome {
    reply: Reply,
    /// Hold the answer back this long (an injected latency).
    latency: Option<Duration>,
    /// An injected fault answered instead of the checks.
    injected: bool,
    /// The message delivered, for the `subscribe_msg_sent_event` push.
    delivered: Option<Delivered>,
}

/// A message that reached the inbox.
struct Delivered {
    appid: String,
    openid: String,
    template_id: String,
    msgid: u64,
}

impl Outcome {
    fn checked(reply: Reply, latency: Option<Duration>) -> Outcome {
        Outcome {
            reply,
            latency,
            injected: false,
            delivered: None,
        }
    }

    fn injected(reply: Reply, latency: Option<Duration>) -> Outcome {
        Outcome {
            reply,
            latency,
            injected: true,
            delivered: None,
        }
    }
}

fn process(inner: &Inner, token: Option<&str>, raw_body: &[u8], now: Instant) -> Outcome {
    let body: Option<Value> = serde_json::from_slice(raw_body).ok();
    let touser = body
        .as_ref()
        .and_then(|b| b.get("touser"))
        .and_then(Value::as_str);
    let mut state = inner.lock();
    state.stats.send_requests += 1;
    state.record_send(RecordedSend {
        access_token: token.map(str::to_string),
        body: body.clone(),
        raw_body: String::from_utf8_lossy(raw_body).into_owned(),
        time_unix_ms: unix_ms(),
    });
    let outcome = if inner.config.fixed_answer {
        fixed_answer(inner, &mut state, token, touser)
    } else {
        check_and_deliver(inner, &mut state, token, body.as_ref(), touser, now)
    };
    match outcome.reply.errcode_of() {
        Some(0) => {}
        Some(errcode) => *state.stats.rejected.entry(errcode).or_default() += 1,
        None if outcome.reply == Reply::Reset => state.stats.resets += 1,
        None => state.stats.http_errors += 1,
    }
    if outcome.reply.errcode_of() != Some(0) {
        let failure = failed_send(&state, token, body.as_ref(), &outcome);
        state.record_failure(failure.clone());
        inner
            .events
            .publish(|| SandboxEvent::Failed(Box::new(failure)));
    }
    drop(state);
    tracing::debug!(
        token = token.map(token_prefix),
        touser,
        errcode = outcome.reply.errcode_of(),
        "send answered"
    );
    outcome
}

/// Benchmark mode: no checks, only faults, then ok with a msgid.
fn fixed_answer(
    inner: &Inner,
    state: &mut Mutable,
    token: Option<&str>,
    touser: Option<&str>,
) -> Outcome {
    let appid = token
        .and_then(|t| state.tokens.owner(t))
        .map(str::to_string);
    let latency = match state
        .faults
        .take(FaultEndpoint::Send, appid.as_deref(), touser)
    {
        Some(action) => match action.answer {
            Some(answer) => return Outcome::injected(answer.into(), action.latency),
            None => action.latency,
        },
        None => None,
    };
    let msgid = state.next_msgid();
    state.stats.delivered += 1;
    Outcome::checked(ok_reply(inner, msgid), latency)
}

fn check_and_deliver(
    inner: &Inner,
    state: &mut Mutable,
    token: Option<&str>,
    body: Option<&Value>,
    touser: Option<&str>,
    now: Instant,
) -> Outcome {
    let appid = match state.tokens.check(token, now) {
        TokenCheck::Valid { appid } => appid,
        rejected => {
            return Outcome::checked(Reply::errcode(rejected.errcode().unwrap_or(40014)), None);
        }
    };
    let mut latency = None;
    if let Some(action) = state.faults.take(FaultEndpoint::Send, Some(&appid), touser) {
        latency = action.latency;
        if let Some(answer) = action.answer {
            return Outcome::injected(answer.into(), latency);
        }
    }
    let (reply, delivered) = match state.use_quota(&inner.config, &appid, inner.since_start(now)) {
        Err(QuotaExceeded::Daily) => (Reply::errcode(45009), None),
        Err(QuotaExceeded::Minute) => (Reply::errcode(45011), None),
        Ok(()) => match check_message(inner, &appid, body) {
            Err(reply) => (reply, None),
            Ok(message) => deliver(inner, state, appid, message),
        },
    };
    Outcome {
        delivered,
        ..Outcome::checked(reply, latency)
    }
}

/// The record of a refused send: what was asked, what was answered, and why.
fn failed_send(
    state: &Mutable,
    token: Option<&str>,
    body: Option<&Value>,
    outcome: &Outcome,
) -> FailedSend {
    let field = |name: &str| {
        body.and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (errcode, errmsg, http_status) = match &outcome.reply {
        Reply::Json(value) => (
            value.get("errcode").and_then(Value::as_i64),
            value
                .get("errmsg")
                .and_then(Value::as_str)
                .map(str::to_string),
            None,
        ),
        Reply::Http { status, .. } => (None, None, Some(*status)),
        // A reset is only ever injected: no errcode, no status, only a closed connection.
        Reply::Reset => (None, None, None),
    };
    let openid = field("touser");
    let appid = token
        .and_then(|t| state.tokens.owner(t))
        .map(str::to_string);
    let template_id = field("template_id");
    let cause = match (errcode, &appid, &openid, &template_id) {
        (Some(43101), Some(appid), Some(openid), Some(template_id)) if !outcome.injected => {
            let key = SubscriptionKey {
                appid: appid.clone(),
                openid: openid.clone(),
                template_id: template_id.clone(),
            };
            let rejected = state.subscriptions.get(&key).is_some_and(|s| s.rejected);
            failures::not_subscribed(rejected)
        }
        _ => failures::describe(errcode, http_status, outcome.injected),
    };
    FailedSend {
        openid,
        appid,
        template_id,
        cause,
        errcode,
        errmsg,
        http_status,
        injected: outcome.injected,
        time_unix_ms: unix_ms(),
    }
}

/// A send body that passed every check but the subscription.
struct Message {
    touser: String,
    template: Template,
    data: BTreeMap<String, String>,
    page: Option<String>,
    miniprogram_state: String,
    lang: String,
}

fn check_message(inner: &Inner, appid: &str, body: Option<&Value>) -> Result<Message, Reply> {
    let Some(Value::Object(body)) = body else {
        return Err(Reply::errcode(47001));
    };
    let touser = match body.get("touser") {
        Some(Value::String(openid)) if is_valid_openid(openid) => openid.clone(),
        _ => return Err(Reply::errcode(40003)),
    };
    let template = body
        .get("template_id")
        .and_then(Value::as_str)
        .and_then(|id| inner.template(appid, id))
        .ok_or_else(|| Reply::errcode(40037))?;
    let data = check_data(&template, body.get("data"))?;
    let page = check_page(inner.config.pages.as_deref(), body.get("page"))?;
    let miniprogram_state = check_choice(
        body.get("miniprogram_state"),
        "miniprogram_state",
        MINIPROGRAM_STATES,
        "formal",
    )?;
    let lang = check_choice(body.get("lang"), "lang", LANGS, "zh_CN")?;
    Ok(Message {
        touser,
        template,
        data,
        page,
        miniprogram_state,
        lang,
    })
}

/// `data` must hold exactly the template's keywords, each `{"value": "<non-empty string>"}`
/// obeying its keyword's rule. The first offender is named: keywords in content order, then
/// extra keys.
fn check_data(
    template: &Template,
    data: Option<&Value>,
) -> Result<BTreeMap<String, String>, Reply> {
    let no_entries = Map::new();
    let entries = match data {
        None | Some(Value::Null) => &no_entries,
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(Reply::argument_invalid("data")),
    };
    let mut values = BTreeMap::new();
    for keyword in template.keywords() {
        let value = entries
            .get(&keyword.key)
            .and_then(|entry| entry.get("value"))
            .and_then(Value::as_str);
        match value {
            Some(value) if value_obeys_rule(template, &keyword, value) => {
                values.insert(keyword.key, value.to_string());
            }
            _ => {
                return Err(Reply::argument_invalid(&format!(
                    "data.{}.value",
                    keyword.key
                )));
            }
        }
    }
    if let Some(extra) = entries.keys().find(|key| !values.contains_key(*key)) {
        return Err(Reply::argument_invalid(&format!("data.{extra}.value")));
    }
    Ok(values)
}

/// An enumerated keyword takes only the template's values; any other obeys its type's rule.
fn value_obeys_rule(template: &Template, keyword: &Keyword, value: &str) -> bool {
    if let Some(allowed) = template.enum_values.get(&keyword.key) {
        return allowed.iter().any(|a| a == value);
    }
    keywords::check(&keyword.key, value).is_ok()
}

/// `page` is optional (absent or empty: no page); with a page list configured, its path (the
/// part before `?`, leading `/` ignored) must be in it.
fn check_page(pages: Option<&[String]>, page: Option<&Value>) -> Result<Option<String>, Reply> {
    let page = match page {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(page)) if page.is_empty() => return Ok(None),
        Some(Value::String(page)) => page,
        Some(_) => return Err(Reply::errcode(41030)),
    };
    if let Some(pages) = pages {
        let path = page.split('?').next().unwrap_or_default();
        let path = path.trim_start_matches('/');
        if !pages.iter().any(|p| p.trim_start_matches('/') == path) {
            return Err(Reply::errcode(41030));
        }
    }
    Ok(Some(page.clone()))
}

/// An optional field with a fixed set of values; anything else is 47003 naming the field.
fn check_choice(
    value: Option<&Value>,
    field: &str,
    allowed: &[&str],
    default: &str,
) -> Result<String, Reply> {
    match value {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(s.clone()),
        Some(_) => Err(Reply::argument_invalid(field)),
    }
}

fn deliver(
    inner: &Inner,
    state: &mut Mutable,
    appid: String,
    message: Message,
) -> (Reply, Option<Delivered>) {
    let key = SubscriptionKey {
        appid,
        openid: message.touser,
        template_id: message.template.id.clone(),
    };
    let auto_accept = inner.auto_accept.load(std::sync::atomic::Ordering::SeqCst);
    if !state.consume_grant(&key, message.template.kind, auto_accept) {
        return (Reply::errcode(43101), None);
    }
    let msgid = state.next_msgid();
    let delivered = Delivered {
        appid: key.appid.clone(),
        openid: key.openid.clone(),
        template_id: key.template_id.clone(),
        msgid,
    };
    let message = InboxMessage {
        text: message.template.render(&message.data),
        title: message.template.title.clone(),
        openid: key.openid,
        appid: key.appid,
        template_id: key.template_id,
        data: message.data,
        page: message.page,
        miniprogram_state: message.miniprogram_state,
        lang: message.lang,
        msgid,
        time_unix_ms: unix_ms(),
    };
    inner
        .events
        .publish(|| SandboxEvent::Delivered(Box::new(message.clone())));
    state.deliver(message);
    (ok_reply(inner, msgid), Some(delivered))
}

fn ok_reply(inner: &Inner, msgid: u64) -> Reply {
    let msgid = if inner.config.msgid_as_string {
        Value::String(msgid.to_string())
    } else {
        json!(msgid)
    };
    Reply::Json(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::default_templates;

    fn errmsg_of(reply: Reply) -> String {
        let Reply::Json(value) = reply else {
            panic!("not json")
        };
        value["errmsg"].as_str().unwrap().to_string()
    }

    #[test]
    fn data_must_match_the_keywords_exactly() {
        let template = &default_templates()[0];
        let data = json!({
            "phrase1": {"value": "张三"},
            "date5": {"value": "2019年10月1日 15:01"},
            "phrase4": {"value": "李老师"},
        });
        let values = check_data(template, Some(&data)).unwrap();
        assert_eq!(values["phrase1"], "张三");

        let mut missing = data.clone();
        missing.as_object_mut().unwrap().remove("date5");
        let errmsg = errmsg_of(check_data(template, Some(&missing)).unwrap_err());
        assert!(errmsg.starts_with("argument invalid! data.date5.value rid: "));

        let mut extra = data.clone();
        extra["thing9"] = json!({"value": "x"});
        let errmsg = errmsg_of(check_data(template, Some(&extra)).unwrap_err());
        assert!(errmsg.starts_with("argument invalid! data.thing9.value rid: "));

        let mut number = data.clone();
        number["phrase4"] = json!({"value": 7});
        let errmsg = errmsg_of(check_data(template, Some(&number)).unwrap_err());
        assert!(errmsg.starts_with("argument invalid! data.phrase4.value"));

        let mut empty = data;
        empty["phrase1"] = json!({"value": "  "});
        let errmsg = errmsg_of(check_data(template, Some(&empty)).unwrap_err());
        assert!(errmsg.starts_with("argument invalid! data.phrase1.value"));

        let errmsg = errmsg_of(check_data(template, Some(&json!([]))).unwrap_err());
        assert!(errmsg.starts_with("argument invalid! data rid: "));
    }

    #[test]
    fn pages_compare_the_path_before_the_query() {
        let pages = vec!["pages/index/index".to_string()];
        let ok = check_page(Some(&pages), Some(&json!("/pages/index/index?id=1")));
        assert_eq!(ok.unwrap().as_deref(), Some("/pages/index/index?id=1"));
        assert!(check_page(Some(&pages), Some(&json!("pages/other?x=1"))).is_err());
        assert!(check_page(None, Some(&json!("anything"))).is_ok());
        assert_eq!(check_page(Some(&pages), Some(&json!(""))).unwrap(), None);
        assert!(check_page(None, Some(&json!(3))).is_err());
    }
}
