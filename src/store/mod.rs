//! State shared by replicas, on Redis (`NOTIFY_REDIS_URL`).
//!
//! Without a Redis every piece of state lives in the process (the in-memory stores beside each
//! trait: `crate::token::MemoryTokenStore`, `crate::idempotency::MemoryIdempotencyStore`, the
//! app's own rate limiter). With one, every replica that shares the Redis and the key prefix
//! behaves as one service:
//!
//! - [`redis`]: the connection (single node or cluster), the key layout ([`Keys`], every key of
//!   an app in its `{appid}` hash tag), the health of the connection and the wake-ups of waiters
//!   (pub/sub). Another feature that needs shared state gets its connection and keys here.
//! - [`token`]: the token, a fetch lock with an owner and an expiry, and the force-refresh
//!   budget.
//! - [`idempotency`]: the records and the in-progress claims (a lease).
//! - [`limits`]: the app's rate over all replicas, the 45011 pause and the 45009 stop.
//! - The subscription ledger and its events: `crate::subscriptions::RedisLedger`, on the same
//!   connection and keys.
//!
//! Every atomic step is one Lua script (EVALSHA through `redis::Script`). When Redis cannot be
//! reached the service stays up: keyed sends are refused (`STORE_UNAVAILABLE`) unless their
//! record is known here, unkeyed sends go on with in-process state; recovery is automatic.

pub mod health;
pub mod idempotency;
pub mod limits;
pub mod redis;
pub mod token;
mod wake;

pub use self::redis::{Keys, RedisConfig, RedisStore};

/// Drops the lock or claim `KEYS[1]` if its owner `ARGV[1]` still holds it, and announces the
/// key on channel `ARGV[2]` so that waiters on any replica look again. Shared by the token
/// fetch lock and the idempotency claims.
const RELEASE_AND_ANNOUNCE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
";
