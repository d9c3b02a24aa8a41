//! The shared per-app access-token cache.
//!
//! - **Hot path**: [`TokenCache::get`] is a lock-free `ArcSwap` load plus a time comparison.
//!   Only a miss takes the async refresh mutex (and checks again once it holds it), so any number
//!   of concurrent callers on an empty or expired cache cause exactly one fetch, and they all
//!   share its outcome, success or failure.
//! - **Lifetimes** count from the moment the fetch *started*. A token is handed out only while it
//!   has at least the safety margin left ([`TokenOptions::max_safety_margin`], capped at
//!   [`TokenOptions::safety_margin_fraction`] of its lifetime), and the background refresher
//!   renews it at [`TokenOptions::refresh_at_fraction`] of its lifetime, so in steady state no
//!   request ever waits for a fetch.
//! - **Rejections**: [`TokenCache::reject`] handles WeChat rejecting a token T (40001, 42001,
//!   40014) on a send or a template list. It drops T only if it is still the cached token
//!   (compare-and-invalidate) and runs one single-flight fetch: a different token is installed
//!   (a real revocation or rotation is followed at once); T handed back again is revoked with
//!   `force_refresh` only while the budget allows (one per
//!   [`TokenOptions::force_refresh_interval`], [`TokenOptions::force_refresh_daily_limit`] in any
//!   rolling 24 hours), and otherwise **kept**: the app is never left without a token while
//!   WeChat answers the token endpoint. Each token value gets at most one rejection fetch per
//!   [`TokenOptions::force_refresh_interval`]; a further rejection of it within that time is
//!   answered "kept" without a fetch, so a storm of rejections the token did not deserve (a stale
//!   edge node, one user's fault) never burns the token endpoint's quota. The caller retries its
//!   message once either way. Counted in `wechat_notify_token_rejections_total`.
//! - **Failures**: what `WechatError::retry` calls transient (-1 busy, no answer, a 5xx) is
//!   retried inside one fetch, waiting by [`TokenOptions::fetch_backoff`]. Any other errcode from
//!   the token endpoint (credentials, IP whitelist, quota) is remembered for
//!   [`TokenOptions::failure_cooldown`] and answered from memory, so a misconfigured app never
//!   hammers WeChat.
//!
//! - **Replicas** sharing a store (e.g. `crate::store::token`) fetch once for all: a refresh
//!   first uses a fresh token another replica stored, or takes the store's fetch lock, or waits
//!   for its holder ([`TokenStore::begin_fetch`]); the force-refresh budget is the store's
//!   when it keeps one ([`TokenStore::claim_force_refresh`]), and so is the one rejection fetch
//!   per token value ([`TokenStore::claim_rejection`]): the replica that claims it fetches, the
//!   others wait for its outcome. While the store cannot be asked, each process's own memory
//!   of its rejection fetches applies.
//!
//! Only `tokio::time` is used, so all of this is testable with paused time.

mod rejection;
mod store;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use tokio::{
    sync::{Mutex, Notify},
    time::{Duration, Instant},
};
use tracing::{debug, warn};

pub use self::{
    rejection::RejectionAction,
    store::{
        FetchTurn, ForceBudget, MemoryTokenStore, RejectionTurn, RejectionWait, StoredToken,
        TokenStore, TokenStoreError,
    },
};
use crate::{
    retry::Backoff,
    secret::Secret,
    telemetry::catalog::{self, TokenFetch},
    wechat::{FetchedToken, Retry, TokenMode, WechatApi, WechatError},
};

/// Longest a refresh waits for another replica's fetch (through a shared store) before it
/// fetches itself: a little more than the shared fetch lock's life.
const SHARED_FETCH_WAIT: Duration = Duration::from_secs(25);

/// Where tokens come from: WeChat (via [`WechatApi`]) in production, a fake in unit tests.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a token; `force_refresh` asks stable mode to revoke the current one.
    async fn fetch(&self, force_refresh: bool) -> Result<FetchedToken, WechatError>;
    /// The endpoint family in use.
    fn mode(&self) -> TokenMode;
}

#[async_trait]
impl TokenSource for WechatApi {
    async fn fetch(&self, force_refresh: bool) -> Result<FetchedToken, WechatError> {
        self.fetch_token(force_refresh).await
    }

    fn mode(&self) -> TokenMode {
        self.token_mode()
    }
}

/// Tuning of the cache. The defaults are the documented behaviour; tests shrink them.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// The background refresher renews a token once this fraction of its lifetime has passed
    /// (0.7, as linkerd does for its identity certificates: early enough that a few failed
    /// retries still leave a valid token, late enough not to waste fetches).
    pub refresh_at_fraction: f64,
    /// A token is handed out only while it has at least this long left (60 s: more than a
    /// request timeout plus clock skew, so a send never reaches WeChat with an expired token)...
    pub max_safety_margin: Duration,
    /// ...or this fraction of its lifetime, whichever is smaller (0.1: keeps very short
    /// lifetimes usable; a 5 s token gets 0.5 s).
    pub safety_margin_fraction: f64,
    /// Attempts per fetch on a transient failure: -1 (busy), no answer, a 5xx (3).
    pub fetch_attempts: u32,
    /// The waits between them (from at most 200 ms, doubling).
    pub fetch_backoff: Backoff,
    /// How long a non-retryable token-endpoint errcode (credentials, IP whitelist, quota) is
    /// answered from memory without calling WeChat (30 s: a fixed config comes back within
    /// half a minute, while a broken one costs WeChat at most 2 calls a minute).
    pub failure_cooldown: Duration,
    /// Least time between two `force_refresh` calls (30 s: WeChat ignores faster ones).
    pub force_refresh_interval: Duration,
    /// Most `force_refresh` calls in any rolling 24 hours (20: WeChat's daily limit).
    pub force_refresh_daily_limit: usize,
    /// The background refresher's waits after failed renewals in a row (from at most 1 s,
    /// doubling up to 60 s); also the least time between two renewals.
    pub background_retry: Backoff,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            refresh_at_fraction: 0.7,
            max_safety_margin: Duration::from_secs(60),
            safety_margin_fraction: 0.1,
            fetch_attempts: 3,
            fetch_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2)),
            failure_cooldown: Duration::from_secs(30),
            force_refresh_interval: Duration::from_secs(30),
            force_refresh_daily_limit: 20,
            background_retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

impl TokenOptions {
    /// The safety margin for a token of this lifetime.
    pub fn safety_margin(&self, lifetime: Duration) -> Duration {
        self.max_safety_margin
            .min(lifetime.mul_f64(self.safety_margin_fraction.clamp(0.0, 0.5)))
    }

    /// How long after the fetch started a token of this lifetime is due for renewal.
    pub fn refresh_after(&self, lifetime: Duration) -> Duration {
        lifetime.mul_f64(self.refresh_at_fraction.clamp(0.1, 0.9))
    }
}

/// The cached token with its deadlines precomputed, so the hot path is one comparison.
#[derive(Debug)]
struct CachedToken {
    stored: StoredToken,
    /// Handed out only before this.
    usable_until: Instant,
    /// The background refresher renews it from this point.
    refresh_at: Instant,
}

impl CachedToken {
    fn new(stored: StoredToken, options: &TokenOptions) -> Self {
        let usable_until = stored.expires_at() - options.safety_margin(stored.lifetime);
        // Never later than the usable limit, whatever the options say.
        let refresh_at =
            (stored.fetched_at + options.refresh_after(stored.lifetime)).min(usable_until);
        Self {
            stored,
            usable_until,
            refresh_at,
        }
    }

    fn token(&self) -> &Secret {
        &self.stored.token
    }
}

/// State of the refresh path, guarded by the single-flight mutex.
#[derive(Default)]
struct RefreshState {
    /// The outcome of the last refresh, shared with callers that waited for it.
    last_error: Option<WechatError>,
    /// A token-endpoint failure answered from memory until the instant.
    cooldown: Option<(Instant, WechatError)>,
    /// When `force_refresh` was used, within the rolling window.
    forced_at: VecDeque<Instant>,
    /// Token values that had a rejection fetch, and when: at most one per value per
    /// [`TokenOptions::force_refresh_interval`].
    rejection_fetches: VecDeque<(Secret, Instant)>,
}

/// One app's token cache. Shared by every RPC for that app.
pub struct TokenCache {
    /// The configured app name: the `app` label and log field.
    app: String,
    source: Arc<dyn TokenSource>,
    store: Arc<dyn TokenStore>,
    options: TokenOptions,
    /// The hot path reads only this.
    current: ArcSwapOption<CachedToken>,
    /// Single flight: held for the duration of a refresh.
    refresh: Mutex<RefreshState>,
    /// Refreshes completed (either way), so callers that waited on the mutex can tell that a
    /// refresh ran while they waited and share its failure instead of repeating it.
    refreshes_done: AtomicU64,
    /// Wakes the refresher when a token is installed or the cache is dropped.
    wake_refresher: Arc<Notify>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("app", &self.app)
            .field("mode", &self.source.mode())
            .field("time_to_expiry", &self.time_to_expiry())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// Builds the cache for `app` (its configured name, used in logs and metric labels).
    pub fn new(app: &str, source: Arc<dyn TokenSource>, options: TokenOptions) -> Arc<Self> {
        Self::with_store(app, source, Arc::new(MemoryTokenStore::new()), options)
    }

    /// Like [`TokenCache::new`], keeping tokens in `store` (e.g. one shared by replicas).
    pub fn with_store(
        app: &str,
        source: Arc<dyn TokenSource>,
        store: Arc<dyn TokenStore>,
        options: TokenOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            app: app.to_string(),
            source,
            store,
            options,
            current: ArcSwapOption::empty(),
            refresh: Mutex::new(RefreshState::default()),
            refreshes_done: AtomicU64::new(0),
            wake_refresher: Arc::new(Notify::new()),
        })
    }

    /// The app name given to [`TokenCache::new`].
    pub fn app(&self) -> &str {
        &self.app
    }

    /// A token valid for at least the safety margin. Lock-free while the cached token is usable;
    /// otherwise waits for the single in-flight fetch (or starts it). A failure carries
    /// `endpoint: Token`.
    pub async fn get(&self) -> Result<Secret, WechatError> {
        if let Some(token) = self.usable_token(Instant::now()) {
            return Ok(token);
        }
        let seen = self.refreshes_done.load(Ordering::Acquire);
        let mut state = self.refresh.lock().await;
        if let Some(token) = self.usable_token(Instant::now()) {
            return Ok(token);
        }
        if self.refreshes_done.load(Ordering::Acquire) != seen
            && let Some(error) = &state.last_error
        {
            // A fetch ran and failed while we waited: share its outcome rather than repeat it.
            return Err(error.clone());
        }
        self.refresh_locked(&mut state)
            .await
            .map(|cached| cached.token().clone())
    }

    /// Time left before the cached token expires, if one is cached.
    pub fn time_to_expiry(&self) -> Option<Duration> {
        self.current
            .load()
            .as_ref()
            .map(|cached| cached.stored.remaining(Instant::now()))
    }

    /// Starts the background refresher (renews before expiry); it stops when the cache is dropped
    /// or the handle is aborted. It fetches at once if the cache is empty.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_refresher(
            Arc::downgrade(self),
            self.wake_refresher.clone(),
        ))
    }

    fn usable_token(&self, now: Instant) -> Option<Secret> {
        match self.current.load().as_deref() {
            Some(cached) if now < cached.usable_until => Some(cached.token().clone()),
            _ => None,
        }
    }

    /// One background renewal, unless another caller renewed the token meanwhile.
    async fn refresh_in_background(&self) -> Result<(), WechatError> {
        let mut state = self.refresh.lock().await;
        if let Some(cached) = self.current.load().as_deref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(());
        }
        self.refresh_locked(&mut state).await.map(drop)
    }

    /// Refreshes with the single-flight mutex held and records the outcome for the waiters.
    async fn refresh_locked(
        &self,
        state: &mut RefreshState,
    ) -> Result<Arc<CachedToken>, WechatError> {
        let result = self.refresh_with(state).await;
        state.last_error = result.as_ref().err().cloned();
        self.refreshes_done.fetch_add(1, Ordering::Release);
        result
    }

    async fn refresh_with(
        &self,
        state: &mut RefreshState,
    ) -> Result<Arc<CachedToken>, WechatError> {
        let now = Instant::now();
        if let Some((until, error)) = &state.cooldown {
            if now < *until {
                return Err(error.clone());
            }
            state.cooldown = None;
        }

        // Another replica (sharing the store) may have renewed it already, or be renewing it.
        if let Some(cached) = self.fetch_turn(&|_| true).await {
            debug!(app = %self.app, "using the token from the store");
            return Ok(self.install(Arc::new(cached)));
        }
        let fetched = match self.fetch_with_retries().await {
            Ok((started, fetched)) => Ok(self.save_and_install(started, fetched).await),
            Err(error) => {
                self.start_cooldown_if_needed(state, &error);
                Err(error)
            }
        };
        self.store.end_fetch().await;
        fetched
    }

    /// A fresh token in the store that `accept` takes (one another replica stored), or `None`
    /// when it is this replica's turn to fetch: then the store's fetch lock (if it has one) is
    /// held, to be released with [`TokenStore::end_fetch`]. While another replica holds the lock
    /// this waits for its token (woken by the store), for at most [`SHARED_FETCH_WAIT`].
    async fn fetch_turn(
        &self,
        accept: &(dyn Fn(&Secret) -> bool + Send + Sync),
    ) -> Option<CachedToken> {
        let waiting_since = Instant::now();
        loop {
            if let Some(cached) = self.stored_token(accept).await {
                return Some(cached);
            }
            match self.store.begin_fetch().await {
                Ok(FetchTurn::Mine) => break,
                Ok(FetchTurn::Another) if waiting_since.elapsed() < SHARED_FETCH_WAIT => {
                    self.store.wait_for_fetch(SHARED_FETCH_WAIT).await;
                }
                Ok(FetchTurn::Another) => {
                    warn!(app = %self.app, "another replica's token fetch is taking long; fetching here");
                    break;
                }
                Err(error) => {
                    warn!(app = %self.app, %error, "token store unavailable; fetching from wechat");
                    break;
                }
            }
        }
        // A token stored between the look above and taking the lock.
        let cached = self.stored_token(accept).await;
        if cached.is_some() {
            self.store.end_fetch().await;
        }
        cached
    }

    /// The stored token if `accept` takes it and it is before its refresh point.
    async fn stored_token(
        &self,
        accept: &(dyn Fn(&Secret) -> bool + Send + Sync),
    ) -> Option<CachedToken> {
        match self.store.load().await {
            Ok(Some(stored)) if accept(&stored.token) => {
                let cached = CachedToken::new(stored, &self.options);
                (Instant::now() < cached.refresh_at).then_some(cached)
            }
            Ok(_) => None,
            Err(error) => {
                debug!(app = %self.app, %error, "token store unavailable");
                None
            }
        }
    }

    /// One fetch with retries of the transient failures.
    async fn fetch_with_retries(&self) -> Result<(Instant, FetchedToken), WechatError> {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            match self.fetch_once(false).await {
                Ok(fetched) => return Ok((started, fetched)),
                Err(error)
                    if attempt < self.options.fetch_attempts && error.retry() == Retry::Backoff =>
                {
                    let delay = self.options.fetch_backoff.delay(attempt);
                    warn!(app = %self.app, attempt, %error, delay_ms = delay.as_millis() as u64, "token fetch failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => {
                    warn!(app = %self.app, attempt, %error, "token fetch failed");
                    return Err(error);
                }
            }
        }
    }

    /// One call to WeChat, counted (and its errcode, if it answered one).
    async fn fetch_once(&self, force_refresh: bool) -> Result<FetchedToken, WechatError> {
        let result = self.source.fetch(force_refresh).await;
        match &result {
            Ok(_) => catalog::count_token_fetch(&self.app, TokenFetch::Ok),
            Err(error) => {
                catalog::count_token_fetch(&self.app, TokenFetch::Failed);
                error.count_errcode(&self.app);
            }
        }
        result
    }

    /// Remembers an errcode that retrying cannot fix (credentials, IP whitelist, quota).
    fn start_cooldown_if_needed(&self, state: &mut RefreshState, error: &WechatError) {
        let remembered = error.errcode().is_some() && error.retry() != Retry::Backoff;
        if remembered {
            warn!(app = %self.app, errcode = error.errcode(), cooldown_secs = self.options.failure_cooldown.as_secs(), "token endpoint refused; not calling it again until the cooldown passes");
            self.cool_down(
                state,
                Instant::now(),
                self.options.failure_cooldown,
                error.clone(),
            );
        }
    }

    fn cool_down(
        &self,
        state: &mut RefreshState,
        now: Instant,
        duration: Duration,
        error: WechatError,
    ) -> WechatError {
        state.cooldown = Some((now + duration, error.clone()));
        error
    }

    async fn save_and_install(&self, started: Instant, fetched: FetchedToken) -> Arc<CachedToken> {
        let stored = StoredToken {
            token: fetched.token,
            fetched_at: started,
            lifetime: fetched.expires_in,
        };
        if let Err(error) = self.store.save(&stored).await {
            warn!(app = %self.app, %error, "could not save the token to the store; keeping it in-process");
        }
        self.install(Arc::new(CachedToken::new(stored, &self.options)))
    }

    fn install(&self, cached: Arc<CachedToken>) -> Arc<CachedToken> {
        let lifetime = cached.stored.lifetime;
        catalog::set_token_expires_in(&self.app, lifetime);
        self.current.store(Some(cached.clone()));
        self.wake_refresher.notify_one();
        debug!(app = %self.app, expires_in_secs = lifetime.as_secs(), "access token cached");
        cached
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        // Lets a sleeping refresher notice at once that the cache is gone.
        self.wake_refresher.notify_one();
    }
}

/// Renews the token at its refresh point; on failure keeps the current token and retries with
/// backoff. Holds the cache only while working, never while sleeping.
async fn run_refresher(cache: Weak<TokenCache>, wake: Arc<Notify>) {
    let mut failures: u32 = 0;
    loop {
        let next_wake = {
            let Some(cache) = cache.upgrade() else {
                debug!("token cache dropped; refresher stopping");
                return;
            };
            let now = Instant::now();
            let refresh_at = cache
                .current
                .load()
                .as_deref()
                .map(|cached| cached.refresh_at);
            match refresh_at {
                Some(refresh_at) if now < refresh_at => refresh_at,
                _ => match cache.refresh_in_background().await {
                    Ok(()) => {
                        failures = 0;
                        let refresh_at = cache
                            .current
                            .load()
                            .as_deref()
                            .map(|cached| cached.refresh_at);
                        // At least the minimum retry delay apart, even for absurdly short lifetimes.
                        let earliest = Instant::now() + cache.options.background_retry.base;
                        refresh_at.map_or(earliest, |at| at.max(earliest))
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let delay = cache.options.background_retry.delay(failures);
                        let keeping = cache.usable_token(Instant::now()).is_some();
                        warn!(app = %cache.app, %error, failures, retry_in_ms = delay.as_millis() as u64, keeping_current_token = keeping, "background token refresh failed");
                        Instant::now() + delay
                    }
                },
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next_wake) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests;
