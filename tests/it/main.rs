//! The integration tests, one module per area, in one test binary: each binary links the whole
//! service, so one binary builds in a fraction of the time thirty did. Run one area with
//! `cargo test --test it replicas::`, one test with its full name.
//!
//! They share the process, so none installs anything process-wide (a log subscriber) or asserts
//! exact values of series another test could add to (the metrics recorder is process-wide:
//! tests that read `/metrics` configure app and caller names of their own). The few that must
//! own the process are binaries of their own: `tests/operability.rs`, `tests/undecodable.rs`,
//! `tests/request_id.rs` and `tests/secrets/`.

#[path = "../common/mod.rs"]
mod common;
mod polyglot;

mod batch;
mod bench;
mod callers;
mod callers_polyglot;
mod config_errors;
mod console;
mod docs;
mod errors;
mod examples;
mod faults;
mod grpcurl;
mod idempotency;
mod keyword_rules;
mod ledger_scripts;
mod lifecycle;
mod mesh;
mod push;
mod replicas;
mod sandbox;
mod sandbox_console;
mod send;
mod shared_rate;
mod store_batches;
mod subscription_loop;
mod subscriptions;
mod templates;
mod tls;
mod tokens;
