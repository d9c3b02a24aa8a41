//! Idempotency records and in-progress claims shared by replicas.
//!
//! A keyed send first claims its key in Redis (one script: the record if there is one, else a
//! claim with this replica as owner and a lease of [`CLAIM_LEASE`], renewed while the send
//! runs). The replica holding the claim sends; one that finds another's claim waits (woken
//! through pub/sub when the claim settles) and then answers from the record, or claims the
//! key itself if the send failed (a failure is not recorded). On success the record replaces
//! the claim for the records' time to live (second script): a keyed send takes two round
//! trips. Other features' steps ride on both ([`Riders`]): the ledger's lookup under `enforce`
//! on the claim (run only when this caller claims the key), its record of the send's outcome
//! on the record.
//!
//! A settle is announced (PUBLISH) only when another replica waits: a waiter raises the key's
//! wait flag (`idem-wait:<key>`, for [`WAIT_FLAG_LIFE`]) in the same script that finds the
//! claim, and the script that settles the claim publishes only if it finds the flag. Sends
//! nobody waits for thus wake no replica's subscriber.
//!
//! Within one replica, callers of one key share one claim and its outcome (a local cache, as
//! the in-memory store does), and a record seen once is answered without a round trip.
//!
//! A duplicate is still possible only when: a replica dies or loses Redis mid-send and its
//! lease ([`CLAIM_LEASE`]) runs out before its record is written, after which a retry on another
//! replica sends again; or Redis loses the record itself (a restart without persistence, a
//! failover to a replica that had not received it).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{RedisStore, Rider, RiderAnswer, RiderStep};
use crate::{
    idempotency::{IdempotencyStore, Keyed, Record, Riders, SendOnce, StoreUnavailable},
    retry::Backoff,
};

/// How long a claim outlives its last renewal: a claim whose replica died blocks its key for
/// at most this long.
pub const CLAIM_LEASE: Duration = Duration::from_secs(15);
/// How often a running send renews its claim.
const CLAIM_RENEWAL: Duration = Duration::from_secs(5);
/// How long a waiter waits between looks at a claim when no wake-up arrives: a lost wake-up
/// costs little at first, and a long send few looks.
const CLAIM_RECHECK: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
/// Longest a caller waits for another replica's send (its longest admission wait, plus a
/// request): past this the caller is answered STORE_UNAVAILABLE rather than waiting on.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(150);
/// How long a waiter's flag outlives its last look: longer than the longest wait between looks.
pub const WAIT_FLAG_LIFE: Duration = Duration::from_secs(10);
/// How long a record that could not be written after a send is retried in the background.
const WRITE_BACK_FOR: Duration = Duration::from_secs(600);
/// The waits between those tries.
const WRITE_BACK_RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));

/// Records and claims in Redis, with a local cache of the records seen.
pub struct RedisIdempotencyStore {
    store: Arc<RedisStore>,
    ttl: Duration,
    /// Records known here, and the one claim per key this replica is running.
    local: moka::future::Cache<String, Keyed>,
    claim: redis::Script,
    finish: redis::Script,
    /// The claim script with a rider's step.
    claim_riding: RidingScripts,
    /// The finish script with a rider's step.
    finish_riding: RidingScripts,
    release: redis::Script,
    renew: redis::Script,
}

impl RedisIdempotencyStore {
    /// Records kept for `ttl` in Redis; at most `capacity` of them cached here.
    pub fn new(store: Arc<RedisStore>, ttl: Duration, capacity: u64) -> Self {
        Self {
            store,
            ttl,
            local: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            claim: redis::Script::new(&format!("{CLAIM_BODY}\nreturn {{false}}\n")),
            finish: redis::Script::new(&format!("{FINISH_BODY}\nreturn written\n")),
            claim_riding: RidingScripts::new(CLAIM_BODY, CLAIM_RIDE_TAIL),
            finish_riding: RidingScripts::new(FINISH_BODY, FINISH_RIDE_TAIL),
            release: redis::Script::new(RELEASE_SCRIPT),
            renew: redis::Script::new(RENEW_SCRIPT),
        }
    }

    /// The Redis keys of a scoped key (`appid\n...`, as the notifier scopes them): the record
    /// or claim, and the waiters' flag.
    fn redis_keys(&self, key: &str) -> ClaimKeys {
        let (appid, rest) = key.split_once('\n').unwrap_or(("", key));
        let keys = self.store.keys();
        ClaimKeys {
            record: keys.app_parts(appid, &["idem:", rest]),
            waiting: keys.app_parts(appid, &["idem-wait:", rest]),
        }
    }

    /// Claims `key` in Redis and sends, or answers from the record. The claim's rider answers
    /// into its slot; the record's into `ridden`.
    async fn once_shared<E>(
        &self,
        key: &str,
        send: SendOnce<E>,
        riders: Riders,
        ridden: &std::sync::Mutex<Option<RiderAnswer>>,
    ) -> Result<Keyed, E>
    where
        E: From<StoreUnavailable> + Send + Sync + 'static,
    {
        let keys = self.redis_keys(key);
        let redis_key = &keys.record;
        let owner = format!(
            "c:{}:{}",
            self.store.replica_id(),
            uuid::Uuid::new_v4().simple()
        );
        let unavailable = |_| E::from(StoreUnavailable);
        let started = tokio::time::Instant::now();
        let mut looks = 0;
        loop {
            // Listening first: a settle announced between the look and the wait still wakes us.
            let mut listener = self.store.listen();
            let script = match &riders.claim {
                Some((rider, _)) => self.claim_riding.with(rider.step),
                None => self.claim.clone(),
            };
            let mut invocation = script.key(redis_key);
            invocation
                .key(&keys.waiting)
                .arg(&owner)
                .arg(CLAIM_LEASE.as_millis() as u64)
                .arg(WAIT_FLAG_LIFE.as_millis() as u64);
            ride(
                &mut invocation,
                riders.claim.as_ref().map(|(rider, _)| rider),
            );
            let answer: Vec<redis::Value> =
                self.store.invoke(&invocation).await.map_err(unavailable)?;
            let mut answer = answer.into_iter();
            let found: Option<String> = match answer.next() {
                None | Some(redis::Value::Nil) => None,
                Some(value) => {
                    Some(redis::from_redis_value(value).map_err(|_| E::from(StoreUnavailable))?)
                }
            };
            let answer = answer.next();
            match found {
                None => {
                    if let (Some((_, slot)), Some(answer)) = (&riders.claim, answer) {
                        let _ = slot.set(RiderAnswer::new(answer));
                    }
                    break;
                }
                Some(value) => {
                    if let Some(record) = value.strip_prefix("r:").and_then(decode) {
                        return Ok(Keyed {
                            record,
                            deduplicated: true,
                            ridden: None,
                        });
                    }
                    if started.elapsed() >= MAX_CLAIM_WAIT {
                        return Err(E::from(StoreUnavailable));
                    }
                    looks += 1;
                    listener.wait(redis_key, CLAIM_RECHECK.delay(looks)).await;
                }
            }
        }

        let renewing = async {
            loop {
                tokio::time::sleep(CLAIM_RENEWAL).await;
                let mut invocation = self.renew.key(redis_key);
                invocation.arg(&owner).arg(CLAIM_LEASE.as_millis() as u64);
                let _ = self.store.invoke::<i64>(&invocation).await;
            }
        };
        let outcome = tokio::select! {
            outcome = send => outcome,
            () = renewing => unreachable!("renewal never ends"),
        };
        match outcome {
            Ok(record) => {
                let answer = self
                    .write_record(&keys, owner, &record, riders.record)
                    .await;
                *ridden.lock().unwrap_or_else(|e| e.into_inner()) = answer;
                Ok(Keyed {
                    record,
                    deduplicated: false,
                    ridden: None,
                })
            }
            Err(error) => {
                let mut invocation = self.release.key(redis_key);
                invocation
                    .key(&keys.waiting)
                    .arg(&owner)
                    .arg(self.store.keys().wake_channel());
                // Failing to release only delays the next attempt until the lease ends.
                let _ = self.store.invoke::<i64>(&invocation).await;
                Err(error)
            }
        }
    }

    /// Replaces the claim with the record, running `rider` in the same script (its answer is
    /// returned); if Redis cannot be told now, keeps trying in the background without the
    /// rider (the claim's lease runs out meanwhile: see the module docs).
    async fn write_record(
        &self,
        keys: &ClaimKeys,
        owner: String,
        record: &Record,
        rider: Option<Rider>,
    ) -> Option<RiderAnswer> {
        let finish = Finish {
            record_key: keys.record.clone(),
            waiting: keys.waiting.clone(),
            owner,
            value: format!("r:{}", encode(record)),
            ttl_ms: self.ttl.as_millis() as u64,
            channel: self.store.keys().wake_channel(),
        };
        if let Some(rider) = rider {
            let script = self.finish_riding.with(rider.step);
            let invocation = finish.invocation(&script, Some(&rider));
            if let Ok((_, answer)) = self.store.invoke::<(i64, redis::Value)>(&invocation).await {
                return Some(RiderAnswer::new(answer));
            }
        } else if self
            .store
            .invoke::<i64>(&finish.invocation(&self.finish, None))
            .await
            .is_ok()
        {
            return None;
        }
        tracing::warn!("could not record a delivered message in redis; retrying in the background");
        let store = self.store.clone();
        let script = self.finish.clone();
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + WRITE_BACK_FOR;
            let mut tries = 0;
            while tokio::time::Instant::now() < until {
                tries += 1;
                tokio::time::sleep(WRITE_BACK_RETRY.delay(tries)).await;
                let invocation = finish.invocation(&script, None);
                if store.invoke::<i64>(&invocation).await.is_ok() {
                    tracing::info!("recorded a delivered message in redis after an outage");
                    return;
                }
            }
            tracing::warn!("gave up recording a delivered message in redis");
        });
        None
    }
}

/// A host script (its body, then a tail that calls the rider) with each rider's step embedded,
/// made on first use of the step (by address: each is a `static`).
struct RidingScripts {
    body: &'static str,
    tail: &'static str,
    made: std::sync::Mutex<Vec<(usize, redis::Script)>>,
}

impl RidingScripts {
    fn new(body: &'static str, tail: &'static str) -> Self {
        Self {
            body,
            tail,
            made: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The host script carrying `step`.
    fn with(&self, step: &'static RiderStep) -> redis::Script {
        let id = std::ptr::from_ref(step) as usize;
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, script)) = made.iter().find(|(known, _)| *known == id) {
            return script.clone();
        }
        let script = redis::Script::new(&format!(
            "{}\n{}\n{}",
            step.function(),
            self.body,
            self.tail
        ));
        made.push((id, script.clone()));
        script
    }
}

/// What the finish script is given: the claim becomes the record.
struct Finish {
    record_key: String,
    waiting: String,
    owner: String,
    value: String,
    ttl_ms: u64,
    channel: String,
}

impl Finish {
    /// `script` (the finish script, or the one carrying `rider`'s step) with its keys and
    /// arguments: the finish's first, then the rider's.
    fn invocation<'a>(
        &'a self,
        script: &'a redis::Script,
        rider: Option<&'a Rider>,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&self.record_key);
        invocation
            .key(&self.waiting)
            .arg(&self.owner)
            .arg(&self.value)
            .arg(self.ttl_ms)
            .arg(&self.channel);
        ride(&mut invocation, rider);
        invocation
    }
}

/// Appends `rider`'s keys and arguments after the host script's (call once those are given).
fn ride<'a>(invocation: &mut redis::ScriptInvocation<'a>, rider: Option<&'a Rider>) {
    for key in rider.iter().flat_map(|rider| &rider.keys) {
        invocation.key(key);
    }
    for arg in rider.iter().flat_map(|rider| &rider.args) {
        invocation.arg(arg);
    }
}

/// The keys of one idempotency key.
struct ClaimKeys {
    /// The record, or the claim of the replica sending.
    record: String,
    /// Set while a replica other than the sender waits for the claim to settle.
    waiting: String,
}

#[async_trait]
impl<E> IdempotencyStore<E> for RedisIdempotencyStore
where
    E: From<StoreUnavailable> + Send + Sync + 'static,
{
    async fn once(&self, key: String, send: SendOnce<E>, riders: Riders) -> Result<Keyed, Arc<E>> {
        // Callers of one key on this replica share one claim (and a failure, as in memory).
        // The rider's answer is this caller's alone, so it stays out of the shared entry.
        let ridden = std::sync::Mutex::new(None);
        let entry = self
            .local
            .entry(key.clone())
            .or_try_insert_with(self.once_shared(&key, send, riders, &ridden))
            .await?;
        let fresh = entry.is_fresh();
        let keyed = entry.into_value();
        Ok(Keyed {
            deduplicated: keyed.deduplicated || !fresh,
            record: keyed.record,
            ridden: if fresh {
                ridden.into_inner().unwrap_or_else(|e| e.into_inner())
            } else {
                None
            },
        })
    }
}

/// A record as stored (JSON after `r:`).
#[derive(serde::Serialize)]
struct Stored<'a> {
    msgid: Option<u64>,
    attempts: u32,
    touser: &'a str,
    template_id: &'a str,
}

fn encode(record: &Record) -> String {
    let stored = Stored {
        msgid: record.msgid,
        attempts: record.attempts,
        touser: &record.touser,
        template_id: &record.template_id,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

fn decode(text: &str) -> Option<Record> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(Record {
        msgid: value.get("msgid").and_then(serde_json::Value::as_u64),
        attempts: u32::try_from(value.get("attempts")?.as_u64()?).ok()?,
        touser: value.get("touser")?.as_str()?.to_owned(),
        template_id: value.get("template_id")?.as_str()?.to_owned(),
    })
}

/// Answers `{record}` if the key `KEYS[1]` has one; `{claim}` if another holds it, raising the
/// wait flag `KEYS[2]` for `ARGV[3]` ms (so that its settle is announced); else claims the key
/// for `ARGV[1]` with a lease of `ARGV[2]` ms, and the script goes on (answering `{nil}`, or
/// [`CLAIM_RIDE_TAIL`]'s answer).
const CLAIM_BODY: &str = r"
local value = redis.call('GET', KEYS[1])
if value then
  if string.sub(value, 1, 2) ~= 'r:' then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  end
  return {value}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
";

/// After [`CLAIM_BODY`] claimed the key, runs the rider on the keys after the first two and the
/// arguments after the first three; answers `{nil, rider's answer}`.
const CLAIM_RIDE_TAIL: &str = r"
local keys, args = {}, {}
for i = 3, #KEYS do keys[#keys + 1] = KEYS[i] end
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
return {false, rider(keys, args)}
";

/// Writes the record `ARGV[2]` for `ARGV[3]` ms unless a record is there already
/// (`written` 1, else 0), and announces the key on channel `ARGV[4]` if a waiter raised the flag
/// `KEYS[2]`.
const FINISH_BODY: &str = r"
local written = 0
local value = redis.call('GET', KEYS[1])
if not (value and string.sub(value, 1, 2) == 'r:') then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  written = 1
  if redis.call('DEL', KEYS[2]) == 1 then
    redis.call('PUBLISH', ARGV[4], KEYS[1])
  end
end
";

/// After [`FINISH_BODY`], runs the rider on the keys after the first two and the arguments
/// after the first four; answers `{written, rider's answer}`.
const FINISH_RIDE_TAIL: &str = r"
local keys, args = {}, {}
for i = 3, #KEYS do keys[#keys + 1] = KEYS[i] end
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
return {written, rider(keys, args)}
";

/// Drops the claim `KEYS[1]` if its owner `ARGV[1]` still holds it, and announces the key on
/// channel `ARGV[2]` if a waiter raised the flag `KEYS[2]`.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return 1
";

/// Extends the claim's lease to `ARGV[2]` ms if `ARGV[1]` still holds it.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_round_trip() {
        let record = Record {
            msgid: Some(u64::MAX),
            attempts: 2,
            touser: "o\"pen:id".into(),
            template_id: "tpl".into(),
        };
        assert_eq!(decode(&encode(&record)), Some(record));
        assert_eq!(decode("not json"), None);
    }
}
