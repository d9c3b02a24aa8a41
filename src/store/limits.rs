//! An app's limits over all replicas: `rate_per_sec` as the app's total (a token bucket in
//! Redis, one second's worth of burst), the 45011 pause and the 45009 stop.
//!
//! One round trip at a time per replica leases a small batch of permits, kept for
//! [`LEASE_LIFE`]: [`MAX_LEASE`] (2% of a second's rate, when that is less), or one for each
//! send waiting for the round trip when more wait, up to 2% of a second's rate. The app's total
//! stays within the bucket's one-second burst plus one lease per replica. Leasing for every
//! send that waits keeps a replica from being held to [`MAX_LEASE`] sends per round trip: with
//! a fixed lease, round trips of 10 ms (a distant Redis, or a slow moment of a near one) would
//! cap it at 2,000 sends a second, and a backlog would drain 20 sends per round trip
//! (docs/benchmarks.md). The same script answers whether the app is paused or stopped, so a
//! pause met by one replica holds every replica back from its next lease on.
//! While Redis is unreachable, each replica admits its share of the rate (the rate divided by
//! the replicas seen last) on its own.

use std::{
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use arc_swap::ArcSwapOption;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::{Duration, Instant};

use super::RedisStore;

/// Most permits leased in one round trip while no more sends than that wait for it.
pub const MAX_LEASE: u32 = 20;
/// How long leased permits stay usable: a replica cannot bank permits for later bursts.
pub const LEASE_LIFE: Duration = Duration::from_secs(1);

/// What the shared limits answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// One send may start.
    Granted,
    /// A 45011 pause is in force for this long.
    Paused(Duration),
    /// A 45009 stop is in force for this long.
    Stopped(Duration),
}

/// Permits leased by this replica.
#[derive(Debug)]
struct Lease {
    permits: u32,
    until: Instant,
}

/// One app's shared limits.
pub struct SharedLimits {
    store: Arc<RedisStore>,
    rate_per_sec: u32,
    /// Permits leased per round trip while few sends wait.
    lease_size: u32,
    /// Most permits leased per round trip however many sends wait: 2% of a second's rate.
    lease_cap: u32,
    /// Sends waiting here for a lease: the next round trip leases one permit for each.
    waiting: AtomicU32,
    bucket_key: String,
    pause_key: String,
    stop_key: String,
    leased: Mutex<Lease>,
    /// One round trip at a time per replica; the others wait for its lease.
    refill: tokio::sync::Mutex<()>,
    /// The local share of the rate during an outage, by the replica count it was made for.
    fallback: ArcSwapOption<(usize, DefaultDirectRateLimiter)>,
    take: redis::Script,
    mark: redis::Script,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("rate_per_sec", &self.rate_per_sec)
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// The limits of the app `appid` at `rate_per_sec` in total.
    pub fn new(store: Arc<RedisStore>, appid: &str, rate_per_sec: u32) -> Self {
        let keys = store.keys();
        let lease_size = (rate_per_sec / 50).clamp(1, MAX_LEASE);
        Self {
            bucket_key: keys.app(appid, "rate"),
            pause_key: keys.app(appid, "pause"),
            stop_key: keys.app(appid, "daily-quota"),
            store,
            rate_per_sec: rate_per_sec.max(1),
            lease_size,
            lease_cap: (rate_per_sec / 50).max(lease_size),
            waiting: AtomicU32::new(0),
            leased: Mutex::new(Lease {
                permits: 0,
                until: Instant::now(),
            }),
            refill: tokio::sync::Mutex::new(()),
            fallback: ArcSwapOption::empty(),
            take: redis::Script::new(TAKE_SCRIPT),
            mark: redis::Script::new(MARK_SCRIPT),
        }
    }

    /// Waits until the app's rate admits one send, or answers that the app is paused or
    /// stopped. Never fails: without Redis it admits this replica's share of the rate.
    pub async fn acquire(&self) -> Admit {
        loop {
            if self.take_leased() {
                return Admit::Granted;
            }
            let _waiting = Waiting::count(&self.waiting);
            let _turn = self.refill.lock().await;
            if self.take_leased() {
                return Admit::Granted;
            }
            if !self.store.is_up() {
                drop(_turn);
                self.local_share().1.until_ready().await;
                return Admit::Granted;
            }
            let mut invocation = self.take.key(&self.bucket_key);
            invocation
                .key(&self.pause_key)
                .key(&self.stop_key)
                .arg(self.rate_per_sec)
                .arg(self.lease_wanted());
            match self.store.invoke::<(u32, u64, u64, u64)>(&invocation).await {
                Ok((_, _, _, stopped)) if stopped > 0 => {
                    return Admit::Stopped(Duration::from_millis(stopped));
                }
                Ok((_, _, paused, _)) if paused > 0 => {
                    return Admit::Paused(Duration::from_millis(paused));
                }
                Ok((granted, _, _, _)) if granted > 0 => {
                    self.lease(granted - 1);
                    return Admit::Granted;
                }
                // Holding the turn while waiting: one replica asks again once, not every waiter.
                Ok((_, wait_ms, _, _)) => {
                    tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
                }
                Err(_) => {
                    drop(_turn);
                    self.local_share().1.until_ready().await;
                    return Admit::Granted;
                }
            }
        }
    }

    /// Shares a 45011 pause of `duration` with every replica (best effort: a replica that
    /// cannot tell Redis still pauses itself).
    pub async fn pause(&self, duration: Duration) {
        self.mark(&self.pause_key, duration).await;
    }

    /// Shares a 45009 stop of `duration` with every replica.
    pub async fn stop(&self, duration: Duration) {
        self.mark(&self.stop_key, duration).await;
    }

    async fn mark(&self, key: &str, duration: Duration) {
        let mut invocation = self.mark.key(key);
        invocation.arg(duration.as_millis().max(1) as u64);
        if let Err(error) = self.store.invoke::<i64>(&invocation).await {
            tracing::debug!(%error, "could not share a pause with the other replicas");
        }
    }

    /// Permits to ask for: one for each send waiting (this one included), at least the usual
    /// lease and at most the cap.
    fn lease_wanted(&self) -> u32 {
        let waiting = self.waiting.load(Ordering::Relaxed);
        waiting.clamp(self.lease_size, self.lease_cap)
    }

    fn take_leased(&self) -> bool {
        let mut lease = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        if lease.permits > 0 && Instant::now() < lease.until {
            lease.permits -= 1;
            return true;
        }
        false
    }

    fn lease(&self, permits: u32) {
        let mut lease = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        *lease = Lease {
            permits,
            until: Instant::now() + LEASE_LIFE,
        };
    }

    /// This replica's share of the rate while Redis is unreachable.
    fn local_share(&self) -> Arc<(usize, DefaultDirectRateLimiter)> {
        let replicas = self.store.replicas();
        if let Some(current) = self.fallback.load_full()
            && current.0 == replicas
        {
            return current;
        }
        let share = (self.rate_per_sec / replicas as u32).max(1);
        let limiter = RateLimiter::direct(Quota::per_second(
            NonZeroU32::new(share).unwrap_or(NonZeroU32::MIN),
        ));
        let made = Arc::new((replicas, limiter));
        self.fallback.store(Some(made.clone()));
        made
    }
}

/// Counts a send among those waiting for a lease while it lives.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicU32) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token bucket of one second's burst, refilled at the rate, that also answers the pause
/// and the stop. Time is Redis's own (`TIME`), so the replicas' clocks do not matter.
/// KEYS: bucket, pause, stop. ARGV: rate per second, permits wanted.
/// Returns {granted, wait_ms, paused_ms, stopped_ms}.
const TAKE_SCRIPT: &str = r"
local stopped = redis.call('PTTL', KEYS[3])
if stopped > 0 then return {0, 0, 0, stopped} end
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {0, 0, paused, 0} end
local rate = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1])
local at = tonumber(bucket[2])
if tokens == nil or at == nil then
  tokens = rate
  at = now
end
if now > at then
  tokens = math.min(rate, tokens + (now - at) * rate / 1000)
  at = now
end
local granted = math.min(wanted, math.floor(tokens))
local wait = 0
if granted > 0 then
  tokens = tokens - granted
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], 5000)
return {granted, wait, 0, 0}
";

/// Sets a flag key for at least `ARGV[1]` ms (never shortens one already set).
const MARK_SCRIPT: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
";
