//! Every metric the service exports: its name, its description (the `# HELP` line on
//! `/metrics`), and the recording helpers whose labels need bounding.
//!
//! Labels are bounded by construction: `app` is a configured app name (or `unknown`), `caller`
//! a configured caller's name (or `anonymous`), `method`
//! and `code` come from fixed tables, `endpoint` is `token`, `send` or `templates`, and
//! `errcode` is WeChat's number, capped at [`MAX_ERRCODE_LABELS`] distinct values per process.
//! No openid, template id or free text is ever a label.

use std::{
    collections::BTreeSet,
    sync::{Mutex, OnceLock},
};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use crate::{
    store::health::{STORE_ERRORS_TOTAL, STORE_UP},
    templates::TEMPLATE_FETCHES_TOTAL,
    token::{
        TOKEN_EXPIRES_IN_SECONDS, TOKEN_FETCH_FAILURES_TOTAL, TOKEN_FETCHES_TOTAL,
        TOKEN_REJECTIONS_TOTAL,
    },
    wechat::{UPSTREAM_REQUEST_DURATION, WechatError},
};

/// Counter `{app, outcome, caller}`: one per SendSubscribe and one per BatchSend recipient.
pub const MESSAGES_TOTAL: &str = "wechat_notify_messages_total";
/// The `outcome` values of [`MESSAGES_TOTAL`].
pub const MESSAGE_OUTCOMES: [&str; 5] = ["sent", "deduplicated", "invalid", "rejected", "failed"];
/// The [`MESSAGES_TOTAL`] counters of one app, one per outcome, looked up once: a message
/// then costs an atomic add instead of a registry lookup with a freshly allocated `app` label.
#[derive(Debug)]
pub struct MessageCounters([metrics::Counter; MESSAGE_OUTCOMES.len()]);

impl MessageCounters {
    /// The handles for `app` and `caller` (a configured caller's name, or `anonymous`); make
    /// them after the recorder is installed (before, they count nowhere).
    pub fn new(app: &str, caller: &str) -> Self {
        Self(MESSAGE_OUTCOMES.map(|outcome| {
            metrics::counter!(
                MESSAGES_TOTAL,
                "app" => app.to_owned(),
                "outcome" => outcome,
                "caller" => caller.to_owned()
            )
        }))
    }

    /// Counts one message with `outcome`, one of [`MESSAGE_OUTCOMES`].
    pub fn count(&self, outcome: &'static str) {
        let index = MESSAGE_OUTCOMES
            .iter()
            .position(|known| *known == outcome)
            .expect("outcome is one of MESSAGE_OUTCOMES");
        self.0[index].increment(1);
    }

    /// The counters of requests naming no configured app (`app="unknown"`).
    pub fn unknown_app() -> &'static Self {
        static UNKNOWN: OnceLock<MessageCounters> = OnceLock::new();
        UNKNOWN.get_or_init(|| Self::new("unknown", crate::config::ANONYMOUS))
    }
}

/// Counter `{app, endpoint, errcode}`: every errcode answer from WeChat, retried ones included.
pub const WECHAT_ERRORS_TOTAL: &str = "wechat_notify_wechat_errors_total";
/// Gauge `{app}`: upstream sends holding one of the app's `max_in_flight` slots.
pub const UPSTREAM_IN_FLIGHT: &str = "wechat_notify_upstream_in_flight";
/// Gauge `{app}`: the app's `max_in_flight`.
pub const UPSTREAM_IN_FLIGHT_LIMIT: &str = "wechat_notify_upstream_in_flight_limit";
/// Counter `{method, code, caller}`: gRPC calls finished.
pub const RPC_REQUESTS_TOTAL: &str = "wechat_notify_rpc_requests_total";
/// Histogram `{method, code, caller}`: gRPC call latency.
pub const RPC_DURATION: &str = "wechat_notify_rpc_duration_seconds";
/// Gauge `{method}`: gRPC calls being handled.
pub const RPC_IN_FLIGHT: &str = "wechat_notify_rpc_in_flight";
/// Counter `{app, result}`: send-time ledger lookups, `hit` (an entry) or `miss` (none).
pub const SUBSCRIPTION_LEDGER_LOOKUPS_TOTAL: &str =
    "wechat_notify_subscription_ledger_lookups_total";
/// Counter `{app}`: sends refused under `enforce` without calling WeChat.
pub const SUBSCRIPTION_SENDS_SAVED_TOTAL: &str = "wechat_notify_subscription_sends_saved_total";
/// Counter `{app, event}`: pushes applied, by `popup`, `change`, `sent` or `other`.
pub const SUBSCRIPTION_PUSH_EVENTS_TOTAL: &str = "wechat_notify_subscription_push_events_total";
/// Counter `{app, result}`: push requests received, by result (see `crate::push`).
pub const PUSH_REQUESTS_TOTAL: &str = "wechat_notify_push_requests_total";
/// Gauge `{version}`, always 1: which build is running.
pub const BUILD_INFO: &str = "wechat_notify_build_info";

/// Distinct errcode label values per process; any further errcode is counted as `other`, so a
/// broken upstream answering random numbers cannot grow the series without bound.
pub const MAX_ERRCODE_LABELS: usize = 64;

/// Registers the `# HELP` text of every metric with the installed recorder.
pub(crate) fn describe_all() {
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
    describe_gauge!(
        STORE_UP,
        "1 while the shared Redis answers, 0 while it does not (only with NOTIFY_REDIS_URL)."
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
pub(crate) fn register_app(app: &str, max_in_flight: usize, callers: &[&str]) {
    for caller in callers {
        for outcome in MESSAGE_OUTCOMES {
            metrics::counter!(
                MESSAGES_TOTAL,
                "app" => app.to_owned(),
                "outcome" => outcome,
                "caller" => (*caller).to_owned()
            )
            .increment(0);
        }
    }
    metrics::counter!(TOKEN_FETCHES_TOTAL, "app" => app.to_owned()).increment(0);
    metrics::counter!(SUBSCRIPTION_SENDS_SAVED_TOTAL, "app" => app.to_owned()).increment(0);
    for result in ["hit", "miss"] {
        metrics::counter!(SUBSCRIPTION_LEDGER_LOOKUPS_TOTAL, "app" => app.to_owned(), "result" => result)
            .increment(0);
    }
    metrics::counter!(TOKEN_FETCH_FAILURES_TOTAL, "app" => app.to_owned()).increment(0);
    metrics::gauge!(UPSTREAM_IN_FLIGHT, "app" => app.to_owned()).set(0.0);
    metrics::gauge!(UPSTREAM_IN_FLIGHT_LIMIT, "app" => app.to_owned()).set(max_in_flight as f64);
}

/// Sets [`BUILD_INFO`].
pub(crate) fn record_build_info() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Counts `error` in [`WECHAT_ERRORS_TOTAL`] when WeChat answered it with an errcode.
pub fn count_wechat_error(app: &str, error: &WechatError) {
    let Some(errcode) = error.errcode() else {
        return;
    };
    metrics::counter!(
        WECHAT_ERRORS_TOTAL,
        "app" => app.to_owned(),
        "endpoint" => error.endpoint().label(),
        "errcode" => errcode_label(errcode),
    )
    .increment(1);
}

/// The errcode as a label: its decimal number while fewer than [`MAX_ERRCODE_LABELS`] distinct
/// ones were seen, `other` after that for any new one.
fn errcode_label(errcode: i32) -> String {
    static SEEN: OnceLock<Mutex<BTreeSet<i32>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen.contains(&errcode) || seen.len() < MAX_ERRCODE_LABELS {
        seen.insert(errcode);
        errcode.to_string()
    } else {
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcode_labels_are_capped() {
        // The set is process-wide: fill it past the cap with codes no other test uses.
        let first = errcode_label(-900_000);
        assert_eq!(first, "-900000");
        for code in 0..MAX_ERRCODE_LABELS as i32 {
            errcode_label(-800_000 - code);
        }
        assert_eq!(errcode_label(-700_000), "other");
        assert_eq!(
            errcode_label(-900_000),
            "-900000",
            "a code seen before keeps its label"
        );
    }
}
