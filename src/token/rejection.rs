//! What the cache does when WeChat rejects its token (40001, 42001, 40014 on a send or a
//! template list): the rule in the parent module's docs, kept apart from the hot path and the
//! renewals. It reads and changes the cache's private state, so it is a child module.

use std::sync::{Arc, atomic::Ordering};

use tokio::time::{Duration, Instant};
use tracing::{debug, warn};

use super::{
    ForceBudget, RefreshState, RejectionTurn, RejectionWait, SHARED_FETCH_WAIT, TokenCache,
};
use crate::{
    secret::Secret,
    telemetry::catalog::{self, TokenRejection},
    wechat::{TokenMode, WechatError},
};

/// Token values whose rejection fetch is remembered at most (a handful: within one
/// [`force_refresh_interval`](super::TokenOptions::force_refresh_interval) only a few tokens
/// can have been issued).
const REJECTION_FETCHES_REMEMBERED: usize = 8;
/// Claims of one rejection's fetch a caller makes at most: its own, and one more after another
/// replica abandoned the fetch.
const MAX_REJECTION_CLAIMS: u32 = 2;

/// The window of the force-refresh daily limit (rolling, stricter than a calendar day).
const FORCE_REFRESH_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// What [`TokenCache::reject`] did about one rejection; the caller retries its message once with
/// [`TokenCache::get`] in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionAction {
    /// The app now has a different token: WeChat handed out a new one on a normal fetch, another
    /// replica stored one, or a concurrent rejection or renewal already replaced it.
    Refreshed,
    /// WeChat handed back the rejected token and a `force_refresh` revoked it for a new one.
    ForceRefreshed,
    /// The rejected token stays the app's token: WeChat handed it back and no `force_refresh`
    /// was allowed (or it handed it back again), or this token already had its rejection fetch
    /// within the last [`force_refresh_interval`](super::TokenOptions::force_refresh_interval),
    /// so no fetch was made.
    Kept,
}

impl RejectionAction {
    /// The `action` of logs and of `wechat_notify_token_rejections_total`.
    pub fn label(self) -> &'static str {
        TokenRejection::from(self).label()
    }
}

impl From<RejectionAction> for TokenRejection {
    fn from(action: RejectionAction) -> Self {
        match action {
            RejectionAction::Refreshed => TokenRejection::Refreshed,
            RejectionAction::ForceRefreshed => TokenRejection::ForceRefreshed,
            RejectionAction::Kept => TokenRejection::Kept,
        }
    }
}

impl TokenCache {
    /// WeChat rejected `rejected` with `errcode` (40001, 42001 or 40014) on a send or a template
    /// list: handles it as the module docs say and counts it in metrics. The
    /// caller then retries once with [`TokenCache::get`]. An error means the fetch it needed
    /// failed (the token endpoint's own answer, carrying `endpoint: Token`); the rejected token is
    /// kept installed then too, so other callers go on as before.
    pub async fn reject(
        &self,
        rejected: &Secret,
        errcode: i32,
    ) -> Result<RejectionAction, WechatError> {
        let result = {
            let mut state = self.refresh.lock().await;
            let result = self.reject_locked(&mut state, rejected).await;
            if let Err(error) = &result {
                // Waiters on an empty cache share this outcome instead of repeating the fetch.
                state.last_error = Some(error.clone());
                self.refreshes_done.fetch_add(1, Ordering::Release);
            }
            result
        };
        let action = result
            .as_ref()
            .map_or(RejectionAction::Kept, |action| *action);
        catalog::count_token_rejection(&self.app, errcode, action.into());
        match &result {
            Ok(action) => {
                warn!(app = %self.app, errcode, action = action.label(), "wechat rejected the access token")
            }
            Err(error) => {
                warn!(app = %self.app, errcode, %error, "wechat rejected the access token and fetching another failed; keeping it")
            }
        }
        result
    }

    /// [`TokenCache::reject`] with the single-flight mutex held.
    async fn reject_locked(
        &self,
        state: &mut RefreshState,
        rejected: &Secret,
    ) -> Result<RejectionAction, WechatError> {
        let current = self.current.load_full();
        if let Some(cached) = &current
            && cached.token() != rejected
        {
            debug!(app = %self.app, "the rejected token was already replaced");
            return Ok(RejectionAction::Refreshed);
        }
        let now = Instant::now();
        let interval = self.options.force_refresh_interval;
        state
            .rejection_fetches
            .retain(|(_, at)| now.duration_since(*at) < interval);
        if state
            .rejection_fetches
            .iter()
            .any(|(token, _)| token == rejected)
        {
            // Its one fetch per interval was made: WeChat stood by this token moments ago.
            return Ok(RejectionAction::Kept);
        }
        if let Some((until, error)) = &state.cooldown
            && now < *until
        {
            return Err(error.clone());
        }
        // Replicas sharing a store make one fetch for a token value between them; the others
        // take its outcome. Without the store, this process's memory alone applies.
        let mut claims = 0;
        let claimed = loop {
            claims += 1;
            match self.store.claim_rejection(rejected, interval).await {
                Ok(RejectionTurn::Another) => {
                    match self.rejection_fetched_elsewhere(rejected).await {
                        Some(action) => return Ok(action),
                        // Its replica is gone: claim the fetch again (once more at most, so a
                        // caller waits for two lapsed claims at the very worst).
                        None if claims < MAX_REJECTION_CLAIMS => {}
                        None => return Ok(RejectionAction::Kept),
                    }
                }
                Ok(turn) => break turn == RejectionTurn::Mine,
                Err(error) => {
                    warn!(app = %self.app, %error, "token store unavailable; only this replica's rejection fetches are known");
                    break false;
                }
            }
        };
        if state.rejection_fetches.len() == REJECTION_FETCHES_REMEMBERED {
            state.rejection_fetches.pop_front();
        }
        state.rejection_fetches.push_back((rejected.clone(), now));

        // Compare-and-invalidate: callers arriving meanwhile wait for this one fetch instead of
        // sending with a token WeChat just rejected.
        if let Some(cached) = &current {
            self.current.compare_and_swap(&current, None);
            if let Err(error) = self.store.invalidate_if(cached.token()).await {
                warn!(app = %self.app, %error, "could not drop the rejected token from the store");
            }
        }
        let result = self.fetch_after_rejection(state, rejected).await;
        if result.is_err()
            && let Some(cached) = current
            && self.current.load().is_none()
        {
            // No answer worth acting on: the rejected token is still the best the app has.
            if let Err(error) = self.store.save(&cached.stored).await {
                warn!(app = %self.app, %error, "could not save the token to the store; keeping it in-process");
            }
            self.install(cached);
        }
        if claimed {
            self.store.end_rejection(rejected, interval).await;
        }
        result
    }

    /// Another replica makes the one fetch for `rejected`: waits for its outcome (woken through
    /// the store, for at most [`SHARED_FETCH_WAIT`]) and installs the token it stored, or keeps
    /// this one when that is still `rejected` (WeChat stood by it). `None` when that replica
    /// abandoned the fetch (its claim lapsed, nothing stored): the fetch is to be claimed again.
    async fn rejection_fetched_elsewhere(&self, rejected: &Secret) -> Option<RejectionAction> {
        let deadline = Instant::now() + SHARED_FETCH_WAIT;
        let mut wait = RejectionWait::Running;
        loop {
            if let Some(cached) = self.stored_token(&|token| token != rejected).await {
                debug!(app = %self.app, "using the token another replica fetched after the rejection");
                self.install(Arc::new(cached));
                return Some(RejectionAction::Refreshed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match wait {
                RejectionWait::Abandoned => {
                    warn!(app = %self.app, "another replica's fetch after a rejection was abandoned; claiming it");
                    return None;
                }
                RejectionWait::Ended => return Some(RejectionAction::Kept),
                RejectionWait::Running if left.is_zero() => return Some(RejectionAction::Kept),
                RejectionWait::Running => {}
            }
            wait = self.store.wait_for_rejection(rejected, left).await;
        }
    }

    /// The fetch after a rejection of `rejected`, installing what it yields.
    async fn fetch_after_rejection(
        &self,
        state: &mut RefreshState,
        rejected: &Secret,
    ) -> Result<RejectionAction, WechatError> {
        // Another replica (sharing the store) may have replaced it already, or be fetching.
        if let Some(cached) = self.fetch_turn(&|token| token != rejected).await {
            debug!(app = %self.app, "using the token another replica stored");
            self.install(Arc::new(cached));
            return Ok(RejectionAction::Refreshed);
        }
        let result = self.fetch_here_after_rejection(state, rejected).await;
        self.store.end_fetch().await;
        result
    }

    /// [`Self::fetch_after_rejection`] when it is this replica's turn to fetch.
    async fn fetch_here_after_rejection(
        &self,
        state: &mut RefreshState,
        rejected: &Secret,
    ) -> Result<RejectionAction, WechatError> {
        let (started, fetched) = match self.fetch_with_retries().await {
            Ok(fetched) => fetched,
            Err(error) => {
                self.start_cooldown_if_needed(state, &error);
                return Err(error);
            }
        };
        if fetched.token != *rejected {
            self.save_and_install(started, fetched).await;
            return Ok(RejectionAction::Refreshed);
        }
        let wait = match self.source.mode() {
            // Classic fetches issue a new token each time; there is nothing to force.
            TokenMode::Classic => None,
            TokenMode::Stable => Some(self.force_wait_shared(state).await),
        };
        let forced = match wait {
            None => None,
            Some(Some(wait)) => {
                debug!(app = %self.app, wait_secs = wait.as_secs(), "wechat handed back the rejected token; no force refresh allowed yet, keeping it");
                None
            }
            Some(None) => {
                state.forced_at.push_back(Instant::now());
                warn!(app = %self.app, forced_today = state.forced_at.len(), "wechat handed back the rejected token; forcing a refresh");
                let started = Instant::now();
                match self.fetch_once(true).await {
                    Ok(forced) if forced.token != *rejected => Some((started, forced)),
                    Ok(_) => None,
                    Err(error) => {
                        warn!(app = %self.app, %error, "force refresh failed; keeping the token wechat handed back");
                        self.start_cooldown_if_needed(state, &error);
                        None
                    }
                }
            }
        };
        match forced {
            Some((started, forced)) => {
                self.save_and_install(started, forced).await;
                Ok(RejectionAction::ForceRefreshed)
            }
            None => {
                // WeChat's token endpoint says this is the app's token: keep it, with the
                // lifetime it just gave.
                self.save_and_install(started, fetched).await;
                Ok(RejectionAction::Kept)
            }
        }
    }

    /// [`Self::force_wait`], by the store's budget when it keeps one (replicas sharing it then
    /// share the budget; a granted force is counted there at once).
    async fn force_wait_shared(&self, state: &mut RefreshState) -> Option<Duration> {
        let claimed = self
            .store
            .claim_force_refresh(
                self.options.force_refresh_interval,
                self.options.force_refresh_daily_limit,
            )
            .await;
        match claimed {
            Ok(ForceBudget::Granted) => None,
            Ok(ForceBudget::Wait(wait)) => Some(wait),
            Ok(ForceBudget::Local) => self.force_wait(state, Instant::now()),
            Err(error) => {
                warn!(app = %self.app, %error, "token store unavailable; using this replica's force-refresh budget");
                self.force_wait(state, Instant::now())
            }
        }
    }

    /// How long until a `force_refresh` is allowed, or `None` when it is now.
    fn force_wait(&self, state: &mut RefreshState, now: Instant) -> Option<Duration> {
        while let Some(first) = state.forced_at.front()
            && now.duration_since(*first) >= FORCE_REFRESH_WINDOW
        {
            state.forced_at.pop_front();
        }
        match (state.forced_at.front(), state.forced_at.back()) {
            (_, Some(last)) if now.duration_since(*last) < self.options.force_refresh_interval => {
                Some(self.options.force_refresh_interval - now.duration_since(*last))
            }
            (Some(first), _) if state.forced_at.len() >= self.options.force_refresh_daily_limit => {
                Some(FORCE_REFRESH_WINDOW - now.duration_since(*first))
            }
            _ => None,
        }
    }
}
