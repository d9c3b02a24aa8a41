//! Paused-time tests of the template cache against scripted fakes of WeChat's template list
//! and token endpoints.

use std::{collections::VecDeque, sync::Mutex as StdMutex};

use super::*;
use crate::{
    token::{TokenOptions, TokenSource},
    wechat::{Endpoint, FetchedToken, TemplateKind, TokenMode},
};

/// Issues `token-1`, `token-2`, ... (one per fetch), each valid for two hours.
struct FakeTokens {
    fetches: StdMutex<u32>,
}

#[async_trait]
impl TokenSource for FakeTokens {
    async fn fetch(&self, _force_refresh: bool) -> Result<FetchedToken, WechatError> {
        let call = {
            let mut fetches = self.fetches.lock().unwrap();
            *fetches += 1;
            *fetches
        };
        Ok(FetchedToken {
            token: Secret::new(format!("token-{call}")),
            expires_in: Duration::from_secs(7200),
        })
    }

    fn mode(&self) -> TokenMode {
        TokenMode::Stable
    }
}

/// Answers from a script, then with the current template ids; remembers the token of each call.
struct FakeList {
    delay: Duration,
    ids: StdMutex<Vec<&'static str>>,
    script: StdMutex<VecDeque<WechatError>>,
    tokens_seen: StdMutex<Vec<String>>,
    /// When each call started.
    called_at: StdMutex<Vec<Instant>>,
}

impl FakeList {
    fn new(ids: &[&'static str]) -> Arc<Self> {
        Self::slow(ids, Duration::from_millis(50))
    }

    fn slow(ids: &[&'static str], delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            delay,
            ids: StdMutex::new(ids.to_vec()),
            script: StdMutex::new(VecDeque::new()),
            tokens_seen: StdMutex::new(Vec::new()),
            called_at: StdMutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.tokens_seen.lock().unwrap().len()
    }

    fn set_ids(&self, ids: &[&'static str]) {
        *self.ids.lock().unwrap() = ids.to_vec();
    }

    /// The next `n` calls answer `error`.
    fn fail_next(&self, n: usize, error: WechatError) {
        self.script
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(error, n));
    }
}

#[async_trait]
impl TemplateSource for FakeList {
    async fn templates(&self, token: &Secret) -> Result<Vec<TemplateInfo>, WechatError> {
        self.tokens_seen
            .lock()
            .unwrap()
            .push(token.expose().to_owned());
        self.called_at.lock().unwrap().push(Instant::now());
        tokio::time::sleep(self.delay).await;
        if let Some(error) = self.script.lock().unwrap().pop_front() {
            return Err(error);
        }
        Ok(self
            .ids
            .lock()
            .unwrap()
            .iter()
            .map(|id| template(id))
            .collect())
    }
}

fn template(id: &str) -> TemplateInfo {
    TemplateInfo {
        id: id.to_owned(),
        title: format!("title of {id}"),
        kind: TemplateKind::OneTime,
        keywords: vec!["thing1".to_owned()],
        enum_values: Default::default(),
    }
}

fn api_error(errcode: i32) -> WechatError {
    WechatError::Api {
        endpoint: Endpoint::Templates,
        errcode,
        errmsg: format!("errcode {errcode}"),
        rid: None,
    }
}

fn cache(list: &Arc<FakeList>) -> (Arc<TemplateCache>, Arc<TokenCache>) {
    let tokens = TokenCache::new(
        "test-app",
        Arc::new(FakeTokens {
            fetches: StdMutex::new(0),
        }),
        TokenOptions::default(),
    );
    let cache = TemplateCache::new(
        "test-app",
        list.clone(),
        tokens.clone(),
        TemplateOptions::default(),
    );
    (cache, tokens)
}

/// A lookup with no deadline of its own.
async fn lookup(cache: &Arc<TemplateCache>, id: &str) -> Lookup {
    cache
        .lookup(id, Instant::now() + Duration::from_secs(3600))
        .await
}

fn listed(lookup: &Lookup) -> &str {
    match lookup {
        Lookup::Listed(template) => &template.id,
        other => panic!("expected a listed template, got {other:?}"),
    }
}

async fn sleep_secs(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_fetched_before_the_first_lookup() {
    let list = FakeList::new(&["A"]);
    let (_cache, _tokens) = cache(&list);
    sleep_secs(3600).await;
    assert_eq!(list.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_lookups_share_one_load() {
    let list = FakeList::new(&["A", "B"]);
    let (cache, _tokens) = cache(&list);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { lookup(&cache, if i % 2 == 0 { "A" } else { "Z" }).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let found = task.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(listed(&found), "A");
        } else {
            assert_eq!(
                found,
                Lookup::NotListed,
                "absent from a list loaded just now"
            );
        }
    }
    assert_eq!(list.calls(), 1);
    assert_eq!(listed(&lookup(&cache, "B").await), "B");
    assert_eq!(list.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_missing_id_reloads_the_list_at_most_once_per_interval() {
    let list = FakeList::new(&["A"]);
    let (cache, _tokens) = cache(&list);
    assert_eq!(listed(&lookup(&cache, "A").await), "A");
    // Added in the console after the first load: its first send reloads the list.
    list.set_ids(&["A", "B"]);
    assert_eq!(listed(&lookup(&cache, "B").await), "B");
    assert_eq!(list.calls(), 2);

    // Another unknown id within 30 s: the list is fresh, so it does not exist.
    sleep_secs(10).await;
    assert_eq!(lookup(&cache, "C").await, Lookup::NotListed);
    assert_eq!(list.calls(), 2);

    // After 30 s one reload, shared by concurrent misses.
    sleep_secs(21).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { lookup(&cache, "C").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Lookup::NotListed);
    }
    assert_eq!(list.calls(), 3);
    assert_eq!(lookup(&cache, "D").await, Lookup::NotListed);
    assert_eq!(list.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_list_is_refreshed_in_the_background() {
    let list = FakeList::new(&["A"]);
    let (cache, _tokens) = cache(&list);
    listed(&lookup(&cache, "A").await);
    sleep_secs(300).await;
    list.set_ids(&["A", "B"]);
    sleep_secs(301).await;
    assert_eq!(list.calls(), 2, "reloaded after 10 minutes");
    assert_eq!(listed(&lookup(&cache, "B").await), "B");
    assert_eq!(list.calls(), 2, "no reload needed for B");
    sleep_secs(600).await;
    assert_eq!(list.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn without_a_list_sends_go_unchecked_and_loads_back_off() {
    let list = FakeList::new(&["A"]);
    list.fail_next(3, api_error(48001));
    let (cache, _tokens) = cache(&list);
    assert_eq!(lookup(&cache, "A").await, Lookup::Unavailable);
    assert_eq!(list.calls(), 1);
    // Sends in the backoff do not wait for, or cause, another request.
    let started = Instant::now();
    assert_eq!(lookup(&cache, "A").await, Lookup::Unavailable);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(list.calls(), 1);
    // The refresher tries again after each failure: 30 s, then 60 s, then 120 s at most (and
    // at least half of each), and no send causes a request meanwhile.
    for calls in 2..=4 {
        while list.calls() < calls {
            sleep_secs(1).await;
        }
        if calls < 4 {
            // Failed again (its answer takes 50 ms): backing off for 15 s at least.
            sleep_secs(1).await;
            let asked = Instant::now();
            assert_eq!(lookup(&cache, "A").await, Lookup::Unavailable);
            assert_eq!(asked.elapsed(), Duration::ZERO);
            assert_eq!(list.calls(), calls);
        }
    }
    assert_eq!(listed(&lookup(&cache, "A").await), "A");
    assert_eq!(list.calls(), 4);
    let called_at = list.called_at.lock().unwrap().clone();
    let answered_after = list.delay;
    for (retry, ceiling) in [(1, 30), (2, 60), (3, 120)] {
        let ceiling = Duration::from_secs(ceiling);
        let waited = called_at[retry] - called_at[retry - 1] - answered_after;
        assert!(
            ceiling / 2 <= waited && waited <= ceiling,
            "retry {retry} after {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_list_is_waited_for_two_seconds_at_most() {
    let list = FakeList::slow(&["A"], Duration::from_secs(5));
    let (cache, _tokens) = cache(&list);
    let started = Instant::now();
    assert_eq!(lookup(&cache, "A").await, Lookup::Unavailable);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    // The caller's own deadline, when sooner, bounds the wait instead.
    let started = Instant::now();
    let soon = started + Duration::from_millis(500);
    assert_eq!(cache.lookup("A", soon).await, Lookup::Unavailable);
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    // The load went on without the callers, and served the next one.
    sleep_secs(3).await;
    assert_eq!(listed(&lookup(&cache, "A").await), "A");
    assert_eq!(list.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_invalidated_and_that_round_skipped() {
    let list = FakeList::new(&["A"]);
    list.fail_next(1, api_error(40001));
    let (cache, tokens) = cache(&list);
    assert_eq!(lookup(&cache, "A").await, Lookup::Unavailable);
    // The rejected token was dropped: the next user of the app's token gets a new one.
    assert_eq!(tokens.get().await.unwrap().expose(), "token-2");
    sleep_secs(31).await;
    assert_eq!(listed(&lookup(&cache, "A").await), "A");
    assert_eq!(
        *list.tokens_seen.lock().unwrap(),
        ["token-1", "token-2"],
        "retried with the new token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_reload_keeps_the_old_list_but_proves_no_absence() {
    let list = FakeList::new(&["A"]);
    let (cache, _tokens) = cache(&list);
    listed(&lookup(&cache, "A").await);
    sleep_secs(60).await;
    list.fail_next(1, api_error(-1));
    // A miss reloads, the reload fails: unchecked, and the old list still serves A.
    assert_eq!(lookup(&cache, "B").await, Lookup::Unavailable);
    assert_eq!(list.calls(), 2);
    assert_eq!(listed(&lookup(&cache, "A").await), "A");
    // Within the miss interval, an old list cannot say B does not exist.
    assert_eq!(lookup(&cache, "B").await, Lookup::Unavailable);
    assert_eq!(list.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_stops_with_the_cache() {
    let list = FakeList::new(&["A"]);
    let (cache, _tokens) = cache(&list);
    listed(&lookup(&cache, "A").await);
    drop(cache);
    sleep_secs(3600).await;
    assert_eq!(list.calls(), 1);
}

#[test]
fn backoff_doubles_up_to_ten_minutes() {
    let retry = TemplateOptions::default().retry;
    let secs: Vec<_> = (1..=7).map(|n| retry.ceiling(n).as_secs()).collect();
    assert_eq!(secs, [30, 60, 120, 240, 480, 600, 600]);
}
