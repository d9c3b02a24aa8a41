//! The subscription ledger: per app, openid and template, what the service has heard about the
//! user's grants (a client report, WeChat's popup and change pushes, its own sends' outcomes),
//! and the stream of those changes and of WeChat's delivery results.
//!
//! - [`rules`]: how one update changes one entry, and what an entry says about a send. Pure, so
//!   every store applies the same rules.
//! - [`Ledger`]: the store trait; [`MemoryLedger`] keeps entries in process (bounded);
//!   [`RedisLedger`] keeps them on the shared Redis (`NOTIFY_REDIS_URL`), so that every replica
//!   sees the same entries and every replica's watchers see every event.
//! - [`events`]: per-app broadcast with a bounded buffer per watcher.
//!
//! The ledger decides nothing about sends itself; `crate::service` asks it and acts.

pub mod events;
mod memory;
mod redis;
pub mod rules;
pub mod wire;

use std::time::SystemTime;

use async_trait::async_trait;

use crate::store::{Rider, RiderAnswer};

pub use self::redis::{ENTRY_TTL, RedisLedger};
pub use events::{EventHub, WatchItem, Watcher};
pub use memory::{MemoryLedger, PUSH_DEDUPE_TTL};
pub use rules::{Verdict, verdict};

/// What an app's sends do with the ledger (`subscription_check`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SubscriptionCheck {
    /// Sends neither consult nor update the ledger.
    Off,
    /// Sends update the ledger and count what it would have said, but never wait on it.
    #[default]
    Observe,
    /// A send the ledger knows cannot be delivered is refused without calling WeChat.
    Enforce,
}

impl SubscriptionCheck {
    /// The mode's name in configuration.
    pub fn parse(value: &str) -> Option<SubscriptionCheck> {
        match value {
            "off" => Some(SubscriptionCheck::Off),
            "observe" => Some(SubscriptionCheck::Observe),
            "enforce" => Some(SubscriptionCheck::Enforce),
            _ => None,
        }
    }
}

/// A template's subscription type, from the app's template list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// Not known.
    #[default]
    Unspecified,
    /// One-time (type 2): one message per accept.
    OneTime,
    /// Long-term (type 3): messages until the user turns it off.
    LongTerm,
}

/// The user's last known answer for a template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// Nothing known.
    #[default]
    Unknown,
    /// `accept` (or any `accept*`).
    Accepted,
    /// `reject`, in the popup or from the settings.
    Rejected,
    /// `ban`: the template or account is banned.
    Banned,
    /// `filter`: dropped from the popup for a duplicate title.
    Filtered,
}

/// What last changed an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// RecordSubscriptions.
    ClientReport,
    /// `subscribe_msg_popup_event`.
    PopupEvent,
    /// `subscribe_msg_change_event`.
    ChangeEvent,
    /// A send: delivered, or refused with 43101.
    SendOutcome,
}

/// One `wx.requestSubscribeMessage` (or push) value for a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `accept`, `acceptWithAudio`, any `accept*`.
    Accept,
    /// `reject`.
    Reject,
    /// `ban`.
    Ban,
    /// `filter`.
    Filter,
}

impl Answer {
    /// Parses the value as the mini program (or WeChat's push) gives it.
    pub fn parse(value: &str) -> Option<Answer> {
        match value {
            value if value.starts_with("accept") => Some(Answer::Accept),
            "reject" => Some(Answer::Reject),
            "ban" => Some(Answer::Ban),
            "filter" => Some(Answer::Filter),
            _ => None,
        }
    }
}

/// What the ledger knows about one user and one template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The template id.
    pub template_id: String,
    /// One-time or long-term, where known.
    pub kind: Kind,
    /// The last known answer.
    pub status: Status,
    /// One-time grants left as far as the ledger knows.
    pub remaining: u32,
    /// When this entry last changed.
    pub updated_at: SystemTime,
    /// What made that change.
    pub source: Source,
    /// WeChat answered 43101 to the last send and no accept came since.
    pub refused: bool,
    /// Accepts from one side (client report or popup push) not yet matched by the other side's
    /// report of the same tap; see [`rules::PAIR_WINDOW`].
    pub unpaired: Option<Unpaired>,
}

/// Which side reported an accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The mini program's report.
    Client,
    /// WeChat's popup push.
    Push,
}

/// Accepts one side reported that the other side has not (yet) reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpaired {
    /// Who reported them.
    pub side: Side,
    /// How many.
    pub count: u32,
    /// When the last of them arrived.
    pub at: SystemTime,
}

/// One change to apply to an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The user answered (client report, popup push, change push).
    Answered {
        /// The template.
        template_id: String,
        /// What the user answered.
        answer: Answer,
        /// The template's kind, when the service knows it.
        kind: Kind,
        /// Who reported it: [`Source::ClientReport`], [`Source::PopupEvent`] or
        /// [`Source::ChangeEvent`].
        source: Source,
    },
    /// A send was delivered (WeChat answered ok): a one-time grant is used.
    Delivered {
        /// The template.
        template_id: String,
        /// The template's kind, when known.
        kind: Kind,
    },
    /// WeChat answered 43101: the user holds no grant now.
    Refused {
        /// The template.
        template_id: String,
        /// The template's kind, when known.
        kind: Kind,
    },
}

impl Update {
    /// The template it is about.
    pub fn template_id(&self) -> &str {
        match self {
            Update::Answered { template_id, .. }
            | Update::Delivered { template_id, .. }
            | Update::Refused { template_id, .. } => template_id,
        }
    }
}

/// Something a watcher sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerEvent {
    /// An entry changed.
    Changed {
        /// The user.
        openid: String,
        /// The entry after the change.
        subscription: Subscription,
    },
    /// WeChat's delivery result of a send (`subscribe_msg_sent_event`).
    Delivery {
        /// The recipient.
        openid: String,
        /// The template.
        template_id: String,
        /// The message id.
        msgid: u64,
        /// WeChat's ErrorCode (0 = delivered).
        errcode: i32,
        /// WeChat's ErrorStatus.
        status: String,
    },
}

/// The ledger's store could not be used (a shared store unreachable). The in-memory store
/// never fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the subscription ledger is unavailable: {0}")]
pub struct LedgerError(pub String);

/// Keeps ledger entries and carries events. Keyed by appid (a Redis store puts it in the hash
/// tag), then openid, then template id.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Applies `updates` to the user's entries, in order, and answers each touched entry
    /// afterwards; every entry that changed is published to the app's watchers. An update that
    /// would create an entry from nothing but a delivery is dropped (a pair the ledger never
    /// heard of stays unknown).
    async fn apply(
        &self,
        appid: &str,
        openid: &str,
        updates: Vec<Update>,
    ) -> Result<Vec<Subscription>, LedgerError>;

    /// Records what one send taught about the pair (`update`: [`Update::Delivered`] or
    /// [`Update::Refused`] of `template_id`, or `None` when it taught nothing) and answers
    /// whether the ledger had an entry for the pair before: the lookup `observe` counts, taken
    /// with the update after the send so that it costs a shared store no round trip of its own.
    async fn record_send(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
        update: Option<Update>,
    ) -> Result<bool, LedgerError> {
        let known = !self
            .get(appid, openid, &[template_id.to_owned()])
            .await?
            .is_empty();
        if let Some(update) = update {
            self.apply(appid, openid, vec![update]).await?;
        }
        Ok(known)
    }

    /// [`Ledger::record_send`] as a step riding on a keyed send's record (one round trip for
    /// both), when the ledger is on the shared store; `None` when it has no round trip to save.
    fn send_rider(
        &self,
        _appid: &str,
        _openid: &str,
        _template_id: &str,
        _update: Option<&Update>,
    ) -> Option<Rider> {
        None
    }

    /// Completes [`Ledger::record_send`] from the answer of the step [`Ledger::send_rider`]
    /// gave for the same arguments.
    async fn rider_answered(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
        update: Option<Update>,
        _answer: RiderAnswer,
    ) -> Result<bool, LedgerError> {
        self.record_send(appid, openid, template_id, update).await
    }

    /// The pair's entry, as a step riding on a keyed send's claim (the lookup `enforce` makes
    /// before the send: one round trip for both), when the ledger is on the shared store;
    /// `None` when it has no round trip to save.
    fn lookup_rider(&self, _appid: &str, _openid: &str, _template_id: &str) -> Option<Rider> {
        None
    }

    /// The entry of `template_id` that [`Ledger::lookup_rider`]'s step answered.
    fn looked_up(
        &self,
        _template_id: &str,
        _answer: RiderAnswer,
    ) -> Result<Option<Subscription>, LedgerError> {
        Err(LedgerError("this ledger has no lookup step".to_owned()))
    }

    /// The user's entries for `template_ids` (all of them when empty), in template id order.
    async fn get(
        &self,
        appid: &str,
        openid: &str,
        template_ids: &[String],
    ) -> Result<Vec<Subscription>, LedgerError>;

    /// True the first time `key` is claimed for the app within the dedupe window (WeChat's
    /// retries of one push carry the same key), false for a repeat.
    async fn claim_push(&self, appid: &str, key: &str) -> Result<bool, LedgerError>;

    /// Publishes an event that changes no entry (a delivery result) to the app's watchers.
    async fn publish(&self, appid: &str, event: LedgerEvent);

    /// A new watcher of the app's events, from now on.
    fn watch(&self, appid: &str) -> Watcher;
}
