//! The real binary as a child process: spawned with a clean environment, killed if the test
//! fails before it exits, and probed over gRPC health.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub use super::listening::Listening;

/// The service name health answers for.
pub const SERVICE: &str = "notify.v1.NotifyService";
/// The binary cargo built for these tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_wechat-notify");

/// The binary with a clean environment (nothing of the caller's configuration leaks in), text
/// logs at info to `logs`.
pub fn command(logs: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("RUST_LOG", "info")
        .env("NOTIFY_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs).unwrap());
    command
}

/// Every listener on loopback port 0: the ports the system picks are read from the `listening`
/// line ([`Process::listening`]).
pub const ANY_PORT: &str = "127.0.0.1:0";

/// `serve --sandbox` with every listener on [`ANY_PORT`] (see [`command`]), then `extra`.
pub fn serve_sandbox(logs: &Path, extra: &[&str]) -> Command {
    let mut command = command(logs);
    command
        .args(["serve", "--sandbox", "--listen", ANY_PORT])
        .args(["--metrics-listen", ANY_PORT])
        .args(["--sandbox-listen", ANY_PORT])
        .args(extra);
    command
}

/// The child process, killed if the test fails before it exits.
pub struct Process(pub Child);

impl Process {
    pub fn spawn(mut command: Command) -> Self {
        Self(command.spawn().expect("the binary starts"))
    }

    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// Polls for the exit (a blocking wait could not be bounded).
    pub fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The addresses the process bound, from the `listening` line it logs into `logs`.
    pub fn listening(&mut self, logs: &Path) -> Listening {
        Listening::wait(logs, &mut self.0).unwrap_or_else(|problem| panic!("{problem}"))
    }

    pub fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }

    /// The resident set size in bytes (Linux `/proc`), `None` where it cannot be read.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What health answers for the service now.
pub async fn serving_status(channel: Channel) -> Option<ServingStatus> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(answer.get_ref().status).ok()
}

/// Connects and checks health until the service is SERVING; the connection stays open.
pub async fn wait_until_serving(addr: SocketAddr, process: &mut Process) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            !process.exited(),
            "the server exited while starting: {:?}",
            process.0.try_wait()
        );
        assert!(Instant::now() < deadline, "not SERVING within 30 s");
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            && serving_status(channel.clone()).await == Some(ServingStatus::Serving)
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
