//! Idempotency records and in-progress claims shared by replicas.
//!
//! A keyed send first claims its key in Redis with one command, `SET key owner NX PX lease
//! GET`: it answers the record if there is one, another replica's claim if one holds the key,
//! and otherwise claims the key for this replica with a lease of [`CLAIM_LEASE`], renewed while
//! the send runs. The replica holding the claim sends; one that finds another's claim raises
//! the key's wait flag, looks again, and waits (woken through pub/sub when the claim settles),
//! then answers from the record, or claims the key itself if the send failed (a failure is not
//! recorded). On success the record replaces the claim for the records' time to live (`SET PX`
//! and the flag's `DEL`, in one pipeline): a keyed send takes two round trips. Other features'
//! steps ride in the same pipelines ([`Riders`]): the ledger's lookup under `enforce` with the
//! claim, its record of the send's outcome with the record. Neither is a script around the
//! claim or the record: Redis's own commands cost it a third of what the same steps cost in Lua
//! (docs/benchmarks.md).
//!
//! A settle is announced (PUBLISH) only when another replica waits: a waiter raises the key's
//! wait flag (`idem-wait:<key>`, for [`WAIT_FLAG_LIFE`]) and then looks at the key again in
//! the same round trip; the settle deletes the flag after writing the record (or dropping the
//! claim) and publishes only if there was one. A waiter whose look still found the claim
//! raised its flag before the settle's `DEL`, so it is woken; one that raised it later sees
//! the settled key in its look. Sends nobody waits for thus wake no replica's subscriber.
//! The flag is a key of its own rather than a mark in the claim's value (which would spare the
//! settle its `DEL`): a claim must stay exactly its owner, since replicas compare it with their
//! owner to renew and release it, and a marked claim would stop an older replica's renewals
//! during a rolling update, letting its lease run out mid-send.
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

use super::{RedisStore, Rider, RiderAnswer, StoreError};
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
        let claim_rider = riders.claim.as_ref().map(|(rider, _)| rider);
        let started = tokio::time::Instant::now();
        let mut looks = 0;
        loop {
            let mut pipeline = redis::pipe();
            pipeline
                .cmd("SET")
                .arg(redis_key)
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_LEASE.as_millis() as u64)
                .arg("GET");
            if let Some(rider) = claim_rider {
                pipeline.invoke_script(&rider.invocation());
            }
            let mut replies = self
                .store
                .pipeline(&mut pipeline)
                .await
                .map_err(unavailable)?
                .into_iter();
            match found(replies.next())? {
                Found::Nothing => {
                    if let (Some((rider, slot)), reply) = (&riders.claim, replies.next())
                        && let Some(answer) = self.store.rider_answer(rider, reply).await
                    {
                        let _ = slot.set(answer);
                    }
                    break;
                }
                Found::Record(record) => return Ok(answered(record)),
                Found::Claim => {}
            }
            // Another replica's claim. Listening first, then the flag, then a look: a settle
            // after the look wakes us (see the module docs).
            if started.elapsed() >= MAX_CLAIM_WAIT {
                return Err(E::from(StoreUnavailable));
            }
            let mut listener = self.store.listen();
            let mut pipeline = redis::pipe();
            pipeline
                .cmd("SET")
                .arg(&keys.waiting)
                .arg(1)
                .arg("PX")
                .arg(WAIT_FLAG_LIFE.as_millis() as u64)
                .ignore()
                .cmd("GET")
                .arg(redis_key);
            let look = self
                .store
                .pipeline(&mut pipeline)
                .await
                .map_err(unavailable)?;
            match found(look.into_iter().next())? {
                // Settled without a record (the send failed): claim it ourselves.
                Found::Nothing => {}
                Found::Record(record) => return Ok(answered(record)),
                Found::Claim => {
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
                let answer = self.write_record(&keys, &record, riders.record).await;
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

    /// Replaces the claim with the record, `rider` in the same round trip (its answer is
    /// returned); if Redis cannot be told now, keeps trying in the background without the
    /// rider (the claim's lease runs out meanwhile: see the module docs).
    async fn write_record(
        &self,
        keys: &ClaimKeys,
        record: &Record,
        rider: Option<Rider>,
    ) -> Option<RiderAnswer> {
        let finish = Finish {
            record_key: keys.record.clone(),
            waiting: keys.waiting.clone(),
            value: format!("r:{}", encode(record)),
            ttl_ms: self.ttl.as_millis() as u64,
            channel: self.store.keys().wake_channel(),
        };
        if let Ok(answer) = finish.write(&self.store, rider.as_ref()).await {
            return answer;
        }
        tracing::warn!("could not record a delivered message in redis; retrying in the background");
        let store = self.store.clone();
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + WRITE_BACK_FOR;
            let mut tries = 0;
            while tokio::time::Instant::now() < until {
                tries += 1;
                tokio::time::sleep(WRITE_BACK_RETRY.delay(tries)).await;
                if finish.write(&store, None).await.is_ok() {
                    tracing::info!("recorded a delivered message in redis after an outage");
                    return;
                }
            }
            tracing::warn!("gave up recording a delivered message in redis");
        });
        None
    }
}

/// What a claim's `SET NX GET` (or a waiter's look) found at the key.
enum Found {
    /// Nothing: the claim is ours (or, for a look, the key is free).
    Nothing,
    /// The record of the send made under the key.
    Record(Record),
    /// Another replica's claim.
    Claim,
}

/// Reads the key's value from its reply.
fn found<E: From<StoreUnavailable>>(reply: Option<redis::Value>) -> Result<Found, E> {
    let value: Option<String> = match reply {
        None | Some(redis::Value::Nil) => None,
        Some(reply) => Some(redis::from_redis_value(reply).map_err(|_| E::from(StoreUnavailable))?),
    };
    Ok(match value {
        None => Found::Nothing,
        Some(value) => match value.strip_prefix("r:").and_then(decode) {
            Some(record) => Found::Record(record),
            None => Found::Claim,
        },
    })
}

/// The answer of a caller the record answered.
fn answered(record: Record) -> Keyed {
    Keyed {
        record,
        deduplicated: true,
        ridden: None,
    }
}

/// What the record's round trip writes: the claim becomes the record.
struct Finish {
    record_key: String,
    waiting: String,
    value: String,
    ttl_ms: u64,
    channel: String,
}

impl Finish {
    /// Writes the record and drops the waiters' flag, with `rider` in the same round trip,
    /// then announces the key if a waiter had raised the flag. Answers the rider's answer, or
    /// an error if the record may not be written.
    async fn write(
        &self,
        store: &RedisStore,
        rider: Option<&Rider>,
    ) -> Result<Option<RiderAnswer>, StoreError> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(&self.record_key)
            .arg(&self.value)
            .arg("PX")
            .arg(self.ttl_ms)
            .cmd("DEL")
            .arg(&self.waiting);
        if let Some(rider) = rider {
            pipeline.invoke_script(&rider.invocation());
        }
        let mut replies = store.pipeline(&mut pipeline).await?.into_iter();
        if let Some(redis::Value::ServerError(error)) = replies.next() {
            return Err(StoreError(error.to_string()));
        }
        if replies.next() == Some(redis::Value::Int(1)) {
            // Failing to announce only delays the waiters until they look again.
            let mut invocation = WAKE.key(&self.record_key);
            invocation.arg(&self.channel);
            let _ = store.invoke::<i64>(&invocation).await;
        }
        Ok(match rider {
            Some(rider) => store.rider_answer(rider, replies.next()).await,
            None => None,
        })
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

/// Announces the key `KEYS[1]` on channel `ARGV[1]`. A script, not a PUBLISH, so that on a
/// Redis Cluster it runs on the key's node (which the settle just reached), not on the node
/// the channel's name hashes to, which may be down.
static WAKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("redis.call('PUBLISH', ARGV[1], KEYS[1])\nreturn 1\n")
});

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
