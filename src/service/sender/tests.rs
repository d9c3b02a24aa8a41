//! Paused-time tests of the delivery loop against a fake WeChat: the 45011 pause and the 45009
//! stop end on the app's quota clock, and busy answers are retried after the backoff.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::{
    secret::Secret,
    service::NotStarted,
    token::{TokenCache, TokenOptions},
    wechat::{ClientOptions, TokenMode, WechatClient, WechatError, fake::Fake},
};

/// 2024-05-01 12:00:00 UTC (20:00 in China), plus `seconds`.
fn noon_utc_plus(seconds: u64) -> QuotaClock {
    QuotaClock::starting_at(Duration::from_secs(1_714_564_800 + seconds))
}

/// A fake WeChat that hands out tokens and answers sends from `script` (then accepts them).
async fn wechat(script: Vec<Value>) -> Fake {
    let script = Mutex::new(VecDeque::from(script));
    Fake::start(Duration::ZERO, move |seen| {
        let answer = if seen.path.ends_with("stable_token") {
            json!({"access_token": "TOKEN", "expires_in": 7200})
        } else {
            let next = script.lock().unwrap().pop_front();
            next.unwrap_or_else(|| json!({"errcode": 0, "msgid": 7}))
        };
        (StatusCode::OK, answer.to_string())
    })
    .await
}

fn errcode(errcode: i32) -> Value {
    json!({"errcode": errcode, "errmsg": format!("errcode {errcode}")})
}

/// An app sending one message at a time through `fake`.
fn app(fake: &Fake, clock: QuotaClock) -> AppSender {
    let api = WechatClient::new(&ClientOptions::default()).unwrap().app(
        "wxAPPID".into(),
        Secret::new("SECRET"),
        TokenMode::Stable,
        vec![fake.base.clone()],
    );
    let tokens = TokenCache::new("test", Arc::new(api.clone()), TokenOptions::default());
    AppSender::new("test".into(), api, tokens, 1, 100_000).with_quota_clock(clock)
}

fn message() -> SubscribeMessage {
    SubscribeMessage {
        touser: "oUSER".into(),
        template_id: "TMPL".into(),
        page: None,
        data: BTreeMap::from([("thing1".to_owned(), "hello".to_owned())]),
        miniprogram_state: Default::default(),
        lang: None,
    }
}

fn sends(fake: &Fake) -> usize {
    fake.requests()
        .iter()
        .filter(|seen| seen.path.ends_with("/send"))
        .count()
}

fn single() -> Admission {
    Admission::new(None, SEND_ADMISSION_WAIT)
}

#[tokio::test(start_paused = true)]
async fn a_minute_limit_pauses_the_app_until_the_next_wall_clock_minute() {
    let fake = wechat(vec![errcode(45011)]).await;
    let clock = noon_utc_plus(45);
    let next_minute = Instant::now() + Duration::from_secs(15);
    let app = app(&fake, clock);

    let error = app.deliver(&message(), &single()).await.unwrap_err();
    assert_eq!((error.wechat_errcode(), error.attempts), (Some(45011), 1));
    assert_eq!(error.quota_resets_at, Some(next_minute));

    // A caller that cannot wait that long is turned away at once, without a call.
    let asked = Instant::now();
    let hurried = Admission::new(Some(asked + Duration::from_secs(5)), SEND_ADMISSION_WAIT);
    let error = app.deliver(&message(), &hurried).await.unwrap_err();
    assert!(
        matches!(error.kind, ErrorKind::Throttled { retry_after: Some(wait), .. } if wait == next_minute - asked),
        "{error:?}"
    );
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert_eq!(sends(&fake), 1);

    // One that can is sent when the minute turns.
    app.deliver(&message(), &single()).await.unwrap();
    assert_eq!(Instant::now(), next_minute);
    assert_eq!(sends(&fake), 2);
}

#[tokio::test(start_paused = true)]
async fn a_daily_quota_stops_the_batch_and_says_when_the_quota_day_ends() {
    let fake = wechat(vec![errcode(45009)]).await;
    // 23:59:50 in China.
    let clock = noon_utc_plus(4 * 3_600 - 10);
    let quota_day_end = Instant::now() + Duration::from_secs(10);
    let app = app(&fake, clock);
    let batch = single().in_batch(BatchStop {
        cancel: CancellationToken::new(),
        daily_quota_exhausted: Arc::default(),
    });

    let error = app.deliver(&message(), &batch).await.unwrap_err();
    assert_eq!((error.wechat_errcode(), error.attempts), (Some(45009), 1));
    assert_eq!(error.quota_resets_at, Some(quota_day_end));
    // No other send of the batch starts.
    let error = app.deliver(&message(), &batch).await.unwrap_err();
    assert_eq!(
        error.kind,
        ErrorKind::NotStarted(NotStarted::DailyQuotaExhausted)
    );
    assert_eq!(
        (error.attempts, error.quota_resets_at),
        (0, Some(quota_day_end))
    );
    assert_eq!(sends(&fake), 1);

    // Past midnight in China the next 45009 resets a whole day later.
    tokio::time::sleep_until(quota_day_end).await;
    let fake = wechat(vec![errcode(45009)]).await;
    let app = self::app(&fake, clock);
    let error = app.deliver(&message(), &single()).await.unwrap_err();
    assert_eq!(
        error.quota_resets_at,
        Some(quota_day_end + Duration::from_secs(86_400))
    );
}

#[tokio::test(start_paused = true)]
async fn busy_answers_are_retried_after_the_backoff() {
    let fake = wechat(vec![errcode(-1), errcode(-1)]).await;
    let app = app(&fake, QuotaClock::system());
    app.tokens().get().await.unwrap();
    let started = Instant::now();
    let record = app.deliver(&message(), &single()).await.unwrap();
    assert_eq!(record.attempts, 3);
    // Between half and all of 200 ms, then of 400 ms.
    let waited = started.elapsed();
    assert!(
        Duration::from_millis(300) <= waited && waited <= Duration::from_millis(600),
        "{waited:?}"
    );

    // A busy answer that persists is final after three retries, with its errcode.
    let fake = wechat(vec![errcode(-1); 4]).await;
    let app = self::app(&fake, QuotaClock::system());
    let error = app.deliver(&message(), &single()).await.unwrap_err();
    assert!(matches!(
        error.kind,
        ErrorKind::Upstream(WechatError::Api { errcode: -1, .. })
    ));
    assert_eq!((error.attempts, sends(&fake)), (4, 4));
}
