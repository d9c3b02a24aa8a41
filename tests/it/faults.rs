//! Fault isolation under a seeded random schedule: thousands of SendSubscribe and BatchSend
//! calls (keyed and unkeyed, three apps, concurrent) against the real binary, while the sandbox
//! injects every send errcode of the contract, HTTP 5xx, latency, timeouts, connection resets,
//! token endpoint failures, token revocations and per-user faults. Afterwards every call is
//! checked against the sandbox's own records:
//!
//! - each recipient got the code (and `wechat-errcode`) the contract gives for what the sandbox
//!   did to it, and was delivered exactly when the contract says;
//! - no message was delivered twice (keyed calls are also sent twice concurrently);
//! - a recipient without an injected fault was delivered, apart from the documented app-wide
//!   answers (docs/operations.md, "Which answers are app-wide");
//! - token fetches stay within one per token value per 30 s;
//! - the process is still SERVING, with its memory flat between the middle and the end.
//!
//! The seed is printed and named in every failure; `NOTIFY_FAULT_SEED=<seed>` replays a run and
//! `NOTIFY_FAULT_CALLS=<n>` makes it longer (default 2000 calls).

mod contract;
mod schedule;

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{process::*, *};
use contract::{Answer, Outcome, violation};
use futures::{StreamExt, future::join_all, stream};
use schedule::*;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use wechat_notify::pb;
use wechat_notify_sandbox::{AppCredentials, Fault, FaultEndpoint, Sandbox, SandboxConfig};

/// Calls per round; the sandbox's inbox is checked and cleared after each.
const ROUND: usize = 1000;
/// Calls in flight at once.
const CONCURRENCY: usize = 24;
/// Per app: revocations started and finished (a call overlapping a revocation sees the first
/// move during it or the second after its start), and token faults injected.
#[derive(Default)]
struct AppEvents {
    revocations_started: AtomicU64,
    revocations_finished: AtomicU64,
    token_faults: AtomicU64,
}

struct Run {
    sandbox: Sandbox,
    /// Held while checking for and injecting a token fault, so two calls never both inject.
    token_faults: std::sync::Mutex<()>,
    client: pb::notify_service_client::NotifyServiceClient<tonic::transport::Channel>,
    events: [AppEvents; 3],
}

impl Run {
    fn apply(&self, app: usize, event: Event) {
        let appid = APPS[app].1;
        let events = &self.events[app];
        match event {
            Event::Revoke => {
                events.revocations_started.fetch_add(1, Ordering::SeqCst);
                self.sandbox.revoke_tokens(appid);
                events.revocations_finished.fetch_add(1, Ordering::SeqCst);
            }
            Event::TokenFault(kind) => {
                // One at a time, so a fetch (3 attempts) always outlasts it. (Three failed
                // attempts fail the fetch, and the rejected token is then kept for 30 s: the
                // token endpoint's answer is app-wide.)
                let _one_at_a_time = self.token_faults.lock().unwrap();
                let pending = self.sandbox.faults().iter().any(|active| {
                    active.fault.endpoint == FaultEndpoint::Token
                        && active.fault.appid.as_deref() == Some(appid)
                });
                if pending {
                    return;
                }
                let fault = match kind {
                    TokenFault::Busy => Fault::errcode(-1),
                    TokenFault::Http => Fault::http_status(502),
                    TokenFault::Reset => Fault::reset(),
                    TokenFault::Slow => Fault::latency(Duration::from_millis(300)),
                };
                events.token_faults.fetch_add(1, Ordering::SeqCst);
                self.sandbox
                    .inject(fault.on_token_endpoint().for_app(appid).times(1));
            }
        }
    }

    fn forced_refreshes(&self, app: usize) -> u64 {
        self.sandbox
            .stats()
            .token_fetches
            .get(APPS[app].1)
            .map_or(0, |fetches| fetches.force_refreshes)
    }

    async fn execute(&self, call: Call) -> Vec<Outcome> {
        if let Some(event) = call.event {
            self.apply(call.app, event);
        }
        for recipient in &call.recipients {
            if let Some(fault) = recipient.injected.fault(&recipient.openid) {
                self.sandbox.inject(fault);
            }
        }
        let events = &self.events[call.app];
        let finished_before = events.revocations_finished.load(Ordering::SeqCst);
        let forced_before = self.forced_refreshes(call.app);
        let answers = if call.batch {
            self.batch(&call).await
        } else {
            self.send(&call).await
        };
        // Revocations and forced refreshes during the call, plus the last one before it: the
        // cache learns of a revocation only from a rejection, so a token revoked before the
        // call may still be the one its first attempt uses.
        let token_events = events.revocations_started.load(Ordering::SeqCst) - finished_before
            + finished_before.min(1)
            + self.forced_refreshes(call.app)
            - forced_before;
        let batch_hit_daily_quota = call.batch
            && call
                .recipients
                .iter()
                .any(|recipient| recipient.injected == Injected::Errcode(45009));
        call.recipients
            .iter()
            .zip(answers)
            .map(
                |(recipient, (code, errcode, reason, retried_after_failure))| Outcome {
                    call: call.index,
                    app: call.app,
                    recipient: recipient.clone(),
                    code,
                    errcode,
                    reason,
                    token_events,
                    batch_hit_daily_quota,
                    retried_after_failure,
                },
            )
            .collect()
    }

    fn request<T>(&self, call: &Call, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if call.app == PAUSED_APP {
            request.set_timeout(PAUSED_APP_DEADLINE);
        }
        request
    }

    /// A SendSubscribe; keyed, it is sent twice at once: both get one outcome, or the second
    /// came after the first had failed and retried it.
    async fn send(&self, call: &Call) -> Vec<Answer> {
        let message = pb::SendSubscribeRequest {
            app: APPS[call.app].0.to_owned(),
            idempotency_key: if call.keyed {
                format!("fault-call-{}", call.index)
            } else {
                String::new()
            },
            ..course_request(&call.recipients[0].openid)
        };
        let copies = if call.keyed { 2 } else { 1 };
        let answers = join_all((0..copies).map(|_| {
            let mut client = self.client.clone();
            let request = self.request(call, message.clone());
            async move { client.send_subscribe(request).await }
        }))
        .await;
        let described: Vec<_> = answers
            .iter()
            .map(|answer| match answer {
                Ok(_) => (Code::Ok, None, None),
                Err(status) => (
                    status.code(),
                    errcode(status),
                    status
                        .get_error_details()
                        .error_info()
                        .map(|info| info.reason.clone()),
                ),
            })
            .collect();
        // Surfaced by the checks as a code no fault gives.
        let broken = |what: String| vec![(Code::Internal, None, Some(what), false)];
        if call.keyed && described[0] != described[1] {
            return match (&answers[0], &answers[1]) {
                (Err(_), Ok(_)) => {
                    vec![(described[0].0, described[0].1, described[0].2.clone(), true)]
                }
                (Ok(_), Err(_)) => {
                    vec![(described[1].0, described[1].1, described[1].2.clone(), true)]
                }
                // Both refused while the app is paused, at different moments.
                _ if call.app == PAUSED_APP => {
                    vec![(described[0].0, described[0].1, described[0].2.clone(), true)]
                }
                _ => broken(format!("copies differ: {described:?}")),
            };
        }
        if call.keyed && answers.iter().all(Result::is_ok) {
            let fresh = answers
                .iter()
                .filter(|answer| !answer.as_ref().unwrap().get_ref().deduplicated)
                .count();
            if fresh != 1 {
                return broken(format!("{fresh} copies not deduplicated"));
            }
        }
        let (code, errcode, reason) = described.into_iter().next().unwrap();
        vec![(code, errcode, reason, false)]
    }

    async fn batch(&self, call: &Call) -> Vec<Answer> {
        let message = pb::BatchSendRequest {
            app: APPS[call.app].0.to_owned(),
            template_id: COURSE_REMINDER.to_owned(),
            data: course_data(),
            recipients: call
                .recipients
                .iter()
                .map(|recipient| pb::Recipient {
                    touser: recipient.openid.clone(),
                    ..Default::default()
                })
                .collect(),
            idempotency_key: if call.keyed {
                format!("fault-batch-{}", call.index)
            } else {
                String::new()
            },
            ..Default::default()
        };
        let request = self.request(call, message);
        match self.client.clone().batch_send(request).await {
            Ok(response) => response
                .into_inner()
                .results
                .into_iter()
                .map(|result| {
                    let errcode = (result.wechat_errcode != 0).then_some(result.wechat_errcode);
                    (Code::from_i32(result.code), errcode, None, false)
                })
                .collect(),
            Err(status) => call
                .recipients
                .iter()
                .map(|_| (status.code(), None, None, false))
                .collect(),
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_answer_never_spreads_to_other_calls() {
    let seed = env_number("NOTIFY_FAULT_SEED").unwrap_or_else(|| fastrand::u64(..));
    let calls = env_number("NOTIFY_FAULT_CALLS").map_or(2000, |calls| calls as usize);
    eprintln!("fault schedule seed {seed} ({calls} calls); replay: NOTIFY_FAULT_SEED={seed}");

    let sandbox = Sandbox::new(SandboxConfig {
        apps: APPS
            .iter()
            .map(|(_, appid, secret)| AppCredentials::new(*appid, *secret))
            .collect(),
        auto_accept: true,
        ..SandboxConfig::default()
    })
    .spawn(loopback())
    .await
    .expect("sandbox starts");
    let mut apps_file = String::new();
    for (name, appid, secret) in APPS {
        write!(
            apps_file,
            "[[apps]]\nname = \"{name}\"\nappid = \"{appid}\"\nsecret = \"{secret}\"\n\
             api_base = \"{}\"\n\n",
            sandbox.base_url()
        )
        .unwrap();
    }
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), apps_file).unwrap();
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut command = command(logs.path());
    command
        .arg("serve")
        // Warnings, and the line that says which ports the service got.
        .env("RUST_LOG", "warn,wechat_notify::cli=info")
        .env("NOTIFY_CONFIG", config.path())
        .env("NOTIFY_LISTEN", ANY_PORT)
        .env("NOTIFY_METRICS_LISTEN", ANY_PORT)
        .env(
            "WECHAT_REQUEST_TIMEOUT_MS",
            REQUEST_TIMEOUT.as_millis().to_string(),
        );
    let mut process = Process::spawn(command);
    let grpc_addr = process.listening(logs.path()).grpc;
    let health = wait_until_serving(grpc_addr, &mut process).await;

    let run = Arc::new(Run {
        sandbox: sandbox.sandbox().clone(),
        client: connect(grpc_addr).await,
        token_faults: Default::default(),
        events: Default::default(),
    });
    let started = Instant::now();
    let schedule = plan(seed, calls);
    let mut violations = Vec::new();
    let mut rss_after_first_round = None;
    let mut recipients_checked = 0;
    for round in schedule.chunks(ROUND) {
        let outcomes: Vec<Outcome> = stream::iter(round.iter().cloned())
            .map(|call| {
                let run = run.clone();
                async move { run.execute(call).await }
            })
            .buffer_unordered(CONCURRENCY)
            .flat_map(stream::iter)
            .collect()
            .await;
        let inbox = run.sandbox.inbox(None);
        for outcome in &outcomes {
            let delivered = inbox
                .iter()
                .filter(|message| message.openid == outcome.recipient.openid)
                .count();
            violations.extend(violation(outcome, delivered));
        }
        recipients_checked += outcomes.len();
        run.sandbox.clear_inbox();
        run.sandbox.clear_faults();
        rss_after_first_round.get_or_insert(process.rss_bytes());
    }
    let elapsed = started.elapsed();

    // One fetch per token value per 30 s for rejections, on top of the first fetch, the
    // forced ones, and one retry per injected token fault.
    let stats = run.sandbox.stats();
    let windows = elapsed.as_secs() / 30 + 1;
    for (app, (name, appid, _)) in APPS.iter().enumerate() {
        let fetches = stats.token_fetches.get(*appid).cloned().unwrap_or_default();
        let events = &run.events[app];
        let tokens =
            1 + events.revocations_finished.load(Ordering::SeqCst) + fetches.force_refreshes;
        let bound = 1 + tokens * windows + windows + events.token_faults.load(Ordering::SeqCst);
        if fetches.stable > bound {
            violations.push(format!(
                "app {name}: {} token fetches, more than {bound} ({tokens} tokens, {windows} \
                 windows of 30 s)",
                fetches.stable
            ));
        }
    }

    assert_eq!(
        serving_status(health).await,
        Some(ServingStatus::Serving),
        "seed {seed}: the process must still be SERVING"
    );
    let rss_at_end = process.rss_bytes();
    eprintln!("rss after the first round {rss_after_first_round:?}, at the end {rss_at_end:?}");
    if let (Some(Some(middle)), Some(end)) = (rss_after_first_round, rss_at_end) {
        // Generous: allocator slack and the idempotency records of the later rounds.
        let bound = middle + middle / 2 + 32 * 1024 * 1024;
        if calls > ROUND && end > bound {
            violations.push(format!(
                "memory grew from {middle} to {end} bytes of RSS (bound {bound})"
            ));
        }
    }
    eprintln!(
        "seed {seed}: {calls} calls, {recipients_checked} recipients in {elapsed:?}; sandbox: \
         {} sends, {} delivered, rejected {:?}, {} http errors, {} resets",
        stats.send_requests, stats.delivered, stats.rejected, stats.http_errors, stats.resets
    );
    let service_log = if violations.is_empty() {
        String::new()
    } else {
        // Kept for the post-mortem.
        let (_, path) = logs.keep().expect("the log file is kept");
        format!("the service's log: {}", path.display())
    };
    assert!(
        violations.is_empty(),
        "seed {seed} (replay: NOTIFY_FAULT_SEED={seed} NOTIFY_FAULT_CALLS={calls}): {} \
         violations, the first 20:\n{}\n{service_log}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
