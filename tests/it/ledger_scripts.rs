//! A send's outcome is recorded in the shared ledger by a Lua step (`OUTCOME_STEP` in
//! `src/subscriptions/redis.rs`), which applies the patch the Rust rules chose
//! (`subscriptions::rules::OutcomePatch`) to the stored entry. Here both run over one corpus:
//! every entry a pair can hold (each kind, status, count of grants, flag and unmatched accept),
//! an unknown pair and an unreadable entry, times every outcome a send reports. For each, the
//! entry the step stored and the event it published must equal what the Rust rules make of the
//! same entry at the same time; every disagreement is reported, all in one failure.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use wechat_notify::{
    store::RedisStore,
    subscriptions::{
        Kind, Ledger, LedgerEvent, RedisLedger, Side, Source, Status, Subscription, Unpaired,
        Update, WatchItem, Watcher, rules, wire,
    },
};

use crate::common::redis::{RedisServer, UpkeepTask, connected_store};

const APPID: &str = "wx-ledger-scripts";
const TEMPLATE: &str = "T-outcome";

fn millis(at: SystemTime) -> SystemTime {
    let since = at.duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

/// Every entry worth telling apart for a send's outcome.
fn entries() -> Vec<Subscription> {
    let long_ago = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let mut entries = Vec::new();
    for kind in [Kind::Unspecified, Kind::OneTime, Kind::LongTerm] {
        for status in [
            Status::Unknown,
            Status::Accepted,
            Status::Rejected,
            Status::Banned,
            Status::Filtered,
        ] {
            for remaining in [0, 1, 2, 7, u32::MAX] {
                for refused in [false, true] {
                    for unpaired in [
                        None,
                        Some(Unpaired {
                            side: Side::Client,
                            count: 1,
                            at: long_ago,
                        }),
                        Some(Unpaired {
                            side: Side::Push,
                            count: 3,
                            at: long_ago + Duration::from_millis(1),
                        }),
                    ] {
                        entries.push(Subscription {
                            template_id: TEMPLATE.to_owned(),
                            kind,
                            status,
                            remaining,
                            updated_at: long_ago,
                            source: Source::PopupEvent,
                            refused,
                            unpaired,
                        });
                    }
                }
            }
        }
    }
    entries
}

/// Every outcome a send reports.
fn outcomes() -> Vec<Update> {
    [Kind::Unspecified, Kind::OneTime, Kind::LongTerm]
        .into_iter()
        .flat_map(|kind| {
            [
                Update::Delivered {
                    template_id: TEMPLATE.to_owned(),
                    kind,
                },
                Update::Refused {
                    template_id: TEMPLATE.to_owned(),
                    kind,
                },
            ]
        })
        .collect()
}

async fn next_change(watcher: &mut Watcher) -> Option<Subscription> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .ok()??;
        if let WatchItem::Event(event) = item
            && let LedgerEvent::Changed { subscription, .. } = &*event
        {
            return Some(subscription.clone());
        }
    }
}

/// A store and a ledger on `redis`, connected; the upkeep task runs while its handle lives.
async fn ledger_on(redis: &RedisServer) -> (Arc<RedisStore>, RedisLedger, UpkeepTask) {
    let (store, upkeep) = connected_store(redis, "ledger-scripts").await;
    let ledger = RedisLedger::new(Arc::clone(&store));
    (store, ledger, upkeep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_step_and_the_rust_rules_agree_on_every_entry() {
    let redis = RedisServer::start().await;
    let (store, ledger, _upkeep) = ledger_on(&redis).await;
    let mut watcher = ledger.watch(APPID);
    // The relay subscribes in the background: wait until an event goes round.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = LedgerEvent::Delivery {
            openid: "probe".into(),
            template_id: TEMPLATE.into(),
            msgid: 1,
            errcode: 0,
            status: String::new(),
        };
        ledger.publish(APPID, probe).await;
        if tokio::time::timeout(Duration::from_millis(200), watcher.next())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger's event relay never subscribed"
        );
    }
    while tokio::time::timeout(Duration::from_millis(100), watcher.next())
        .await
        .is_ok()
    {}

    let stored_as = |openid: &str| store.keys().app_parts(APPID, &["sub:", openid]);
    let mut before: Vec<Option<Subscription>> = entries().into_iter().map(Some).collect();
    before.push(None);
    let mut cases = 0;
    let mut disagreements = Vec::new();
    for (n, entry) in before.iter().enumerate() {
        for (m, update) in outcomes().iter().enumerate() {
            let openid = format!("o-{n}-{m}");
            if let Some(entry) = entry {
                let _: i64 = store
                    .query(
                        redis::cmd("HSET")
                            .arg(stored_as(&openid))
                            .arg(TEMPLATE)
                            .arg(wire::encode(entry)),
                    )
                    .await
                    .unwrap();
            }
            let start = millis(SystemTime::now());
            let known = ledger
                .record_send(APPID, &openid, TEMPLATE, Some(update.clone()))
                .await
                .expect("recorded");
            let end = SystemTime::now();
            let stored = ledger
                .get(APPID, &openid, &[TEMPLATE.to_owned()])
                .await
                .unwrap()
                .pop();
            cases += 1;
            let at = stored.as_ref().map_or(start, |stored| stored.updated_at);
            let expected = rules::apply(entry.clone(), update, at);
            let published = match &expected {
                Some(_) => next_change(&mut watcher).await,
                None => None,
            };
            let in_time = at >= start && at <= end;
            if known != entry.is_some() || stored != expected || published != expected || !in_time {
                disagreements.push(format!(
                    "{update:?} on {entry:?}:\n  rules: {expected:?}\n  step:  {stored:?} \
                     (known {known}, written in time {in_time})\n  event: {published:?}"
                ));
            }
        }
    }
    assert_eq!(cases, (entries().len() + 1) * outcomes().len());
    assert!(
        disagreements.is_empty(),
        "{} of {cases} cases disagree:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

/// An entry the step cannot read goes back to the rules in Rust, which treat it as no entry:
/// a 43101 still makes an entry, and the send is still counted as to a known pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_step_cannot_read_goes_back_to_the_rules() {
    let redis = RedisServer::start().await;
    let (store, ledger, _upkeep) = ledger_on(&redis).await;
    let key = store.keys().app_parts(APPID, &["sub:", "unreadable"]);
    let _: i64 = store
        .query(redis::cmd("HSET").arg(&key).arg(TEMPLATE).arg("{\"k\":"))
        .await
        .unwrap();
    let refused = Update::Refused {
        template_id: TEMPLATE.to_owned(),
        kind: Kind::OneTime,
    };
    let known = ledger
        .record_send(APPID, "unreadable", TEMPLATE, Some(refused.clone()))
        .await
        .unwrap();
    assert!(known, "the pair had an entry, even if unreadable");
    let stored = ledger
        .get(APPID, "unreadable", &[TEMPLATE.to_owned()])
        .await
        .unwrap()
        .pop()
        .expect("the 43101 made an entry");
    assert_eq!(
        Some(stored.clone()),
        rules::apply(None, &refused, stored.updated_at)
    );
}
