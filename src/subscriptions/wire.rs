//! Ledger entries and events as compact JSON, for a shared store (a Redis hash field per
//! template, a pub/sub message per event). Times are unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Kind, LedgerEvent, Side, Source, Status, Subscription, Unpaired, rules::OutcomePatch};

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn time(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

fn kind_code(kind: Kind) -> u64 {
    match kind {
        Kind::Unspecified => 0,
        Kind::OneTime => 1,
        Kind::LongTerm => 2,
    }
}

fn status_code(status: Status) -> u64 {
    match status {
        Status::Unknown => 0,
        Status::Accepted => 1,
        Status::Rejected => 2,
        Status::Banned => 3,
        Status::Filtered => 4,
    }
}

fn source_code(source: Source) -> u64 {
    match source {
        Source::ClientReport => 1,
        Source::PopupEvent => 2,
        Source::ChangeEvent => 3,
        Source::SendOutcome => 4,
    }
}

/// One entry, without its template id (the hash field names it).
pub fn encode(entry: &Subscription) -> String {
    json!({
        "k": kind_code(entry.kind),
        "s": status_code(entry.status),
        "r": entry.remaining,
        "u": millis(entry.updated_at),
        "o": source_code(entry.source),
        "f": entry.refused,
        "p": entry.unpaired.map(|unpaired| json!([
            matches!(unpaired.side, Side::Push),
            unpaired.count,
            millis(unpaired.at),
        ])),
    })
    .to_string()
}

/// The entry of `template_id` stored as `text`; `None` when it cannot be read (treated as no
/// entry, so a send goes as it would without a ledger).
pub fn decode(template_id: &str, text: &str) -> Option<Subscription> {
    let value: Value = serde_json::from_str(text).ok()?;
    let number = |key: &str| value.get(key).and_then(Value::as_u64);
    let unpaired = match value.get("p") {
        Some(Value::Array(parts)) => Some(Unpaired {
            side: if parts.first()?.as_bool()? {
                Side::Push
            } else {
                Side::Client
            },
            count: u32::try_from(parts.get(1)?.as_u64()?).ok()?,
            at: time(parts.get(2)?.as_u64()?),
        }),
        _ => None,
    };
    Some(Subscription {
        template_id: template_id.to_owned(),
        kind: match number("k")? {
            1 => Kind::OneTime,
            2 => Kind::LongTerm,
            _ => Kind::Unspecified,
        },
        status: match number("s")? {
            1 => Status::Accepted,
            2 => Status::Rejected,
            3 => Status::Banned,
            4 => Status::Filtered,
            _ => Status::Unknown,
        },
        remaining: u32::try_from(number("r")?).ok()?,
        updated_at: time(number("u")?),
        source: match number("o")? {
            1 => Source::ClientReport,
            2 => Source::PopupEvent,
            3 => Source::ChangeEvent,
            _ => Source::SendOutcome,
        },
        refused: value.get("f").and_then(Value::as_bool).unwrap_or(false),
        unpaired,
    })
}

/// A send outcome's patch at `at`, for the shared store's outcome step to apply to an entry
/// in the form [`encode`] writes: `k` the kind's code (0 keeps the entry's), `l` the long-term
/// code, `g` use a grant, `c` clear the grants, `f` the refused flag, `u` the time, `o` the
/// source's code. The step knows the entry's field names, not what any code means.
pub fn encode_patch(patch: &OutcomePatch, at: SystemTime) -> String {
    json!({
        "k": kind_code(patch.kind),
        "l": kind_code(Kind::LongTerm),
        "g": patch.use_grant,
        "c": patch.clear_grants,
        "f": patch.refused,
        "u": millis(at),
        "o": source_code(Source::SendOutcome),
    })
    .to_string()
}

/// An event of `appid`, for every replica's watchers.
pub fn encode_event(appid: &str, event: &LedgerEvent) -> String {
    match event {
        LedgerEvent::Changed {
            openid,
            subscription,
        } => json!({
            "a": appid, "o": openid, "t": subscription.template_id,
            "e": encode(subscription),
        }),
        LedgerEvent::Delivery {
            openid,
            template_id,
            msgid,
            errcode,
            status,
        } => json!({
            "a": appid, "o": openid, "t": template_id,
            "m": msgid.to_string(), "c": errcode, "x": status,
        }),
    }
    .to_string()
}

/// The appid and event of a message made by [`encode_event`].
pub fn decode_event(text: &str) -> Option<(String, LedgerEvent)> {
    let value: Value = serde_json::from_str(text).ok()?;
    let text_of = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let (appid, openid, template_id) = (text_of("a")?, text_of("o")?, text_of("t")?);
    let event = match text_of("e") {
        Some(entry) => LedgerEvent::Changed {
            openid,
            subscription: decode(&template_id, &entry)?,
        },
        None => LedgerEvent::Delivery {
            openid,
            template_id,
            msgid: text_of("m")?.parse().ok()?,
            errcode: i32::try_from(value.get("c")?.as_i64()?).ok()?,
            status: text_of("x").unwrap_or_default(),
        },
    };
    Some((appid, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_events_survive_the_round_trip() {
        let entry = Subscription {
            template_id: "T".into(),
            kind: Kind::OneTime,
            status: Status::Rejected,
            remaining: 3,
            updated_at: time(1_700_000_000_123),
            source: Source::PopupEvent,
            refused: true,
            unpaired: Some(Unpaired {
                side: Side::Push,
                count: 2,
                at: time(1_700_000_000_000),
            }),
        };
        assert_eq!(decode("T", &encode(&entry)), Some(entry.clone()));
        let plain = Subscription {
            unpaired: None,
            refused: false,
            kind: Kind::LongTerm,
            status: Status::Accepted,
            source: Source::ClientReport,
            ..entry.clone()
        };
        assert_eq!(decode("T", &encode(&plain)), Some(plain));
        assert_eq!(decode("T", "not json"), None);

        let changed = LedgerEvent::Changed {
            openid: "o".into(),
            subscription: entry,
        };
        let delivery = LedgerEvent::Delivery {
            openid: "o".into(),
            template_id: "T".into(),
            msgid: 1_864_323_726_461_255_680,
            errcode: -5,
            status: "failed".into(),
        };
        for event in [changed, delivery] {
            let text = encode_event("wx1", &event);
            assert_eq!(decode_event(&text), Some(("wx1".to_owned(), event)));
        }
    }
}
