//! The app's templates as WeChat lists them ("my templates", `gettemplate`), so a message can be
//! checked against its template before anything goes to WeChat:
//! - [`cache`]: the per-app list (lazy, single flight, refreshed, fail open);
//! - [`check`]: what a message's data must satisfy against its template (pure).
//!
//! The list's wire format ([`TemplateInfo`], [`TemplateKind`]) is parsed by the WeChat client
//! (`crate::wechat`), which this module builds on.

pub mod cache;
pub mod check;

pub use crate::wechat::{TemplateInfo, TemplateKind};
pub use cache::{Lookup, TemplateCache, TemplateOptions, TemplateSource};
