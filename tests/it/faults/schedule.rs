//! The seeded schedule of the fault run: which apps, what is injected for each recipient, and
//! what the contract says each injection must give.

use std::time::Duration;

use tonic::Code;
use wechat_notify_sandbox::Fault;

/// The service's WeChat request timeout: a latency beyond it is an unknown outcome.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// The deadline of calls to the app that gets 45011 (its pause lasts to the next minute).
pub const PAUSED_APP_DEADLINE: Duration = Duration::from_secs(3);

/// Configured apps: name, appid, secret. Each has its own part of the schedule, so that what it
/// proves stays sharp:
/// - the first has its tokens revoked (a real revocation must be followed at once);
/// - the second gets per-user token rejections (a rejection the token did not deserve must
///   never reach another user). Mixing the two within 30 s is the one documented corner where
///   a kept token, then really revoked, fails sends until its 30 s are up;
/// - the third gets 45011, which pauses it to the next minute (documented as app-wide).
///
/// All three get the other send errcodes, HTTP 5xx, latency, timeouts and resets per user, and
/// the first two token endpoint failures.
pub const APPS: [(&str, &str, &str); 3] = [
    ("alpha", "wxfa0170000000000a", "alpha-secret"),
    ("beta", "wxfa0170000000000b", "beta-secret"),
    ("gamma", "wxfa0170000000000c", "gamma-secret"),
];
pub const REVOKED_APP: usize = 0;
pub const TOKEN_REJECTING_APP: usize = 1;
pub const PAUSED_APP: usize = 2;

/// What the sandbox is told to do to one recipient's sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    None,
    /// Answer this errcode once.
    Errcode(i32),
    /// Answer -1 this many times.
    Busy(u32),
    /// Answer this token-rejection errcode this many times (1 or 2).
    TokenRejected(i32, u32),
    /// Answer this HTTP status once.
    Http(u16),
    /// Hold the answer back this long, within the request timeout.
    Latency(u64),
    /// Hold the answer back beyond the request timeout (the message is delivered).
    Timeout,
    /// Close the connection without an answer (nothing is delivered).
    Reset,
}

impl Injected {
    pub fn fault(self, openid: &str) -> Option<Fault> {
        let fault = match self {
            Injected::None => return None,
            Injected::Errcode(errcode) => Fault::errcode(errcode).times(1),
            Injected::Busy(times) => Fault::errcode(-1).times(times),
            Injected::TokenRejected(errcode, times) => Fault::errcode(errcode).times(times),
            Injected::Http(status) => Fault::http_status(status).times(1),
            Injected::Latency(ms) => Fault::latency(Duration::from_millis(ms)).times(1),
            Injected::Timeout => Fault::latency(REQUEST_TIMEOUT * 2).times(1),
            Injected::Reset => Fault::reset().times(1),
        };
        Some(fault.for_openid(openid))
    }

    /// The code, the `wechat-errcode` and whether the message reaches the inbox, as the
    /// contract gives them.
    pub fn expected(self) -> (Code, Option<i32>, bool) {
        match self {
            Injected::None | Injected::Latency(_) => (Code::Ok, None, true),
            Injected::Errcode(errcode @ (40003 | 40037 | 47003 | 41030)) => {
                (Code::InvalidArgument, Some(errcode), false)
            }
            Injected::Errcode(43101) => (Code::FailedPrecondition, Some(43101), false),
            Injected::Errcode(errcode @ (45009 | 45011)) => {
                (Code::ResourceExhausted, Some(errcode), false)
            }
            Injected::Errcode(errcode) => (Code::Unknown, Some(errcode), false),
            Injected::Busy(times) if times <= 3 => (Code::Ok, None, true),
            Injected::Busy(_) => (Code::Unavailable, Some(-1), false),
            Injected::TokenRejected(_, 1) => (Code::Ok, None, true),
            Injected::TokenRejected(errcode, _) => (Code::Unavailable, Some(errcode), false),
            Injected::Http(_) => (Code::Unavailable, None, false),
            Injected::Timeout => (Code::Unknown, None, true),
            Injected::Reset => (Code::Unknown, None, false),
        }
    }

    pub fn random(rng: &mut fastrand::Rng, app: usize) -> Injected {
        if rng.u8(0..100) < 75 {
            return Injected::None;
        }
        if app == PAUSED_APP {
            return if rng.u8(0..4) == 0 {
                Injected::Errcode(45011)
            } else {
                Injected::Errcode(*rng.choice(&[40003, 43101, 48001]).unwrap())
            };
        }
        match rng.u8(0..10) {
            3 | 4 if app == TOKEN_REJECTING_APP => Injected::TokenRejected(
                *rng.choice(&[40001, 42001, 40014]).unwrap(),
                rng.u32(1..=2),
            ),
            0 | 1 | 3 | 4 => Injected::Errcode(
                *rng.choice(&[40003, 40037, 47003, 41030, 43101, 45009, 48001, 61007])
                    .unwrap(),
            ),
            2 => Injected::Busy(rng.u32(1..=5)),
            5 => Injected::Http(*rng.choice(&[500, 502, 503]).unwrap()),
            6 | 7 => Injected::Latency(rng.u64(10..200)),
            8 => Injected::Reset,
            _ => Injected::Timeout,
        }
    }
}

/// One recipient of one call.
#[derive(Clone, Debug)]
pub struct Recipient {
    pub openid: String,
    pub injected: Injected,
}

/// One planned call.
#[derive(Clone, Debug)]
pub struct Call {
    pub index: usize,
    pub app: usize,
    pub batch: bool,
    /// Sent with an idempotency key; a keyed SendSubscribe is sent twice at once.
    pub keyed: bool,
    pub recipients: Vec<Recipient>,
    /// Something done to the app as this call starts.
    pub event: Option<Event>,
}

#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// Every current token of the app answers 40001 from now on.
    Revoke,
    /// One token endpoint call fails (a fetch retries it).
    TokenFault(TokenFault),
}

#[derive(Clone, Copy, Debug)]
pub enum TokenFault {
    Busy,
    Http,
    Reset,
    Slow,
}

pub fn plan(seed: u64, calls: usize) -> Vec<Call> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..calls)
        .map(|index| {
            let app = rng.usize(0..APPS.len());
            let batch = rng.u8(0..10) < 3;
            let count = if batch { rng.usize(2..=12) } else { 1 };
            let recipients = (0..count)
                .map(|position| Recipient {
                    // 28 characters, unique per recipient of the run.
                    openid: format!("oFault{app}x{index:011}x{position:08}"),
                    injected: Injected::random(&mut rng, app),
                })
                .collect();
            let event = match rng.u16(0..1000) {
                _ if app == PAUSED_APP => None,
                0..15 if app == REVOKED_APP => Some(Event::Revoke),
                15..20 => Some(Event::TokenFault(TokenFault::Busy)),
                20..25 => Some(Event::TokenFault(TokenFault::Http)),
                25..30 => Some(Event::TokenFault(TokenFault::Reset)),
                30..35 => Some(Event::TokenFault(TokenFault::Slow)),
                _ => None,
            };
            Call {
                index,
                app,
                batch,
                keyed: rng.bool(),
                recipients,
                event,
            }
        })
        .collect()
}
