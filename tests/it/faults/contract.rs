//! The fault run's verdict on one recipient: what it got against what the contract gives for
//! what the sandbox did to it, with the documented app-wide exceptions.

use tonic::Code;

use super::schedule::{APPS, Injected, PAUSED_APP, Recipient};

/// What one recipient got.
#[derive(Debug)]
pub struct Outcome {
    pub call: usize,
    pub app: usize,
    pub recipient: Recipient,
    pub code: Code,
    pub errcode: Option<i32>,
    /// SendSubscribe only: the ErrorInfo reason.
    pub reason: Option<String>,
    /// Revocations and forced refreshes of the app that may have rejected the call's tokens.
    pub token_events: u64,
    /// A 45009 was injected for another recipient of the same batch.
    pub batch_hit_daily_quota: bool,
    /// A keyed SendSubscribe whose first copy failed before the second arrived: the second is
    /// a retry, sent again as the contract says (failures are not recorded) and answered OK.
    pub retried_after_failure: bool,
}

/// One recipient's answer: code, `wechat-errcode`, ErrorInfo reason (or what went wrong in the
/// test's own checks), and whether a second copy was sent after this one failed.
pub type Answer = (Code, Option<i32>, Option<String>, bool);

/// What is wrong with one outcome, given how often its message was delivered.
pub fn violation(outcome: &Outcome, delivered: usize) -> Option<String> {
    let (code, errcode, reaches_inbox) = outcome.recipient.injected.expected();
    let got = (outcome.code, outcome.errcode);
    // A retry after a failure delivers the message once (a failure that delivered it, an
    // unknown outcome, is slow enough that the copies always share it).
    let deliveries = usize::from(reaches_inbox || outcome.retried_after_failure);
    let exact = got == (code, errcode) && delivered == deliveries;
    let unknown_reason_ok = outcome.code != Code::Unknown
        || outcome.errcode.is_some()
        || outcome
            .reason
            .as_deref()
            .is_none_or(|reason| reason == "OUTCOME_UNKNOWN");
    if exact && unknown_reason_ok {
        return None;
    }
    // The documented exceptions, each checked against what the sandbox did.
    let token_rejected = outcome.code == Code::Unavailable
        && matches!(outcome.errcode, Some(40001 | 42001 | 40014))
        && delivered == 0;
    // A token rejected on both attempts: two revocations during the call (one, when the
    // injected fault was itself a rejection).
    let needed = match outcome.recipient.injected {
        Injected::TokenRejected(..) => 1,
        _ => 2,
    };
    if token_rejected && outcome.token_events >= needed {
        return None;
    }
    // 45009 elsewhere in the same batch stops the sends that had not started.
    if outcome.batch_hit_daily_quota
        && outcome.code == Code::ResourceExhausted
        && outcome.errcode.is_none()
        && delivered == 0
    {
        return None;
    }
    // The app paused by 45011 until the next minute: refused, or out of time waiting for it
    // (the server answers a call past its deadline CANCELLED; a send it had started may still
    // deliver).
    if outcome.app == PAUSED_APP {
        let refused = outcome.code == Code::ResourceExhausted && outcome.errcode.is_none();
        let out_of_time = matches!(outcome.code, Code::DeadlineExceeded | Code::Cancelled);
        if (refused || out_of_time) && delivered <= 1 {
            return None;
        }
    }
    Some(format!(
        "call {} app {} {} ({:?}): got {:?} errcode {:?} reason {:?}, delivered {delivered}; \
         expected {code:?} errcode {errcode:?}, delivered {} (token events {})",
        outcome.call,
        APPS[outcome.app].0,
        outcome.recipient.openid,
        outcome.recipient.injected,
        outcome.code,
        outcome.errcode,
        outcome.reason,
        deliveries,
        outcome.token_events,
    ))
}
