//! The RPC metrics' label values and handles: count and latency by method, gRPC code and caller,
//! and calls in flight by method. Handles are made on first use and kept, so a call costs atomic
//! updates rather than registry lookups.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Gauge, Histogram};
use tonic::Code;

use super::{
    ANONYMOUS_CALLER, RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS_TOTAL, labels::label_values,
};

label_values! {
    /// `method` of the RPC metrics. Methods without a value of their own are `other`, so a
    /// caller cannot grow the label set.
    pub enum RpcMethod {
        SendSubscribe => "SendSubscribe",
        BatchSend => "BatchSend",
        RecordSubscriptions => "RecordSubscriptions",
        GetSubscriptions => "GetSubscriptions",
        WatchEvents => "WatchEvents",
        HealthCheck => "HealthCheck",
        HealthWatch => "HealthWatch",
        /// Both reflection versions.
        Reflection => "Reflection",
        Other => "other",
    }
}

impl RpcMethod {
    /// The method of a request path (`/notify.v1.NotifyService/SendSubscribe`).
    pub fn from_path(path: &str) -> Self {
        match path {
            "/notify.v1.NotifyService/SendSubscribe" => Self::SendSubscribe,
            "/notify.v1.NotifyService/BatchSend" => Self::BatchSend,
            "/notify.v1.SubscriptionService/RecordSubscriptions" => Self::RecordSubscriptions,
            "/notify.v1.SubscriptionService/GetSubscriptions" => Self::GetSubscriptions,
            "/notify.v1.SubscriptionService/WatchEvents" => Self::WatchEvents,
            "/grpc.health.v1.Health/Check" => Self::HealthCheck,
            "/grpc.health.v1.Health/Watch" => Self::HealthWatch,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            | "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => Self::Reflection,
            _ => Self::Other,
        }
    }
}

/// gRPC code names, indexed by code number: the `code` label values.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as in metric labels and log lines.
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The RPC count and latency handles of one method and code.
struct Finished {
    requests: Counter,
    duration: Histogram,
}

/// RPC count and latency handles of one caller (`caller` label) by method and code, made on
/// first use and kept. Calls no configured caller made count under
/// [`CallerRpcMetrics::anonymous`].
pub struct CallerRpcMetrics {
    caller: String,
    finished: [[OnceLock<Finished>; CODE_NAMES.len()]; RpcMethod::ALL.len()],
}

impl CallerRpcMetrics {
    /// The handles of the configured caller `caller`.
    pub fn new(caller: &str) -> Self {
        Self {
            caller: caller.to_owned(),
            finished: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// The handles of calls no configured caller made (`caller="anonymous"`).
    pub fn anonymous() -> &'static Self {
        static ANONYMOUS: OnceLock<CallerRpcMetrics> = OnceLock::new();
        ANONYMOUS.get_or_init(|| Self::new(ANONYMOUS_CALLER))
    }

    /// Counts one finished call of `method` that answered `code` after `elapsed`.
    pub fn record(&self, method: RpcMethod, code: Code, elapsed: Duration) {
        let code = (code as usize).min(CODE_NAMES.len() - 1);
        let finished = self.finished[method as usize][code].get_or_init(|| {
            let labels = [
                ("method", method.label().to_owned()),
                ("code", CODE_NAMES[code].to_owned()),
                ("caller", self.caller.clone()),
            ];
            Finished {
                requests: metrics::counter!(RPC_REQUESTS_TOTAL, &labels),
                duration: metrics::histogram!(RPC_DURATION, &labels),
            }
        });
        finished.requests.increment(1);
        finished.duration.record(elapsed.as_secs_f64());
    }
}

/// One call counted in `wechat_notify_rpc_in_flight` for as long as it lives (the caller is not
/// known yet when a call starts, so this gauge has no caller label).
pub struct InFlight(Gauge);

impl InFlight {
    /// Counts a call of `method` in flight until the guard is dropped.
    pub fn enter(method: RpcMethod) -> Self {
        static HANDLES: OnceLock<[OnceLock<Gauge>; RpcMethod::ALL.len()]> = OnceLock::new();
        let gauge = HANDLES.get_or_init(|| std::array::from_fn(|_| OnceLock::new()))
            [method as usize]
            .get_or_init(|| metrics::gauge!(RPC_IN_FLIGHT, "method" => method.label()))
            .clone();
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            RpcMethod::from_path("/notify.v1.NotifyService/SendSubscribe").label(),
            "SendSubscribe"
        );
        assert_eq!(
            RpcMethod::from_path("/evil/o6_bmjrPTlm6_2sgVt7hMZOPfL2M"),
            RpcMethod::Other
        );
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::Internal), "INTERNAL");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
