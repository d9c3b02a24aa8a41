//! The load loops. Closed loop: `concurrency` workers, each starting its next call when the last
//! one answered. Open loop: calls started on a fixed schedule (`rate` per second) whatever the
//! answers do, at most `concurrency` in flight; a call's latency counts from the moment the
//! scheduler dispatched it, so waiting for a free slot (a slow service) is counted.
//! Both stop by themselves at the deadline or after `max_requests` calls.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Semaphore, time::Instant};
use tonic::transport::{Channel, Endpoint};

use crate::pb::{
    self, notify_service_client::NotifyServiceClient,
    subscription_service_client::SubscriptionServiceClient,
};
use crate::{
    process::ProcessWatch,
    report::{Latency, Report},
    upstream::BENCH_TOKEN,
};

/// A caller's bearer token (docs/callers.md). `Debug` never shows it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// Wraps a token.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// What each call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// One SendSubscribe per call.
    Send,
    /// One BatchSend of `recipients` per call.
    Batch { recipients: usize },
    /// One POST to the upstream's send endpoint per call (no service involved).
    Http,
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub scenario: Scenario,
    /// `http://host:port` of the service (gRPC) or the upstream's base URL (`Http`).
    pub target: String,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// gRPC connections the calls are spread over.
    pub connections: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Open loop at this many calls per second; closed loop when `None`.
    pub rate: Option<f64>,
    /// Measured calls at most.
    pub max_requests: Option<u64>,
    /// `app` of each call.
    pub app: String,
    /// Processes to watch, as (label, pid).
    pub watch: Vec<(String, u32)>,
    /// Reset the watched processes' peak RSS before measuring.
    pub reset_peak: bool,
    /// Give every SendSubscribe its own idempotency key (unique to the run).
    pub keyed: bool,
    /// Record every SendSubscribe recipient as subscribed first (users the ledger knows).
    pub subscribed: bool,
    /// Speak TLS to the service, trusting this CA (PEM), for the name `localhost`.
    pub tls_ca: Option<String>,
    /// A caller's bearer token, sent as `authorization: Bearer ...` on every call.
    pub token: Option<BearerToken>,
}

/// How long the generator keeps trying to reach a service that is still starting.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// Deadline of a SendSubscribe call (sent as `grpc-timeout`).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a BatchSend call.
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Distinct recipients cycled through by SendSubscribe calls.
const SEND_RECIPIENTS: usize = 1024;
/// The sandbox's course-reminder template and values its keyword rules accept.
const TEMPLATE_ID: &str = "sandbox-course-reminder";
const DATA: [(&str, &str); 3] = [
    ("phrase1", "张三"),
    ("date5", "2019年10月1日 15:01"),
    ("phrase4", "李老师"),
];

/// The service's request size limit (docs/api.md): a BatchSend of 10,000 recipients needs more
/// than tonic's default 4 MiB.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The canonical name of a gRPC code number, as the service's metrics and logs spell it
/// (`INVALID_ARGUMENT`): tonic's name for the code (`InvalidArgument`) in upper snake case.
fn code_name(code: i32) -> String {
    let mut name = String::new();
    for c in format!("{:?}", tonic::Code::from(code)).chars() {
        if c.is_ascii_uppercase() && !name.is_empty() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A 28-character openid, distinct per index (the sandbox's openid rule).
fn openid(index: usize) -> String {
    format!("oBenchUser{index:018}")
}

fn data() -> BTreeMap<String, String> {
    DATA.iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// What a worker counted.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    calls: u64,
    messages: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn fail(&mut self, code: &str, count: u64) {
        *self.errors.entry(code.to_owned()).or_default() += count;
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.calls += other.calls;
        self.messages += other.messages;
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
    }
}

/// Makes one call of the scenario and counts its messages.
#[derive(Clone)]
enum Caller {
    Send {
        client: NotifyServiceClient<Channel>,
        requests: Arc<Vec<pb::SendSubscribeRequest>>,
        /// Prefix of each call's own idempotency key, when keyed.
        key_prefix: Option<Arc<str>>,
        authorization: Option<Authorization>,
    },
    Batch {
        client: NotifyServiceClient<Channel>,
        request: Arc<pb::BatchSendRequest>,
        authorization: Option<Authorization>,
    },
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
        body: axum::body::Bytes,
    },
}

impl Caller {
    async fn call(&mut self, sequence: u64, tally: &mut Tally) {
        tally.calls += 1;
        match self {
            Caller::Send {
                client,
                requests,
                authorization,
                key_prefix,
            } => {
                let mut request = requests[sequence as usize % requests.len()].clone();
                if let Some(prefix) = key_prefix {
                    request.idempotency_key = format!("{prefix}-{sequence}");
                }
                let mut request = tonic::Request::new(request);
                request.set_timeout(SEND_TIMEOUT);
                authorize(&mut request, authorization.as_ref());
                match client.send_subscribe(request).await {
                    Ok(_) => tally.messages += 1,
                    Err(status) => tally.fail(&code_name(status.code() as i32), 1),
                }
            }
            Caller::Batch {
                client,
                request,
                authorization,
            } => {
                let mut call = tonic::Request::new(pb::BatchSendRequest::clone(request));
                call.set_timeout(BATCH_TIMEOUT);
                authorize(&mut call, authorization.as_ref());
                match client.batch_send(call).await {
                    Ok(response) => {
                        for result in &response.get_ref().results {
                            if result.code == 0 {
                                tally.messages += 1;
                            } else {
                                tally.fail(&code_name(result.code), 1);
                            }
                        }
                    }
                    Err(status) => tally.fail(
                        &code_name(status.code() as i32),
                        request.recipients.len() as u64,
                    ),
                }
            }
            Caller::Http { client, url, body } => {
                let sent = client
                    .post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        match response.bytes().await {
                            Ok(answer) if contains(&answer, b"\"errcode\":0") => {
                                tally.messages += 1;
                            }
                            Ok(_) => tally.fail("ERRCODE", 1),
                            Err(_) => tally.fail("TRANSPORT", 1),
                        }
                    }
                    Ok(response) => tally.fail(&format!("HTTP_{}", response.status().as_u16()), 1),
                    Err(_) => tally.fail("TRANSPORT", 1),
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Runs the load described by `options` and reports on the measured interval.
pub async fn run_load(options: &LoadOptions) -> Result<Report, String> {
    let callers = callers(options).await?;
    if options.subscribed {
        subscribe_recipients(options).await?;
    }
    if !options.warmup.is_zero() {
        drive(options, &callers, options.warmup, None).await;
    }
    // The generator itself too: on shared cores its appetite limits what the others can get.
    let watches: Vec<ProcessWatch> = options
        .watch
        .iter()
        .map(|(label, pid)| ProcessWatch::start(label, *pid, options.reset_peak))
        .chain(std::iter::once(ProcessWatch::start(
            "generator",
            std::process::id(),
            false,
        )))
        .collect();
    let started = Instant::now();
    let mut tally = drive(options, &callers, options.duration, options.max_requests).await;
    let elapsed = started.elapsed();
    let processes = watches
        .iter()
        .map(|watch| watch.finish(tally.messages, elapsed))
        .collect();
    let elapsed_secs = elapsed.as_secs_f64();
    let (scenario, messages_per_call) = match options.scenario {
        Scenario::Send => ("send", 1),
        Scenario::Batch { recipients } => ("batch", recipients),
        Scenario::Http => ("http", 1),
    };
    Ok(Report {
        scenario: scenario.to_owned(),
        mode: if options.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_owned(),
        target: options.target.clone(),
        concurrency: options.concurrency,
        connections: if options.scenario == Scenario::Http {
            0
        } else {
            options.connections
        },
        rate_per_sec: options.rate,
        messages_per_call,
        elapsed_secs,
        calls: tally.calls,
        messages: tally.messages,
        messages_per_sec: tally.messages as f64 / elapsed_secs.max(f64::EPSILON),
        errors: tally.errors,
        latency_us: Latency::of(&mut tally.latencies_us),
        processes,
    })
}

/// Records every SendSubscribe recipient as having accepted the template, a few calls at a
/// time.
async fn subscribe_recipients(options: &LoadOptions) -> Result<(), String> {
    let channel = connect(&options.target, options.tls_ca.as_deref()).await?;
    let client = SubscriptionServiceClient::new(channel);
    let authorization = options.token.as_ref().map(|token| {
        format!("Bearer {}", token.expose())
            .parse::<Authorization>()
            .map_err(|_| "--token: not a valid header value".to_owned())
    });
    let authorization = authorization.transpose()?;
    const WORKERS: usize = 16;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let (mut client, app) = (client.clone(), options.app.clone());
        let authorization = authorization.clone();
        workers.spawn(async move {
            for index in (worker..SEND_RECIPIENTS).step_by(WORKERS) {
                let mut request = tonic::Request::new(pb::RecordSubscriptionsRequest {
                    app: app.clone(),
                    openid: openid(index),
                    results: [(TEMPLATE_ID.to_owned(), "accept".to_owned())].into(),
                });
                authorize(&mut request, authorization.as_ref());
                client
                    .record_subscriptions(request)
                    .await
                    .map_err(|status| {
                        format!("--subscribed: RecordSubscriptions: {}", status.message())
                    })?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|error| error.to_string())??;
    }
    Ok(())
}

/// One caller per connection (gRPC) or one for all (HTTP: reqwest pools connections itself).
async fn callers(options: &LoadOptions) -> Result<Vec<Caller>, String> {
    if options.scenario == Scenario::Http {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(options.concurrency)
            .build()
            .map_err(|error| format!("cannot build the http client: {error}"))?;
        let base = reqwest::Url::parse(&options.target)
            .map_err(|error| format!("--target {}: {error}", options.target))?;
        let mut url = base
            .join("cgi-bin/message/subscribe/send")
            .map_err(|error| format!("--target {}: {error}", options.target))?;
        url.query_pairs_mut()
            .append_pair("access_token", BENCH_TOKEN);
        let body = serde_json::json!({
            "touser": openid(0),
            "template_id": TEMPLATE_ID,
            "data": DATA.iter().map(|(key, value)| ((*key).to_owned(), serde_json::json!({"value": value}))).collect::<serde_json::Map<_, _>>(),
        });
        return Ok(vec![Caller::Http {
            client,
            url,
            body: serde_json::to_vec(&body)
                .map_err(|error| error.to_string())?
                .into(),
        }]);
    }
    let send_requests = Arc::new(
        (0..SEND_RECIPIENTS)
            .map(|index| pb::SendSubscribeRequest {
                app: options.app.clone(),
                touser: openid(index),
                template_id: TEMPLATE_ID.to_owned(),
                data: data(),
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    );
    let batch_request = match options.scenario {
        Scenario::Batch { recipients } => Some(Arc::new(pb::BatchSendRequest {
            app: options.app.clone(),
            template_id: TEMPLATE_ID.to_owned(),
            data: data(),
            recipients: (0..recipients)
                .map(|index| pb::Recipient {
                    touser: openid(index),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        _ => None,
    };
    let authorization = match &options.token {
        None => None,
        Some(token) => Some(
            format!("Bearer {}", token.expose())
                .parse::<Authorization>()
                .map_err(|_| "--token: not a valid header value".to_owned())?,
        ),
    };
    let mut callers = Vec::with_capacity(options.connections);
    // Unique to the run, so a second run is not answered from the first one's records.
    let key_prefix: Option<Arc<str>> = options
        .keyed
        .then(|| Arc::from(uuid::Uuid::new_v4().simple().to_string()));
    for _ in 0..options.connections {
        let channel = connect(&options.target, options.tls_ca.as_deref()).await?;
        let client = NotifyServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        callers.push(match &batch_request {
            Some(request) => Caller::Batch {
                client,
                request: request.clone(),
                authorization: authorization.clone(),
            },
            None => Caller::Send {
                client,
                requests: send_requests.clone(),
                key_prefix: key_prefix.clone(),
                authorization: authorization.clone(),
            },
        });
    }
    Ok(callers)
}

/// The `authorization` value of every call, parsed once (cloning it shares the bytes).
type Authorization = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

fn authorize<T>(request: &mut tonic::Request<T>, authorization: Option<&Authorization>) {
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
}

/// One HTTP/2 connection to the service (TLS when `tls_ca` is given), retried while it is still
/// starting.
async fn connect(target: &str, tls_ca: Option<&str>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(target.to_owned())
        .map_err(|error| format!("--target {target}: {error}"))?
        .tcp_nodelay(true);
    if let Some(ca) = tls_ca {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| format!("--ca-file: {error}"))?;
    }
    let give_up = Instant::now() + CONNECT_PATIENCE;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(error) if Instant::now() >= give_up => {
                return Err(format!("cannot connect to {target}: {error}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Drives calls for `duration` (and at most `max_calls`), closed or open loop.
async fn drive(
    options: &LoadOptions,
    callers: &[Caller],
    duration: Duration,
    max_calls: Option<u64>,
) -> Tally {
    let until = Instant::now() + duration;
    let budget = Arc::new(AtomicU64::new(max_calls.unwrap_or(u64::MAX)));
    match options.rate {
        None => closed_loop(callers, options.concurrency, until, budget).await,
        Some(rate) => open_loop(callers, rate, options.concurrency, until, budget).await,
    }
}

/// Takes one call from the budget; false once it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

async fn closed_loop(
    callers: &[Caller],
    concurrency: usize,
    until: Instant,
    budget: Arc<AtomicU64>,
) -> Tally {
    let sequence = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let mut caller = callers[worker % callers.len()].clone();
            let budget = budget.clone();
            let sequence = sequence.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < until && take_one(&budget) {
                    let number = sequence.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    caller.call(number, &mut tally).await;
                    tally.latencies_us.push(micros(started.elapsed()));
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.merge(tally);
        }
    }
    total
}

async fn open_loop(
    callers: &[Caller],
    rate: f64,
    concurrency: usize,
    until: Instant,
    budget: Arc<AtomicU64>,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let slots = Arc::new(Semaphore::new(concurrency));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut number: u64 = 0;
    loop {
        let due = start + interval.mul_f64(number as f64);
        if due >= until || !take_one(&budget) {
            break;
        }
        tokio::time::sleep_until(due).await;
        // Counted from dispatch: a call that has to wait for a free slot is late because the
        // service is slow, and that wait is part of its latency.
        let dispatched = Instant::now();
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut caller = callers[number as usize % callers.len()].clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut own = Tally::default();
            caller.call(number, &mut own).await;
            own.latencies_us.push(micros(dispatched.elapsed()));
            tally.lock().unwrap_or_else(|e| e.into_inner()).merge(own);
            drop(slot);
        });
        number += 1;
    }
    // Every slot back means every call has finished.
    let _all = slots.acquire_many(concurrency as u32).await;
    std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_the_service_names_them() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(4), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
