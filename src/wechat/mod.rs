//! The WeChat HTTP client: one pooled `reqwest::Client`, the API base list, wire types and
//! errcode classes. It sends exactly one logical request per call (trying the next API base only
//! when a connection could not be made) and never decides on retries: that is `service`'s job.
//!
//! Access tokens travel in the URL query; every URL or error this module prints has the token
//! redacted.

mod client;
mod errors;
mod redact;
mod templates;
mod wire;

pub use client::{
    AppApi, ClientOptions, Delivered, FetchedToken, SendAttempt, TokenMode, WechatClient,
};
pub use errors::{Endpoint, ErrorClass, WechatError};
pub use redact::{REDACTED, redact_url, scrub};
pub use templates::{TemplateInfo, TemplateKind, content_keywords};
pub use wire::{MiniprogramState, SubscribeMessage};
