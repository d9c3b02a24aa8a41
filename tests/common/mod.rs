//! Test harness: a sandbox (the fake WeChat API) and the real server, both on loopback port 0,
//! and a real gRPC client.
#![allow(dead_code)]

pub mod listening;
pub mod pki;
pub mod process;
pub mod redis;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tonic::transport::Channel;
use url::Url;
use wechat_notify::{
    config::{AppConfig, IdempotencyOptions, LogFormat, ServeConfig},
    pb::{
        self, notify_service_client::NotifyServiceClient,
        subscription_service_client::SubscriptionServiceClient,
    },
    secret::Secret,
    server::{self, Running},
    subscriptions::SubscriptionCheck,
    wechat::{ClientOptions, TokenMode},
};
use wechat_notify_sandbox::{AppCredentials, Sandbox, SandboxConfig, SandboxServer};

/// The openid of the sandbox's demo user (28 characters, as WeChat's are).
pub const OPENID: &str = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M";
/// The seed template: a course reminder (`phrase1` student, `date5` time, `phrase4` teacher).
pub const COURSE_REMINDER: &str = "sandbox-course-reminder";

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A distinct valid openid per index.
pub fn openid(index: usize) -> String {
    format!("oTestUser{index:019}")
}

/// Data valid for the course reminder.
pub fn course_data() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("phrase1".to_owned(), "王小二".to_owned()),
        ("date5".to_owned(), "2019年10月1日 15:01".to_owned()),
        ("phrase4".to_owned(), "李老师".to_owned()),
    ])
}

pub fn course_request(touser: &str) -> pb::SendSubscribeRequest {
    pb::SendSubscribeRequest {
        touser: touser.to_owned(),
        template_id: COURSE_REMINDER.to_owned(),
        data: course_data(),
        ..Default::default()
    }
}

/// One app configured against `sandbox`.
pub fn app_config(name: &str, app: &AppCredentials, bases: Vec<Url>) -> AppConfig {
    AppConfig {
        name: name.to_owned(),
        appid: app.appid.clone(),
        secret: Secret::new(app.secret.as_str()),
        api_bases: bases,
        token_mode: TokenMode::Stable,
        max_in_flight: 64,
        rate_per_sec: 100_000,
        subscription_check: SubscriptionCheck::Observe,
        push: None,
    }
}

/// A server config with test-sized timeouts and no apps.
pub fn serve_config() -> ServeConfig {
    ServeConfig {
        listen: loopback(),
        metrics_listen: loopback(),
        log_format: LogFormat::Text,
        apps: Vec::new(),
        warm_tokens: false,
        max_batch_recipients: 10_000,
        shutdown_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
        idempotency: IdempotencyOptions {
            ttl: Duration::from_secs(86_400),
            capacity: 100_000,
        },
        client: ClientOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(1_500),
        },
        template_checks: true,
        template_refresh: Duration::from_secs(600),
        redis: None,
        push_listen: None,
        callers: Default::default(),
        tls: None,
    }
}

pub struct Harness {
    pub sandbox: SandboxServer,
    pub server: Running,
    pub client: NotifyServiceClient<Channel>,
}

impl Harness {
    /// The default sandbox (one app; auto-accept is its default) behind one server app named `demo`.
    pub async fn start() -> Harness {
        Self::start_with(SandboxConfig::default(), |_| {}).await
    }

    /// A sandbox with `sandbox_config`; `tweak` adjusts the server config after one app per
    /// sandbox app was added (named `demo`, `second`, ...).
    pub async fn start_with(
        sandbox_config: SandboxConfig,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Harness {
        let sandbox = Sandbox::new(sandbox_config.clone())
            .spawn(loopback())
            .await
            .expect("sandbox starts");
        let mut config = serve_config();
        for (index, app) in sandbox_config.apps.iter().enumerate() {
            let name = ["demo", "second", "third"][index];
            config
                .apps
                .push(app_config(name, app, vec![sandbox.base_url()]));
        }
        tweak(&mut config);
        let server = server::start(config, std::future::pending())
            .await
            .expect("server starts");
        let client = connect(server.grpc_addr).await;
        Harness {
            sandbox,
            server,
            client,
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        self.sandbox.sandbox()
    }

    /// Sends the course reminder to `touser` through gRPC.
    pub async fn send_course(
        &mut self,
        touser: &str,
    ) -> Result<pb::SendSubscribeResponse, tonic::Status> {
        self.client
            .send_subscribe(course_request(touser))
            .await
            .map(tonic::Response::into_inner)
    }
}

pub async fn connect(addr: SocketAddr) -> NotifyServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("grpc connects");
    NotifyServiceClient::new(channel)
}

/// A SubscriptionService client of the server at `addr`.
pub async fn subscriptions_client(addr: SocketAddr) -> SubscriptionServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("grpc connects");
    SubscriptionServiceClient::new(channel)
}

/// Polls `check` every 20 ms until it answers `Some`, for at most 10 s (a push is applied
/// after its answer, on a task of its own).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback URL on which nothing listens, so connections are refused, and the socket that
/// holds its port (bound, never listening) so nothing else can take it: keep it while the URL
/// is in use.
pub async fn closed_base() -> (Url, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(loopback()).unwrap();
    let addr = socket.local_addr().unwrap();
    (Url::parse(&format!("http://{addr}/")).unwrap(), socket)
}

/// The ErrorInfo reason of a status ("" without one).
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The decimal `wechat-errcode` trailer of a status.
pub fn errcode(status: &tonic::Status) -> Option<i32> {
    status
        .metadata()
        .get("wechat-errcode")
        .map(|value| value.to_str().unwrap().parse().unwrap())
}

/// Each bad field a status's BadRequest detail names, with its description.
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|violation| (violation.field.clone(), violation.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The fields a status's BadRequest detail names.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    violations(status)
        .into_iter()
        .map(|(field, _)| field)
        .collect()
}

/// An in-memory log sink for tests that read what the service logged.
#[derive(Clone, Default)]
pub struct CapturedLogs(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
