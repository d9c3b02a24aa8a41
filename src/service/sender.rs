//! One configured app: its WeChat API handle, token cache and limits, and the delivery loop.
//! A send is retried only as `WechatError::retry` says (a busy answer, one token rejection),
//! waiting by `crate::retry`'s one backoff; a 45011 or 45009 pauses or stops the app until its
//! quota window ends on the app's [`QuotaClock`].

use std::{
    num::NonZeroU32,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::error::{ErrorKind, NotStarted, SendError};
use crate::{
    idempotency::Record,
    retry::{Backoff, QuotaClock},
    service::CallerRef,
    store::limits::{Admit, SharedLimits},
    subscriptions::SubscriptionCheck,
    telemetry::catalog::{MessageCounters, Outcome},
    templates::TemplateCache,
    token::TokenCache,
    wechat::{Retry, SubscribeMessage, WechatApi},
};

/// Retries after errcode -1 (system busy), on top of the first attempt.
const BUSY_RETRIES: u32 = 3;
/// The waits before them: at most 200, 400 and 800 ms, at least half of each.
const BUSY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
/// How long a SendSubscribe may wait for the app's limits when the caller set no deadline.
pub(crate) const SEND_ADMISSION_WAIT: Duration = Duration::from_secs(30);
/// How long one BatchSend recipient may wait for the app's limits when the caller set no
/// deadline: long enough to sit out a 45011 pause until the next minute.
pub(crate) const BATCH_ADMISSION_WAIT: Duration = Duration::from_secs(120);

/// When a send may start: not after the caller's deadline (or, in a batch, its cancellation or
/// a 45009), and not after waiting `wait_limit` for the app's limits.
#[derive(Clone, Debug)]
pub(crate) struct Admission {
    /// The caller's deadline, if it set one.
    pub caller_deadline: Option<Instant>,
    /// The latest instant a send may start.
    pub wait_limit: Instant,
    /// What the sends of one batch share; `None` for a SendSubscribe, whose one send runs to
    /// completion once started and has nobody to share a 45009 with.
    pub batch: Option<BatchStop>,
}

/// Stops every send of one batch that has not started yet.
#[derive(Clone, Debug)]
pub(crate) struct BatchStop {
    /// Cancelled when the caller goes away.
    pub cancel: CancellationToken,
    /// Set when WeChat answers 45009 (daily quota) to any send of the batch, so none starts
    /// after the first 45009, not even one that was already waiting for the limits or backing
    /// off.
    pub daily_quota_exhausted: Arc<AtomicBool>,
}

impl Admission {
    /// Admission for a call with the caller's `deadline`, waiting at most `max_wait` otherwise.
    pub(crate) fn new(caller_deadline: Option<Instant>, max_wait: Duration) -> Self {
        let bounded = Instant::now() + max_wait;
        Self {
            caller_deadline,
            wait_limit: caller_deadline.map_or(bounded, |deadline| deadline.min(bounded)),
            batch: None,
        }
    }

    /// The same admission for one send of a batch.
    pub(crate) fn in_batch(self, batch: BatchStop) -> Self {
        Self {
            batch: Some(batch),
            ..self
        }
    }

    /// Why no new send may start now, if one may not.
    pub(crate) fn stopped(&self) -> Option<NotStarted> {
        if self
            .batch
            .as_ref()
            .is_some_and(|batch| batch.cancel.is_cancelled())
        {
            Some(NotStarted::Cancelled)
        } else if self
            .caller_deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            Some(NotStarted::DeadlineExceeded)
        } else if self
            .batch
            .as_ref()
            .is_some_and(|batch| batch.daily_quota_exhausted.load(Ordering::Relaxed))
        {
            Some(NotStarted::DailyQuotaExhausted)
        } else {
            None
        }
    }
}

/// One configured app's send path (admission, rate, pauses, tokens, templates), shared by every RPC.
pub struct AppSender {
    /// The configured name (metric label, logs).
    pub name: String,
    /// The AppID.
    pub appid: String,
    /// What sends do with the subscription ledger.
    pub subscription_check: SubscriptionCheck,
    /// Concurrent upstream sends at most.
    pub max_in_flight: usize,
    api: WechatApi,
    tokens: Arc<TokenCache>,
    in_flight: Arc<Semaphore>,
    rate: DefaultDirectRateLimiter,
    /// Set on 45011 (per-minute limit): no send starts before this instant.
    paused_until: Mutex<Option<Instant>>,
    /// The rate, pause and stop shared with other replicas (instead of `rate`), with Redis.
    shared: Option<SharedLimits>,
    /// With shared limits, set on 45009 (daily quota): no send starts before this instant.
    stopped_until: Mutex<Option<Instant>>,
    /// The app's template list; `None` when template checks are off.
    templates: Option<Arc<TemplateCache>>,
    /// Where WeChat's quota windows (the 45011 minute, the 45009 day) end.
    quota_clock: QuotaClock,
    /// `wechat_notify_messages_total{app, outcome, caller}` handles for `anonymous`, made on
    /// first use (after the recorder is installed) so a message costs no registry lookup or
    /// label allocation.
    messages: OnceLock<MessageCounters>,
    /// The same per configured caller, by [`CallerRef::index`].
    caller_messages: Box<[OnceLock<MessageCounters>]>,
}

impl AppSender {
    /// An app sending through `api` with tokens from `tokens`.
    pub fn new(
        name: String,
        api: WechatApi,
        tokens: Arc<TokenCache>,
        max_in_flight: usize,
        rate_per_sec: u32,
    ) -> Self {
        let rate = NonZeroU32::new(rate_per_sec).unwrap_or(NonZeroU32::MIN);
        Self {
            name,
            appid: api.appid().to_owned(),
            subscription_check: SubscriptionCheck::default(),
            max_in_flight,
            api,
            tokens,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            // `per_second` allows bursts of one second's worth, as the interface promises.
            rate: RateLimiter::direct(Quota::per_second(rate)),
            paused_until: Mutex::new(None),
            shared: None,
            stopped_until: Mutex::new(None),
            templates: None,
            quota_clock: QuotaClock::system(),
            messages: OnceLock::new(),
            caller_messages: Box::new([]),
        }
    }

    /// The same app, counting messages of `callers` configured callers under their names.
    pub fn with_callers(mut self, callers: usize) -> Self {
        self.caller_messages = (0..callers).map(|_| OnceLock::new()).collect();
        self
    }

    /// Counts one message of this app sent for `caller` with `outcome`.
    pub(crate) fn count_message(&self, caller: Option<&CallerRef>, outcome: Outcome) {
        let counters = match caller
            .and_then(|caller| Some((caller, self.caller_messages.get(caller.index)?)))
        {
            Some((caller, slot)) => {
                slot.get_or_init(|| MessageCounters::new(&self.name, &caller.name))
            }
            None => self
                .messages
                .get_or_init(|| MessageCounters::new(&self.name, crate::config::ANONYMOUS)),
        };
        counters.count(outcome);
    }

    /// The same app, doing `check` with the subscription ledger on every send.
    pub fn with_subscription_check(mut self, check: SubscriptionCheck) -> Self {
        self.subscription_check = check;
        self
    }

    /// The same app, checking messages against its template list from `templates`.
    pub fn with_templates(mut self, templates: Arc<TemplateCache>) -> Self {
        self.templates = Some(templates);
        self
    }

    /// The same app, its `rate_per_sec`, 45011 pause and 45009 stop shared with every replica
    /// through `limits` (`max_in_flight` stays this replica's own).
    pub fn with_shared_limits(mut self, limits: SharedLimits) -> Self {
        self.shared = Some(limits);
        self
    }

    /// The same app, timing WeChat's quota windows by `clock` (the system clock by default).
    pub fn with_quota_clock(mut self, clock: QuotaClock) -> Self {
        self.quota_clock = clock;
        self
    }

    /// The clock the app's 45011 pauses and 45009 stops end by.
    pub fn quota_clock(&self) -> &QuotaClock {
        &self.quota_clock
    }

    /// The app's template cache, when template checks are on.
    pub fn templates(&self) -> Option<&Arc<TemplateCache>> {
        self.templates.as_ref()
    }

    /// Sends holding one of the app's `max_in_flight` slots now (waiting for a token or for
    /// WeChat's answer).
    pub fn sends_in_flight(&self) -> usize {
        self.max_in_flight
            .max(1)
            .saturating_sub(self.in_flight.available_permits())
    }

    /// The app's token cache.
    pub fn tokens(&self) -> &Arc<TokenCache> {
        &self.tokens
    }

    /// Delivers one message, retrying only where WeChat provably did not take it: errcode -1
    /// (with backoff) and one token rejection (after [`TokenCache::reject`] handled it). A
    /// connect failure is retried on the next API base inside the client. Everything else is
    /// final; a failure stopped by a quota says when the quota resets.
    pub(crate) async fn deliver(
        &self,
        message: &SubscribeMessage,
        admission: &Admission,
    ) -> Result<Record, SendError> {
        self.deliver_with_retries(message, admission)
            .await
            .map_err(|mut error| {
                error.quota_resets_at = self.quota_resets_at(&error.kind);
                error
            })
    }

    async fn deliver_with_retries(
        &self,
        message: &SubscribeMessage,
        admission: &Admission,
    ) -> Result<Record, SendError> {
        let mut attempts = 0;
        let mut token_retried = false;
        let mut busy_retries = 0;
        loop {
            let permit = self
                .admit(admission)
                .await
                .map_err(|kind| SendError::new(kind, attempts))?;
            let token = self
                .tokens
                .get()
                .await
                .map_err(|error| SendError::new(ErrorKind::Token(error), attempts))?;
            // Fetching the token can take a while: the caller may have gone in the meantime.
            if let Some(stopped) = admission.stopped() {
                return Err(SendError::new(ErrorKind::NotStarted(stopped), attempts));
            }
            let attempt = self.api.send(&token, message).await;
            attempts += attempt.requests;
            if let Err(error) = &attempt.result {
                error.count_errcode(&self.name);
            }
            let error = match attempt.result {
                Ok(delivered) => {
                    return Ok(Record {
                        msgid: delivered.msgid,
                        attempts,
                        touser: message.touser.clone(),
                        template_id: message.template_id.clone(),
                    });
                }
                Err(error) => error,
            };
            match error.retry() {
                Retry::NewToken if !token_retried => {
                    // One retry whatever the cache did (refreshed, forced, or kept the token
                    // because it already had its fetch); a second rejection is final and
                    // answered with its errcode.
                    token_retried = true;
                    let errcode = error.errcode().unwrap_or_default();
                    if let Err(fetch) = self.tokens.reject(&token, errcode).await {
                        return Err(SendError::new(ErrorKind::Token(fetch), attempts));
                    }
                }
                Retry::Backoff if busy_retries < BUSY_RETRIES => {
                    busy_retries += 1;
                    let backoff = BUSY_BACKOFF.delay(busy_retries);
                    if Instant::now() + backoff >= admission.wait_limit {
                        return Err(SendError::new(ErrorKind::Upstream(error), attempts));
                    }
                    tracing::debug!(app = %self.name, attempt = attempts, "wechat busy, backing off");
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                }
                Retry::NextMinute => {
                    let resume = self.quota_clock.next_minute();
                    self.pause_until(resume);
                    if let Some(shared) = &self.shared {
                        shared
                            .pause(resume.saturating_duration_since(Instant::now()))
                            .await;
                    }
                    return Err(SendError::new(ErrorKind::Upstream(error), attempts));
                }
                Retry::NextQuotaDay => {
                    if let Some(batch) = &admission.batch {
                        batch.daily_quota_exhausted.store(true, Ordering::Relaxed);
                    }
                    if let Some(shared) = &self.shared {
                        let resume = self.quota_clock.quota_day_end();
                        until(&self.stopped_until, resume);
                        shared
                            .stop(resume.saturating_duration_since(Instant::now()))
                            .await;
                    }
                    return Err(SendError::new(ErrorKind::Upstream(error), attempts));
                }
                _ => return Err(SendError::new(ErrorKind::Upstream(error), attempts)),
            }
        }
    }

    /// Waits for the app's limits (a 45011 pause, the in-flight bound, the rate), but not past
    /// the admission's wait limit, and not once the caller is gone.
    ///
    /// The in-flight permit is taken before the rate token, so a send starts as soon as its
    /// token is granted: callers queued behind a slow WeChat cannot bank tokens and then all go
    /// at once when it recovers. The pause is checked again once admitted, because a 45011 may
    /// have arrived while this send waited.
    async fn admit(&self, admission: &Admission) -> Result<OwnedSemaphorePermit, ErrorKind> {
        if let Some(stopped) = admission.stopped() {
            return Err(ErrorKind::NotStarted(stopped));
        }
        let limits = async {
            loop {
                if let Some(until) = self.paused() {
                    if until > admission.wait_limit {
                        return Err(ErrorKind::Throttled {
                            reason: "wechat's per-minute limit (45011) was hit; sends resume next minute",
                            retry_after: Some(until - Instant::now()),
                        });
                    }
                    tokio::time::sleep_until(until).await;
                }
                if active(&self.stopped_until).is_some() {
                    return Err(ErrorKind::NotStarted(NotStarted::DailyQuotaStopped));
                }
                let permit = self.in_flight.clone().acquire_owned().await;
                match &self.shared {
                    None => self.rate.until_ready().await,
                    Some(shared) => match shared.acquire().await {
                        Admit::Granted => {}
                        // Met by another replica: mirrored here, so the next sends need not ask.
                        Admit::Paused(pause) => {
                            self.pause_until(Instant::now() + pause);
                            continue;
                        }
                        Admit::Stopped(stop) => {
                            until(&self.stopped_until, Instant::now() + stop);
                            return Err(ErrorKind::NotStarted(NotStarted::DailyQuotaStopped));
                        }
                    },
                }
                if self.paused().is_none() {
                    return Ok(permit);
                }
            }
        };
        let limits = tokio::time::timeout_at(admission.wait_limit, limits);
        let admitted = match &admission.batch {
            // Limits first: when they admit at once, nothing registers with the token.
            Some(batch) => tokio::select! {
                biased;
                admitted = limits => admitted,
                () = batch.cancel.cancelled() => return Err(ErrorKind::NotStarted(NotStarted::Cancelled)),
            },
            None => limits.await,
        };
        match admitted {
            Ok(Ok(Ok(permit))) => match admission.stopped() {
                // Stopped while waiting (a 45009 elsewhere in the batch, the deadline).
                Some(stopped) => Err(ErrorKind::NotStarted(stopped)),
                None => Ok(permit),
            },
            Ok(Err(paused)) => Err(paused),
            // The semaphore is never closed; a timeout means the limits did not admit in time.
            Ok(Ok(Err(_))) | Err(_) => Err(admission
                .stopped()
                .map(ErrorKind::NotStarted)
                .unwrap_or(ErrorKind::Throttled {
                    reason: "the app's rate limit could not admit the send in time",
                    retry_after: Some(Duration::from_secs(1)),
                })),
        }
    }

    /// When the quota that stopped a send with `kind` resets, if one did.
    fn quota_resets_at(&self, kind: &ErrorKind) -> Option<Instant> {
        match kind {
            ErrorKind::NotStarted(
                NotStarted::DailyQuotaExhausted | NotStarted::DailyQuotaStopped,
            ) => Some(self.quota_clock.quota_day_end()),
            ErrorKind::Token(error) | ErrorKind::Upstream(error) => match error.retry() {
                Retry::NextMinute => Some(self.quota_clock.next_minute()),
                Retry::NextQuotaDay => Some(self.quota_clock.quota_day_end()),
                _ => None,
            },
            _ => None,
        }
    }

    fn paused(&self) -> Option<Instant> {
        active(&self.paused_until)
    }

    fn pause_until(&self, instant: Instant) {
        until(&self.paused_until, instant);
    }
}

/// The instant in `slot` if it is still ahead (clearing a past one).
fn active(slot: &Mutex<Option<Instant>>) -> Option<Instant> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    match *slot {
        Some(until) if until > Instant::now() => Some(until),
        Some(_) => {
            *slot = None;
            None
        }
        None => None,
    }
}

/// Moves the instant in `slot` to `instant` unless it is already later.
fn until(slot: &Mutex<Option<Instant>>, instant: Instant) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    *slot = Some(slot.map_or(instant, |current| current.max(instant)));
}

#[cfg(test)]
mod tests;
