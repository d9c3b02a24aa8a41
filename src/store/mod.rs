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
//! Every atomic step is one command or one Lua script (EVALSHA through `redis::Script`); steps
//! that need not be atomic together but go at the same moment share a round trip (a
//! pipeline). On one Redis, the requests of all the calls ready at the same moment leave in
//! one write (`batch`). When Redis cannot be reached the service stays up: keyed sends are
//! refused (`STORE_UNAVAILABLE`) unless their record is known here, unkeyed sends go on with
//! in-process state; recovery is automatic.

mod batch;
pub mod health;
pub mod idempotency;
pub mod limits;
pub mod redis;
pub mod token;
mod wake;

pub use self::redis::{Keys, RedisConfig, RedisStore, StoreError};

/// A step of another feature that rides on a keyed send's round trips to Redis: its script
/// is sent in the same pipeline as the claim or the record, so that the send and the step take
/// one round trip together (every key of an app is in its hash tag, hence in one Cluster slot,
/// so one node answers the whole pipeline). The subscription ledger's lookup and its record of
/// the send's outcome are such steps: see `crate::subscriptions::RedisLedger`.
#[derive(Clone)]
pub struct Rider {
    /// The step's script.
    pub step: &'static RiderStep,
    /// Its keys, in the app's hash tag.
    pub keys: Vec<String>,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Rider {
    /// The step's script with its keys and arguments.
    pub fn invocation(&self) -> ::redis::ScriptInvocation<'_> {
        let mut invocation = self.step.script().prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        for arg in &self.args {
            invocation.arg(arg);
        }
        invocation
    }
}

/// What a [`Rider`]'s step answered: opaque, except to the feature that gave the step
/// ([`RiderAnswer::read`]), so that the traits that carry it say nothing of the Redis client.
#[derive(Clone, Debug, PartialEq)]
pub struct RiderAnswer(::redis::Value);

impl RiderAnswer {
    pub(crate) fn new(value: ::redis::Value) -> Self {
        Self(value)
    }

    /// The answer as the step's Lua returned it.
    pub fn read<T: ::redis::FromRedisValue>(self) -> Result<T, StoreError> {
        ::redis::from_redis_value(self.0).map_err(|error| StoreError(error.to_string()))
    }
}

/// The Lua of a [`Rider`], the body of a function of `keys` and `args` (its `KEYS` and
/// `ARGV`); what it returns comes back as the rider's answer. A `static`, so that its script is
/// made once.
pub struct RiderStep {
    lua: &'static str,
    script: std::sync::OnceLock<::redis::Script>,
}

impl RiderStep {
    /// The step whose body is `lua`.
    pub const fn new(lua: &'static str) -> Self {
        Self {
            lua,
            script: std::sync::OnceLock::new(),
        }
    }

    /// The step as a script (EVALSHA).
    pub fn script(&self) -> &::redis::Script {
        self.script.get_or_init(|| {
            ::redis::Script::new(&format!(
                "local function rider(keys, args)\n{}\nend\nreturn rider(KEYS, ARGV)\n",
                self.lua
            ))
        })
    }
}

/// Drops the lock `KEYS[1]` if its owner `ARGV[1]` still holds it, and announces the key on
/// channel `ARGV[2]` so that waiters on any replica look again (the token fetch lock; the
/// idempotency claims announce only to raised waiters' flags, in their own script).
const RELEASE_AND_ANNOUNCE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
";
