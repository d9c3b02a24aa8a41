//! Paused-time tests of the token cache against a scripted fake [`TokenSource`].

use std::{collections::VecDeque, sync::Mutex as StdMutex};

use super::*;
use crate::wechat::{Endpoint, ErrorClass};

/// What the fake answers to one fetch.
enum Reply {
    Token(&'static str, u64),
    Error(WechatError),
}

/// Counts fetches, remembers each call's `force_refresh`, answers from a script, then with fresh
/// tokens `token-N` (N = call number) of `lifetime`.
struct FakeSource {
    mode: TokenMode,
    delay: Duration,
    lifetime: Duration,
    script: StdMutex<VecDeque<Reply>>,
    calls: StdMutex<Vec<bool>>,
}

impl FakeSource {
    fn new(mode: TokenMode, lifetime_secs: u64, script: Vec<Reply>) -> Arc<Self> {
        Arc::new(Self {
            mode,
            delay: Duration::from_millis(100),
            lifetime: Duration::from_secs(lifetime_secs),
            script: StdMutex::new(script.into()),
            calls: StdMutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn forced(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|forced| **forced)
            .count()
    }
}

#[async_trait]
impl TokenSource for FakeSource {
    async fn fetch(&self, force_refresh: bool) -> Result<FetchedToken, WechatError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(force_refresh);
            calls.len()
        };
        tokio::time::sleep(self.delay).await;
        match self.script.lock().unwrap().pop_front() {
            Some(Reply::Token(token, secs)) => Ok(FetchedToken {
                token: Secret::new(token),
                expires_in: Duration::from_secs(secs),
            }),
            Some(Reply::Error(error)) => Err(error),
            None => Ok(FetchedToken {
                token: Secret::new(format!("token-{call}")),
                expires_in: self.lifetime,
            }),
        }
    }

    fn mode(&self) -> TokenMode {
        self.mode
    }
}

fn cache(source: &Arc<FakeSource>) -> Arc<TokenCache> {
    TokenCache::new("test-app", source.clone(), TokenOptions::default())
}

fn api_error(errcode: i32) -> WechatError {
    WechatError::Api {
        endpoint: Endpoint::Token,
        errcode,
        errmsg: format!("errcode {errcode}"),
        rid: None,
    }
}

fn busy() -> Reply {
    Reply::Error(api_error(-1))
}

async fn sleep_secs(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_gets_on_an_empty_cache_fetch_once() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().expose(), "token-1");
    }
    assert_eq!(source.calls(), 1);
    assert_eq!(cache.get().await.unwrap().expose(), "token-1");
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_gets_share_one_failed_fetch() {
    // Three busy answers exhaust the one fetch's attempts; the 300 waiters share that failure.
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![busy(), busy(), busy()]);
    let cache = cache(&source);
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap_err(), api_error(-1));
    }
    assert_eq!(source.calls(), 3);
    // A later call fetches again (busy is not cooled down).
    assert_eq!(cache.get().await.unwrap().expose(), "token-4");
}

#[tokio::test(start_paused = true)]
async fn a_token_within_the_safety_margin_is_never_returned() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    let started = Instant::now();
    assert_eq!(cache.get().await.unwrap().expose(), "token-1");
    // The lifetime counts from the start of the fetch; the margin is min(60 s, 720 s) = 60 s.
    let margin = Duration::from_secs(60);
    tokio::time::sleep_until(
        started + Duration::from_secs(7200) - margin - Duration::from_millis(1),
    )
    .await;
    assert_eq!(cache.get().await.unwrap().expose(), "token-1");
    assert_eq!(source.calls(), 1);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(cache.get().await.unwrap().expose(), "token-2");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_short_expires_in_is_honoured() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![Reply::Token("short", 5)]);
    let cache = cache(&source);
    let started = Instant::now();
    assert_eq!(cache.get().await.unwrap().expose(), "short");
    assert!(cache.time_to_expiry().unwrap() <= Duration::from_secs(5));
    // Margin: min(60 s, 10% of 5 s) = 0.5 s, so usable until 4.5 s after the fetch started.
    tokio::time::sleep_until(started + Duration::from_millis(4_400)).await;
    assert_eq!(cache.get().await.unwrap().expose(), "short");
    tokio::time::sleep_until(started + Duration::from_millis(4_600)).await;
    assert_eq!(cache.get().await.unwrap().expose(), "token-2");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_renews_before_expiry_so_gets_never_wait() {
    let source = FakeSource::new(TokenMode::Classic, 7200, vec![]);
    let cache = cache(&source);
    let refresher = cache.spawn_refresher();
    let started = Instant::now();
    assert_eq!(cache.get().await.unwrap().expose(), "token-1");
    assert_eq!(
        source.calls(),
        1,
        "the refresher and get share the first fetch"
    );

    // Renewal is due at 70% (5040 s); at 90% a get must not wait for anything.
    tokio::time::sleep_until(started + Duration::from_secs(6480)).await;
    assert_eq!(source.calls(), 2);
    let before = Instant::now();
    let token = cache.get().await.unwrap();
    assert_eq!(Instant::now(), before, "get waited");
    assert_eq!(token.expose(), "token-2");
    // The new token's clock started at the renewal (~5040 s), so ~5040 s of it remain at 6480 s.
    let remaining = cache.time_to_expiry().unwrap();
    assert!(remaining > Duration::from_secs(5700), "{remaining:?}");

    // And so on, one fetch per renewal.
    tokio::time::sleep_until(started + Duration::from_secs(5040 * 2 + 60)).await;
    assert_eq!(source.calls(), 3);
    refresher.abort();
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_keeps_the_current_token_and_retries() {
    // Renewal of the 100 s token is due at 70 s; its first fetch fails (three busy answers).
    let source = FakeSource::new(
        TokenMode::Stable,
        100,
        vec![Reply::Token("t1", 100), busy(), busy(), busy()],
    );
    let cache = cache(&source);
    let refresher = cache.spawn_refresher();
    let started = Instant::now();
    assert_eq!(cache.get().await.unwrap().expose(), "t1");
    tokio::time::sleep_until(started + Duration::from_secs(71)).await;
    assert_eq!(source.calls(), 4, "one failed renewal of three attempts");
    let before = Instant::now();
    assert_eq!(cache.get().await.unwrap().expose(), "t1");
    assert_eq!(Instant::now(), before);
    // The retry (about a second later) succeeds, well before t1 becomes unusable at 90 s.
    tokio::time::sleep_until(started + Duration::from_secs(75)).await;
    assert_eq!(source.calls(), 5);
    assert_eq!(cache.get().await.unwrap().expose(), "token-5");
    refresher.abort();
}

/// Reports a rejection of `token` with 40001 (the errcode only labels the metric).
async fn reject(cache: &TokenCache, token: &Secret) -> Result<RejectionAction, WechatError> {
    cache.reject(token, 40001).await
}

#[tokio::test(start_paused = true)]
async fn a_rejection_fetches_once_and_installs_the_new_token() {
    let source = FakeSource::new(TokenMode::Classic, 7200, vec![]);
    let cache = cache(&source);
    let first = cache.get().await.unwrap();
    assert_eq!(
        reject(&cache, &first).await.unwrap(),
        RejectionAction::Refreshed
    );
    assert_eq!(cache.get().await.unwrap().expose(), "token-2");
    assert_eq!(cache.get().await.unwrap().expose(), "token-2");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_rejections_of_one_token_fetch_once() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    let first = cache.get().await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            let first = first.clone();
            tokio::spawn(async move {
                assert_eq!(
                    reject(&cache, &first).await.unwrap(),
                    RejectionAction::Refreshed
                );
                cache.get().await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().expose(), "token-2");
    }
    assert_eq!(source.calls(), 2);
    assert_eq!(source.forced(), 0);
}

#[tokio::test(start_paused = true)]
async fn rejecting_a_token_no_longer_cached_fetches_nothing() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    let first = cache.get().await.unwrap();
    reject(&cache, &first).await.unwrap();
    let second = cache.get().await.unwrap();
    // A late rejection of the first token must not drop the second.
    reject(&cache, &first).await.unwrap();
    assert_eq!(cache.get().await.unwrap(), second);
    reject(&cache, &Secret::new("never-cached")).await.unwrap();
    assert_eq!(cache.get().await.unwrap(), second);
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn stable_mode_forces_only_when_the_rejected_token_comes_back_and_within_limits() {
    let source = FakeSource::new(
        TokenMode::Stable,
        7200,
        vec![
            Reply::Token("t1", 7200),
            // After the first rejection: the normal fetch hands back t1, the forced one t2.
            Reply::Token("t1", 7000),
            Reply::Token("t2", 7200),
            // After the second rejection (10 s later): the normal fetch hands back t2 again.
            Reply::Token("t2", 7190),
            // 30 s after t2's rejection fetch: t2 again, and the force now allowed gives t3.
            Reply::Token("t2", 7160),
            Reply::Token("t3", 7200),
        ],
    );
    let cache = cache(&source);
    let t1 = cache.get().await.unwrap();
    assert_eq!(
        reject(&cache, &t1).await.unwrap(),
        RejectionAction::ForceRefreshed
    );
    let t2 = cache.get().await.unwrap();
    assert_eq!(t2.expose(), "t2");
    assert_eq!(*source.calls.lock().unwrap(), vec![false, false, true]);

    // No force within 30 s of the last: t2 is kept, never leaving the app without a token.
    sleep_secs(10.0).await;
    assert_eq!(reject(&cache, &t2).await.unwrap(), RejectionAction::Kept);
    assert_eq!(cache.get().await.unwrap(), t2);
    assert_eq!(source.calls(), 4);
    assert_eq!(source.forced(), 1, "no second force within 30 s");
    // Further rejections of t2 within 30 s of its fetch cost no fetch at all.
    for _ in 0..10 {
        assert_eq!(reject(&cache, &t2).await.unwrap(), RejectionAction::Kept);
        assert_eq!(cache.get().await.unwrap(), t2);
    }
    assert_eq!(source.calls(), 4);

    sleep_secs(30.0).await;
    assert_eq!(
        reject(&cache, &t2).await.unwrap(),
        RejectionAction::ForceRefreshed
    );
    assert_eq!(cache.get().await.unwrap().expose(), "t3");
    assert_eq!(
        *source.calls.lock().unwrap(),
        vec![false, false, true, false, false, true]
    );
}

#[tokio::test(start_paused = true)]
async fn a_revocation_is_followed_at_once_every_time() {
    // Each rejection's fetch hands out a new token (rotated elsewhere): no 30 s wait applies.
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    for expected in 2..=6 {
        let token = cache.get().await.unwrap();
        assert_eq!(
            reject(&cache, &token).await.unwrap(),
            RejectionAction::Refreshed
        );
        assert_eq!(
            cache.get().await.unwrap().expose(),
            format!("token-{expected}")
        );
    }
    assert_eq!(source.calls(), 6);
    assert_eq!(source.forced(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_after_a_rejection_keeps_the_token_for_everyone() {
    let source = FakeSource::new(
        TokenMode::Stable,
        7200,
        vec![Reply::Token("t1", 7200), busy(), busy(), busy()],
    );
    let cache = cache(&source);
    let t1 = cache.get().await.unwrap();
    let error = reject(&cache, &t1).await.unwrap_err();
    assert_eq!(error, api_error(-1));
    // Other callers are not cut off: they still get t1, without a fetch.
    assert_eq!(cache.get().await.unwrap(), t1);
    assert_eq!(source.calls(), 4);
    // And t1 had its fetch: another rejection within 30 s makes none.
    assert_eq!(reject(&cache, &t1).await.unwrap(), RejectionAction::Kept);
    assert_eq!(source.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_late_rejection_of_an_older_token_does_not_hide_the_latest_one() {
    let source = FakeSource::new(
        TokenMode::Stable,
        7200,
        vec![
            Reply::Token("t0", 7200),
            Reply::Token("t1", 7200),
            Reply::Token("t1", 7000),
            Reply::Token("t2", 7200),
        ],
    );
    let cache = cache(&source);
    let t0 = cache.get().await.unwrap();
    reject(&cache, &t0).await.unwrap();
    let t1 = cache.get().await.unwrap();
    // The normal fetch hands t1 back: it is forced out.
    assert_eq!(
        reject(&cache, &t1).await.unwrap(),
        RejectionAction::ForceRefreshed
    );
    // A request that used t0 reports its rejection late.
    assert_eq!(
        reject(&cache, &t0).await.unwrap(),
        RejectionAction::Refreshed
    );
    assert_eq!(cache.get().await.unwrap().expose(), "t2");
    assert_eq!(
        *source.calls.lock().unwrap(),
        vec![false, false, false, true]
    );
}

#[tokio::test(start_paused = true)]
async fn stable_mode_normal_fetch_of_a_new_token_needs_no_force() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    let first = cache.get().await.unwrap();
    reject(&cache, &first).await.unwrap();
    assert_eq!(cache.get().await.unwrap().expose(), "token-2");
    assert_eq!(source.forced(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_force_refresh_daily_limit_holds_over_a_rolling_day() {
    let options = TokenOptions {
        force_refresh_daily_limit: 2,
        ..TokenOptions::default()
    };
    // Every normal fetch returns the token just rejected; every force returns a new one.
    let script = vec![
        Reply::Token("a", 7200),
        Reply::Token("a", 7200),
        Reply::Token("b", 7200),
        Reply::Token("b", 7200),
        Reply::Token("c", 7200),
        Reply::Token("c", 7200),
        // A day later (c has expired): c again, from the renewal and from the rejection's fetch.
        Reply::Token("c", 7200),
        Reply::Token("c", 7200),
    ];
    let source = FakeSource::new(TokenMode::Stable, 7200, script);
    let cache = TokenCache::new("test-app", source.clone(), options);
    for expected in ["b", "c"] {
        let token = cache.get().await.unwrap();
        reject(&cache, &token).await.unwrap();
        sleep_secs(60.0).await;
        assert_eq!(cache.get().await.unwrap().expose(), expected);
        sleep_secs(60.0).await;
    }
    let c = cache.get().await.unwrap();
    assert_eq!(
        reject(&cache, &c).await.unwrap(),
        RejectionAction::Kept,
        "a third force within 24 h"
    );
    assert_eq!(cache.get().await.unwrap(), c);
    assert_eq!(source.forced(), 2);
    // A day after the first force, one is allowed again.
    sleep_secs(24.0 * 3600.0).await;
    let c = cache.get().await.unwrap();
    assert_eq!(
        reject(&cache, &c).await.unwrap(),
        RejectionAction::ForceRefreshed
    );
    assert_eq!(cache.get().await.unwrap().expose(), "token-9");
    assert_eq!(source.forced(), 3);
}

#[tokio::test(start_paused = true)]
async fn classic_mode_never_forces_and_keeps_a_token_handed_back() {
    let source = FakeSource::new(
        TokenMode::Classic,
        7200,
        vec![Reply::Token("t1", 7200), Reply::Token("t1", 7200)],
    );
    let cache = cache(&source);
    let t1 = cache.get().await.unwrap();
    assert_eq!(reject(&cache, &t1).await.unwrap(), RejectionAction::Kept);
    assert_eq!(cache.get().await.unwrap(), t1);
    assert_eq!(source.forced(), 0);
}

#[tokio::test(start_paused = true)]
async fn busy_is_retried_within_one_fetch() {
    let source = FakeSource::new(
        TokenMode::Stable,
        7200,
        vec![
            busy(),
            Reply::Error(WechatError::Unreachable {
                endpoint: Endpoint::Token,
                tried: 1,
                last: None,
            }),
            Reply::Token("t1", 7200),
        ],
    );
    let cache = cache(&source);
    let started = Instant::now();
    assert_eq!(cache.get().await.unwrap().expose(), "t1");
    assert_eq!(source.calls(), 3);
    // Backoff: ~100-200 ms then ~200-400 ms, plus three 100 ms fetches.
    let waited = Instant::now() - started;
    assert!(
        waited >= Duration::from_millis(600) && waited <= Duration::from_millis(900),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_credential_error_is_cooled_down() {
    let source = FakeSource::new(
        TokenMode::Stable,
        7200,
        vec![Reply::Error(api_error(40013))],
    );
    let cache = cache(&source);
    let error = cache.get().await.unwrap_err();
    assert_eq!(error.class(), Some(ErrorClass::Credential));
    for _ in 0..20 {
        assert_eq!(cache.get().await.unwrap_err(), error);
        sleep_secs(1.0).await;
    }
    assert_eq!(source.calls(), 1, "not retried, not hammered");
    sleep_secs(10.0).await;
    assert_eq!(cache.get().await.unwrap().expose(), "token-2");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_stops_when_the_cache_is_dropped() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    let refresher = cache.spawn_refresher();
    sleep_secs(1.0).await;
    assert_eq!(source.calls(), 1, "an empty cache is filled at once");
    drop(cache);
    // Woken by the drop, not at the next renewal an hour and a half away.
    tokio::time::timeout(Duration::from_secs(1), refresher)
        .await
        .expect("refresher still running")
        .unwrap();
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_is_abortable() {
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = cache(&source);
    let refresher = cache.spawn_refresher();
    sleep_secs(1.0).await;
    refresher.abort();
    assert!(refresher.await.unwrap_err().is_cancelled());
    sleep_secs(7200.0).await;
    assert_eq!(source.calls(), 1);
    assert_eq!(cache.get().await.unwrap().expose(), "token-2");
}

#[tokio::test(start_paused = true)]
async fn stable_renewal_of_the_same_token_is_not_a_rejection() {
    // Stable mode hands back the same token with less time left until it rolls it over.
    let source = FakeSource::new(
        TokenMode::Stable,
        7200,
        vec![Reply::Token("t1", 7200), Reply::Token("t1", 2160)],
    );
    let cache = cache(&source);
    let refresher = cache.spawn_refresher();
    let started = Instant::now();
    tokio::time::sleep_until(started + Duration::from_secs(5041)).await;
    assert_eq!(source.calls(), 2);
    assert_eq!(source.forced(), 0);
    assert_eq!(cache.get().await.unwrap().expose(), "t1");
    let remaining = cache.time_to_expiry().unwrap();
    assert!(remaining <= Duration::from_secs(2160) && remaining > Duration::from_secs(2100));
    // The next renewal is due at 70% of the new 2160 s lifetime.
    tokio::time::sleep_until(started + Duration::from_secs(5040 + 1512 + 1)).await;
    assert_eq!(source.calls(), 3);
    assert_eq!(cache.get().await.unwrap().expose(), "token-3");
    refresher.abort();
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_in_the_store_is_used_without_fetching() {
    let store = Arc::new(MemoryTokenStore::new());
    store
        .save(&StoredToken {
            token: Secret::new("shared"),
            fetched_at: Instant::now(),
            lifetime: Duration::from_secs(7200),
        })
        .await
        .unwrap();
    let source = FakeSource::new(TokenMode::Stable, 7200, vec![]);
    let cache = TokenCache::with_store(
        "test-app",
        source.clone(),
        store.clone(),
        TokenOptions::default(),
    );
    assert_eq!(cache.get().await.unwrap().expose(), "shared");
    assert_eq!(source.calls(), 0);
    // A rejected token is replaced in the store too.
    reject(&cache, &Secret::new("shared")).await.unwrap();
    assert_eq!(cache.get().await.unwrap().expose(), "token-1");
    assert_eq!(
        store.load().await.unwrap().unwrap().token.expose(),
        "token-1"
    );
}

#[test]
fn margins_and_refresh_points() {
    let options = TokenOptions::default();
    assert_eq!(
        options.safety_margin(Duration::from_secs(7200)),
        Duration::from_secs(60)
    );
    assert_eq!(
        options.safety_margin(Duration::from_secs(300)),
        Duration::from_secs(30)
    );
    assert_eq!(
        options.safety_margin(Duration::from_secs(5)),
        Duration::from_millis(500)
    );
    assert_eq!(
        options.refresh_after(Duration::from_secs(7200)),
        Duration::from_secs(5040)
    );
    assert_eq!(options.fetch_backoff.ceiling(1), Duration::from_millis(200));
    assert_eq!(
        options.background_retry.ceiling(30),
        Duration::from_secs(60)
    );
}
