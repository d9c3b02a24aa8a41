//! The ledger on the shared Redis (`NOTIFY_REDIS_URL`): every replica with the same Redis and
//! key prefix reads and writes the same entries, and every replica's watchers see every event.
//!
//! Layout, every key of an app in its hash tag (`crate::store::Keys`):
//! - `prefix:{appid}:sub:<openid>`: a hash, one field per template id holding the entry as
//!   [`wire`] JSON, plus a `#version` field counting its writes. It expires [`ENTRY_TTL`] after
//!   its last write (an expired user is unknown again: sends go as without a ledger).
//! - `prefix:{appid}:push:<sha1 of the push's dedupe key>`: a push already taken, for
//!   [`PUSH_DEDUPE_TTL`] (`SET NX PX`).
//! - `prefix:ledger-events`: the pub/sub channel of every app's events (the appid is in the
//!   message); each replica subscribes once and hands them to its local watchers.
//!
//! Updates are an optimistic read-modify-write: read the user's hash, apply [`rules`] here (the
//! very rules of the in-memory store), and write back with a script that writes only if
//! `#version` is still the one read, else the update is computed again (at most
//! [`CAS_ATTEMPTS`] times, after a short random pause; two writers on one user are rare, a herd
//! on one user is the only way to run out). A conflict costs a retry, never a lost update.
//!
//! A send's outcome takes one round trip ([`OUTCOME_STEP`], riding on a keyed send's record
//! when there is one): it reads the pair's entry, answers whether there was one (the lookup
//! `observe` counts), and writes the outcome with its event. For a pair the ledger knows, the
//! rules here choose a [`rules::OutcomePatch`] and the step applies it to the stored entry; for
//! an unknown pair it writes the entry the rules made of nothing (a 43101), if any. The rare
//! cases the step leaves alone (an eviction to make room, an entry it cannot read) go back to
//! the read-modify-write above.
//!
//! Events go out only through Redis, so this replica's watchers get its own events once, from
//! the subscription like everyone else's; when the PUBLISH itself fails they are handed to the
//! local watchers directly. Pub/sub does not queue: events published while a replica's
//! subscription is down (a Redis outage) are not seen by its watchers.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use sha1::{Digest, Sha1};

use super::{
    EventHub, Ledger, LedgerError, LedgerEvent, PUSH_DEDUPE_TTL, Subscription, Update, Watcher,
    memory::MAX_TEMPLATES_PER_USER, rules, wire,
};
use crate::{
    retry::Backoff,
    store::{RedisStore, Rider, RiderAnswer, RiderStep},
};

/// How long a user's entries are kept after their last write (a long-term grant lasts until
/// the user turns it off, so entries must outlive quiet months; a year and a bit).
pub const ENTRY_TTL: Duration = Duration::from_secs(400 * 24 * 3600);
/// Write attempts of one update before it gives up as unavailable (each conflict means another
/// writer of the same user succeeded; after one, a loser waits [`LOST_WRITE_RETRY`]).
const CAS_ATTEMPTS: u32 = 32;
/// The wait after a write lost to another writer (up to 1, 2, 4, 8, then 10 ms).
const LOST_WRITE_RETRY: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(10));
/// The hash field counting writes (not a template id: those have no `#`).
const VERSION_FIELD: &str = "#version";

/// Writes the user's hash if its `#version` is still `ARGV[1]` ('' for none).
/// ARGV[2] the time to live (ms), ARGV[3] n, then n field/value pairs to set, then fields to
/// delete. Answers 1 written, 0 conflict.
const WRITE_SCRIPT: &str = r"
if (redis.call('HGET', KEYS[1], '#version') or '') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
for i = 4 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
redis.call('HINCRBY', KEYS[1], '#version', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// One send's outcome for a pair, as a [`Rider`] step. keys[1] the user's hash; args[1] the
/// template id, args[2] the entry to create when the pair is unknown ('' for none), args[3] its
/// event, args[4] the time to live (ms), args[5] the templates a user may have, args[6] the
/// event channel, args[7] the outcome's patch for a known pair ([`wire::encode_patch`]; '' for
/// none), args[8] the appid, args[9] the openid.
///
/// The patch is applied as [`rules::OutcomePatch::apply`] does, step by step; the rules that
/// chose it stay in Rust. `tests/it/ledger_scripts.rs` runs both over one corpus of entries.
///
/// Answers [`UNKNOWN`] (the created entry written, if any), [`KNOWN`] (the patch written and
/// published, if any), [`UNKNOWN_FULL`] (an unknown pair whose entry would need an eviction;
/// nothing written) or [`KNOWN_UNREADABLE`] (an entry this step cannot read; nothing written).
pub static OUTCOME_STEP: RiderStep = RiderStep::new(
    r"
local text = redis.call('HGET', keys[1], args[1])
if text then
  if args[7] == '' then return 1 end
  local ok, e = pcall(cjson.decode, text)
  if not ok or type(e) ~= 'table' or type(e.k) ~= 'number' or type(e.r) ~= 'number' then
    return 3
  end
  local patch = cjson.decode(args[7])
  if patch.k ~= 0 then e.k = patch.k end
  if e.k == patch.l then e.r = 0 end
  if patch.g and e.r > 0 then e.r = e.r - 1 end
  if patch.c then
    e.r = 0
    e.p = cjson.null
  end
  e.f = patch.f
  e.u = patch.u
  e.o = patch.o
  text = cjson.encode(e)
  redis.call('HSET', keys[1], args[1], text)
  redis.call('HINCRBY', keys[1], '#version', 1)
  redis.call('PEXPIRE', keys[1], args[4])
  redis.call('PUBLISH', args[6], cjson.encode({a = args[8], o = args[9], t = args[1], e = text}))
  return 1
end
if args[2] == '' then return 0 end
if redis.call('HLEN', keys[1]) > tonumber(args[5]) then return 2 end
redis.call('HSET', keys[1], args[1], args[2])
redis.call('HINCRBY', keys[1], '#version', 1)
redis.call('PEXPIRE', keys[1], args[4])
redis.call('PUBLISH', args[6], args[3])
return 0
",
);

/// The pair's entry before a send under `enforce`, as a [`Rider`] step on the claim: keys[1]
/// the user's hash, args[1] the template id; answers the entry as stored, or nil.
pub static LOOKUP_STEP: RiderStep = RiderStep::new("return redis.call('HGET', keys[1], args[1])");

/// [`OUTCOME_STEP`]'s answers.
const UNKNOWN: i64 = 0;
const KNOWN: i64 = 1;
const UNKNOWN_FULL: i64 = 2;
const KNOWN_UNREADABLE: i64 = 3;

/// The ledger on Redis.
pub struct RedisLedger {
    store: Arc<RedisStore>,
    /// The pub/sub channel of every app's events.
    channel: String,
    write: redis::Script,
    hub: Arc<EventHub>,
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for RedisLedger {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

impl RedisLedger {
    /// A ledger on `store`, relaying every replica's events to this one's watchers from now on
    /// (call within a tokio runtime).
    pub fn new(store: Arc<RedisStore>) -> Self {
        let hub = Arc::new(EventHub::default());
        let channel = channel(&store);
        let relay = tokio::spawn(relay(store.clone(), hub.clone(), channel.clone()));
        Self {
            store,
            channel,
            write: redis::Script::new(WRITE_SCRIPT),
            hub,
            relay,
        }
    }

    fn user_key(&self, appid: &str, openid: &str) -> String {
        self.store.keys().app_parts(appid, &["sub:", openid])
    }

    /// Sends `event` to every replica's watchers; only to this one's when Redis cannot be told.
    async fn broadcast(&self, appid: &str, event: LedgerEvent) {
        let message = wire::encode_event(appid, &event);
        let published = self
            .store
            .query::<i64>(redis::cmd("PUBLISH").arg(&self.channel).arg(message))
            .await;
        if published.is_err() {
            self.hub.publish(appid, event);
        }
    }

    /// The step of [`OUTCOME_STEP`] for one send's outcome.
    fn outcome_rider(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
        update: Option<&Update>,
    ) -> Rider {
        let now = whole_millis(SystemTime::now());
        // The entry the update makes of nothing: the rules decide, not the script.
        let (created, event) = match update.and_then(|update| rules::apply(None, update, now)) {
            Some(entry) => (
                wire::encode(&entry),
                wire::encode_event(
                    appid,
                    &LedgerEvent::Changed {
                        openid: openid.to_owned(),
                        subscription: entry,
                    },
                ),
            ),
            None => (String::new(), String::new()),
        };
        // What it does to a known pair, applied by the step itself.
        let patch = update
            .and_then(rules::OutcomePatch::of)
            .map(|patch| wire::encode_patch(&patch, now))
            .unwrap_or_default();
        Rider {
            step: &OUTCOME_STEP,
            keys: vec![self.user_key(appid, openid)],
            args: vec![
                template_id.to_owned(),
                created,
                event,
                ENTRY_TTL.as_millis().to_string(),
                MAX_TEMPLATES_PER_USER.to_string(),
                self.channel.clone(),
                patch,
                appid.to_owned(),
                openid.to_owned(),
            ],
        }
    }

    /// The user's hash: its version ('' when none) and its entries.
    async fn read_user(
        &self,
        key: &str,
    ) -> Result<(String, BTreeMap<String, Subscription>), LedgerError> {
        let fields: BTreeMap<String, String> = self
            .store
            .query(redis::cmd("HGETALL").arg(key))
            .await
            .map_err(unavailable)?;
        let mut version = String::new();
        let mut entries = BTreeMap::new();
        for (field, text) in fields {
            if field == VERSION_FIELD {
                version = text;
            } else if let Some(entry) = wire::decode(&field, &text) {
                entries.insert(field, entry);
            }
        }
        Ok((version, entries))
    }
}

fn channel(store: &RedisStore) -> String {
    format!("{}:ledger-events", store.keys().prefix())
}

fn unavailable(error: impl std::fmt::Display) -> LedgerError {
    LedgerError(error.to_string())
}

/// Subscribes (on a connection of its own) to every replica's events and hands them to this
/// replica's watchers; when the subscription ends (its node went away), subscribes on another
/// configured node. Runs until aborted.
async fn relay(store: Arc<RedisStore>, hub: Arc<EventHub>, channel: String) {
    store
        .relay(&channel, |message| {
            let Ok(text) = message.get_payload::<String>() else {
                return;
            };
            match wire::decode_event(&text) {
                Some((appid, event)) => hub.publish(&appid, event),
                None => tracing::debug!("ledger event not understood; skipped"),
            }
        })
        .await;
}

fn whole_millis(at: SystemTime) -> SystemTime {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

/// The least recently changed templates beyond [`MAX_TEMPLATES_PER_USER`], as the in-memory
/// store drops them.
fn evictions(entries: &BTreeMap<String, Subscription>) -> Vec<String> {
    let excess = entries.len().saturating_sub(MAX_TEMPLATES_PER_USER);
    let mut by_age: Vec<(&SystemTime, &String)> = entries
        .iter()
        .map(|(id, entry)| (&entry.updated_at, id))
        .collect();
    by_age.sort();
    by_age
        .into_iter()
        .take(excess)
        .map(|(_, id)| id.clone())
        .collect()
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn apply(
        &self,
        appid: &str,
        openid: &str,
        updates: Vec<Update>,
    ) -> Result<Vec<Subscription>, LedgerError> {
        let key = self.user_key(appid, openid);
        for attempt in 1..=CAS_ATTEMPTS {
            let (version, mut entries) = self.read_user(&key).await?;
            // Whole milliseconds, as stored: the answer equals what a read gives after.
            let now = whole_millis(SystemTime::now());
            let mut touched: BTreeMap<String, Subscription> = BTreeMap::new();
            for update in &updates {
                let template_id = update.template_id();
                let before = entries.remove(template_id);
                match rules::apply(before.clone(), update, now) {
                    Some(after) => {
                        touched.insert(template_id.to_owned(), after.clone());
                        entries.insert(template_id.to_owned(), after);
                    }
                    None => {
                        if let Some(before) = before {
                            entries.insert(template_id.to_owned(), before);
                        }
                    }
                }
            }
            // Deliveries to users the ledger never heard of write nothing.
            if touched.is_empty() {
                return Ok(Vec::new());
            }
            let evicted = evictions(&entries);
            for id in &evicted {
                touched.remove(id);
            }
            let mut invocation = self.write.key(&key);
            invocation
                .arg(&version)
                .arg(ENTRY_TTL.as_millis() as u64)
                .arg(touched.len());
            for (id, entry) in &touched {
                invocation.arg(id).arg(wire::encode(entry));
            }
            for id in &evicted {
                invocation.arg(id);
            }
            let written: i64 = self.store.invoke(&invocation).await.map_err(unavailable)?;
            if written == 0 {
                // Spread the writers that lost, so they do not collide again in step.
                tokio::time::sleep(LOST_WRITE_RETRY.delay(attempt)).await;
                continue;
            }
            for subscription in touched.values() {
                self.broadcast(
                    appid,
                    LedgerEvent::Changed {
                        openid: openid.to_owned(),
                        subscription: subscription.clone(),
                    },
                )
                .await;
            }
            return Ok(touched.into_values().collect());
        }
        Err(LedgerError(
            "too many concurrent updates of one user's entries".to_owned(),
        ))
    }

    async fn record_send(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
        update: Option<Update>,
    ) -> Result<bool, LedgerError> {
        let rider = self.outcome_rider(appid, openid, template_id, update.as_ref());
        let answer: redis::Value = self
            .store
            .invoke(&rider.invocation())
            .await
            .map_err(unavailable)?;
        let answer = RiderAnswer::new(answer);
        self.rider_answered(appid, openid, template_id, update, answer)
            .await
    }

    fn send_rider(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
        update: Option<&Update>,
    ) -> Option<Rider> {
        Some(self.outcome_rider(appid, openid, template_id, update))
    }

    fn lookup_rider(&self, appid: &str, openid: &str, template_id: &str) -> Option<Rider> {
        Some(Rider {
            step: &LOOKUP_STEP,
            keys: vec![self.user_key(appid, openid)],
            args: vec![template_id.to_owned()],
        })
    }

    fn looked_up(
        &self,
        template_id: &str,
        answer: RiderAnswer,
    ) -> Result<Option<Subscription>, LedgerError> {
        let text: Option<String> = answer.read().map_err(unavailable)?;
        Ok(text.and_then(|text| wire::decode(template_id, &text)))
    }

    async fn rider_answered(
        &self,
        appid: &str,
        openid: &str,
        _template_id: &str,
        update: Option<Update>,
        answer: RiderAnswer,
    ) -> Result<bool, LedgerError> {
        let answer: i64 = answer.read().map_err(unavailable)?;
        match (answer, update) {
            (KNOWN, _) => Ok(true),
            (UNKNOWN, _) | (UNKNOWN_FULL, None) => Ok(false),
            // Unknown, but its new entry needs the least recently changed one evicted.
            (UNKNOWN_FULL, Some(update)) => {
                self.apply(appid, openid, vec![update]).await.map(|_| false)
            }
            // An entry the step could not read: the rules here decide, as for any update.
            (KNOWN_UNREADABLE, update) => {
                if let Some(update) = update {
                    self.apply(appid, openid, vec![update]).await?;
                }
                Ok(true)
            }
            (other, _) => Err(LedgerError(format!(
                "the send outcome step answered {other}"
            ))),
        }
    }

    async fn get(
        &self,
        appid: &str,
        openid: &str,
        template_ids: &[String],
    ) -> Result<Vec<Subscription>, LedgerError> {
        let key = self.user_key(appid, openid);
        if template_ids.is_empty() {
            let (_, entries) = self.read_user(&key).await?;
            return Ok(entries.into_values().collect());
        }
        let mut fields = template_ids.to_vec();
        fields.sort();
        fields.dedup();
        let stored: Vec<Option<String>> = self
            .store
            .query(redis::cmd("HMGET").arg(&key).arg(&fields))
            .await
            .map_err(unavailable)?;
        Ok(fields
            .iter()
            .zip(stored)
            .filter_map(|(field, text)| wire::decode(field, text.as_deref()?))
            .collect())
    }

    async fn claim_push(&self, appid: &str, key: &str) -> Result<bool, LedgerError> {
        let digest: String = Sha1::digest(key.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let claim = self.store.keys().app(appid, &format!("push:{digest}"));
        let set: Option<String> = self
            .store
            .query(
                redis::cmd("SET")
                    .arg(claim)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(PUSH_DEDUPE_TTL.as_millis() as u64),
            )
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn publish(&self, appid: &str, event: LedgerEvent) {
        self.broadcast(appid, event).await;
    }

    fn watch(&self, appid: &str) -> Watcher {
        self.hub.watch(appid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::{Kind, Source, Status};

    fn entry(id: &str, age_secs: u64) -> Subscription {
        Subscription {
            template_id: id.to_owned(),
            kind: Kind::OneTime,
            status: Status::Accepted,
            remaining: 1,
            updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs),
            source: Source::ClientReport,
            refused: false,
            unpaired: None,
        }
    }

    #[test]
    fn the_least_recently_changed_templates_beyond_the_bound_are_evicted() {
        let mut entries: BTreeMap<String, Subscription> = (0..MAX_TEMPLATES_PER_USER as u64)
            .map(|n| (format!("t{n}"), entry(&format!("t{n}"), n + 10)))
            .collect();
        assert!(evictions(&entries).is_empty());
        entries.insert("new".into(), entry("new", 0));
        let oldest = format!("t{}", MAX_TEMPLATES_PER_USER - 1);
        assert_eq!(evictions(&entries), [oldest]);
    }
}
