//! wechat-notify-sandbox: a faithful fake of the WeChat API, for local runs, demos and tests. A
//! development tool: it must never be exposed, and the service's production code never needs
//! it (`wechat-notify serve --sandbox` embeds it through the service's `sandbox` feature).
//!
//! It serves WeChat's own paths and JSON shapes (`/cgi-bin/token`, `/cgi-bin/stable_token`,
//! `/cgi-bin/message/subscribe/send`, `/wxaapi/newtmpl/gettemplate`) with WeChat's errcodes,
//! plus a control API under `/sandbox/` and a console page at `/` (see `docs/sandbox.md`).
//! It shares no code with the service: its keyword rules ([`keywords`]) and its push signing
//! and encryption are written from WeChat's documentation, so that a rule the service gets
//! wrong is not wrong here too.
//!
//! Modules (no module imports one that imports it back): [`cli`] (`wechat-sandbox`, also
//! `wechat-notify sandbox`); `server` (the routes and a server on a socket); the route modules
//! `send` (the send checks), `endpoints` (the token and template endpoints), `control` (the
//! `/sandbox/` routes, behind `guard`, which refuses cross-site and DNS-rebinding requests from
//! browsers) and `console` (the page and its live stream); `sandbox` ([`Sandbox`]:
//! the state and what it can be told to do); `state` (subscriptions, inbox, counters),
//! `events` (what the console hears), `push` (WeChat's event pushes), `failures` (refused sends
//! and their causes), `faults`, `inbox`, `tokens` (token rules); [`config`] and [`templates`]
//! (what it is built from) and [`keywords`] (WeChat's keyword rules); `params` and `reply`
//! (what a request reads and how WeChat answers, shared by the route modules).

pub mod cli;
pub mod config;
mod console;
mod control;
mod endpoints;
mod events;
mod failures;
mod faults;
mod guard;
mod inbox;
pub mod keywords;
mod params;
mod push;
mod reply;
mod sandbox;
mod send;
mod server;
mod state;
pub mod templates;
mod tokens;

pub use cli::{SandboxArgs, run};
pub use config::{AppCredentials, DEFAULT_APPID, DEFAULT_SECRET, DEMO_OPENID, SandboxConfig};
pub use events::{EVENTS_CAPACITY, STATS_INTERVAL};
pub use failures::FailedSend;
pub use faults::{ActiveFault, Fault, FaultEndpoint};
pub use inbox::InboxMessage;
pub use params::is_valid_openid;
pub use push::{PushFormat, PushMode, PushRecord, PushTarget};
pub use sandbox::Sandbox;
pub use server::SandboxServer;
pub use state::{Grant, QuotaLeft, RecordedSend, SandboxStats, TokenFetches};
pub use templates::{Keyword, Template, TemplateKind};
