//! Every metric the service exports: its name, its description (the `# HELP` line on
//! `/metrics`), its buckets, its handles, and the typed functions through which the rest of the
//! service records it. Label values are types ([`Outcome`], [`Endpoint`], ...), never strings,
//! and this module imports nothing from the service's domain modules: they call it.
//!
//! Labels are bounded by construction: `app` is a configured app name (or `unknown`), `caller`
//! a configured caller's name (or `anonymous`), every other label comes from a fixed table
//! ([`labels`], [`rpc`]), and `errcode` is WeChat's number, capped at [`MAX_ERRCODE_LABELS`]
//! distinct values per process. No openid, template id or free text is ever a label.

use std::{
    collections::BTreeSet,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

mod labels;
mod rpc;
#[cfg(test)]
mod tests;

pub use labels::{
    Endpoint, LedgerLookup, Outcome, PushEventKind, PushResult, StoreState, StoreWait,
    TemplateFetch, TokenFetch, TokenRejection,
};
pub use rpc::{CallerRpcMetrics, InFlight, RpcMethod, code_name};

/// The `caller` of calls no configured caller made (a caller may not take this name).
pub const ANONYMOUS_CALLER: &str = "anonymous";
/// The `app` of requests naming no configured app.
pub const UNKNOWN_APP: &str = "unknown";

/// Counter `{app, outcome, caller}`: one per SendSubscribe and one per BatchSend recipient.
const MESSAGES_TOTAL: &str = "wechat_notify_messages_total";
/// Counter `{app, endpoint, errcode}`: every errcode answer from WeChat, retried ones included.
const WECHAT_ERRORS_TOTAL: &str = "wechat_notify_wechat_errors_total";
/// Counter `{app}`: token requests to WeChat, every attempt.
const TOKEN_FETCHES_TOTAL: &str = "wechat_notify_token_fetches_total";
/// Counter `{app}`: of those, the failed ones.
const TOKEN_FETCH_FAILURES_TOTAL: &str = "wechat_notify_token_fetch_failures_total";
/// Counter `{app, errcode, action}`: tokens WeChat rejected on a send or a template list.
const TOKEN_REJECTIONS_TOTAL: &str = "wechat_notify_token_rejections_total";
/// Gauge `{app}`: seconds until the app's token expires.
const TOKEN_EXPIRES_IN_SECONDS: &str = "wechat_notify_token_expires_in_seconds";
/// Counter `{app, result}`: template list requests to WeChat.
const TEMPLATE_FETCHES_TOTAL: &str = "wechat_notify_template_fetches_total";
/// Histogram `{app, endpoint}`: latency of each HTTP request to WeChat.
const UPSTREAM_REQUEST_DURATION: &str = "wechat_notify_upstream_request_duration_seconds";
/// Gauge `{app}`: upstream sends holding one of the app's `max_in_flight` slots.
const UPSTREAM_IN_FLIGHT: &str = "wechat_notify_upstream_in_flight";
/// Gauge `{app}`: the app's `max_in_flight`.
const UPSTREAM_IN_FLIGHT_LIMIT: &str = "wechat_notify_upstream_in_flight_limit";
/// Counter `{method, code, caller}`: gRPC calls finished.
const RPC_REQUESTS_TOTAL: &str = "wechat_notify_rpc_requests_total";
/// Histogram `{method, code, caller}`: gRPC call latency.
const RPC_DURATION: &str = "wechat_notify_rpc_duration_seconds";
/// Gauge `{method}`: gRPC calls being handled.
const RPC_IN_FLIGHT: &str = "wechat_notify_rpc_in_flight";
/// Counter: failed Redis calls.
const STORE_ERRORS_TOTAL: &str = "wechat_notify_store_errors_total";
/// Counter: requests sent to the shared Redis, one round trip each.
const STORE_REQUESTS_TOTAL: &str = "wechat_notify_store_requests_total";
/// Gauge: 1 while the shared Redis answers.
const STORE_UP: &str = "wechat_notify_store_up";
/// Counter `{result}`: waits for another replica, by how they ended.
const STORE_WAITS_TOTAL: &str = "wechat_notify_store_waits_total";
/// Counter: subscriptions made to the wake-up channel.
const STORE_WAKE_SUBSCRIPTIONS_TOTAL: &str = "wechat_notify_store_wake_subscriptions_total";
/// Counter `{app, result}`: send-time ledger lookups.
const SUBSCRIPTION_LEDGER_LOOKUPS_TOTAL: &str = "wechat_notify_subscription_ledger_lookups_total";
/// Counter `{app}`: sends refused under `enforce` without calling WeChat.
const SUBSCRIPTION_SENDS_SAVED_TOTAL: &str = "wechat_notify_subscription_sends_saved_total";
/// Counter `{app, event}`: pushes applied.
const SUBSCRIPTION_PUSH_EVENTS_TOTAL: &str = "wechat_notify_subscription_push_events_total";
/// Counter `{app, result}`: push requests received.
const PUSH_REQUESTS_TOTAL: &str = "wechat_notify_push_requests_total";
/// Gauge `{version}`, always 1: which build is running.
const BUILD_INFO: &str = "wechat_notify_build_info";

/// Distinct errcode label values per process; any further errcode is counted as `other`, so a
/// broken upstream answering random numbers cannot grow the series without bound.
pub const MAX_ERRCODE_LABELS: usize = 64;

/// Upstream latency buckets, in seconds: WeChat usually answers within tens of milliseconds,
/// and the client gives up after its request timeout (10 s by default). Also the buckets of any
/// other histogram.
const UPSTREAM_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// RPC latency buckets, in seconds: a SendSubscribe takes one upstream round trip (or waits up
/// to 30 s for the app's limits); a BatchSend of thousands takes seconds to minutes.
const RPC_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A Prometheus recorder with every histogram's buckets (none is a summary).
pub(super) fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_REQUEST_DURATION.to_owned()),
            UPSTREAM_LATENCY_BUCKETS,
        )
        .and_then(|builder| builder.set_buckets(UPSTREAM_LATENCY_BUCKETS))
        .and_then(|builder| {
            builder
                .set_buckets_for_metric(Matcher::Full(RPC_DURATION.to_owned()), RPC_LATENCY_BUCKETS)
        })
        .expect("latency buckets are not empty")
        .build_recorder()
}

/// Describes every metric to the installed recorder and sets the build info.
pub(super) fn install() {
    describe_all();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Registers the `# HELP` text of every metric with the installed recorder.
fn describe_all() {
    describe_counter!(
        MESSAGES_TOTAL,
        "Messages handled, one per SendSubscribe and per BatchSend recipient, by outcome: sent, \
         deduplicated (answered from an idempotency record), invalid (refused before sending), \
         rejected (WeChat answered an errcode), failed (no usable answer: unreachable, HTTP \
         error, timeout, not started)."
    );
    describe_counter!(
        WECHAT_ERRORS_TOTAL,
        "Errcode answers from WeChat by endpoint (token, send, templates) and errcode, retried \
         ones included."
    );
    describe_counter!(
        TOKEN_FETCHES_TOTAL,
        "Access token requests made to WeChat (every attempt, retries included)."
    );
    describe_counter!(
        TOKEN_FETCH_FAILURES_TOTAL,
        "Access token requests to WeChat that failed (errcode, HTTP error, no answer)."
    );
    describe_counter!(
        TOKEN_REJECTIONS_TOTAL,
        "Access tokens WeChat rejected (40001, 42001, 40014) on a send or template list, by \
         errcode and action: refreshed (another token now), force_refreshed (revoked with \
         force_refresh), kept (the token stays: handed back with no force allowed, or already \
         fetched for in the last 30 s)."
    );
    describe_gauge!(
        TOKEN_EXPIRES_IN_SECONDS,
        Unit::Seconds,
        "Seconds until the app's cached access token expires (0 when none is held); renewed at \
         70% of its lifetime, so it normally stays above 30% of expires_in."
    );
    describe_counter!(
        TEMPLATE_FETCHES_TOTAL,
        "Template list requests (gettemplate) made to WeChat, by result: ok, rejected (WeChat \
         answered an errcode), failed (no usable answer). Without a list, sends go unchecked."
    );
    describe_histogram!(
        UPSTREAM_REQUEST_DURATION,
        Unit::Seconds,
        "Latency of HTTP requests to WeChat by endpoint (token, send, templates), one per API \
         base tried."
    );
    describe_gauge!(
        UPSTREAM_IN_FLIGHT,
        "Sends to WeChat holding one of the app's max_in_flight slots (sampled at scrape)."
    );
    describe_gauge!(
        UPSTREAM_IN_FLIGHT_LIMIT,
        "The app's max_in_flight: concurrent sends to WeChat allowed."
    );
    describe_counter!(
        RPC_REQUESTS_TOTAL,
        "gRPC calls finished, by method and gRPC status code."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "gRPC call latency until the response headers (the whole call for unary methods), by \
         method and code."
    );
    describe_gauge!(RPC_IN_FLIGHT, "gRPC calls being handled, by method.");
    describe_counter!(
        STORE_ERRORS_TOTAL,
        "Calls to the shared Redis (NOTIFY_REDIS_URL) that failed or timed out, connection \
         attempts included."
    );
    describe_counter!(
        STORE_REQUESTS_TOTAL,
        "Requests sent to the shared Redis (NOTIFY_REDIS_URL), one round trip each: a command, \
         a script or a pipeline of several; the once-a-second heartbeat and the pub/sub \
         subscription aside."
    );
    describe_gauge!(
        STORE_UP,
        "1 while the shared Redis answers, 0 while it does not (only with NOTIFY_REDIS_URL)."
    );
    describe_counter!(
        STORE_WAITS_TOTAL,
        "Waits for another replica's token fetch or idempotency claim, by how they ended: woken \
         (the wake-up came through Redis pub/sub) or timed_out (looked again on its own)."
    );
    describe_counter!(
        STORE_WAKE_SUBSCRIPTIONS_TOTAL,
        "Subscriptions made to the shared wake-up channel: one at start, one more each time the \
         subscription's node went away and another took it."
    );
    describe_counter!(
        SUBSCRIPTION_LEDGER_LOOKUPS_TOTAL,
        "Subscription ledger lookups made for sends (subscription_check observe or enforce), by \
         result: hit (the ledger had an entry for the user and template) or miss."
    );
    describe_counter!(
        SUBSCRIPTION_SENDS_SAVED_TOTAL,
        "Sends refused with NOT_SUBSCRIBED under subscription_check = enforce, without calling \
         WeChat."
    );
    describe_counter!(
        SUBSCRIPTION_PUSH_EVENTS_TOTAL,
        "WeChat event pushes applied, by event: popup, change, sent (delivery results) or other \
         (acknowledged and ignored)."
    );
    describe_counter!(
        PUSH_REQUESTS_TOTAL,
        "Requests to the push listener by result: verified (GET URL check), accepted, \
         duplicate (a retry of a push already accepted), bad_signature, stale (signed more \
         than 5 minutes away from now), bad_request (bad mode, \
         body, ciphertext or appid), unknown_app."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label tells which build is running."
    );
}

/// Creates the series an operator expects to see for `app` before anything happened, at zero,
/// so `rate()` and alerts work from the first scrape instead of after the first event.
/// `callers`: the `caller` values its message series start with.
pub fn register_app(app: &str, max_in_flight: usize, callers: &[&str]) {
    for caller in callers {
        for outcome in Outcome::ALL {
            message_counter(app, *outcome, caller).increment(0);
        }
    }
    metrics::counter!(TOKEN_FETCHES_TOTAL, "app" => app.to_owned()).increment(0);
    metrics::counter!(SUBSCRIPTION_SENDS_SAVED_TOTAL, "app" => app.to_owned()).increment(0);
    for result in LedgerLookup::ALL {
        labelled(
            SUBSCRIPTION_LEDGER_LOOKUPS_TOTAL,
            app,
            "result",
            result.label(),
        )
        .increment(0);
    }
    metrics::counter!(TOKEN_FETCH_FAILURES_TOTAL, "app" => app.to_owned()).increment(0);
    set_upstream_in_flight(app, 0);
    metrics::gauge!(UPSTREAM_IN_FLIGHT_LIMIT, "app" => app.to_owned()).set(max_in_flight as f64);
}

fn message_counter(app: &str, outcome: Outcome, caller: &str) -> Counter {
    metrics::counter!(
        MESSAGES_TOTAL,
        "app" => app.to_owned(),
        "outcome" => outcome.label(),
        "caller" => caller.to_owned()
    )
}

/// The `wechat_notify_messages_total` counters of one app and caller, one per [`Outcome`],
/// looked up once: a message then costs an atomic add instead of a registry lookup with a
/// freshly allocated `app` label.
#[derive(Debug)]
pub struct MessageCounters([Counter; Outcome::ALL.len()]);

impl MessageCounters {
    /// The handles for `app` and `caller` (a configured caller's name, or
    /// [`ANONYMOUS_CALLER`]); make them after the recorder is installed (before, they count
    /// nowhere).
    pub fn new(app: &str, caller: &str) -> Self {
        Self(std::array::from_fn(|index| {
            message_counter(app, Outcome::ALL[index], caller)
        }))
    }

    /// Counts one message.
    pub fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].increment(1);
    }

    /// The counters of requests naming no configured app (`app="unknown"`).
    pub fn unknown_app() -> &'static Self {
        static UNKNOWN: OnceLock<MessageCounters> = OnceLock::new();
        UNKNOWN.get_or_init(|| Self::new(UNKNOWN_APP, ANONYMOUS_CALLER))
    }
}

/// Counts an errcode WeChat answered on `endpoint` for `app` (`wechat_notify_wechat_errors_total`).
pub fn count_wechat_errcode(app: &str, endpoint: Endpoint, errcode: i32) {
    metrics::counter!(
        WECHAT_ERRORS_TOTAL,
        "app" => app.to_owned(),
        "endpoint" => endpoint.label(),
        "errcode" => errcode_label(errcode),
    )
    .increment(1);
}

/// The errcode label values given out so far (see [`ErrcodeLabels::label`]).
#[derive(Default)]
struct ErrcodeLabels(Mutex<BTreeSet<i32>>);

impl ErrcodeLabels {
    /// The errcode as a label: its decimal number while fewer than [`MAX_ERRCODE_LABELS`]
    /// distinct ones were seen, `other` after that for any new one.
    fn label(&self, errcode: i32) -> String {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(&errcode) || seen.len() < MAX_ERRCODE_LABELS {
            seen.insert(errcode);
            errcode.to_string()
        } else {
            "other".to_owned()
        }
    }
}

/// [`ErrcodeLabels`] of this process.
fn errcode_label(errcode: i32) -> String {
    static SEEN: OnceLock<ErrcodeLabels> = OnceLock::new();
    SEEN.get_or_init(ErrcodeLabels::default).label(errcode)
}

/// The `wechat_notify_upstream_request_duration_seconds` handle of `app` and `endpoint`, to
/// keep: recording through it costs no registry lookup.
pub fn upstream_request_duration(app: &str, endpoint: Endpoint) -> Histogram {
    metrics::histogram!(
        UPSTREAM_REQUEST_DURATION,
        "app" => app.to_owned(),
        "endpoint" => endpoint.label(),
    )
}

/// Sets `wechat_notify_upstream_in_flight` of `app` (sampled at scrape).
pub fn set_upstream_in_flight(app: &str, sends: usize) {
    metrics::gauge!(UPSTREAM_IN_FLIGHT, "app" => app.to_owned()).set(sends as f64);
}

/// Counts one access token request to WeChat for `app`.
pub fn count_token_fetch(app: &str, fetch: TokenFetch) {
    metrics::counter!(TOKEN_FETCHES_TOTAL, "app" => app.to_owned()).increment(1);
    if fetch == TokenFetch::Failed {
        metrics::counter!(TOKEN_FETCH_FAILURES_TOTAL, "app" => app.to_owned()).increment(1);
    }
}

/// Counts a token of `app` WeChat rejected with `errcode`, and what was done about it.
pub fn count_token_rejection(app: &str, errcode: i32, action: TokenRejection) {
    metrics::counter!(
        TOKEN_REJECTIONS_TOTAL,
        "app" => app.to_owned(),
        "errcode" => errcode.to_string(),
        "action" => action.label(),
    )
    .increment(1);
}

/// Sets `wechat_notify_token_expires_in_seconds` of `app`.
pub fn set_token_expires_in(app: &str, expires_in: Duration) {
    metrics::gauge!(TOKEN_EXPIRES_IN_SECONDS, "app" => app.to_owned())
        .set(expires_in.as_secs_f64());
}

/// Creates `app`'s template fetch series at zero (only when template checks are on).
pub fn register_template_fetches(app: &str) {
    for result in TemplateFetch::ALL {
        labelled(TEMPLATE_FETCHES_TOTAL, app, "result", result.label()).increment(0);
    }
}

/// Counts one template list request to WeChat for `app`.
pub fn count_template_fetch(app: &str, result: TemplateFetch) {
    labelled(TEMPLATE_FETCHES_TOTAL, app, "result", result.label()).increment(1);
}

/// Sets `wechat_notify_store_up`.
pub fn set_store_state(state: StoreState) {
    let up = match state {
        StoreState::Up => 1.0,
        StoreState::Down => 0.0,
    };
    metrics::gauge!(STORE_UP).set(up);
}

/// Counts one wait for another replica, by how it ended.
pub fn count_store_wait(ended: StoreWait) {
    metrics::counter!(STORE_WAITS_TOTAL, "result" => ended.label()).increment(1);
}

/// Counts one subscription made to the wake-up channel.
pub fn count_wake_subscription() {
    metrics::counter!(STORE_WAKE_SUBSCRIPTIONS_TOTAL).increment(1);
}

/// Counts one request to the shared Redis (a command, a script or a pipeline: one round trip).
pub fn count_store_request() {
    metrics::counter!(STORE_REQUESTS_TOTAL).increment(1);
}

/// Counts one failed call to the shared Redis (a connection attempt included).
pub fn count_store_error() {
    metrics::counter!(STORE_ERRORS_TOTAL).increment(1);
}

/// Counts one send-time ledger lookup for `app`.
pub fn count_ledger_lookup(app: &str, result: LedgerLookup) {
    labelled(
        SUBSCRIPTION_LEDGER_LOOKUPS_TOTAL,
        app,
        "result",
        result.label(),
    )
    .increment(1);
}

/// Counts one send of `app` refused under `enforce` without calling WeChat.
pub fn count_send_saved(app: &str) {
    metrics::counter!(SUBSCRIPTION_SENDS_SAVED_TOTAL, "app" => app.to_owned()).increment(1);
}

/// Counts one push applied for `app`.
pub fn count_push_event(app: &str, event: PushEventKind) {
    labelled(SUBSCRIPTION_PUSH_EVENTS_TOTAL, app, "event", event.label()).increment(1);
}

/// Creates `app`'s push request series at zero (an app that takes pushes).
pub fn register_push_app(app: &str) {
    for result in PushResult::ALL {
        labelled(PUSH_REQUESTS_TOTAL, app, "result", result.label()).increment(0);
    }
}

/// Counts one request to the push listener for `app` (`unknown` when no app takes it).
pub fn count_push_request(app: &str, result: PushResult) {
    labelled(PUSH_REQUESTS_TOTAL, app, "result", result.label()).increment(1);
}

/// The counter `name` of `app` whose other label `key` is `value`.
fn labelled(name: &'static str, app: &str, key: &'static str, value: &'static str) -> Counter {
    metrics::counter!(name, "app" => app.to_owned(), key => value)
}
