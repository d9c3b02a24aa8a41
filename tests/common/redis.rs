//! Real `redis-server` processes on free loopback ports (never 6379), stoppable for outages,
//! and replicas of the real `wechat-notify` binary sharing them.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use wechat_notify::pb::notify_service_client::NotifyServiceClient;

/// A free loopback port (the listener is dropped at once; the next bind takes it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `redis-server`, with an append-only file so a restart keeps its data.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port.
    pub async fn start() -> RedisServer {
        Self::start_with(Vec::new()).await
    }

    pub async fn start_with(extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra,
            child: None,
        };
        server.resume().await;
        server
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the process (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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
        wait_for_redis(self.port).await;
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_for_redis(port: u16) {
    for _ in 0..200 {
        let pong = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).contains("PONG"))
            .unwrap_or(false);
        if pong {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server on port {port} did not answer");
}

/// A three-node Redis Cluster (three primaries, no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let node = RedisServer::start_with(vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ])
            .await;
            nodes.push(node);
        }
        // cluster-config-file defaults to nodes.conf in each node's own --dir.
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
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
                .args(["-p", &nodes[0].port.to_string(), "cluster", "info"])
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
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }
}

/// One replica: the real binary, on free ports, against `api_base`.
pub struct Replica {
    child: Child,
    pub port: u16,
}

impl Replica {
    /// Starts a replica with these extra environment variables (the app, the API base and
    /// the ports are set here).
    ///
    /// [`free_port`] releases its port before the binary binds it, and on a busy machine
    /// another socket can take it in between: a replica that exits before it listens is started
    /// again on another port (a few times), so such a collision never fails a test.
    pub fn spawn(
        app: &wechat_notify_sandbox::SandboxApp,
        api_base: &str,
        env: &[(&str, String)],
    ) -> Replica {
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new(env!("CARGO_BIN_EXE_wechat-notify"));
            command
                .arg("serve")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("WECHAT_APPID", &app.appid)
                .env("WECHAT_SECRET", &app.secret)
                .env("WECHAT_API_BASE", api_base)
                .env("NOTIFY_LISTEN", format!("127.0.0.1:{port}"))
                .env("NOTIFY_METRICS_LISTEN", "127.0.0.1:0")
                .env("NOTIFY_SHUTDOWN_GRACE", "1")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            for (name, value) in env {
                command.env(name, value);
            }
            let mut child = command.spawn().expect("the binary starts");
            if listens_or_runs(&mut child, port) {
                return Replica { child, port };
            }
        }
        panic!("a replica exited before listening five times over");
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
    }
}

/// True once `port` accepts a connection, or while the child still runs after a generous wait
/// (the caller's own wait then reports a replica that never serves); false if the child exited
/// first (its port was taken).
fn listens_or_runs(child: &mut Child, port: u16) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
