//! Wire types of `subscribeMessage.send` and the token endpoints.

use std::collections::BTreeMap;

/// Which build of the mini program the card opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MiniprogramState {
    /// Not set: omitted on the wire, WeChat's default (formal).
    #[default]
    Unspecified,
    /// `developer` (开发版).
    Developer,
    /// `trial` (体验版).
    Trial,
    /// `formal` (正式版).
    Formal,
}

/// One subscribe message, as WeChat's send endpoint receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeMessage {
    /// Recipient openid.
    pub touser: String,
    /// Private template id.
    pub template_id: String,
    /// Page opened from the card; omitted on the wire when `None`.
    pub page: Option<String>,
    /// Keyword -> value; each value is wrapped as `{"value": ...}` on the wire.
    pub data: BTreeMap<String, String>,
    /// Which build the card opens; omitted on the wire when unspecified.
    pub miniprogram_state: MiniprogramState,
    /// `zh_CN`, `en_US`, `zh_HK` or `zh_TW`; omitted on the wire when `None`.
    pub lang: Option<String>,
}
