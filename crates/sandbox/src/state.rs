//! The sandbox's state: tokens, subscriptions, inbox, refused sends, recorded sends, quotas,
//! faults and counters, behind one lock (each request holds it for a few microseconds, never
//! across an await), plus the public record types. Beside the lock: the live event channel
//! and the address it was served on.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    config::{FAILED_SENDS_CAPACITY, INBOX_CAPACITY, RECORDED_SENDS_CAPACITY, SandboxConfig},
    events::EventHub,
    failures::FailedSend,
    faults::FaultSet,
    inbox::InboxMessage,
    templates::{Template, TemplateKind},
    tokens::TokenStore,
};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const MINUTE: Duration = Duration::from_secs(60);

/// What the user answered in `wx.requestSubscribeMessage` for one template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `accept`: a one-time template gains `count` messages; a long-term one allows any number.
    Accept {
        /// Messages allowed (one-time templates); accepts add up.
        count: u32,
    },
    /// `reject`: removes the grant; auto-accept does not override it.
    Reject,
}

/// A send request as received, before any check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordedSend {
    /// The `access_token` query parameter.
    pub access_token: Option<String>,
    /// The body, when it parsed as JSON.
    pub body: Option<Value>,
    /// The body as text (lossy UTF-8), for bodies that did not parse.
    pub raw_body: String,
    /// Arrival time, unix milliseconds.
    pub time_unix_ms: u64,
}

/// Token endpoint calls of one app.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TokenFetches {
    /// `GET /cgi-bin/token` calls naming the app.
    pub classic: u64,
    /// `POST /cgi-bin/stable_token` calls naming the app.
    pub stable: u64,
    /// Force refreshes that actually refreshed.
    pub force_refreshes: u64,
}

/// Counters of what the sandbox has seen; also the body of `GET /sandbox/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SandboxStats {
    /// Token endpoint calls per appid (only configured appids are counted).
    pub token_fetches: BTreeMap<String, TokenFetches>,
    /// Send requests received, whatever became of them.
    pub send_requests: u64,
    /// Messages delivered to the inbox (or answered ok in fixed-answer mode).
    pub delivered: u64,
    /// Send requests answered with an errcode, by errcode.
    pub rejected: BTreeMap<i64, u64>,
    /// Send requests answered with an injected HTTP status.
    pub http_errors: u64,
    /// Send requests whose connection was closed without an answer (an injected reset).
    pub resets: u64,
    /// Template list (`gettemplate`) requests received, whatever became of them.
    pub template_requests: u64,
    /// Most send requests ever in flight at once.
    pub max_concurrent_sends: u64,
    /// Send requests in flight now.
    pub in_flight_sends: u64,
    /// Send calls each app may still make in the current sandbox day and minute; empty when
    /// neither `--daily-quota` nor `--minute-limit` is set.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub quotas_left: BTreeMap<String, QuotaLeft>,
}

/// What is left of one app's send budgets (45009 and 45011 beyond).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuotaLeft {
    /// Calls left this sandbox day; `None` without `--daily-quota`.
    pub daily: Option<u64>,
    /// Calls left this sandbox minute; `None` without `--minute-limit`.
    pub minute: Option<u64>,
}

impl SandboxStats {
    /// Token endpoint calls of all apps, both families.
    pub fn total_token_fetches(&self) -> u64 {
        self.token_fetches
            .values()
            .map(|f| f.classic + f.stable)
            .sum()
    }
}

/// A user's grants for one template of one app.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Subscription {
    /// Messages left for a one-time template.
    pub one_time: u64,
    /// A long-term template was accepted.
    pub long_term: bool,
    /// The user rejected (auto-accept does not override this).
    pub rejected: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SubscriptionKey {
    pub appid: String,
    pub openid: String,
    pub template_id: String,
}

#[derive(Default)]
struct Window {
    index: u64,
    used: u64,
}

#[derive(Default)]
pub(crate) struct Quotas {
    day: Window,
    minute: Window,
}

/// Which quota a send exceeded.
pub(crate) enum QuotaExceeded {
    Daily,
    Minute,
}

/// Everything that changes, behind the one lock.
pub(crate) struct Mutable {
    pub tokens: TokenStore,
    pub faults: FaultSet,
    pub subscriptions: BTreeMap<SubscriptionKey, Subscription>,
    pub inbox: VecDeque<InboxMessage>,
    pub failures: VecDeque<FailedSend>,
    pub sends: VecDeque<RecordedSend>,
    pub quotas: HashMap<String, Quotas>,
    pub stats: SandboxStats,
    pub next_msgid: u64,
}

impl Mutable {
    pub fn record_send(&mut self, send: RecordedSend) {
        if self.sends.len() == RECORDED_SENDS_CAPACITY {
            self.sends.pop_front();
        }
        self.sends.push_back(send);
    }

    pub fn deliver(&mut self, message: InboxMessage) {
        if self.inbox.len() == INBOX_CAPACITY {
            self.inbox.pop_front();
        }
        self.inbox.push_back(message);
        self.stats.delivered += 1;
    }

    pub fn record_failure(&mut self, failure: FailedSend) {
        if self.failures.len() == FAILED_SENDS_CAPACITY {
            self.failures.pop_front();
        }
        self.failures.push_back(failure);
    }

    pub fn token_fetches(&mut self, appid: &str) -> &mut TokenFetches {
        self.stats
            .token_fetches
            .entry(appid.to_string())
            .or_default()
    }

    /// A msgid above 2^53, so a client parsing it through an f64 gets it wrong.
    pub fn next_msgid(&mut self) -> u64 {
        self.next_msgid += 1;
        self.next_msgid
    }

    /// Counts one send call against the app's quotas, unless a quota is used up.
    pub fn use_quota(
        &mut self,
        config: &SandboxConfig,
        appid: &str,
        since_start: Duration,
    ) -> Result<(), QuotaExceeded> {
        if config.daily_quota.is_none() && config.minute_limit.is_none() {
            return Ok(());
        }
        let quotas = self.quotas.entry(appid.to_string()).or_default();
        let day = since_start.as_secs() / DAY.as_secs();
        let minute = since_start.as_secs() / MINUTE.as_secs();
        for (window, index) in [(&mut quotas.day, day), (&mut quotas.minute, minute)] {
            if window.index != index {
                *window = Window { index, used: 0 };
            }
        }
        if config.daily_quota.is_some_and(|q| quotas.day.used >= q) {
            return Err(QuotaExceeded::Daily);
        }
        if config.minute_limit.is_some_and(|q| quotas.minute.used >= q) {
            return Err(QuotaExceeded::Minute);
        }
        quotas.day.used += 1;
        quotas.minute.used += 1;
        Ok(())
    }

    /// What is left of `appid`'s budgets now (without using any).
    pub fn quota_left(
        &self,
        config: &SandboxConfig,
        appid: &str,
        since_start: Duration,
    ) -> QuotaLeft {
        let quotas = self.quotas.get(appid);
        let left = |limit: Option<u64>, window: Option<&Window>, index: u64| {
            let used = window.filter(|w| w.index == index).map_or(0, |w| w.used);
            limit.map(|limit| limit.saturating_sub(used))
        };
        QuotaLeft {
            daily: left(
                config.daily_quota,
                quotas.map(|q| &q.day),
                since_start.as_secs() / DAY.as_secs(),
            ),
            minute: left(
                config.minute_limit,
                quotas.map(|q| &q.minute),
                since_start.as_secs() / MINUTE.as_secs(),
            ),
        }
    }

    /// Records what the user answered for a template.
    pub fn subscribe(&mut self, key: SubscriptionKey, kind: Option<TemplateKind>, grant: Grant) {
        let subscription = self.subscriptions.entry(key).or_default();
        match grant {
            Grant::Accept { count } => {
                subscription.rejected = false;
                match kind {
                    Some(TemplateKind::LongTerm) => subscription.long_term = true,
                    _ => subscription.one_time += u64::from(count),
                }
            }
            Grant::Reject => {
                *subscription = Subscription {
                    rejected: true,
                    ..Subscription::default()
                }
            }
        }
    }

    /// Uses up the grant a message to this user needs; false when there is none (43101).
    pub fn consume_grant(
        &mut self,
        key: &SubscriptionKey,
        kind: TemplateKind,
        auto_accept: bool,
    ) -> bool {
        let subscription = self.subscriptions.get_mut(key);
        match (kind, subscription) {
            (_, Some(s)) if s.rejected => false,
            (TemplateKind::LongTerm, Some(s)) if s.long_term => true,
            (TemplateKind::OneTime, Some(s)) if s.one_time > 0 => {
                s.one_time -= 1;
                true
            }
            // Auto-accept: as if the user had accepted once just now (and the message used it).
            _ => auto_accept,
        }
    }
}

/// The shared core of a sandbox.
pub(crate) struct Inner {
    pub config: SandboxConfig,
    pub started: Instant,
    pub auto_accept: AtomicBool,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// Live events for the console.
    pub events: EventHub,
    /// Where the sandbox was served (set by `Sandbox::spawn`), for the console's warning.
    pub listen: OnceLock<SocketAddr>,
    /// The templates: the configured ones, plus any added while running.
    templates: RwLock<Arc<Vec<Template>>>,
    state: Mutex<Mutable>,
}

impl Inner {
    pub fn new(config: SandboxConfig) -> Self {
        let tokens = TokenStore::new(
            config.token_lifetime,
            config.classic_overlap,
            config.stable_rollover,
        );
        // Somewhere in [2^62, 2^62 + 2^40): far above 2^53, well below i64::MAX.
        let first_msgid = (1u64 << 62) + fastrand::u64(..1u64 << 40);
        Self {
            auto_accept: AtomicBool::new(config.auto_accept),
            started: Instant::now(),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            events: EventHub::default(),
            listen: OnceLock::new(),
            templates: RwLock::new(Arc::new(config.templates.clone())),
            state: Mutex::new(Mutable {
                tokens,
                faults: FaultSet::default(),
                subscriptions: BTreeMap::new(),
                inbox: VecDeque::new(),
                failures: VecDeque::new(),
                sends: VecDeque::new(),
                quotas: HashMap::new(),
                stats: SandboxStats::default(),
                next_msgid: first_msgid,
            }),
            config,
        }
    }

    /// The state. A panic while holding the lock cannot leave it half-updated in a way that
    /// matters to a fake, so a poisoned lock is simply taken over.
    pub fn lock(&self) -> MutexGuard<'_, Mutable> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every template, in definition order.
    pub fn templates(&self) -> Arc<Vec<Template>> {
        self.templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The template `id` of `appid`, if the app has it.
    pub fn template(&self, appid: &str, id: &str) -> Option<Template> {
        self.templates()
            .iter()
            .find(|t| t.id == id && t.belongs_to(appid))
            .cloned()
    }

    /// Adds a template, checked as a configured one would be (see [`SandboxConfig::validate`]).
    pub fn add_template(&self, template: Template) -> Result<(), String> {
        let mut templates = self.templates.write().unwrap_or_else(|e| e.into_inner());
        let mut candidate = SandboxConfig {
            templates: templates.to_vec(),
            ..self.config.clone()
        };
        candidate.templates.push(template);
        candidate.validate()?;
        *templates = Arc::new(candidate.templates);
        Ok(())
    }

    pub fn app_secret(&self, appid: &str) -> Option<&str> {
        self.config
            .apps
            .iter()
            .find(|a| a.appid == appid)
            .map(|a| a.secret.as_str())
    }

    /// Time since the sandbox started: quota windows and sandbox days count from it.
    pub fn since_start(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    pub fn sandbox_day(&self, now: Instant) -> u64 {
        self.since_start(now).as_secs() / DAY.as_secs()
    }

    /// Counts a send request in flight until the guard drops (also when the client hangs up).
    pub fn enter_send(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    pub fn stats(&self) -> SandboxStats {
        let since_start = self.since_start(Instant::now());
        let state = self.lock();
        let mut stats = state.stats.clone();
        if self.config.daily_quota.is_some() || self.config.minute_limit.is_some() {
            stats.quotas_left = self
                .config
                .apps
                .iter()
                .map(|app| {
                    let left = state.quota_left(&self.config, &app.appid, since_start);
                    (app.appid.clone(), left)
                })
                .collect();
        }
        drop(state);
        stats.in_flight_sends = self.in_flight.load(Ordering::SeqCst);
        stats.max_concurrent_sends = self.max_in_flight.load(Ordering::SeqCst);
        stats
    }
}

pub(crate) struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SubscriptionKey {
        SubscriptionKey {
            appid: "a".into(),
            openid: "o".into(),
            template_id: "t".into(),
        }
    }

    fn mutable() -> Mutable {
        let inner = Inner::new(SandboxConfig::default());
        inner.state.into_inner().unwrap()
    }

    #[test]
    fn one_time_grants_add_up_and_are_consumed() {
        let mut state = mutable();
        let kind = Some(TemplateKind::OneTime);
        state.subscribe(key(), kind, Grant::Accept { count: 1 });
        state.subscribe(key(), kind, Grant::Accept { count: 1 });
        assert!(state.consume_grant(&key(), TemplateKind::OneTime, false));
        assert!(state.consume_grant(&key(), TemplateKind::OneTime, false));
        assert!(!state.consume_grant(&key(), TemplateKind::OneTime, false));
        assert!(state.consume_grant(&key(), TemplateKind::OneTime, true));
    }

    #[test]
    fn long_term_grants_are_not_consumed_and_rejects_beat_auto_accept() {
        let mut state = mutable();
        let kind = Some(TemplateKind::LongTerm);
        state.subscribe(key(), kind, Grant::Accept { count: 1 });
        for _ in 0..5 {
            assert!(state.consume_grant(&key(), TemplateKind::LongTerm, false));
        }
        state.subscribe(key(), kind, Grant::Reject);
        assert!(!state.consume_grant(&key(), TemplateKind::LongTerm, true));
    }

    #[test]
    fn quotas_count_per_window() {
        let mut state = mutable();
        let config = SandboxConfig {
            daily_quota: Some(3),
            minute_limit: Some(2),
            ..SandboxConfig::default()
        };
        let at = |secs| Duration::from_secs(secs);
        assert!(state.use_quota(&config, "a", at(0)).is_ok());
        assert!(state.use_quota(&config, "a", at(1)).is_ok());
        assert!(matches!(
            state.use_quota(&config, "a", at(2)),
            Err(QuotaExceeded::Minute)
        ));
        assert!(state.use_quota(&config, "b", at(2)).is_ok());
        assert!(state.use_quota(&config, "a", at(61)).is_ok());
        assert!(matches!(
            state.use_quota(&config, "a", at(62)),
            Err(QuotaExceeded::Daily)
        ));
        assert!(state.use_quota(&config, "a", at(86_400)).is_ok());
    }

    #[test]
    fn quota_left_counts_down_and_refills_with_a_new_window() {
        let mut state = mutable();
        let config = SandboxConfig {
            daily_quota: Some(3),
            minute_limit: Some(2),
            ..SandboxConfig::default()
        };
        let at = |secs| Duration::from_secs(secs);
        let left = |state: &Mutable, secs| {
            let left = state.quota_left(&config, "a", at(secs));
            (left.daily, left.minute)
        };
        assert_eq!(left(&state, 0), (Some(3), Some(2)));
        assert!(state.use_quota(&config, "a", at(0)).is_ok());
        assert_eq!(left(&state, 1), (Some(2), Some(1)));
        assert_eq!(left(&state, 61), (Some(2), Some(2)));
        let no_quotas = SandboxConfig::default();
        let unlimited = state.quota_left(&no_quotas, "a", at(0));
        assert_eq!((unlimited.daily, unlimited.minute), (None, None));
    }

    #[test]
    fn msgids_are_above_2_pow_53() {
        let mut state = mutable();
        let first = state.next_msgid();
        assert!(first > 1 << 53);
        assert!(first < i64::MAX as u64);
        assert_eq!(state.next_msgid(), first + 1);
    }
}
