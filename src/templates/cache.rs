//! The per-app template cache: the app's template list (`gettemplate`), so a send can be
//! checked against its template before anything goes to WeChat.
//!
//! - **Hot path**: a template in the current list is one lock-free `ArcSwap` load away; only
//!   a miss takes the state lock.
//! - **Lazy**: nothing is fetched until the app's first send asks, and that send waits for
//!   the list for at most [`TemplateOptions::max_wait`] (or its own deadline).
//! - **Single flight**: one load at a time per app, run on a task of its own, so a send that
//!   stops waiting does not cancel it and every waiter shares its outcome.
//! - **Fresh**: a background refresher reloads every [`TemplateOptions::refresh_interval`];
//!   a template id missing from the list triggers a reload too, at most once per
//!   [`TemplateOptions::miss_refresh_interval`], so a template just added in WeChat's console
//!   is picked up by its first send.
//! - **Fail open**: when no list can be had (no token, an errcode such as 48001, no answer),
//!   [`Lookup::Unavailable`] says to send unchecked. The first failure of a streak is logged as
//!   a warning; failed loads are tried again after [`TemplateOptions::retry`]'s backoff, and no
//!   send waits for a load before then. Every failure is tried again (the list is a read, and
//!   it is reloaded in the background anyway): the backoff only paces it.
//! - **Tokens** come from the app's [`TokenCache`]; a token WeChat rejects here
//!   (`Retry::NewToken`) is reported to [`TokenCache::reject`] the same way as after a send,
//!   and the load counts as failed.
//!
//! Only `tokio::time` is used, so all of this is testable with paused time.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tokio::{
    sync::Notify,
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

use crate::{
    retry::Backoff,
    secret::Secret,
    telemetry::catalog::{self, TemplateFetch},
    token::TokenCache,
    wechat::{Retry, TemplateInfo, WechatApi, WechatError},
};

/// Where template lists come from: WeChat (via [`WechatApi`]) in production, a fake in unit tests.
#[async_trait]
pub trait TemplateSource: Send + Sync + 'static {
    /// The app's templates, listed with `token`.
    async fn templates(&self, token: &Secret) -> Result<Vec<TemplateInfo>, WechatError>;
}

#[async_trait]
impl TemplateSource for WechatApi {
    async fn templates(&self, token: &Secret) -> Result<Vec<TemplateInfo>, WechatError> {
        WechatApi::templates(self, token).await
    }
}

/// Tuning of the cache. The defaults are the documented behaviour; tests shrink them.
#[derive(Clone, Debug)]
pub struct TemplateOptions {
    /// The list is reloaded in the background this long after the last load started (10 min:
    /// templates change rarely, and a new one is picked up by its first send anyway).
    pub refresh_interval: Duration,
    /// A template id missing from the list reloads it at most this often (30 s): often enough
    /// that a template added in the console works at once, rarely enough that a caller sending
    /// a wrong id in a loop costs WeChat two calls a minute.
    pub miss_refresh_interval: Duration,
    /// A send waits for a load at most this long, then goes unchecked (2 s).
    pub max_wait: Duration,
    /// The waits before failed loads in a row are tried again (from at most 30 s, doubling up
    /// to 10 min).
    pub retry: Backoff,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(600),
            miss_refresh_interval: Duration::from_secs(30),
            max_wait: Duration::from_secs(2),
            retry: Backoff::new(Duration::from_secs(30), Duration::from_secs(600)),
        }
    }
}

/// What the cache knows about one template id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The template, as WeChat listed it.
    Listed(Arc<TemplateInfo>),
    /// Not in a list fetched within the last [`TemplateOptions::miss_refresh_interval`]: WeChat
    /// would answer 40037.
    NotListed,
    /// No list could be had in time: send unchecked.
    Unavailable,
}

/// One loaded list.
#[derive(Debug)]
struct TemplateList {
    /// When the load that produced it started.
    fetched_at: Instant,
    by_id: HashMap<String, Arc<TemplateInfo>>,
}

/// A load in flight; resolves to the new list, or `None` when it failed.
type Load = Shared<BoxFuture<'static, Option<Arc<TemplateList>>>>;

/// What loads and misses decide on; the list itself is outside, for a lock-free hot path.
#[derive(Default)]
struct State {
    /// The one load in flight.
    loading: Option<Load>,
    /// When the last load triggered by a missing id started.
    last_miss_refresh: Option<Instant>,
    /// Consecutive failed loads.
    failures: u32,
    /// After a failure: no load starts for a send before this.
    retry_at: Option<Instant>,
}

/// One app's template cache. Shared by every RPC for that app.
pub struct TemplateCache {
    /// The configured app name: the `app` label and log field.
    app: String,
    source: Arc<dyn TemplateSource>,
    tokens: Arc<TokenCache>,
    options: TemplateOptions,
    /// The last list loaded, kept through failed reloads. The hot path reads only this; it is
    /// replaced with the state lock held.
    list: ArcSwapOption<TemplateList>,
    state: Mutex<State>,
    refresher_started: AtomicBool,
    /// Wakes the refresher when the cache is dropped.
    wake_refresher: Arc<Notify>,
}

impl std::fmt::Debug for TemplateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateCache")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl TemplateCache {
    /// The cache for `app` (its configured name), listing templates from `source` with tokens
    /// from `tokens`. Nothing is fetched until the first [`TemplateCache::lookup`].
    pub fn new(
        app: &str,
        source: Arc<dyn TemplateSource>,
        tokens: Arc<TokenCache>,
        options: TemplateOptions,
    ) -> Arc<Self> {
        catalog::register_template_fetches(app);
        Arc::new(Self {
            app: app.to_owned(),
            source,
            tokens,
            options,
            list: ArcSwapOption::empty(),
            state: Mutex::new(State::default()),
            refresher_started: AtomicBool::new(false),
            wake_refresher: Arc::new(Notify::new()),
        })
    }

    /// What is known about `template_id`, waiting for a load until `wait_until` at the latest
    /// (and never longer than [`TemplateOptions::max_wait`]). The first call starts the
    /// background refresher.
    pub async fn lookup(self: &Arc<Self>, template_id: &str, wait_until: Instant) -> Lookup {
        if let Some(template) = self.listed(template_id) {
            return Lookup::Listed(template);
        }
        if !self.refresher_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run_refresher(
                Arc::downgrade(self),
                self.wake_refresher.clone(),
            ));
        }
        let now = Instant::now();
        let load = {
            let mut state = self.lock();
            // Again under the lock: a load may have installed a list since.
            let list = self.list.load_full();
            if let Some(template) = list.as_ref().and_then(|list| list.get(template_id)) {
                return Lookup::Listed(template);
            }
            if let Some(loading) = &state.loading {
                loading.clone()
            } else if let Some(list) = list
                && state
                    .last_miss_refresh
                    .is_some_and(|at| now.duration_since(at) < self.options.miss_refresh_interval)
            {
                // Reloaded for a missing id moments ago: not again. Only a list that fresh
                // says the id does not exist; an older one (that reload failed) says nothing.
                return if now.duration_since(list.fetched_at) < self.options.miss_refresh_interval {
                    Lookup::NotListed
                } else {
                    Lookup::Unavailable
                };
            } else if state.retry_at.is_some_and(|at| now < at) {
                return Lookup::Unavailable;
            } else {
                if self.list.load().is_some() {
                    debug!(app = %self.app, template_id, "template not in the list; reloading it");
                    state.last_miss_refresh = Some(now);
                }
                self.start_load(&mut state)
            }
        };
        let wait_until = wait_until.min(now + self.options.max_wait);
        match tokio::time::timeout_at(wait_until, load).await {
            Ok(Some(list)) => match list.get(template_id) {
                Some(template) => Lookup::Listed(template),
                None => Lookup::NotListed,
            },
            Ok(None) => Lookup::Unavailable,
            Err(_elapsed) => {
                debug!(app = %self.app, "template list not loaded in time; sending unchecked");
                Lookup::Unavailable
            }
        }
    }

    /// The template from the current list, without locking.
    /// The template as the last loaded list has it, without waiting or loading.
    pub fn cached(&self, template_id: &str) -> Option<Arc<TemplateInfo>> {
        self.listed(template_id)
    }

    fn listed(&self, template_id: &str) -> Option<Arc<TemplateInfo>> {
        self.list.load().as_ref()?.get(template_id)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The load in flight, or a new one on a task of its own.
    fn start_load(self: &Arc<Self>, state: &mut State) -> Load {
        if let Some(loading) = &state.loading {
            return loading.clone();
        }
        let task = tokio::spawn({
            let cache = self.clone();
            async move { cache.load().await }
        });
        let weak = Arc::downgrade(self);
        let load = async move {
            match task.await {
                Ok(list) => list,
                Err(join_error) => {
                    // Only a panic ends the task early; let the next send try again.
                    warn!(%join_error, "template list load failed");
                    if let Some(cache) = weak.upgrade() {
                        cache.lock().loading = None;
                    }
                    None
                }
            }
        }
        .boxed()
        .shared();
        state.loading = Some(load.clone());
        load
    }

    /// Fetches the list and installs the outcome.
    async fn load(&self) -> Option<Arc<TemplateList>> {
        let started = Instant::now();
        let fetched = self.fetch().await;
        let mut state = self.lock();
        state.loading = None;
        match fetched {
            Ok(templates) => {
                if state.failures > 0 {
                    info!(app = %self.app, failures = state.failures, "template list available again; checking sends against it");
                }
                state.failures = 0;
                state.retry_at = None;
                debug!(app = %self.app, templates = templates.len(), "template list loaded");
                let list = Arc::new(TemplateList::new(started, templates));
                self.list.store(Some(list.clone()));
                Some(list)
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let delay = self.options.retry.delay(state.failures);
                state.retry_at = Some(Instant::now() + delay);
                let retry_in_secs = delay.as_secs();
                if state.failures == 1 {
                    warn!(app = %self.app, %error, retry_in_secs, "template list unavailable; sends go unchecked until it is");
                } else {
                    debug!(app = %self.app, %error, failures = state.failures, retry_in_secs, "template list still unavailable");
                }
                None
            }
        }
    }

    /// One request for the list, with the app's current token.
    async fn fetch(&self) -> Result<Vec<TemplateInfo>, WechatError> {
        let token = self.tokens.get().await?;
        let result = self.source.templates(&token).await;
        let fetch = match &result {
            Ok(_) => TemplateFetch::Ok,
            Err(error) if error.errcode().is_some() => TemplateFetch::Rejected,
            Err(_) => TemplateFetch::Failed,
        };
        catalog::count_template_fetch(&self.app, fetch);
        if let Err(error) = &result {
            error.count_errcode(&self.app);
        }
        if let Err(error) = &result
            && error.retry() == Retry::NewToken
        {
            // The same rule as after a send (the token cache decides whether to fetch), then
            // skip this round; a fetch failure is the token cache's to report.
            let errcode = error.errcode().unwrap_or_default();
            let _ = self.tokens.reject(&token, errcode).await;
        }
        result
    }
}

impl TemplateList {
    fn new(fetched_at: Instant, templates: Vec<TemplateInfo>) -> Self {
        let by_id = templates
            .into_iter()
            .map(|template| (template.id.clone(), Arc::new(template)))
            .collect();
        Self { fetched_at, by_id }
    }

    fn get(&self, template_id: &str) -> Option<Arc<TemplateInfo>> {
        self.by_id.get(template_id).cloned()
    }
}

impl Drop for TemplateCache {
    fn drop(&mut self) {
        // Lets a sleeping refresher notice at once that the cache is gone.
        self.wake_refresher.notify_one();
    }
}

/// Reloads the list every `refresh_interval`, or at the retry time after a failure. Holds the
/// cache only while deciding, never while sleeping.
async fn run_refresher(cache: Weak<TemplateCache>, wake: Arc<Notify>) {
    loop {
        let (next, joined) = {
            let Some(cache) = cache.upgrade() else {
                debug!("template cache dropped; refresher stopping");
                return;
            };
            let mut state = cache.lock();
            let list = cache.list.load_full();
            let next = match (&state.loading, state.retry_at, list) {
                (Some(_), _, _) => None,
                (None, Some(retry_at), _) => Some(retry_at),
                (None, None, Some(list)) => Some(list.fetched_at + cache.options.refresh_interval),
                (None, None, None) => None,
            };
            match next {
                Some(at) if Instant::now() < at => (at, None),
                _ => (Instant::now(), Some(cache.start_load(&mut state))),
            }
        };
        match joined {
            Some(load) => {
                load.await;
            }
            None => {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = wake.notified() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
