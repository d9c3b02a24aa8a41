//! The in-process ledger: bounded in users, each user's entries behind one small lock.
//!
//! Bounds: at most [`MEMORY_LEDGER_USERS`] (appid, openid) pairs, the least used evicted first
//! (an evicted user is simply unknown again: sends go as they would without a ledger), at most
//! [`MAX_TEMPLATES_PER_USER`] templates per user (the least recently changed dropped first),
//! and push dedupe keys for [`PUSH_DEDUPE_TTL`] (WeChat retries within 15 s).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;

use super::{EventHub, Ledger, LedgerError, LedgerEvent, Subscription, Update, Watcher, rules};

/// Users kept at most.
pub const MEMORY_LEDGER_USERS: u64 = 1_000_000;
/// Templates kept per user at most (WeChat allows an app 25 templates of its own).
pub const MAX_TEMPLATES_PER_USER: usize = 64;
/// How long a push's dedupe key is remembered; the push listener accepts no push signed longer
/// ago than this, so a replayed push is always within reach of its key (every store keeps keys
/// at least this long).
pub const PUSH_DEDUPE_TTL: Duration = Duration::from_secs(300);
/// Push dedupe keys kept at most.
const PUSH_DEDUPE_CAPACITY: u64 = 100_000;

type Entries = Arc<Mutex<BTreeMap<String, Subscription>>>;

/// The in-process ledger.
pub struct MemoryLedger {
    users: moka::future::Cache<(String, String), Entries>,
    pushes: moka::future::Cache<(String, String), ()>,
    events: EventHub,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new(MEMORY_LEDGER_USERS)
    }
}

impl MemoryLedger {
    /// A ledger keeping at most `users` (appid, openid) pairs.
    pub fn new(users: u64) -> Self {
        Self {
            users: moka::future::Cache::builder().max_capacity(users).build(),
            pushes: moka::future::Cache::builder()
                .max_capacity(PUSH_DEDUPE_CAPACITY)
                .time_to_live(PUSH_DEDUPE_TTL)
                .build(),
            events: EventHub::default(),
        }
    }
}

fn lock(entries: &Entries) -> std::sync::MutexGuard<'_, BTreeMap<String, Subscription>> {
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn apply(
        &self,
        appid: &str,
        openid: &str,
        updates: Vec<Update>,
    ) -> Result<Vec<Subscription>, LedgerError> {
        let user = (appid.to_owned(), openid.to_owned());
        // Deliveries to users the ledger never heard of change nothing: no entry for them (every
        // recipient of every send would otherwise take a slot).
        let only_deliveries = updates
            .iter()
            .all(|update| matches!(update, Update::Delivered { .. }));
        let entries = if only_deliveries {
            match self.users.get(&user).await {
                Some(entries) => entries,
                None => return Ok(Vec::new()),
            }
        } else {
            self.users
                .get_with(user, async { Entries::default() })
                .await
        };
        let now = SystemTime::now();
        let mut touched: BTreeMap<String, Subscription> = BTreeMap::new();
        {
            let mut entries = lock(&entries);
            for update in &updates {
                let template_id = update.template_id();
                let before = entries.remove(template_id);
                if let Some(after) = rules::apply(before, update, now) {
                    touched.insert(template_id.to_owned(), after.clone());
                    entries.insert(template_id.to_owned(), after);
                }
            }
            while entries.len() > MAX_TEMPLATES_PER_USER {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.updated_at)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        for subscription in touched.values() {
            self.events.publish(
                appid,
                LedgerEvent::Changed {
                    openid: openid.to_owned(),
                    subscription: subscription.clone(),
                },
            );
        }
        Ok(touched.into_values().collect())
    }

    async fn get(
        &self,
        appid: &str,
        openid: &str,
        template_ids: &[String],
    ) -> Result<Vec<Subscription>, LedgerError> {
        let Some(entries) = self.users.get(&(appid.to_owned(), openid.to_owned())).await else {
            return Ok(Vec::new());
        };
        let entries = lock(&entries);
        Ok(if template_ids.is_empty() {
            entries.values().cloned().collect()
        } else {
            let wanted: std::collections::BTreeSet<&String> = template_ids.iter().collect();
            wanted
                .into_iter()
                .filter_map(|id| entries.get(id).cloned())
                .collect()
        })
    }

    async fn claim_push(&self, appid: &str, key: &str) -> Result<bool, LedgerError> {
        let entry = self
            .pushes
            .entry((appid.to_owned(), key.to_owned()))
            .or_insert(())
            .await;
        Ok(entry.is_fresh())
    }

    async fn publish(&self, appid: &str, event: LedgerEvent) {
        self.events.publish(appid, event);
    }

    fn watch(&self, appid: &str) -> Watcher {
        self.events.watch(appid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::{Answer, Kind, Source, WatchItem};

    #[tokio::test]
    async fn entries_are_per_app_and_user_and_changes_are_published() {
        let ledger = MemoryLedger::default();
        let mut watcher = ledger.watch("wxa");
        let accept = Update::Answered {
            template_id: "T".into(),
            answer: Answer::Accept,
            kind: Kind::OneTime,
            source: Source::ClientReport,
        };
        let after = ledger.apply("wxa", "o1", vec![accept]).await.unwrap();
        assert_eq!(after[0].remaining, 1);
        assert_eq!(ledger.get("wxa", "o1", &[]).await.unwrap(), after);
        assert!(ledger.get("wxb", "o1", &[]).await.unwrap().is_empty());
        assert!(ledger.get("wxa", "o2", &[]).await.unwrap().is_empty());
        let Some(WatchItem::Event(event)) = watcher.next().await else {
            panic!("no event")
        };
        assert!(matches!(&*event, LedgerEvent::Changed { openid, .. } if openid == "o1"));
        assert!(ledger.claim_push("wxa", "k").await.unwrap());
        assert!(!ledger.claim_push("wxa", "k").await.unwrap());
        assert!(ledger.claim_push("wxb", "k").await.unwrap());
    }
}
