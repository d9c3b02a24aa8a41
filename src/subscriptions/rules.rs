//! How one update changes one ledger entry, and what an entry says about a send. Pure: the
//! in-memory store and a shared store apply the very same rules.
//!
//! Counting one-time grants: every accept adds one, except that one tap is often reported twice
//! (by the mini program's backend through RecordSubscriptions and by WeChat's popup push).
//! An accept from one side within [`PAIR_WINDOW`] of an unmatched accept from the other side
//! is that same tap and adds nothing.
//!
//! What blocks a send under `enforce` ([`verdict`]): a ban; for a one-time template, no grant
//! left; for any other template, a reject or WeChat's own 43101 since the last accept. A
//! one-time template the popup rejected keeps the grants earlier taps gave (WeChat keeps them
//! too); a reject from the settings (change push) takes them all.

use std::time::{Duration, SystemTime};

use super::{Answer, Kind, Side, Source, Status, Subscription, Unpaired, Update};

/// How far apart the client's report and WeChat's popup push of one tap may arrive.
pub const PAIR_WINDOW: Duration = Duration::from_secs(120);

/// What the ledger says about one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The ledger has no entry: send as if it did not exist.
    Unknown,
    /// The ledger knows of nothing that stops the send.
    Deliverable,
    /// The ledger knows WeChat would refuse it (43101); the reason, for the caller.
    Undeliverable(&'static str),
}

/// What `entry` says about a send of its template.
pub fn verdict(entry: Option<&Subscription>) -> Verdict {
    let Some(entry) = entry else {
        return Verdict::Unknown;
    };
    if entry.status == Status::Banned {
        return Verdict::Undeliverable("the template or account is banned (ban)");
    }
    match entry.kind {
        Kind::OneTime if entry.remaining == 0 => {
            Verdict::Undeliverable("the user holds no one-time grant for this template")
        }
        Kind::OneTime => Verdict::Deliverable,
        _ if entry.status == Status::Rejected => {
            Verdict::Undeliverable("the user rejected this template")
        }
        _ if entry.refused => Verdict::Undeliverable(
            "wechat answered 43101 to the last send and no accept came since",
        ),
        _ => Verdict::Deliverable,
    }
}

/// `entry` after `update` at `now`; `None` when there was no entry and the update makes none
/// (a delivery to a pair the ledger never heard of).
pub fn apply(
    entry: Option<Subscription>,
    update: &Update,
    now: SystemTime,
) -> Option<Subscription> {
    let template_id = update.template_id();
    let fresh = || Subscription {
        template_id: template_id.to_owned(),
        kind: Kind::Unspecified,
        status: Status::Unknown,
        remaining: 0,
        updated_at: now,
        source: Source::SendOutcome,
        refused: false,
        unpaired: None,
    };
    match update {
        Update::Answered {
            answer,
            kind,
            source,
            ..
        } => {
            let mut entry = entry.unwrap_or_else(fresh);
            learn_kind(&mut entry, *kind);
            answered(&mut entry, *answer, *source, now);
            entry.updated_at = now;
            entry.source = *source;
            Some(entry)
        }
        Update::Delivered { .. } | Update::Refused { .. } => {
            let patch = OutcomePatch::of(update)?;
            let mut entry = match entry {
                Some(entry) => entry,
                None if patch.creates() => fresh(),
                None => return None,
            };
            patch.apply(&mut entry, now);
            Some(entry)
        }
    }
}

/// What a send's outcome ([`Update::Delivered`] or [`Update::Refused`]) does to an entry, as
/// data: [`apply`] applies it here, and a shared store applies the very same patch inside its
/// own write (`RedisLedger`'s outcome step, in Lua, mechanically: the decisions are made here),
/// so that recording a send to a known user takes no extra round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutcomePatch {
    /// The template's kind, when the send knew it ([`Kind::Unspecified`] keeps the entry's).
    /// A long-term entry holds no count of grants.
    pub kind: Kind,
    /// One grant is used: one fewer left, never fewer than none.
    pub use_grant: bool,
    /// No grant is left, and no accept is waiting for its pair.
    pub clear_grants: bool,
    /// The entry's `refused` flag afterwards.
    pub refused: bool,
}

impl OutcomePatch {
    /// The patch of a send's outcome; `None` for a user's answer.
    pub fn of(update: &Update) -> Option<OutcomePatch> {
        match *update {
            Update::Delivered { kind, .. } => Some(OutcomePatch {
                kind,
                use_grant: true,
                clear_grants: false,
                refused: false,
            }),
            Update::Refused { kind, .. } => Some(OutcomePatch {
                kind,
                use_grant: false,
                clear_grants: true,
                refused: true,
            }),
            Update::Answered { .. } => None,
        }
    }

    /// True when the patch makes an entry of nothing (a 43101 is worth knowing about any
    /// user; a delivery to a pair the ledger never heard of leaves it unknown).
    pub fn creates(&self) -> bool {
        self.refused
    }

    /// Applies the patch to `entry` at `now`, in this order (the shared store's step follows
    /// it): learn the kind, use a grant, clear the grants, then the flag, time and source.
    pub fn apply(&self, entry: &mut Subscription, now: SystemTime) {
        learn_kind(entry, self.kind);
        if self.use_grant {
            entry.remaining = entry.remaining.saturating_sub(1);
        }
        if self.clear_grants {
            entry.remaining = 0;
            entry.unpaired = None;
        }
        entry.refused = self.refused;
        entry.updated_at = now;
        entry.source = Source::SendOutcome;
    }
}

fn learn_kind(entry: &mut Subscription, kind: Kind) {
    if kind != Kind::Unspecified {
        entry.kind = kind;
    }
    if entry.kind == Kind::LongTerm {
        entry.remaining = 0;
    }
}

fn answered(entry: &mut Subscription, answer: Answer, source: Source, now: SystemTime) {
    match answer {
        Answer::Accept => {
            entry.status = Status::Accepted;
            entry.refused = false;
            if entry.kind != Kind::LongTerm && counts_grant(entry, source, now) {
                entry.remaining = entry.remaining.saturating_add(1);
            }
        }
        Answer::Reject => {
            entry.status = Status::Rejected;
            // Turned off from the settings: nothing is left. A popup reject adds nothing but
            // takes nothing either.
            if source == Source::ChangeEvent {
                entry.remaining = 0;
                entry.unpaired = None;
            }
        }
        Answer::Ban => entry.status = Status::Banned,
        Answer::Filter => entry.status = Status::Filtered,
    }
}

/// True when an accept from `source` is a new grant, false when it is the other side's report
/// of a tap already counted; keeps the unmatched accepts up to date.
fn counts_grant(entry: &mut Subscription, source: Source, now: SystemTime) -> bool {
    let side = match source {
        Source::ClientReport => Side::Client,
        Source::PopupEvent => Side::Push,
        // A change push never grants, and sends never answer; count it, nothing to pair.
        Source::ChangeEvent | Source::SendOutcome => return true,
    };
    let recent = entry.unpaired.filter(|unpaired| {
        now.duration_since(unpaired.at)
            .map_or(true, |age| age <= PAIR_WINDOW)
    });
    match recent {
        Some(unpaired) if unpaired.side != side => {
            entry.unpaired = (unpaired.count > 1).then_some(Unpaired {
                count: unpaired.count - 1,
                ..unpaired
            });
            false
        }
        Some(unpaired) => {
            entry.unpaired = Some(Unpaired {
                side,
                count: unpaired.count.saturating_add(1),
                at: now,
            });
            true
        }
        None => {
            entry.unpaired = Some(Unpaired {
                side,
                count: 1,
                at: now,
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(answer: Answer, kind: Kind, source: Source) -> Update {
        Update::Answered {
            template_id: "T".into(),
            answer,
            kind,
            source,
        }
    }

    fn run(updates: &[(Update, u64)]) -> Option<Subscription> {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        updates.iter().fold(None, |entry, (update, at)| {
            apply(entry, update, start + Duration::from_secs(*at))
        })
    }

    const ONE: Kind = Kind::OneTime;

    #[test]
    fn one_tap_reported_by_both_sides_counts_once() {
        let entry = run(&[
            (answered(Answer::Accept, ONE, Source::ClientReport), 0),
            (answered(Answer::Accept, ONE, Source::PopupEvent), 3),
        ])
        .unwrap();
        assert_eq!(entry.remaining, 1);
        assert_eq!(entry.source, Source::PopupEvent);
        // Two taps, reported in any interleaving, count twice.
        let entry = run(&[
            (answered(Answer::Accept, ONE, Source::PopupEvent), 0),
            (answered(Answer::Accept, ONE, Source::PopupEvent), 1),
            (answered(Answer::Accept, ONE, Source::ClientReport), 2),
            (answered(Answer::Accept, ONE, Source::ClientReport), 3),
        ])
        .unwrap();
        assert_eq!(entry.remaining, 2);
        // Outside the window, the other side's report is a new tap.
        let late = PAIR_WINDOW.as_secs() + 1;
        let entry = run(&[
            (answered(Answer::Accept, ONE, Source::ClientReport), 0),
            (answered(Answer::Accept, ONE, Source::PopupEvent), late),
        ])
        .unwrap();
        assert_eq!(entry.remaining, 2);
    }

    #[test]
    fn sends_use_grants_and_43101_empties_them() {
        let accept = answered(Answer::Accept, ONE, Source::ClientReport);
        let delivered = Update::Delivered {
            template_id: "T".into(),
            kind: ONE,
        };
        let entry = run(&[(accept.clone(), 0), (delivered.clone(), 1)]).unwrap();
        assert_eq!(entry.remaining, 0);
        assert!(matches!(verdict(Some(&entry)), Verdict::Undeliverable(_)));
        assert_eq!(run(&[(delivered, 0)]), None, "unknown pairs stay unknown");
        let refused = Update::Refused {
            template_id: "T".into(),
            kind: Kind::Unspecified,
        };
        let entry = run(&[(refused.clone(), 0)]).unwrap();
        assert_eq!(entry.status, Status::Unknown);
        assert!(matches!(verdict(Some(&entry)), Verdict::Undeliverable(_)));
        let entry = run(&[(refused, 0), (accept, 1)]).unwrap();
        assert_eq!(verdict(Some(&entry)), Verdict::Deliverable);
        assert_eq!(verdict(None), Verdict::Unknown);
    }

    #[test]
    fn rejects_block_long_term_and_settings_rejects_take_one_time_grants() {
        let long = Kind::LongTerm;
        let entry = run(&[
            (answered(Answer::Accept, long, Source::ClientReport), 0),
            (
                Update::Delivered {
                    template_id: "T".into(),
                    kind: long,
                },
                1,
            ),
        ])
        .unwrap();
        assert_eq!(verdict(Some(&entry)), Verdict::Deliverable);
        let entry = run(&[
            (answered(Answer::Accept, long, Source::ClientReport), 0),
            (answered(Answer::Reject, long, Source::ChangeEvent), 1),
        ])
        .unwrap();
        assert!(matches!(verdict(Some(&entry)), Verdict::Undeliverable(_)));
        // A popup reject keeps an earlier one-time grant; a settings reject takes it.
        let popup = run(&[
            (answered(Answer::Accept, ONE, Source::ClientReport), 0),
            (answered(Answer::Reject, ONE, Source::PopupEvent), 300),
        ])
        .unwrap();
        assert_eq!((popup.status, popup.remaining), (Status::Rejected, 1));
        assert_eq!(verdict(Some(&popup)), Verdict::Deliverable);
        let settings = run(&[
            (answered(Answer::Accept, ONE, Source::ClientReport), 0),
            (answered(Answer::Reject, ONE, Source::ChangeEvent), 300),
        ])
        .unwrap();
        assert_eq!(settings.remaining, 0);
        let banned = run(&[(answered(Answer::Ban, ONE, Source::ClientReport), 0)]).unwrap();
        assert!(matches!(verdict(Some(&banned)), Verdict::Undeliverable(_)));
    }
}
