//! The WeChat HTTP client, one job per file:
//! - `http`: the one pooled `reqwest::Client` and the exchange that walks an
//!   app's API bases (to the next only when a connection could not be made);
//! - `wire`: the send request's body and the parsers of every answer (token, send, template
//!   list, errcode, `rid`);
//! - `api`: one app's credentials, token mode and bases, and its three calls;
//! - `class`: what an answer means for a retry (errcode classes, [`WechatError::retry`]);
//! - `errors`: what can go wrong; `redact`: keeping tokens out of what is printed.
//!
//! It sends exactly one logical request per call and never waits to try again: that is for the
//! callers (`service`, `token`, `templates`), which ask [`WechatError::retry`] whether to.
//!
//! Access tokens travel in the URL query; every URL this module prints has the token redacted,
//! and no error it returns holds one.

mod api;
mod class;
mod errors;
mod http;
mod redact;
mod wire;

pub use api::{SendAttempt, TokenMode, WechatApi};
pub use class::{ErrorClass, Retry};
pub use errors::{Endpoint, ErrorChain, JsonError, TransportError, WechatError};
pub use http::{ClientBuildError, ClientOptions, WechatClient};
pub use redact::{REDACTED, redact_url, scrub};
pub use wire::{
    Delivered, FetchedToken, MiniprogramState, SubscribeMessage, TemplateInfo, TemplateKind,
    content_keywords,
};

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
