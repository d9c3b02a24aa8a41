//! The connection to the shared Redis, the key layout, and the upkeep task that connects,
//! watches the connection's health and counts the replicas.
//!
//! Other features that keep shared state use this module: [`RedisStore::invoke`] runs one of
//! their scripts on the current connection (recording its health), [`RedisStore::keys`] builds
//! their keys in the app's hash tag, and `listen` waits for the keys their scripts announce
//! (a PUBLISH on [`Keys::wake_channel`] inside the script that changed the key).

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use redis::{
    Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisFuture, ScriptInvocation,
    ServerErrorKind, Value,
    aio::{ConnectionLike, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo},
    io::tcp::TcpSettings,
};
use tokio::task::JoinHandle;

use super::{
    Rider, RiderAnswer,
    batch::Batched,
    health::StoreHealth,
    wake::{Listener, Wakeups},
};
use crate::secret::Secret;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take before it counts as failed: a send never waits longer than
/// this for Redis.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the upkeep task reports this replica alive and probes the connection.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica not heard from for this long no longer counts.
const REPLICA_WINDOW: Duration = Duration::from_secs(5);

/// Redis could not be asked, or did not answer.
#[derive(Clone, Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct StoreError(pub String);

/// The names of the shared keys. Every key of an app carries its appid in a hash tag
/// (`{wx...}`), so one app's keys live in one Redis Cluster slot and a script may touch several.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The key prefix (`NOTIFY_REDIS_KEY_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash tag of an app: `{appid}`.
    pub fn hash_tag(appid: &str) -> String {
        format!("{{{appid}}}")
    }

    /// `prefix:{appid}:name`, the key `name` of one app.
    pub fn app(&self, appid: &str, name: &str) -> String {
        self.app_parts(appid, &[name])
    }

    /// `prefix:{appid}:` and `parts` one after the other: [`Keys::app`] with a name made of
    /// pieces (a kind and an id), without formatting the name first. Per-message keys are made
    /// so.
    pub fn app_parts(&self, appid: &str, parts: &[&str]) -> String {
        let length = parts.iter().map(|part| part.len()).sum::<usize>();
        let mut key = String::with_capacity(self.prefix.len() + appid.len() + 4 + length);
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(appid);
        key.push_str("}:");
        for part in parts {
            key.push_str(part);
        }
        key
    }

    /// The pub/sub channel on which changed keys are announced.
    pub fn wake_channel(&self) -> String {
        format!("{}:wake", self.prefix)
    }

    /// The sorted set of live replicas (by last heartbeat).
    pub fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }
}

/// A connection to one Redis or to a Redis Cluster; both reconnect by themselves.
#[derive(Clone)]
pub enum Connection {
    /// One Redis (a primary, or a proxy in front of several), its requests sent in batches.
    Single(Batched),
    /// A Redis Cluster, routed by key slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            // The redis crate sends SCRIPT LOAD (a script's first run on a node, after NOSCRIPT)
            // to every node and needs every answer, so one node that hangs would fail every
            // script's first run on every node. The node of the script's keys is among the
            // primaries, and gets the load on the same connection before the EVALSHA that
            // follows it: one answer is enough.
            Self::Cluster(connection) => {
                if is_script_load(cmd) {
                    let routing = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::OneSucceeded),
                    ));
                    Box::pin(connection.route_command(cmd.clone(), routing))
                } else {
                    connection.req_packed_command(cmd)
                }
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// `SCRIPT LOAD ...`.
fn is_script_load(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        _ => b"".as_slice(),
    });
    matches!(
        (args.next(), args.next()),
        (Some(command), Some(sub)) if command.eq_ignore_ascii_case(b"SCRIPT") && sub.eq_ignore_ascii_case(b"LOAD")
    )
}

/// Where the state shared by replicas lives, as the configuration gives it
/// (`crate::config::ServeConfig::redis`; `None` there keeps all state in the process).
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// One `redis://`, `rediss://` or unix socket (`redis+unix://`, `unix://`) URL, or (cluster
    /// mode) any number of `redis://` or `rediss://` node URLs; redacted in Debug, since a URL
    /// may carry a password.
    pub urls: Vec<Secret>,
    /// Talk to a Redis Cluster (the URLs name any of its nodes).
    pub cluster: bool,
    /// Prefix of every key; replicas sharing the Redis and the prefix behave as one service.
    pub key_prefix: String,
}

/// The shared store: one per process, shared by every app and feature.
pub struct RedisStore {
    config: RedisConfig,
    keys: Keys,
    /// `None` until the first connection succeeds.
    connection: ArcSwapOption<Connection>,
    health: StoreHealth,
    wakeups: Wakeups,
    /// This process, as owner of locks and claims and as a member of the replica set.
    replica: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs stay out: they may carry a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .field("cluster", &self.config.cluster)
            .field("up", &self.health.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `config`, not connected yet: [`RedisStore::spawn_upkeep`] connects.
    pub fn new(config: &RedisConfig) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            keys: Keys::new(&config.key_prefix),
            connection: ArcSwapOption::empty(),
            health: StoreHealth::new(),
            wakeups: Wakeups::new(),
            replica: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// This replica's id (owner of its locks and claims).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// True while Redis answers.
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Replicas heard from in the last few seconds, this one included.
    pub fn replicas(&self) -> usize {
        self.health.replicas()
    }

    /// Resolves once Redis has answered at least once.
    pub async fn wait_connected(&self) {
        self.health.wait_connected().await;
    }

    /// The current connection, if Redis answers (fails fast during an outage, so no caller
    /// waits for timeouts; the upkeep task notices the recovery).
    pub fn connection(&self) -> Result<Connection, StoreError> {
        if !self.health.is_up() {
            return Err(StoreError("unreachable".to_owned()));
        }
        self.connection
            .load_full()
            .map(|connection| (*connection).clone())
            .ok_or_else(|| StoreError("not connected yet".to_owned()))
    }

    /// Runs a script (EVALSHA, loading it on first use), recording the connection's health.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection()?;
        crate::telemetry::catalog::count_store_request();
        let result = invocation.invoke_async(&mut connection).await;
        self.record(result)
    }

    /// Runs one command, recording the connection's health.
    pub async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection()?;
        crate::telemetry::catalog::count_store_request();
        let result = command.query_async(&mut connection).await;
        self.record(result)
    }

    /// Sends several commands in one round trip (a pipeline, not a transaction: other clients'
    /// commands may run between them) and answers each one's reply, in order; a command that
    /// failed answers `Value::ServerError` (the pipeline is sent with `ignore_errors`). Records
    /// the connection's health. The commands must share one hash tag on a Redis Cluster.
    pub async fn pipeline(&self, pipeline: &mut Pipeline) -> Result<Vec<Value>, StoreError> {
        let mut connection = self.connection()?;
        crate::telemetry::catalog::count_store_request();
        let result = pipeline.ignore_errors().query_async(&mut connection).await;
        self.record(result)
    }

    /// A [`Rider`]'s reply in a [`RedisStore::pipeline`] as its answer; `None` when its script
    /// failed (the rider's feature then does its step by itself). A script Redis did not have
    /// yet (its first use, or Redis restarted since) is run again on its own, which loads it:
    /// a pipeline sends EVALSHA alone, and the step had not run.
    pub(crate) async fn rider_answer(
        &self,
        rider: &Rider,
        reply: Option<Value>,
    ) -> Option<RiderAnswer> {
        match reply? {
            Value::ServerError(error) if error.kind() == Some(ServerErrorKind::NoScript) => self
                .invoke::<Value>(&rider.invocation())
                .await
                .ok()
                .map(RiderAnswer::new),
            Value::ServerError(_) => None,
            reply => Some(RiderAnswer::new(reply)),
        }
    }

    /// Stays subscribed to `channel` (a pub/sub connection of its own, on one of the
    /// configured nodes) and hands every message to `deliver`; moves to the next node when its
    /// node goes away or stops answering. On a Redis Cluster a PUBLISH reaches the subscribers
    /// of every node, so any node will do. Runs until aborted.
    pub async fn relay(&self, channel: &str, deliver: impl FnMut(redis::Msg)) {
        super::wake::relay(&self.config.urls, channel, || {}, deliver).await;
    }

    /// A listener for announced keys (register it before looking at the state it waits for).
    pub(crate) fn listen(&self) -> Listener {
        self.wakeups.listen()
    }

    fn record<T>(&self, result: redis::RedisResult<T>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.health.record_ok();
                Ok(value)
            }
            // On a cluster one node failing says nothing of the others, whose apps go on
            // sharing state: only the probe of every node ([`Self::probe_cluster`]) turns the
            // store down, so a dead node's keys do not hold back the live nodes' calls.
            Err(error) if self.config.cluster => {
                crate::telemetry::catalog::count_store_error();
                Err(StoreError(error.to_string()))
            }
            Err(error) => {
                // A script error (a bug or a full Redis) is an answer, but not a usable one.
                self.health.record_error(&error);
                Err(StoreError(error.to_string()))
            }
        }
    }

    /// Whether any primary of the cluster answers: the store is down only when none does.
    async fn probe_cluster(&self, connection: &mut ClusterConnection) {
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::OneSucceeded),
        ));
        match connection.route_command(redis::cmd("PING"), routing).await {
            Ok(_) => self.health.record_ok(),
            Err(error) => self.health.record_error(&error),
        }
    }

    /// Connects (retrying until it succeeds), then reports this replica alive every second,
    /// which also probes the connection so that recovery is noticed without any call; and keeps
    /// the wake-up subscription. Runs until aborted.
    pub fn spawn_upkeep(self: &Arc<Self>) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            store.connect().await;
            let subscriber = tokio::spawn(
                store
                    .wakeups
                    .clone()
                    .run(store.config.urls.clone(), store.keys.wake_channel()),
            );
            let _abort_subscriber = AbortOnDrop(subscriber);
            let heartbeat = redis::Script::new(HEARTBEAT_SCRIPT);
            loop {
                let mut invocation = heartbeat.key(store.keys.replicas());
                invocation
                    .arg(&store.replica)
                    .arg(REPLICA_WINDOW.as_millis() as u64);
                let connection = store.connection.load_full();
                if let Some(connection) = connection {
                    let mut connection = (*connection).clone();
                    let result: redis::RedisResult<usize> =
                        invocation.invoke_async(&mut connection).await;
                    if let Ok(replicas) = store.record(result) {
                        store.health.set_replicas(replicas);
                    }
                    if let Connection::Cluster(connection) = &mut connection {
                        store.probe_cluster(connection).await;
                    }
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        })
    }

    /// The first connection, retried every second; logs once why health stays NOT_SERVING.
    async fn connect(&self) {
        let mut logged = false;
        loop {
            let problem = match self.open().await {
                Ok(mut connection) => match too_old(&mut connection).await {
                    None => {
                        self.connection.store(Some(Arc::new(connection)));
                        self.health.record_ok();
                        return;
                    }
                    Some(problem) => problem,
                },
                Err(error) => error.to_string(),
            };
            crate::telemetry::catalog::count_store_error();
            if !logged {
                tracing::warn!(error = %problem, "cannot connect to redis; health stays NOT_SERVING until it connects");
                logged = true;
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    async fn open(&self) -> redis::RedisResult<Connection> {
        let urls: Vec<&str> = self.config.urls.iter().map(|url| url.expose()).collect();
        if self.config.cluster {
            let client = ClusterClient::builder(urls)
                .tcp_settings(tcp_settings())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(1)
                .build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        } else {
            let client = client(urls[0])?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1);
            Ok(Connection::Single(Batched::new(
                client.get_connection_manager_with_config(config).await?,
            )))
        }
    }
}

/// The oldest Redis that has every command the service sends: 7.0 (`SET` with both `NX` and
/// `GET`, the keyed send's claim).
const OLDEST_REDIS: (u32, u32) = (7, 0);

/// Why the Redis behind `connection` cannot serve the service (a node older than
/// [`OLDEST_REDIS`]), or `None`; also `None` when it does not say its version (`INFO`
/// disabled), so that such a Redis is not refused on a guess.
async fn too_old(connection: &mut Connection) -> Option<String> {
    let info: Value = redis::cmd("INFO")
        .arg("server")
        .query_async(connection)
        .await
        .ok()?;
    let oldest = redis_versions(&info).into_iter().min()?;
    (oldest < OLDEST_REDIS).then(|| {
        format!(
            "redis {}.{} is too old: the service needs {}.{} or newer",
            oldest.0, oldest.1, OLDEST_REDIS.0, OLDEST_REDIS.1
        )
    })
}

/// Every `redis_version` (major, minor) in an `INFO server` reply: one node's text, or a map of
/// every node's on a cluster.
fn redis_versions(info: &Value) -> Vec<(u32, u32)> {
    match info {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes)
            .lines()
            .filter_map(|line| line.trim().strip_prefix("redis_version:"))
            .filter_map(|version| {
                let mut parts = version.split('.').map(str::parse::<u32>);
                Some((parts.next()?.ok()?, parts.next()?.ok()?))
            })
            .collect(),
        Value::VerbatimString { text, .. } => {
            redis_versions(&Value::BulkString(text.clone().into_bytes()))
        }
        Value::SimpleString(text) => redis_versions(&Value::BulkString(text.clone().into_bytes())),
        Value::Array(values) | Value::Set(values) => {
            values.iter().flat_map(redis_versions).collect()
        }
        Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(_, value)| redis_versions(value))
            .collect(),
        _ => Vec::new(),
    }
}

/// TCP settings of every connection to Redis: TCP_NODELAY, as Redis's own C client (hiredis),
/// redis-py, Jedis and go-redis set it; the redis crate leaves it off. The connection pipelines
/// many small commands, and with Nagle's algorithm a command written while an earlier one is
/// unacknowledged waits for that ACK (a network round trip, more with delayed ACKs). On
/// loopback it makes no measurable difference (docs/benchmarks.md).
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// A client of one node (`redis://`, `rediss://` or a unix socket) with [`tcp_settings`].
pub(super) fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
    redis::Client::open(info)
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports a replica alive and answers how many were heard from within the window.
/// KEYS[1] the replica set; ARGV[1] this replica, ARGV[2] the window (ms).
const HEARTBEAT_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_loads_are_told_apart_from_other_commands() {
        assert!(is_script_load(
            redis::cmd("SCRIPT").arg("LOAD").arg("return 1")
        ));
        assert!(is_script_load(
            redis::cmd("script").arg("load").arg("return 1")
        ));
        assert!(!is_script_load(redis::cmd("SCRIPT").arg("FLUSH")));
        assert!(!is_script_load(redis::cmd("EVALSHA").arg("abc").arg(0)));
        assert!(!is_script_load(&redis::cmd("PING")));
    }

    #[test]
    fn versions_are_read_from_one_node_or_every_node() {
        let node = |version: &str| {
            Value::BulkString(
                format!("# Server\r\nredis_version:{version}\r\nredis_mode:cluster\r\n").into(),
            )
        };
        assert_eq!(redis_versions(&node("7.0.15")), vec![(7, 0)]);
        let cluster = Value::Map(vec![
            (Value::SimpleString("a:1".into()), node("7.2.4")),
            (Value::SimpleString("b:2".into()), node("6.2.14")),
        ]);
        assert_eq!(redis_versions(&cluster).into_iter().min(), Some((6, 2)));
        assert!(redis_versions(&Value::Nil).is_empty());
    }

    #[test]
    fn every_app_key_is_in_the_app_hash_tag() {
        let keys = Keys::new("wechat-notify");
        assert_eq!(keys.app("wx123", "token"), "wechat-notify:{wx123}:token");
        assert_eq!(
            keys.app_parts("wx123", &["idem:", "\nsend\nk"]),
            "wechat-notify:{wx123}:idem:\nsend\nk"
        );
        assert_eq!(Keys::hash_tag("wx123"), "{wx123}");
    }
}
