//! BatchSend end to end: a real server on a loopback port, a real gRPC client, the sandbox as
//! WeChat. Assertions are on counts, orders and bounds that hold however the two cores schedule
//! the work; the only clock-based ones are lower bounds on elapsed time and a generous upper
//! bound on sends per one-second window. Tests whose calls meet in a given order (a deadline
//! between two rounds of sends, a caller hanging up, a retry joining a waiting call, the pause
//! until the next minute) run on paused time: the sandbox's latency, the deadlines and the
//! app's quota clock are all on tokio's clock, so each event happens at its virtual instant.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::common::*;
use futures::future::join_all;
use tonic::{Code, Request};
use wechat_notify::{config::ServeConfig, pb};
use wechat_notify_sandbox::{Fault, SandboxConfig};

fn recipient(touser: impl Into<String>) -> pb::Recipient {
    pb::Recipient {
        touser: touser.into(),
        ..Default::default()
    }
}

/// The course reminder to `recipients`, with the shared data valid for the template.
fn batch(recipients: impl IntoIterator<Item = pb::Recipient>) -> pb::BatchSendRequest {
    pb::BatchSendRequest {
        template_id: COURSE_REMINDER.to_owned(),
        data: course_data(),
        recipients: recipients.into_iter().collect(),
        ..Default::default()
    }
}

/// `count` distinct recipients, `openid(0)` upwards.
fn batch_of(count: usize) -> pb::BatchSendRequest {
    batch((0..count).map(|index| recipient(openid(index))))
}

/// Recipient `index` was answered OK (its message shown otherwise).
fn assert_delivered(index: usize, result: &pb::RecipientResult) {
    assert_eq!(
        code(result),
        Code::Ok,
        "recipient {index}: {}",
        result.message
    );
}

/// Auto-accepting sandbox, one app with these limits.
async fn harness_with(
    sandbox_config: SandboxConfig,
    max_in_flight: usize,
    rate_per_sec: u32,
    tweak: impl FnOnce(&mut ServeConfig),
) -> Harness {
    Harness::start_with(
        SandboxConfig {
            auto_accept: true,
            ..sandbox_config
        },
        move |config| {
            config.apps[0].max_in_flight = max_in_flight;
            config.apps[0].rate_per_sec = rate_per_sec;
            tweak(config);
        },
    )
    .await
}

/// Delivered messages per openid, with their msgids.
fn inbox_by_openid(harness: &Harness) -> HashMap<String, Vec<u64>> {
    let mut by_openid: HashMap<String, Vec<u64>> = HashMap::new();
    for message in harness.sandbox().inbox(None) {
        by_openid
            .entry(message.openid)
            .or_default()
            .push(message.msgid);
    }
    by_openid
}

/// Waits until no send is in flight: none holds one of the app's slots in the server (a send
/// holds its slot until WeChat's answer is read, so its request has reached the sandbox), and
/// the sandbox is answering none.
async fn wait_for_sends_to_settle(harness: &Harness) {
    let app = harness.server.notifier().apps()[0].clone();
    eventually("the sends in flight to finish", || {
        let settled = app.sends_in_flight() == 0 && harness.sandbox().stats().in_flight_sends == 0;
        async move { settled.then_some(()) }
    })
    .await;
}

fn code(result: &pb::RecipientResult) -> Code {
    Code::from(result.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_recipients_with_rejections_and_busy_answers() {
    const RECIPIENTS: usize = 5_000;
    let harness = harness_with(SandboxConfig::default(), 64, 100_000, |_| {}).await;
    let sandbox = harness.sandbox();
    // Every 100th recipient (from 7) has not subscribed; every 100th (from 13) meets one or two
    // busy answers and then goes through; every 500th (from 21) stays busy through every retry.
    let not_subscribed = |index: usize| index % 100 == 7;
    let busy_then_ok = |index: usize| index % 100 == 13;
    let busy_answers = |index: usize| 1 + (index / 100) % 2;
    let always_busy = |index: usize| index % 500 == 21;
    for index in 0..RECIPIENTS {
        if not_subscribed(index) {
            sandbox.inject(Fault::errcode(43101).for_openid(openid(index)));
        } else if busy_then_ok(index) {
            sandbox.inject(
                Fault::errcode(-1)
                    .times(busy_answers(index) as u32)
                    .for_openid(openid(index)),
            );
        } else if always_busy(index) {
            // One more than the four attempts, so the retried batch below still meets one.
            sandbox.inject(Fault::errcode(-1).times(5).for_openid(openid(index)));
        }
    }

    let request = pb::BatchSendRequest {
        idempotency_key: "course-42-everyone".into(),
        ..batch_of(RECIPIENTS)
    };
    let response = harness
        .client
        .clone()
        .batch_send(request.clone())
        .await
        .expect("the batch is answered")
        .into_inner();

    assert_eq!(response.results.len(), RECIPIENTS);
    let inbox = inbox_by_openid(&harness);
    let mut expected_requests = 0;
    for (index, result) in response.results.iter().enumerate() {
        assert_eq!(result.touser, openid(index), "results are in request order");
        assert!(!result.deduplicated);
        let delivered = inbox.get(&result.touser);
        if not_subscribed(index) {
            assert_eq!(code(result), Code::FailedPrecondition, "recipient {index}");
            assert_eq!(result.wechat_errcode, 43101);
            assert_eq!(result.attempts, 1, "43101 is not retried");
            assert_eq!((result.msgid, delivered), (0, None));
            assert!(result.message.contains("43101"), "{}", result.message);
        } else if always_busy(index) {
            assert_eq!(code(result), Code::Unavailable, "recipient {index}");
            assert_eq!(result.wechat_errcode, -1);
            assert_eq!(result.attempts, 4, "1 try + 3 retries");
            assert_eq!((result.msgid, delivered), (0, None));
        } else {
            let attempts = if busy_then_ok(index) {
                1 + busy_answers(index) as u32
            } else {
                1
            };
            assert_delivered(index, result);
            assert_eq!((result.wechat_errcode, result.attempts), (0, attempts));
            assert_eq!(
                delivered,
                Some(&vec![result.msgid]),
                "recipient {index} delivered exactly once, with the msgid answered"
            );
        }
        expected_requests += result.attempts as u64;
    }
    let failed = RECIPIENTS / 100 + RECIPIENTS / 500;
    assert_eq!(response.failed as usize, failed);
    assert_eq!(response.succeeded as usize, RECIPIENTS - failed);
    assert_eq!(
        inbox.len(),
        RECIPIENTS - failed,
        "nothing else was delivered"
    );
    let stats = sandbox.stats();
    assert_eq!(stats.send_requests, expected_requests, "attempts add up");
    assert!(stats.max_concurrent_sends <= 64, "{stats:?}");

    // The client retries the whole batch with the same key: the delivered recipients are
    // answered from their records, only the failed ones are tried again.
    let retried = harness
        .client
        .clone()
        .batch_send(request)
        .await
        .expect("the retry is answered")
        .into_inner();
    for (index, (first, again)) in response.results.iter().zip(&retried.results).enumerate() {
        assert_eq!(again.touser, openid(index));
        if first.code == 0 {
            assert!(again.deduplicated, "recipient {index}");
            assert_eq!((again.code, again.msgid), (0, first.msgid));
        } else if always_busy(index) {
            // Its fifth busy answer, then through.
            assert!(!again.deduplicated);
            assert_eq!((again.code, again.attempts), (0, 2), "recipient {index}");
        } else {
            assert!(!again.deduplicated);
            assert_eq!(again.code, first.code, "recipient {index} fails again");
        }
    }
    assert_eq!(
        retried.succeeded as usize,
        RECIPIENTS - RECIPIENTS / 100,
        "all but the unsubscribed"
    );
    assert_eq!(
        sandbox.stats().send_requests,
        expected_requests + (RECIPIENTS / 100) as u64 + 2 * (RECIPIENTS / 500) as u64,
        "only the failed recipients were sent again"
    );
    assert!(
        inbox_by_openid(&harness)
            .values()
            .all(|msgids| msgids.len() == 1)
    );
}

#[tokio::test]
async fn invalid_recipients_get_their_own_results_and_the_rest_are_delivered() {
    let mut harness = harness_with(SandboxConfig::default(), 64, 100_000, |_| {}).await;
    let too_many_keys: BTreeMap<_, _> = (10..40)
        .map(|n| (format!("thing{n}"), "课程".to_owned()))
        .collect();
    let request = pb::BatchSendRequest {
        page: "pages/course/list".into(),
        lang: "en_US".into(),
        miniprogram_state: pb::MiniprogramState::Developer as i32,
        ..batch([
            recipient(openid(0)),
            pb::Recipient {
                touser: openid(1),
                page: "pages/course/detail?id=1".into(),
                data: BTreeMap::from([("phrase1".to_owned(), "李小三".to_owned())]),
            },
            pb::Recipient {
                touser: openid(2),
                data: too_many_keys,
                ..Default::default()
            },
            recipient(""),
            pb::Recipient {
                touser: openid(4),
                data: BTreeMap::from([("phrase1".to_owned(), "a phrase far too long".to_owned())]),
                ..Default::default()
            },
            recipient(openid(5)),
        ])
    };
    let response = harness
        .client
        .batch_send(request)
        .await
        .expect("answered")
        .into_inner();
    let codes: Vec<_> = response.results.iter().map(code).collect();
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::Ok
        ]
    );
    assert_eq!((response.succeeded, response.failed), (3, 3));
    let messages: Vec<_> = response
        .results
        .iter()
        .map(|r| r.message.as_str())
        .collect();
    assert!(
        messages[2].contains("recipients[2].data:"),
        "{}",
        messages[2]
    );
    assert!(messages[2].contains("33 keywords"), "{}", messages[2]);
    assert!(
        messages[3].contains("recipients[3].touser"),
        "{}",
        messages[3]
    );
    assert!(
        messages[4].contains("recipients[4].data.phrase1"),
        "{}",
        messages[4]
    );
    for invalid in &response.results[2..5] {
        assert_eq!((invalid.attempts, invalid.wechat_errcode), (0, 0));
    }

    // Exactly three messages went out, each with the shared fields and its own overrides.
    let bodies: BTreeMap<String, serde_json::Value> = harness
        .sandbox()
        .send_requests()
        .into_iter()
        .map(|send| {
            let body = send.body.unwrap();
            (body["touser"].as_str().unwrap().to_owned(), body)
        })
        .collect();
    assert_eq!(bodies.len(), 3);
    let expected = |touser: String, page: &str, phrase1: &str| {
        serde_json::json!({
            "touser": touser,
            "template_id": COURSE_REMINDER,
            "page": page,
            "data": {
                "phrase1": {"value": phrase1},
                "date5": {"value": "2019年10月1日 15:01"},
                "phrase4": {"value": "李老师"},
            },
            "miniprogram_state": "developer",
            "lang": "en_US",
        })
    };
    assert_eq!(
        bodies[&openid(0)],
        expected(openid(0), "pages/course/list", "王小二")
    );
    assert_eq!(
        bodies[&openid(1)],
        expected(openid(1), "pages/course/detail?id=1", "李小三")
    );
    assert_eq!(
        bodies[&openid(5)],
        expected(openid(5), "pages/course/list", "王小二")
    );
}

/// A large batch runs in stripes, one per runtime worker: results stay in request order and a
/// bad recipient in a later stripe is named by its index in the whole request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_striped_batch_answers_in_order_and_names_recipients_by_their_request_index() {
    const RECIPIENTS: usize = 300;
    const INVALID: [usize; 2] = [40, 260];
    let mut harness = harness_with(SandboxConfig::default(), 16, 100_000, |_| {}).await;
    let recipients = (0..RECIPIENTS).map(|index| pb::Recipient {
        page: if INVALID.contains(&index) {
            "p".repeat(2_000)
        } else {
            String::new()
        },
        ..recipient(openid(index))
    });
    let response = harness
        .client
        .batch_send(batch(recipients))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(response.results.len(), RECIPIENTS);
    for (index, result) in response.results.iter().enumerate() {
        assert_eq!(result.touser, openid(index), "results are in request order");
        if INVALID.contains(&index) {
            assert_eq!(code(result), Code::InvalidArgument);
            let path = format!("recipients[{index}].page");
            assert!(result.message.contains(&path), "{}", result.message);
        } else {
            assert_delivered(index, result);
        }
    }
    assert_eq!(inbox_by_openid(&harness).len(), RECIPIENTS - INVALID.len());
    assert!(harness.sandbox().stats().max_concurrent_sends <= 16);
}

#[tokio::test]
async fn without_a_shared_page_only_recipients_with_their_own_page_send_one() {
    let mut harness = harness_with(SandboxConfig::default(), 64, 100_000, |_| {}).await;
    let response = harness
        .client
        .batch_send(batch([
            recipient(openid(0)),
            pb::Recipient {
                page: "pages/me".into(),
                ..recipient(openid(1))
            },
        ]))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!((response.succeeded, response.failed), (2, 0));
    let pages: BTreeMap<_, _> = harness
        .sandbox()
        .send_requests()
        .into_iter()
        .map(|send| {
            let body = send.body.unwrap();
            (
                body["touser"].as_str().unwrap().to_owned(),
                body.get("page").cloned(),
            )
        })
        .collect();
    assert_eq!(pages[&openid(0)], None, "no page key at all");
    assert_eq!(pages[&openid(1)], Some(serde_json::json!("pages/me")));
}

#[tokio::test]
async fn a_malformed_call_fails_as_a_whole_and_sends_nothing() {
    let mut harness = harness_with(SandboxConfig::default(), 64, 100_000, |config| {
        config.max_batch_recipients = 5;
    })
    .await;
    let mut bad_shared_value = course_data();
    bad_shared_value.insert("phrase4".into(), "a phrase far too long".into());
    for (request, fields) in [
        (
            pb::BatchSendRequest {
                template_id: String::new(),
                ..batch_of(2)
            },
            vec!["template_id"],
        ),
        (batch_of(0), vec!["recipients"]),
        (batch_of(6), vec!["recipients"]),
        (
            pb::BatchSendRequest {
                data: bad_shared_value,
                ..batch_of(2)
            },
            vec!["data.phrase4"],
        ),
        (
            pb::BatchSendRequest {
                lang: "fr_FR".into(),
                ..batch_of(2)
            },
            vec!["lang"],
        ),
        (
            pb::BatchSendRequest {
                miniprogram_state: 42,
                ..batch_of(2)
            },
            vec!["miniprogram_state"],
        ),
        (
            pb::BatchSendRequest {
                idempotency_key: "k".repeat(257),
                ..batch_of(2)
            },
            vec!["idempotency_key"],
        ),
    ] {
        let status = harness.client.batch_send(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{fields:?}");
        assert_eq!(bad_fields(&status), fields);
    }
    let status = harness
        .client
        .batch_send(pb::BatchSendRequest {
            app: "nope".into(),
            ..batch_of(2)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(harness.sandbox().stats().send_requests, 0);

    // The limit itself is allowed.
    let response = harness
        .client
        .batch_send(batch_of(5))
        .await
        .expect("five is the limit")
        .into_inner();
    assert_eq!(response.succeeded, 5);
}

#[tokio::test]
async fn a_repeated_openid_in_a_keyed_batch_is_delivered_once() {
    let mut harness = harness_with(SandboxConfig::default(), 64, 100_000, |_| {}).await;
    let response = harness
        .client
        .batch_send(pb::BatchSendRequest {
            idempotency_key: "twice".into(),
            ..batch([recipient(OPENID), recipient(openid(1)), recipient(OPENID)])
        })
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(response.succeeded, 3);
    let (first, second) = (&response.results[0], &response.results[2]);
    assert_eq!(first.msgid, second.msgid);
    assert!(
        first.deduplicated != second.deduplicated,
        "one of them sent"
    );
    assert_eq!(harness.sandbox().inbox(Some(OPENID)).len(), 1);
    assert_eq!(harness.sandbox().stats().send_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_sends_never_exceed_max_in_flight_across_batches_and_single_sends() {
    const MAX_IN_FLIGHT: usize = 4;
    let harness = harness_with(SandboxConfig::default(), MAX_IN_FLIGHT, 100_000, |_| {}).await;
    // Slow answers, so sends pile up against the bound.
    harness
        .sandbox()
        .inject(Fault::latency(Duration::from_millis(40)));
    let batches = (0..2).map(|batch_index| {
        let mut client = harness.client.clone();
        async move {
            let request = batch((0..40).map(|index| recipient(openid(batch_index * 100 + index))));
            let response = client.batch_send(request).await.expect("answered");
            response.into_inner().succeeded
        }
    });
    let singles = (0..20).map(|index| {
        let mut client = harness.client.clone();
        async move {
            client
                .send_subscribe(course_request(&openid(1_000 + index)))
                .await
                .expect("sent");
        }
    });
    let (succeeded, _) = tokio::join!(join_all(batches), join_all(singles));
    assert_eq!(succeeded, [40, 40]);
    let stats = harness.sandbox().stats();
    assert_eq!(stats.delivered, 100);
    assert!(
        stats.max_concurrent_sends <= MAX_IN_FLIGHT as u64,
        "{} sends in flight at once",
        stats.max_concurrent_sends
    );
    assert!(stats.max_concurrent_sends >= 2, "the sends did overlap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_shared_with_send_subscribe_and_holds_after_a_stall() {
    const RATE: u32 = 8;
    const BATCH: usize = 8;
    const SINGLES: usize = 32;
    let harness = harness_with(SandboxConfig::default(), 4, RATE, |config| {
        config.client.request_timeout = Duration::from_secs(5);
    })
    .await;
    // The first four sends stall WeChat for two seconds. Callers queued meanwhile must not
    // bank rate tokens and then all go at once when it recovers.
    harness
        .sandbox()
        .inject(Fault::latency(Duration::from_secs(2)).times(4));
    let started = Instant::now();
    let batch_call = {
        let mut client = harness.client.clone();
        async move {
            client
                .batch_send(batch((0..BATCH).map(|index| recipient(openid(index)))))
                .await
                .expect("answered")
                .into_inner()
        }
    };
    let singles = (0..SINGLES).map(|index| {
        let mut client = harness.client.clone();
        async move {
            client
                .send_subscribe(course_request(&openid(100 + index)))
                .await
                .expect("sent");
        }
    });
    let (response, _) = tokio::join!(batch_call, join_all(singles));
    let elapsed = started.elapsed();
    assert_eq!(response.succeeded as usize, BATCH);

    // One limiter for both: 40 sends at 8/s with a burst of 8 take at least 4 s (two limiters
    // would take 3 s). A lower bound on elapsed time cannot flake.
    let total = (BATCH + SINGLES) as u32;
    let minimum = Duration::from_secs_f64(f64::from(total - RATE) / f64::from(RATE));
    assert!(
        elapsed >= minimum - Duration::from_millis(100),
        "{total} sends took {elapsed:?}, the limit allows no less than {minimum:?}"
    );
    // At most a burst plus one second's worth in any one-second window, as WeChat saw it; the
    // margin of one more second's worth absorbs loopback and scheduling delays.
    let mut times: Vec<u64> = harness
        .sandbox()
        .send_requests()
        .iter()
        .map(|send| send.time_unix_ms)
        .collect();
    assert_eq!(times.len(), total as usize);
    times.sort_unstable();
    let busiest_second = times
        .iter()
        .enumerate()
        .map(|(start, &t)| times[start..].partition_point(|&u| u < t + 1_000))
        .max()
        .unwrap();
    assert!(
        busiest_second <= 3 * RATE as usize,
        "{busiest_second} sends within one second at {RATE}/s"
    );
}

/// Runs `request` again without a deadline (same key) and checks every recipient ends up
/// delivered exactly once, the ones sent by the first call answered as `deduplicated`.
async fn retry_delivers_each_recipient_once(
    harness: &mut Harness,
    request: pb::BatchSendRequest,
    sent_by_first_call: u64,
) {
    let before_retry = inbox_by_openid(harness);
    assert_eq!(before_retry.len() as u64, sent_by_first_call);
    let response = harness
        .client
        .batch_send(request.clone())
        .await
        .expect("the retry is answered")
        .into_inner();
    assert_eq!(response.succeeded as usize, request.recipients.len());
    let inbox = inbox_by_openid(harness);
    for (result, recipient) in response.results.iter().zip(&request.recipients) {
        assert_eq!(result.touser, recipient.touser);
        assert_eq!(
            inbox.get(&recipient.touser),
            Some(&vec![result.msgid]),
            "{} delivered exactly once",
            recipient.touser
        );
        assert_eq!(
            result.deduplicated,
            before_retry.contains_key(&recipient.touser),
            "{}: deduplicated exactly when the first call sent it",
            recipient.touser
        );
    }
    assert_eq!(
        harness.sandbox().stats().send_requests,
        request.recipients.len() as u64,
        "one send per recipient over both calls"
    );
}

/// After a call ended early: waits for its in-flight sends, checks that only part of the batch
/// was sent and that nothing new starts, and returns how many were sent. On paused time, the
/// sleep lets everything that would still happen within a round of sends happen.
async fn only_part_was_sent(harness: &Harness, recipients: usize) -> u64 {
    wait_for_sends_to_settle(harness).await;
    let sent = harness.sandbox().stats().send_requests;
    assert!(
        0 < sent && sent < recipients as u64,
        "{sent} of {recipients} sent"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        harness.sandbox().stats().send_requests,
        sent,
        "no send started after the call ended"
    );
    sent
}

/// A keyed batch of `recipients` for an app sending two at a time, each answered after 300 ms,
/// with a warm token: sends start at about 0, 300 and 600 ms, so a call ended at 450 ms ends
/// half-way between two rounds.
async fn two_at_a_time_300_ms_each(
    key: &str,
    recipients: usize,
) -> (Harness, pb::BatchSendRequest) {
    let harness = harness_with(SandboxConfig::default(), 2, 100_000, |config| {
        config.warm_tokens = true;
    })
    .await;
    harness
        .sandbox()
        .inject(Fault::latency(Duration::from_millis(300)));
    let request = pb::BatchSendRequest {
        idempotency_key: key.into(),
        ..batch_of(recipients)
    };
    (harness, request)
}

#[tokio::test(start_paused = true)]
async fn after_the_deadline_no_send_starts_and_a_retry_delivers_each_recipient_once() {
    const RECIPIENTS: usize = 20;
    let (mut harness, request) = two_at_a_time_300_ms_each("late-reminders", RECIPIENTS).await;
    let mut with_deadline = Request::new(request.clone());
    with_deadline.set_timeout(Duration::from_millis(450));
    let status = harness.client.batch_send(with_deadline).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let sent = only_part_was_sent(&harness, RECIPIENTS).await;

    harness.sandbox().clear_faults();
    retry_delivers_each_recipient_once(&mut harness, request, sent).await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_hangs_up_stops_new_sends() {
    const RECIPIENTS: usize = 20;
    let (mut harness, request) = two_at_a_time_300_ms_each("abandoned-reminders", RECIPIENTS).await;
    // No grpc-timeout: the server learns of it only when the client resets the stream.
    let mut client = harness.client.clone();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(450),
        client.batch_send(request.clone()),
    )
    .await;
    assert!(abandoned.is_err(), "the call was still running");
    drop(client);
    let sent = only_part_was_sent(&harness, RECIPIENTS).await;

    harness.sandbox().clear_faults();
    retry_delivers_each_recipient_once(&mut harness, request, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_daily_quota_answer_the_rest_of_the_batch_is_not_sent() {
    const QUOTA: u64 = 30;
    const MAX_IN_FLIGHT: usize = 8;
    let quota = SandboxConfig {
        daily_quota: Some(QUOTA),
        ..SandboxConfig::default()
    };
    let mut harness = harness_with(quota, MAX_IN_FLIGHT, 100_000, |_| {}).await;
    let response = harness
        .client
        .batch_send(batch_of(200))
        .await
        .expect("answered")
        .into_inner();
    let stats = harness.sandbox().stats();
    assert_eq!(stats.delivered, QUOTA);
    assert_eq!(response.succeeded as u64, QUOTA);
    assert!(
        stats.send_requests <= QUOTA + MAX_IN_FLIGHT as u64,
        "{} sends: only those already in flight may follow the first 45009",
        stats.send_requests
    );
    let mut answered_45009 = 0;
    let mut not_sent = 0;
    for result in response.results.iter().filter(|r| r.code != 0) {
        assert_eq!(code(result), Code::ResourceExhausted, "{result:?}");
        assert!(result.message.contains("45009"), "{}", result.message);
        match result.wechat_errcode {
            45009 => {
                answered_45009 += 1;
                assert_eq!(result.attempts, 1, "not retried");
            }
            0 => {
                not_sent += 1;
                assert_eq!(result.attempts, 0);
            }
            other => panic!("unexpected errcode {other}"),
        }
    }
    assert!(answered_45009 >= 1);
    assert_eq!(answered_45009, stats.send_requests - QUOTA);
    assert_eq!(answered_45009 + not_sent + QUOTA, 200);
}

#[tokio::test(start_paused = true)]
async fn after_a_minute_limit_answer_the_app_pauses_and_a_short_deadline_is_answered_at_once() {
    const LIMIT: u64 = 5;
    let limited = SandboxConfig {
        minute_limit: Some(LIMIT),
        ..SandboxConfig::default()
    };
    // One at a time, so the order of events is fixed.
    let mut harness = harness_with(limited, 1, 100_000, |_| {}).await;
    // The pause lasts until the next wall-clock minute on the app's quota clock, which runs on
    // tokio's: start just after a minute turns, so the pause is well past the deadline below.
    let deadline = Duration::from_secs(3);
    let quota_clock = *harness.server.notifier().apps()[0].quota_clock();
    tokio::time::sleep_until(quota_clock.next_minute()).await;
    let mut request = Request::new(batch_of(20));
    request.set_timeout(deadline);
    let started = tokio::time::Instant::now();
    let response = harness
        .client
        .batch_send(request)
        .await
        .expect("answered before the deadline")
        .into_inner();
    assert!(started.elapsed() < deadline);
    let results = &response.results;
    assert!(results[..5].iter().all(|r| r.code == 0));
    assert_eq!(code(&results[5]), Code::ResourceExhausted);
    assert_eq!((results[5].wechat_errcode, results[5].attempts), (45011, 1));
    for result in &results[6..] {
        assert_eq!(code(result), Code::ResourceExhausted, "{result:?}");
        assert_eq!((result.wechat_errcode, result.attempts), (0, 0));
        assert!(result.message.contains("45011"), "{}", result.message);
    }
    assert_eq!(harness.sandbox().stats().send_requests, LIMIT + 1);

    // The pause is the app's: a single send is turned away too, without a call.
    let mut single = Request::new(course_request(OPENID));
    single.set_timeout(deadline);
    let status = harness.client.send_subscribe(single).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());
    assert_eq!(harness.sandbox().stats().send_requests, LIMIT + 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_joining_a_stopped_call_with_the_same_key_still_sends() {
    let harness = harness_with(SandboxConfig::default(), 1, 100_000, |_| {}).await;
    // On paused time each sleep below runs everything that can run, then moves the clock: the
    // calls reach the server in this order, at 0, 100 and 200 ms.
    // A slow single send holds the app's only in-flight slot until 700 ms.
    harness
        .sandbox()
        .inject(Fault::latency(Duration::from_millis(700)).times(1));
    let mut client = harness.client.clone();
    let slow = tokio::spawn(async move { client.send_subscribe(course_request(OPENID)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A keyed batch that gives up while waiting for the slot, and its retry (no deadline)
    // arriving while the first still waits: the first's "not started" is not the retry's.
    let request = pb::BatchSendRequest {
        idempotency_key: "joined".into(),
        ..batch_of(1)
    };
    let mut impatient = Request::new(request.clone());
    impatient.set_timeout(Duration::from_millis(300));
    let mut client = harness.client.clone();
    let first = tokio::spawn(async move { client.batch_send(impatient).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = harness.client.clone().batch_send(request).await;

    assert!(first.await.unwrap().is_err(), "the first call gave up");
    slow.await.unwrap().expect("the slow send went through");
    let retry = retry.expect("answered").into_inner();
    assert_eq!(code(&retry.results[0]), Code::Ok, "{:?}", retry.results[0]);
    assert_eq!(harness.sandbox().inbox(Some(&openid(0))).len(), 1);
}
