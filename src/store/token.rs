//! One app's token shared by replicas: the token itself (with its remaining life as the key's
//! TTL, so no clock crosses a process boundary), a fetch lock with an owner and an expiry, the
//! force-refresh budget, and which token values already had their one fetch after a rejection
//! (by digest: `rejected:<first 16 bytes of sha256, hex>`, never the token).
//!
//! A refresh on any replica first loads the stored token; if it is not fresh, the replica takes
//! the lock and fetches, or waits for the lock's holder (woken through pub/sub when it releases
//! the lock) and loads that token. A herd over any number of replicas thus makes one fetch.
//!
//! A rejection's one fetch is claimed with a record that lapses after the fetch lock's life
//! unless its replica ends it (then it stays, spent, for the force-refresh interval): if that
//! replica dies mid-fetch, a waiting replica finds the record gone and claims the fetch itself.

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::time::{Duration, Instant};

use super::RedisStore;
use crate::{
    secret::Secret,
    token::{
        FetchTurn, ForceBudget, RejectionTurn, RejectionWait, StoredToken, TokenStore,
        TokenStoreError,
    },
};

/// Life of the fetch lock: a replica that dies mid-fetch holds the others back this long at
/// most. Longer than one fetch with its retries normally takes.
pub const FETCH_LOCK_LIFE: Duration = Duration::from_secs(20);
/// A waiter looks at the lock again after this long even without a wake-up (lost messages).
const LOCK_RECHECK: Duration = Duration::from_secs(1);
/// The window of the daily force-refresh limit.
const FORCE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The token store of one app in Redis.
pub struct RedisTokenStore {
    store: Arc<RedisStore>,
    token_key: String,
    lock_key: String,
    force_key: String,
    /// `prefix:{appid}:rejected:`, followed by a token's digest.
    rejected_prefix: String,
    load: redis::Script,
    save: redis::Script,
    invalidate: redis::Script,
    release: redis::Script,
    lock_left: redis::Script,
    force: redis::Script,
    end_rejection: redis::Script,
}

impl RedisTokenStore {
    /// The store of the app `appid`.
    pub fn new(store: Arc<RedisStore>, appid: &str) -> Self {
        let keys = store.keys();
        Self {
            token_key: keys.app(appid, "token"),
            lock_key: keys.app(appid, "token-lock"),
            force_key: keys.app(appid, "force-refresh"),
            rejected_prefix: keys.app(appid, "rejected:"),
            store,
            load: redis::Script::new(LOAD_SCRIPT),
            save: redis::Script::new(SAVE_SCRIPT),
            invalidate: redis::Script::new(INVALIDATE_SCRIPT),
            release: redis::Script::new(super::RELEASE_AND_ANNOUNCE_SCRIPT),
            lock_left: redis::Script::new(LOCK_LEFT_SCRIPT),
            force: redis::Script::new(FORCE_SCRIPT),
            end_rejection: redis::Script::new(END_REJECTION_SCRIPT),
        }
    }

    /// The key recording the rejection fetch of `token`: named by a digest, so Redis never
    /// holds a rejected token (which may still be valid).
    fn rejected_key(&self, token: &Secret) -> String {
        let digest = Sha256::digest(token.expose().as_bytes());
        let mut key = self.rejected_prefix.clone();
        for byte in &digest[..16] {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }
}

fn store_error(error: super::redis::StoreError) -> TokenStoreError {
    TokenStoreError(error.to_string())
}

#[async_trait]
impl TokenStore for RedisTokenStore {
    async fn load(&self) -> Result<Option<StoredToken>, TokenStoreError> {
        let invocation = self.load.key(&self.token_key);
        let found: Option<(String, u64)> =
            self.store.invoke(&invocation).await.map_err(store_error)?;
        let Some((value, remaining_ms)) = found else {
            return Ok(None);
        };
        let Some((lifetime_ms, token)) = value.split_once('\n') else {
            return Ok(None);
        };
        let Ok(lifetime_ms) = lifetime_ms.parse::<u64>() else {
            return Ok(None);
        };
        let lifetime = Duration::from_millis(lifetime_ms);
        let remaining = Duration::from_millis(remaining_ms).min(lifetime);
        Ok(Some(StoredToken {
            token: Secret::new(token),
            fetched_at: Instant::now() - (lifetime - remaining),
            lifetime,
        }))
    }

    async fn save(&self, token: &StoredToken) -> Result<(), TokenStoreError> {
        let remaining = token.remaining(Instant::now()).as_millis() as u64;
        if remaining == 0 {
            return Ok(());
        }
        let value = format!("{}\n{}", token.lifetime.as_millis(), token.token.expose());
        let mut invocation = self.save.key(&self.token_key);
        invocation.arg(value).arg(remaining);
        self.store
            .invoke::<i64>(&invocation)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn invalidate_if(&self, rejected: &Secret) -> Result<bool, TokenStoreError> {
        let mut invocation = self.invalidate.key(&self.token_key);
        invocation.arg(rejected.expose());
        let dropped: i64 = self.store.invoke(&invocation).await.map_err(store_error)?;
        Ok(dropped == 1)
    }

    async fn begin_fetch(&self) -> Result<FetchTurn, TokenStoreError> {
        let taken: Option<String> = self
            .store
            .query(
                redis::cmd("SET")
                    .arg(&self.lock_key)
                    .arg(self.store.replica_id())
                    .arg("NX")
                    .arg("PX")
                    .arg(FETCH_LOCK_LIFE.as_millis() as u64),
            )
            .await
            .map_err(store_error)?;
        Ok(if taken.is_some() {
            FetchTurn::Mine
        } else {
            FetchTurn::Another
        })
    }

    async fn end_fetch(&self) {
        let mut invocation = self.release.key(&self.lock_key);
        invocation
            .arg(self.store.replica_id())
            .arg(self.store.keys().wake_channel());
        // Not released: the others wait out the lock's life instead.
        let _ = self.store.invoke::<i64>(&invocation).await;
    }

    async fn wait_for_fetch(&self, at_most: Duration) {
        // Listening before looking: a release between the look and the wait still wakes us.
        let mut listener = self.store.listen();
        let invocation = self.lock_left.key(&self.lock_key);
        let Ok(left_ms) = self.store.invoke::<i64>(&invocation).await else {
            return;
        };
        if left_ms <= 0 {
            return;
        }
        let wait = Duration::from_millis(left_ms as u64)
            .min(at_most)
            .min(LOCK_RECHECK);
        listener.wait(&self.lock_key, wait).await;
    }

    async fn claim_force_refresh(
        &self,
        interval: Duration,
        daily_limit: usize,
    ) -> Result<ForceBudget, TokenStoreError> {
        let mut invocation = self.force.key(&self.force_key);
        invocation
            .arg(interval.as_millis() as u64)
            .arg(daily_limit)
            .arg(FORCE_WINDOW.as_millis() as u64)
            .arg(uuid::Uuid::new_v4().simple().to_string());
        let wait_ms: u64 = self.store.invoke(&invocation).await.map_err(store_error)?;
        Ok(if wait_ms == 0 {
            ForceBudget::Granted
        } else {
            ForceBudget::Wait(Duration::from_millis(wait_ms))
        })
    }

    async fn claim_rejection(
        &self,
        rejected: &Secret,
        interval: Duration,
    ) -> Result<RejectionTurn, TokenStoreError> {
        let taken: Option<String> = self
            .store
            .query(
                redis::cmd("SET")
                    .arg(self.rejected_key(rejected))
                    .arg(REJECTION_RUNNING)
                    .arg("NX")
                    .arg("PX")
                    .arg(interval.min(FETCH_LOCK_LIFE).as_millis().max(1) as u64),
            )
            .await
            .map_err(store_error)?;
        Ok(if taken.is_some() {
            RejectionTurn::Mine
        } else {
            RejectionTurn::Another
        })
    }

    async fn end_rejection(&self, rejected: &Secret, interval: Duration) {
        let mut invocation = self.end_rejection.key(self.rejected_key(rejected));
        invocation
            .arg(self.store.keys().wake_channel())
            .arg(interval.as_millis().max(1) as u64);
        // Not marked: the waiters see the outcome at their next look, or wait out their bound.
        let _ = self.store.invoke::<i64>(&invocation).await;
    }

    async fn wait_for_rejection(&self, rejected: &Secret, at_most: Duration) -> RejectionWait {
        let key = self.rejected_key(rejected);
        // Listening before looking: an end between the look and the wait still wakes us.
        let mut listener = self.store.listen();
        let state: Result<Option<String>, _> = self.store.query(redis::cmd("GET").arg(&key)).await;
        match state {
            Ok(Some(value)) if value == REJECTION_RUNNING => {
                listener.wait(&key, at_most.min(LOCK_RECHECK)).await;
                RejectionWait::Running
            }
            // Claimed, never ended, and lapsed: its replica is gone.
            Ok(None) => RejectionWait::Abandoned,
            // Ended, or not knowable now: the caller looks at the stored token.
            _ => RejectionWait::Ended,
        }
    }
}

/// The value of a rejection record while its fetch runs; [`END_REJECTION_SCRIPT`] changes it
/// once the outcome is stored.
const REJECTION_RUNNING: &str = "1";

/// Marks the rejection record `KEYS[1]` ended, for `ARGV[2]` ms (the token value's one fetch
/// per interval stays spent), and announces it on channel `ARGV[1]`.
const END_REJECTION_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == '1' then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[1], KEYS[1])
return 1
";

/// The stored value (`lifetime_ms\ntoken`) and its remaining life in ms, or nil.
const LOAD_SCRIPT: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then return false end
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then return false end
return {value, left}
";

/// Stores `ARGV[1]` for `ARGV[2]` ms.
const SAVE_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Deletes the stored token only if it is `ARGV[1]` (compare-and-invalidate).
const INVALIDATE_SCRIPT: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local newline = string.find(value, '\n', 1, true)
if newline and string.sub(value, newline + 1) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// The fetch lock's remaining life in ms (<= 0: free).
const LOCK_LEFT_SCRIPT: &str = r"
return redis.call('PTTL', KEYS[1])
";

/// Grants one force refresh (0) or answers how many ms until one is allowed: at most one per
/// `ARGV[1]` ms and `ARGV[2]` per `ARGV[3]` ms; `ARGV[4]` names this grant.
const FORCE_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] and now - tonumber(last[2]) < interval then
  return interval - (now - tonumber(last[2]))
end
if redis.call('ZCARD', KEYS[1]) >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, window - (now - tonumber(first[2])))
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 0
";
