//! The values a metric label can take, as types: a caller names an [`Outcome`], never a string,
//! so a misspelt or new label value is a compile error, not a new series. Each value's text is
//! written here once, as `/metrics` prints it (dashboards and alerts match on it).

/// A fieldless enum whose variants are label values: `ALL` (declaration order, so
/// `value as usize` indexes it) and `label()`.
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The label value, as `/metrics` prints it.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }
    };
}

pub(super) use label_values;

label_values! {
    /// `outcome` of `wechat_notify_messages_total`: what became of one message.
    pub enum Outcome {
        /// WeChat accepted it.
        Sent => "sent",
        /// Answered from an idempotency record; nothing sent.
        Deduplicated => "deduplicated",
        /// Refused before sending (a bad field, an unknown app, an undecodable request).
        Invalid => "invalid",
        /// WeChat answered an errcode (or the ledger refused it, as WeChat would have).
        Rejected => "rejected",
        /// No usable answer: unreachable, HTTP error, timeout, not started.
        Failed => "failed",
    }
}

label_values! {
    /// `endpoint` of the upstream metrics: which WeChat API was called.
    pub enum Endpoint {
        /// `GET /cgi-bin/token` or `POST /cgi-bin/stable_token`.
        Token => "token",
        /// `POST /cgi-bin/message/subscribe/send`.
        Send => "send",
        /// `GET /wxaapi/newtmpl/gettemplate`.
        Templates => "templates",
    }
}

label_values! {
    /// `action` of `wechat_notify_token_rejections_total`: what the token cache did about a
    /// token WeChat rejected.
    pub enum TokenRejection {
        /// The app now has another token.
        Refreshed => "refreshed",
        /// WeChat handed the rejected token back and a `force_refresh` revoked it.
        ForceRefreshed => "force_refreshed",
        /// The token stays.
        Kept => "kept",
    }
}

label_values! {
    /// `result` of `wechat_notify_store_waits_total`: how a wait for another replica (its token
    /// fetch, its idempotency claim) ended.
    pub enum StoreWait {
        /// The wake-up published through Redis arrived.
        Woken => "woken",
        /// No wake-up within the bounded wait; the waiter looks again on its own.
        TimedOut => "timed_out",
    }
}

label_values! {
    /// `result` of `wechat_notify_template_fetches_total`.
    pub enum TemplateFetch {
        /// WeChat listed the templates.
        Ok => "ok",
        /// WeChat answered an errcode.
        Rejected => "rejected",
        /// No usable answer.
        Failed => "failed",
    }
}

label_values! {
    /// `result` of `wechat_notify_subscription_ledger_lookups_total`.
    pub enum LedgerLookup {
        /// The ledger had an entry for the user and template.
        Hit => "hit",
        /// It had none.
        Miss => "miss",
    }
}

label_values! {
    /// `event` of `wechat_notify_subscription_push_events_total`: the kind of push applied.
    pub enum PushEventKind {
        /// The user answered the subscription popup.
        Popup => "popup",
        /// The user changed a subscription in the settings.
        Change => "change",
        /// Delivery results of sends.
        Sent => "sent",
        /// Acknowledged and ignored.
        Other => "other",
    }
}

label_values! {
    /// `result` of `wechat_notify_push_requests_total`: what the push listener answered.
    pub enum PushResult {
        /// A GET URL check passed.
        Verified => "verified",
        /// A push was taken.
        Accepted => "accepted",
        /// A retry of a push already taken.
        Duplicate => "duplicate",
        /// The signature did not match.
        BadSignature => "bad_signature",
        /// Signed more than 5 minutes away from now.
        Stale => "stale",
        /// Bad mode, body, ciphertext or appid.
        BadRequest => "bad_request",
        /// No app takes pushes at this path.
        UnknownApp => "unknown_app",
    }
}

/// The result of one access token request to WeChat (`wechat_notify_token_fetches_total`, and
/// `wechat_notify_token_fetch_failures_total` for a failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFetch {
    /// WeChat handed out a token.
    Ok,
    /// An errcode, an HTTP error or no answer.
    Failed,
}

/// Whether the shared Redis answers (`wechat_notify_store_up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// It answers (1).
    Up,
    /// It does not, or has not yet (0).
    Down,
}
