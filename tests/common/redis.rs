//! Real `redis-server` processes, stoppable for outages, and replicas of the real
//! `wechat-notify` binary sharing them.
//!
//! A single server listens on a unix socket in its own directory and on no TCP port, so nothing
//! else can take its address, before or after an outage. The nodes of the three-node cluster are
//! the one exception in the repository to "bind once and hand over" (everything else binds port 0
//! and reads the port it got, or is handed the bound listener): a cluster is reached over TCP
//! (clients and the cluster bus, on the port plus 10000) and redis-server cannot take port 0, so
//! a node gets a port that was free a moment ago and is started again on another if it was taken
//! in between.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use wechat_notify::{
    pb::notify_service_client::NotifyServiceClient,
    secret::Secret,
    store::{RedisConfig, RedisStore},
};

use super::listening::Listening;

/// How many ports a cluster node tries before the test gives up.
const CLUSTER_NODE_ATTEMPTS: usize = 5;

/// Where a server listens.
enum Address {
    /// A unix socket (`redis.sock` in the server's directory).
    Socket,
    /// A loopback TCP port (cluster nodes).
    Port(u16),
}

/// One `redis-server`, with an append-only file so a restart keeps its data.
pub struct RedisServer {
    address: Address,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a unix socket of its own.
    pub async fn start() -> RedisServer {
        let mut server = RedisServer {
            address: Address::Socket,
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
            child: None,
        };
        server.resume().await;
        server
    }

    /// A cluster node on a loopback port (see the module docs for why a port).
    async fn start_cluster_node() -> RedisServer {
        // Without full coverage the nodes that stay up keep serving their own slots while
        // another is down (what docs/operations.md asks of a production cluster too).
        let extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            "--cluster-require-full-coverage",
            "no",
        ]
        .map(str::to_owned)
        .into();
        for _ in 0..CLUSTER_NODE_ATTEMPTS {
            let mut server = RedisServer {
                address: Address::Port(port_free_a_moment_ago()),
                dir: tempfile::tempdir().unwrap(),
                extra: extra.clone(),
                child: None,
            };
            if server.try_resume().await {
                return server;
            }
        }
        panic!("no cluster node started in {CLUSTER_NODE_ATTEMPTS} attempts");
    }

    /// `redis+unix:///DIR/redis.sock`, or `redis://127.0.0.1:PORT` for a cluster node.
    pub fn url(&self) -> String {
        match self.address {
            Address::Socket => format!("redis+unix://{}", self.socket().display()),
            Address::Port(port) => format!("redis://127.0.0.1:{port}"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis-cli`'s arguments to reach this server.
    fn cli_args(&self) -> Vec<String> {
        match self.address {
            Address::Socket => vec!["-s".to_owned(), self.socket().display().to_string()],
            Address::Port(port) => vec!["-p".to_owned(), port.to_string()],
        }
    }

    /// Stops the process (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): its connections stay open and nothing answers, as when a
    /// host hangs or drops off the network without closing anything. Stopping it or dropping
    /// the server still ends it (SIGKILL).
    pub fn freeze(&self) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args(["-STOP", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "redis-server frozen");
    }

    /// Starts it again at the same address and data.
    pub async fn resume(&mut self) {
        assert!(self.try_resume().await, "redis-server exited at start");
    }

    /// Starts the process; false if it exited before answering (its port was taken).
    async fn try_resume(&mut self) -> bool {
        let listen: Vec<String> = match self.address {
            Address::Socket => vec![
                "--port".to_owned(),
                "0".to_owned(),
                "--unixsocket".to_owned(),
                self.socket().display().to_string(),
                "--unixsocketperm".to_owned(),
                "700".to_owned(),
            ],
            Address::Port(port) => vec![
                "--port".to_owned(),
                port.to_string(),
                "--bind".to_owned(),
                "127.0.0.1".to_owned(),
            ],
        };
        let child = Command::new("redis-server")
            .args(listen)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        self.child = Some(child);
        self.answers().await
    }

    /// Waits until the server answers PING; false if it exited first.
    async fn answers(&mut self) -> bool {
        for _ in 0..200 {
            let pong = Command::new("redis-cli")
                .args(self.cli_args())
                .arg("ping")
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("PONG"))
                .unwrap_or(false);
            if pong {
                return true;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server at {} did not answer", self.url());
    }

    /// Runs one `redis-cli` command against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(self.cli_args())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of `field` in the `INFO` `section` (for a command's statistics, its
    /// `calls=...,usec=...` list).
    pub fn info(&self, section: &str, field: &str) -> String {
        let info = self.cli(&["INFO", section]);
        info.lines()
            .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("INFO {section} has no {field}: {info}"))
            .to_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free when asked (the listener is dropped at once): for the cluster
/// nodes only, see the module docs.
fn port_free_a_moment_ago() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A three-node Redis Cluster (three primaries, no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_cluster_node().await);
        }
        // cluster-config-file defaults to nodes.conf in each node's own --dir.
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| node.url().trim_start_matches("redis://").to_owned())
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for _ in 0..200 {
            let info = Command::new("redis-cli")
                .args(nodes[0].cli_args())
                .args(["cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                return RedisCluster { nodes };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cluster did not become ok");
    }

    /// The node URLs, comma-separated.
    pub fn urls(&self) -> String {
        self.urls_from(0)
    }

    /// The node URLs, comma-separated, node `first` first (where a replica subscribes first).
    pub fn urls_from(&self, first: usize) -> String {
        let count = self.nodes.len();
        let urls: Vec<String> = (0..count)
            .map(|offset| self.nodes[(first + offset) % count].url())
            .collect();
        urls.join(",")
    }

    /// The index of the node serving `key`'s slot (asked of a node that is up).
    pub fn node_of(&self, key: &str) -> usize {
        let asked = self
            .nodes
            .iter()
            .find(|node| node.child.is_some())
            .expect("a node is up");
        let slot: u16 = asked
            .cli(&["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        // CLUSTER NODES: `id host:port@bus flags primary ping pong epoch link slot...`
        for line in asked.cli(&["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                match (low.parse::<u16>(), high.parse::<u16>()) {
                    (Ok(low), Ok(high)) => (low..=high).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|port| port.parse::<u16>().ok())
                    .unwrap();
                return self
                    .nodes
                    .iter()
                    .position(|node| matches!(node.address, Address::Port(p) if p == port))
                    .expect("the slot's node is one of ours");
            }
        }
        panic!("no node serves slot {slot}");
    }
}

/// One replica: the real binary on loopback ports it picks, against `api_base`.
pub struct Replica {
    child: Child,
    /// Its gRPC port.
    pub port: u16,
    /// Its metrics port.
    pub metrics_port: u16,
    logs: tempfile::NamedTempFile,
}

impl Replica {
    /// Starts a replica with these extra environment variables (the app, the API base and
    /// the ports are set here) and reads its gRPC port from its `listening` line.
    pub fn spawn(
        app: &wechat_notify_sandbox::AppCredentials,
        api_base: &str,
        env: &[(&str, String)],
    ) -> Replica {
        let logs = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wechat-notify"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WECHAT_APPID", &app.appid)
            .env("WECHAT_SECRET", &app.secret)
            .env("WECHAT_API_BASE", api_base)
            .env("NOTIFY_LISTEN", "127.0.0.1:0")
            .env("NOTIFY_METRICS_LISTEN", "127.0.0.1:0")
            .env("NOTIFY_SHUTDOWN_GRACE", "1")
            // Warnings, and the line that says which ports the replica got.
            .env("RUST_LOG", "warn,wechat_notify::cli=info")
            .env("NOTIFY_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path()).unwrap());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        match Listening::wait(logs.path(), &mut child) {
            Ok(listening) => Replica {
                child,
                port: listening.grpc.port(),
                metrics_port: listening.metrics.port(),
                logs,
            },
            Err(problem) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a replica did not start: {problem}");
            }
        }
    }

    /// A gRPC client, once health says SERVING (waits at most `limit`).
    pub async fn serving(&self, limit: Duration) -> NotifyServiceClient<Channel> {
        let channel = self.channel(limit).await;
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.health_on(&channel).await == Some(1) {
                return NotifyServiceClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica on port {} never became SERVING", self.port);
    }

    /// The sum of the samples of the metric `name` whose labels include `labels` (e.g.
    /// `result="woken"`; empty for all); 0 when it has none yet.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("metrics answers")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (sample, sample_labels) = series.split_once('{').unwrap_or((series, ""));
                (sample == name && sample_labels.contains(labels))
                    .then(|| value.parse::<f64>().ok())?
            })
            .fold(0.0, |sum, value| sum + value)
    }

    /// Health status (1 SERVING, 2 NOT_SERVING), once the port answers.
    pub async fn health(&self) -> Option<i32> {
        let channel = self.channel(Duration::from_secs(20)).await;
        self.health_on(&channel).await
    }

    async fn health_on(&self, channel: &Channel) -> Option<i32> {
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()
            .map(|answer| answer.into_inner().status)
    }

    async fn channel(&self, limit: Duration) -> Channel {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let endpoint = Channel::from_shared(format!("http://127.0.0.1:{}", self.port)).unwrap();
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("replica on port {} does not listen: {error}", self.port),
            }
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = std::fs::read_to_string(self.logs.path()).unwrap_or_default();
            eprintln!("replica on port {} logged:\n{logs}", self.port);
        }
    }
}

/// A store of this process on `redis`, its keys under `prefix`, connected; its upkeep task (the
/// heartbeat, the wake-up subscription) runs while the returned guard lives.
pub async fn connected_store(redis: &RedisServer, prefix: &str) -> (Arc<RedisStore>, UpkeepTask) {
    let store = RedisStore::new(&RedisConfig {
        urls: vec![Secret::new(redis.url())],
        cluster: false,
        key_prefix: prefix.to_owned(),
    });
    let upkeep = UpkeepTask(store.spawn_upkeep());
    store.wait_connected().await;
    (store, upkeep)
}

/// Stops a store's upkeep task when dropped.
pub struct UpkeepTask(tokio::task::JoinHandle<()>);

impl Drop for UpkeepTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
