//! wechat-notify: a gRPC service that sends WeChat Mini Program subscribe messages over a
//! shared per-app access-token cache.
//!
//! Modules, with imports pointing one way (top to bottom):
//! - [`server`]: composition root (health, reflection, metrics, shutdown).
//! - [`grpc`]: protobuf <-> domain translation ([`codec`]: undecodable requests are
//!   INVALID_ARGUMENT); [`status`]: the one place that picks a gRPC code.
//! - [`callers`]: who is calling and what it may do; [`tls`]: TLS on the gRPC port.
//! - [`service`]: decides (validation, idempotency, retries, batch fan-out); knows no tonic.
//! - [`validation`], [`idempotency`], [`token`], [`templates`], [`wechat`]: the pieces it
//!   decides with; [`retry`]: the one backoff formula and the clock of WeChat's quota windows,
//!   which all of them wait by (whether to retry a WeChat answer at all is
//!   `wechat::WechatError::retry`'s).
//! - [`store`]: the state replicas share on Redis (`NOTIFY_REDIS_URL`), behind the token and
//!   idempotency store traits and the app's limits.
//! - [`signal`]: the shutdown signals every command waits for (below them all).
//!
//! Beside it in the workspace, and never imported by production code: the fake WeChat API
//! (`crates/sandbox`, `wechat_notify_sandbox`), which only [`cli`] uses, for `serve --sandbox`
//! and `wechat-notify sandbox` (the default cargo feature `sandbox`), and the load generator
//! (`crates/bench`, `wechat-notify-bench`).

pub mod callers;
pub mod cli;
pub mod codec;
pub mod config;
pub mod grpc;
pub mod idempotency;
pub mod pb;
pub mod push;
pub mod push_crypto;
pub mod retry;
pub mod secret;
pub mod server;
pub mod service;
pub mod signal;
pub mod status;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
pub mod templates;
pub mod tls;
pub mod token;
pub mod validation;
pub mod wechat;
