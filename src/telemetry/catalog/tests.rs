//! `/metrics` as dashboards and alerts see it: every family's name, type and help text, and
//! every label name and value the typed API can produce, compared with `exposition.txt`.

use super::*;

/// Records every series the typed API can make (one app `a`, one caller `c1`) into a fresh
/// recorder and renders it, lines sorted (the exporter's order is a hash map's).
fn render_everything() -> String {
    let recorder = recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        install();
        register_app("a", 7, &["c1", ANONYMOUS_CALLER]);
        let messages = MessageCounters::new("a", "c1");
        for outcome in Outcome::ALL {
            messages.count(*outcome);
        }
        MessageCounters::new(UNKNOWN_APP, ANONYMOUS_CALLER).count(Outcome::Invalid);
        for endpoint in Endpoint::ALL {
            count_wechat_errcode("a", *endpoint, 40001);
            upstream_request_duration("a", *endpoint).record(0.5);
        }
        set_upstream_in_flight("a", 3);
        count_token_fetch("a", TokenFetch::Ok);
        count_token_fetch("a", TokenFetch::Failed);
        for action in TokenRejection::ALL {
            count_token_rejection("a", 40001, *action);
        }
        set_token_expires_in("a", Duration::from_secs(7200));
        register_template_fetches("a");
        for result in TemplateFetch::ALL {
            count_template_fetch("a", *result);
        }
        set_store_state(StoreState::Down);
        set_store_state(StoreState::Up);
        count_store_error();
        count_store_request();
        for ended in StoreWait::ALL {
            count_store_wait(*ended);
        }
        count_wake_subscription();
        for result in LedgerLookup::ALL {
            count_ledger_lookup("a", *result);
        }
        count_send_saved("a");
        for event in PushEventKind::ALL {
            count_push_event("a", *event);
        }
        register_push_app("a");
        for result in PushResult::ALL {
            count_push_request("a", *result);
        }
        CallerRpcMetrics::new("c1").record(
            RpcMethod::SendSubscribe,
            tonic::Code::Ok,
            Duration::from_millis(500),
        );
        drop(InFlight::enter(RpcMethod::SendSubscribe));
    });
    let mut lines: Vec<String> = handle
        .render()
        .lines()
        .filter(|line| !line.is_empty())
        // The version changes with every release.
        .map(|line| line.replace(env!("CARGO_PKG_VERSION"), "VERSION"))
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

#[test]
fn metrics_render_as_documented() {
    let expected = include_str!("exposition.txt");
    let actual = render_everything();
    assert!(
        actual == expected,
        "/metrics changed; dashboards and alerts depend on it (docs/operations.md). Rendered:\n{actual}"
    );
}

#[test]
fn errcode_labels_are_capped() {
    let labels = ErrcodeLabels::default();
    assert_eq!(labels.label(40001), "40001");
    for code in 0..MAX_ERRCODE_LABELS as i32 {
        labels.label(-800_000 - code);
    }
    assert_eq!(labels.label(-700_000), "other");
    assert_eq!(
        labels.label(40001),
        "40001",
        "a code seen before keeps its label"
    );
}
