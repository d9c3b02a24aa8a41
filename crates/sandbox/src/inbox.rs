//! What the inbox holds: each delivered message, as the user would see it.

use std::collections::BTreeMap;

use serde::Serialize;

/// A delivered message, as the user would see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InboxMessage {
    /// Recipient.
    pub openid: String,
    /// Sending app.
    pub appid: String,
    /// Template used.
    pub template_id: String,
    /// Template title.
    pub title: String,
    /// The template content with every `{{key.DATA}}` replaced by its value.
    pub text: String,
    /// Keyword -> value, as sent.
    pub data: BTreeMap<String, String>,
    /// Page opened from the card, as sent.
    pub page: Option<String>,
    /// `developer`, `trial` or `formal` (the default when not sent).
    pub miniprogram_state: String,
    /// `zh_CN` (the default when not sent), `en_US`, `zh_HK` or `zh_TW`.
    pub lang: String,
    /// The msgid answered to the sender.
    pub msgid: u64,
    /// Delivery time, unix milliseconds.
    pub time_unix_ms: u64,
}
