//! Several replicas of the real binary on one Redis behave as one service: one token fetch for
//! a herd, one send per idempotency key, the app's rate as a total, a shared 45011 pause, and
//! keyed sends refused (not risked) while Redis is down, one subscription ledger and its events
//! for all. The same core promises on a real three-node Redis Cluster.

mod common;

use std::time::Duration;

use common::{redis::*, *};
use tonic::Code;
use wechat_notify::pb::{self, subscription_service_client::SubscriptionServiceClient};
use wechat_notify_sandbox::{Fault, Sandbox, SandboxConfig, SandboxServer};

const READY: Duration = Duration::from_secs(30);

struct Cluster {
    sandbox: SandboxServer,
    replicas: Vec<Replica>,
}

impl Cluster {
    async fn start(redis_url: &str, extra: &[(&str, String)], count: usize) -> Cluster {
        let sandbox = Sandbox::new(SandboxConfig::default())
            .spawn(loopback())
            .await
            .unwrap();
        let mut env = vec![("NOTIFY_REDIS_URL", redis_url.to_owned())];
        env.extend(extra.iter().cloned());
        let app = sandbox.sandbox().config().apps[0].clone();
        let replicas = (0..count)
            .map(|_| Replica::spawn(&app, sandbox.base_url().as_str(), &env))
            .collect();
        Cluster { sandbox, replicas }
    }

    async fn clients(
        &self,
    ) -> Vec<pb::notify_service_client::NotifyServiceClient<tonic::transport::Channel>> {
        let mut clients = Vec::new();
        for replica in &self.replicas {
            clients.push(replica.serving(READY).await);
        }
        clients
    }

    fn sandbox(&self) -> &Sandbox {
        self.sandbox.sandbox()
    }
}

fn keyed(touser: &str, key: &str) -> pb::SendSubscribeRequest {
    pb::SendSubscribeRequest {
        idempotency_key: key.to_owned(),
        ..course_request(touser)
    }
}

/// 300 concurrent sends over the replicas of a cold start: one token fetch in all.
async fn herd_fetches_one_token(cluster: &Cluster) {
    let clients = cluster.clients().await;
    let mut calls = Vec::new();
    for index in 0..300 {
        let mut client = clients[index % clients.len()].clone();
        calls.push(tokio::spawn(async move {
            client.send_subscribe(course_request(&openid(index))).await
        }));
    }
    for call in calls {
        call.await.unwrap().expect("the send succeeds");
    }
    assert_eq!(cluster.sandbox().stats().total_token_fetches(), 1);
}

/// One key retried on every replica, and 30 concurrent calls of another key over them: each
/// key is sent once and every caller gets its msgid.
async fn one_send_per_key(cluster: &Cluster) {
    let clients = cluster.clients().await;
    let before = cluster.sandbox().stats().delivered;
    let mut first = clients[0].clone();
    let sent = first
        .send_subscribe(keyed(OPENID, "retried"))
        .await
        .unwrap()
        .into_inner();
    for client in &clients[1..] {
        let answer = client
            .clone()
            .send_subscribe(keyed(OPENID, "retried"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.msgid, sent.msgid);
        assert!(answer.deduplicated);
    }
    let mut calls = Vec::new();
    for index in 0..30 {
        let mut client = clients[index % clients.len()].clone();
        calls.push(tokio::spawn(async move {
            client.send_subscribe(keyed(OPENID, "concurrent")).await
        }));
    }
    let mut msgids = std::collections::HashSet::new();
    for call in calls {
        msgids.insert(call.await.unwrap().expect("answered").into_inner().msgid);
    }
    assert_eq!(msgids.len(), 1, "every caller got the one outcome");
    assert_eq!(cluster.sandbox().stats().delivered - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_over_three_replicas_fetches_one_token_and_each_key_sends_once() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 3).await;
    herd_fetches_one_token(&cluster).await;
    // A replica started later, warming its token up, uses the stored one.
    let app = cluster.sandbox().config().apps[0].clone();
    let late = Replica::spawn(
        &app,
        cluster.sandbox.base_url().as_str(),
        &[
            ("NOTIFY_REDIS_URL", redis.url()),
            ("NOTIFY_WARM_TOKENS", "true".to_owned()),
        ],
    );
    late.serving(READY)
        .await
        .send_subscribe(course_request(&openid(1000)))
        .await
        .expect("the late replica sends");
    assert_eq!(cluster.sandbox().stats().total_token_fetches(), 1);
    one_send_per_key(&cluster).await;
}

/// Settles are announced (PUBLISH on the wake-up channel) only when another replica waits: a
/// keyed send nobody waits for publishes nothing, and one that another replica is waiting on
/// still wakes it, which then answers from the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_send_another_replica_waits_on_wakes_it_and_no_other_send_publishes() {
    use futures::StreamExt;

    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 2).await;
    let clients = cluster.clients().await;
    // Tokens first: a fetch lock's release is announced on the same channel.
    for (index, client) in clients.iter().enumerate() {
        client
            .clone()
            .send_subscribe(course_request(&openid(index)))
            .await
            .expect("sent");
    }
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut wakeups = client.get_async_pubsub().await.unwrap();
    wakeups.subscribe("wechat-notify:wake").await.unwrap();
    let mut wakeups = wakeups.into_on_message();

    // Nobody waits: no announcement (had there been one, it would come first below).
    clients[0]
        .clone()
        .send_subscribe(keyed(OPENID, "alone"))
        .await
        .expect("sent");

    // Replica 0's send is held at WeChat while replica 1 asks with the same key.
    cluster
        .sandbox()
        .inject(Fault::latency(Duration::from_secs(3)).times(1));
    let requests = cluster.sandbox().stats().send_requests;
    let mut first = clients[0].clone();
    let sending = tokio::spawn(async move { first.send_subscribe(keyed(OPENID, "waited")).await });
    while cluster.sandbox().stats().send_requests == requests {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = clients[1].clone();
    let waiting = tokio::spawn(async move { second.send_subscribe(keyed(OPENID, "waited")).await });

    let woken = tokio::time::timeout(Duration::from_secs(20), wakeups.next())
        .await
        .expect("the settle was announced")
        .unwrap();
    let key: String = woken.get_payload().unwrap();
    assert!(key.ends_with("\nsend\nwaited"), "{key:?}");
    let sent = sending.await.unwrap().unwrap().into_inner();
    let answered = waiting.await.unwrap().unwrap().into_inner();
    assert!(answered.deduplicated);
    assert_eq!(answered.msgid, sent.msgid);
    assert_eq!(cluster.sandbox().inbox(Some(OPENID)).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_too() {
    let redis = RedisCluster::start().await;
    let cluster = Cluster::start(
        &redis.urls(),
        &[("NOTIFY_REDIS_CLUSTER", "true".to_owned())],
        3,
    )
    .await;
    herd_fetches_one_token(&cluster).await;
    one_send_per_key(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refreshed_once_for_all_replicas() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 3).await;
    let clients = cluster.clients().await;
    for (index, client) in clients.iter().enumerate() {
        client
            .clone()
            .send_subscribe(course_request(&openid(index)))
            .await
            .unwrap();
    }
    let appid = cluster.sandbox().config().apps[0].appid.clone();
    let before = cluster.sandbox().stats().token_fetches[&appid].clone();
    cluster.sandbox().revoke_tokens(&appid);
    let mut calls = Vec::new();
    for index in 0..30 {
        let mut client = clients[index % clients.len()].clone();
        calls.push(tokio::spawn(async move {
            client
                .send_subscribe(course_request(&openid(100 + index)))
                .await
        }));
    }
    for call in calls {
        call.await.unwrap().expect("sent after one refresh");
    }
    let after = cluster.sandbox().stats().token_fetches[&appid].clone();
    assert_eq!(before.stable, 1, "one fetch at the start");
    // The sandbox issues a new stable token once the old one is revoked: one normal fetch.
    assert_eq!(
        (after.stable - before.stable, after.force_refreshes),
        (1, 0),
        "{before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_met_on_every_replica_forces_one_refresh_for_all() {
    // The token is fine, but WeChat rejects it for one user: every replica meets the rejection,
    // WeChat hands the same token back, and only the shared budget keeps it to one force.
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 3).await;
    let clients = cluster.clients().await;
    for (index, client) in clients.iter().enumerate() {
        client
            .clone()
            .send_subscribe(course_request(&openid(index)))
            .await
            .unwrap();
    }
    let appid = cluster.sandbox().config().apps[0].appid.clone();
    let started = tokio::time::Instant::now();
    let faulty = openid(99);
    cluster
        .sandbox()
        .inject(Fault::errcode(40001).for_openid(&faulty));
    // Twice round: the second time each replica rejects the token the first force produced,
    // and WeChat hands that one back too; each replica's own budget would force again.
    for _ in 0..2 {
        for client in &clients {
            let rejected = client
                .clone()
                .send_subscribe(course_request(&faulty))
                .await
                .unwrap_err();
            assert_eq!(errcode(&rejected), Some(40001));
        }
    }
    for (index, client) in clients.iter().enumerate() {
        client
            .clone()
            .send_subscribe(course_request(&openid(10 + index)))
            .await
            .expect("the other users are served on every replica");
    }
    let fetches = cluster.sandbox().stats().token_fetches[&appid].clone();
    // The first fetch; in the first round a fetch and the one force (the other replicas take
    // the stored token); in the second, one fetch per replica, each kept by the shared budget.
    // A budget per replica would force on each of them too. Each further 30 s (a slow
    // machine) allows one more force.
    let windows = started.elapsed().as_secs() / 30;
    assert!(fetches.stable <= 6 + 3 * windows, "{fetches:?}");
    assert!(fetches.force_refreshes <= 1 + windows, "{fetches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_is_the_apps_total_over_all_replicas() {
    const RATE: u64 = 20;
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(
        &redis.url(),
        &[("NOTIFY_RATE_PER_SEC", RATE.to_string())],
        3,
    )
    .await;
    let clients = cluster.clients().await;
    let started = tokio::time::Instant::now();
    // Far more than the rate allows, from every replica at once; each call waits at most 3 s.
    let mut calls = Vec::new();
    for index in 0..300 {
        let mut client = clients[index % clients.len()].clone();
        calls.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(course_request(&openid(index)));
            request.set_timeout(Duration::from_secs(3));
            client.send_subscribe(request).await
        }));
    }
    for call in calls {
        let _ = call.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = cluster.sandbox().stats().delivered;
    // One second's burst, the rate over the window, one small lease per replica; alone, each
    // replica would have let its own rate through.
    let most = RATE as f64 * (1.0 + elapsed) + 3.0;
    assert!(
        (delivered as f64) <= most,
        "{delivered} delivered in {elapsed:.1}s, at most {most:.0} allowed"
    );
    assert!(delivered >= RATE * 2, "the rate was used: {delivered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_45011_on_one_replica_pauses_them_all() {
    // The pause lasts until the next minute: not too close to its end. The replicas are
    // processes of their own, on the system clock, so this waits for real (5 s at most).
    let next_minute = wechat_notify::retry::QuotaClock::system().next_minute();
    if next_minute - tokio::time::Instant::now() < Duration::from_secs(5) {
        tokio::time::sleep_until(next_minute).await;
    }
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 3).await;
    let clients = cluster.clients().await;
    cluster.sandbox().inject(Fault::errcode(45011).times(1));
    let paused = clients[0]
        .clone()
        .send_subscribe(course_request(OPENID))
        .await
        .unwrap_err();
    assert_eq!(errcode(&paused), Some(45011));
    let requests = cluster.sandbox().stats().send_requests;
    for client in &clients[1..] {
        let mut request = tonic::Request::new(course_request(&openid(1)));
        request.set_timeout(Duration::from_secs(2));
        let refused = client.clone().send_subscribe(request).await.unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::ResourceExhausted | Code::DeadlineExceeded
            ),
            "{refused:?}"
        );
    }
    assert_eq!(
        cluster.sandbox().stats().send_requests,
        requests,
        "nothing reached wechat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_45009_on_one_replica_stops_them_all() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 3).await;
    let clients = cluster.clients().await;
    cluster.sandbox().inject(Fault::errcode(45009).times(1));
    let stopped = clients[0]
        .clone()
        .send_subscribe(course_request(OPENID))
        .await
        .unwrap_err();
    assert_eq!(errcode(&stopped), Some(45009));
    let requests = cluster.sandbox().stats().send_requests;
    for client in &clients {
        let refused = client
            .clone()
            .send_subscribe(course_request(&openid(1)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.metadata().get("retry-after").is_some());
    }
    assert_eq!(
        cluster.sandbox().stats().send_requests,
        requests,
        "nothing reached wechat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_batch_cut_by_its_deadline_and_retried_elsewhere_sends_each_recipient_once() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(
        &redis.url(),
        &[("NOTIFY_RATE_PER_SEC", "200".to_owned())],
        2,
    )
    .await;
    let clients = cluster.clients().await;
    let batch = pb::BatchSendRequest {
        template_id: COURSE_REMINDER.to_owned(),
        data: course_data(),
        recipients: (0..400)
            .map(|index| pb::Recipient {
                touser: openid(index),
                ..Default::default()
            })
            .collect(),
        idempotency_key: "batch-once".to_owned(),
        ..Default::default()
    };
    let mut cut = tonic::Request::new(batch.clone());
    cut.set_timeout(Duration::from_millis(700));
    let _ = clients[0].clone().batch_send(cut).await;
    let mut retry = tonic::Request::new(batch);
    retry.set_timeout(Duration::from_secs(30));
    let answer = clients[1]
        .clone()
        .batch_send(retry)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results.len(), 400);
    // Wait for sends the cut call had started to finish, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for index in 0..400 {
        assert_eq!(
            cluster.sandbox().inbox(Some(&openid(index))).len(),
            1,
            "recipient {index}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_keyed_sends_are_refused_and_all_resumes_after() {
    let mut redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 2).await;
    let clients = cluster.clients().await;
    let sent = clients[0]
        .clone()
        .send_subscribe(keyed(OPENID, "before"))
        .await
        .unwrap()
        .into_inner();

    redis.stop();
    let mut refused = None;
    for _ in 0..100 {
        match clients[1]
            .clone()
            .send_subscribe(keyed(&openid(1), "during"))
            .await
        {
            Err(status) if status.code() == Code::Unavailable => {
                refused = Some(status);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let refused = refused.expect("a keyed send is refused while redis is down");
    use tonic_types::StatusExt;
    assert_eq!(
        refused.get_error_details().error_info().unwrap().reason,
        "STORE_UNAVAILABLE"
    );
    // Unkeyed sends go on, the ledger (observe, the default) unread and unwritten.
    clients[1]
        .clone()
        .send_subscribe(course_request(&openid(2)))
        .await
        .expect("unkeyed sends go on");
    let port = cluster.replicas[1].port;
    let mut ledger = subscriptions_client(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let unrecorded = record(&mut ledger, &openid(2), "accept").await.unwrap_err();
    assert_eq!(unrecorded.code(), Code::Unavailable);
    assert_eq!(
        unrecorded.get_error_details().error_info().unwrap().reason,
        "STORE_UNAVAILABLE"
    );
    assert_eq!(replica_health(&cluster, 1).await, Some(1), "still SERVING");

    redis.resume().await;
    let mut again = None;
    for _ in 0..100 {
        match clients[1]
            .clone()
            .send_subscribe(keyed(OPENID, "before"))
            .await
        {
            Ok(answer) => {
                again = Some(answer.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let again = again.expect("keyed sends resume by themselves");
    assert!(
        again.deduplicated,
        "answered from the record kept over the outage"
    );
    assert_eq!(again.msgid, sent.msgid);
    assert_eq!(
        cluster.sandbox().inbox(Some(OPENID)).len(),
        1,
        "no duplicate"
    );
}

async fn replica_health(cluster: &Cluster, index: usize) -> Option<i32> {
    cluster.replicas[index].health().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_without_redis_is_not_serving_until_it_connects() {
    let mut redis = RedisServer::start().await;
    redis.stop();
    let cluster = Cluster::start(&redis.url(), &[], 1).await;
    assert_eq!(replica_health(&cluster, 0).await, Some(2), "NOT_SERVING");
    redis.resume().await;
    cluster.replicas[0].serving(READY).await;
}

async fn record(
    client: &mut SubscriptionServiceClient<tonic::transport::Channel>,
    openid: &str,
    answer: &str,
) -> Result<Vec<pb::Subscription>, tonic::Status> {
    client
        .record_subscriptions(pb::RecordSubscriptionsRequest {
            openid: openid.to_owned(),
            results: [(COURSE_REMINDER.to_owned(), answer.to_owned())].into(),
            ..Default::default()
        })
        .await
        .map(|answer| answer.into_inner().subscriptions)
}

async fn get(
    client: &mut SubscriptionServiceClient<tonic::transport::Channel>,
    openid: &str,
) -> Vec<pb::Subscription> {
    client
        .get_subscriptions(pb::GetSubscriptionsRequest {
            openid: openid.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subscriptions
}

/// The next change event for `openid` on `watch`, if one comes within `limit`.
async fn change_for(
    watch: &mut tonic::Streaming<pb::Event>,
    openid: &str,
    limit: Duration,
) -> Option<pb::Subscription> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, watch.message())
            .await
            .ok()?
            .unwrap()?
            .event;
        if let Some(pb::event::Event::SubscriptionChanged(change)) = event
            && change.openid == openid
        {
            return change.subscription;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_and_its_events_are_shared_by_the_replicas() {
    let redis = RedisServer::start().await;
    let enforce = [("NOTIFY_SUBSCRIPTION_CHECK", "enforce".to_owned())];
    let cluster = Cluster::start(&redis.url(), &enforce, 2).await;
    let clients = cluster.clients().await;
    let mut ledgers = Vec::new();
    for replica in &cluster.replicas {
        ledgers.push(
            subscriptions_client(format!("127.0.0.1:{}", replica.port).parse().unwrap()).await,
        );
    }

    // Recorded on A, read on B.
    let accepted = openid(1);
    let recorded = record(&mut ledgers[0], &accepted, "accept").await.unwrap();
    assert_eq!(get(&mut ledgers[1], &accepted).await, recorded);

    // A watcher on B sees a change made through A. B's subscription to the shared events may
    // still be starting when its first watcher opens: record again until one arrives.
    let mut watch = ledgers[1]
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let watched = openid(2);
    let mut seen = None;
    for _ in 0..20 {
        record(&mut ledgers[0], &watched, "accept").await.unwrap();
        seen = change_for(&mut watch, &watched, Duration::from_millis(500)).await;
        if seen.is_some() {
            break;
        }
    }
    let seen = seen.expect("a change recorded on A reaches a watcher on B");
    assert_eq!(seen.status, pb::SubscriptionStatus::Accepted as i32);
    // A send on A (a grant used) reaches B's watcher too.
    clients[0]
        .clone()
        .send_subscribe(course_request(&watched))
        .await
        .expect("the user holds grants");
    // (Changes of the records above may still be queued ahead of it.)
    let used = loop {
        let change = change_for(&mut watch, &watched, Duration::from_secs(10))
            .await
            .expect("the send's outcome reaches B");
        if change.source == pb::SubscriptionSource::SendOutcome as i32 {
            break change;
        }
    };
    assert_eq!(used.source, pb::SubscriptionSource::SendOutcome as i32);
    assert_eq!(used, get(&mut ledgers[1], &watched).await[0]);

    // Enforce over replicas: rejected on A, refused on B without a call.
    let rejected = openid(3);
    record(&mut ledgers[0], &rejected, "reject").await.unwrap();
    let calls = cluster.sandbox().stats().send_requests;
    let refused = clients[1]
        .clone()
        .send_subscribe(course_request(&rejected))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    use tonic_types::StatusExt;
    assert_eq!(
        refused.get_error_details().error_info().unwrap().reason,
        "NOT_SUBSCRIBED"
    );
    assert_eq!(cluster.sandbox().stats().send_requests, calls, "no call");

    // Concurrent accepts of one user over both replicas: none is lost (each is a grant).
    let herd = openid(4);
    let accepts = (0..20).map(|n| {
        let mut ledger = ledgers[n % 2].clone();
        let herd = herd.clone();
        tokio::spawn(async move { record(&mut ledger, &herd, "accept").await })
    });
    for accept in futures::future::join_all(accepts).await {
        accept.unwrap().expect("every accept is recorded");
    }
    assert_eq!(get(&mut ledgers[1], &herd).await[0].remaining, 20);
}

/// Under `observe`, a send's outcome reaches the shared ledger in one step after the send (for a
/// keyed send, inside its record's script): a grant used by a keyed send on a known user, a
/// 43101 on an unknown one, and nothing for a delivery to an unknown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_outcomes_reach_the_shared_ledger_keyed_or_not() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 2).await;
    let clients = cluster.clients().await;
    let mut ledger = subscriptions_client(
        format!("127.0.0.1:{}", cluster.replicas[0].port)
            .parse()
            .unwrap(),
    )
    .await;

    let known = openid(1);
    record(&mut ledger, &known, "accept").await.unwrap();
    record(&mut ledger, &known, "accept").await.unwrap();
    assert_eq!(get(&mut ledger, &known).await[0].remaining, 2);
    clients[1]
        .clone()
        .send_subscribe(keyed(&known, "known-1"))
        .await
        .expect("sent");
    let after = get(&mut ledger, &known).await;
    assert_eq!(after[0].remaining, 1, "the grant used is recorded");
    assert_eq!(after[0].source, pb::SubscriptionSource::SendOutcome as i32);
    clients[0]
        .clone()
        .send_subscribe(course_request(&known))
        .await
        .expect("sent");
    assert_eq!(get(&mut ledger, &known).await[0].remaining, 0);

    let unknown = openid(2);
    clients[1]
        .clone()
        .send_subscribe(keyed(&unknown, "unknown-1"))
        .await
        .expect("sent");
    assert!(get(&mut ledger, &unknown).await.is_empty(), "nothing known");

    cluster
        .sandbox()
        .inject(Fault::errcode(43101).for_openid(&unknown).times(1));
    let refused = clients[1]
        .clone()
        .send_subscribe(keyed(&unknown, "unknown-2"))
        .await
        .unwrap_err();
    assert_eq!(errcode(&refused), Some(43101));
    let entry = get(&mut ledger, &unknown).await;
    assert_eq!(entry.len(), 1);
    assert_eq!(entry[0].source, pb::SubscriptionSource::SendOutcome as i32);
    assert_eq!(entry[0].remaining, 0);
}
