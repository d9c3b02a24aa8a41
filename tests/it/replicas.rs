//! Several replicas of the real binary on one Redis behave as one service: one token fetch for
//! a herd, one send per idempotency key, the app's rate as a total, a shared 45011 pause, and
//! keyed sends refused (not risked) while Redis is down, one subscription ledger and its events
//! for all. The same core promises on a real three-node Redis Cluster.

use std::time::Duration;

use crate::common::{redis::*, *};
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

    /// A SubscriptionService client of replica `index`.
    async fn ledger(&self, index: usize) -> SubscriptionServiceClient<tonic::transport::Channel> {
        let port = self.replicas[index].port;
        subscriptions_client(format!("127.0.0.1:{port}").parse().unwrap()).await
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
    send_on_each(&clients, 0, "sent").await;
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
    one_fetch_per_rejected_token(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refreshed_once_for_all_replicas() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 3).await;
    let clients = cluster.clients().await;
    send_on_each(&clients, 0, "sent").await;
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

/// A replica that dies in the middle of the fetch a rejection earned does not hold the others
/// back for longer than the fetch lock's life (20 s): its claim of the fetch lapses, and the
/// next replica to meet the rejected token claims the fetch itself and sends. (Before, the
/// others waited out their whole bound and kept the revoked token.) Takes about 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_mid_rejection_fetch_holds_the_others_back_no_longer_than_the_lock() {
    let redis = RedisServer::start().await;
    let mut cluster = Cluster::start(&redis.url(), &[], 2).await;
    let clients = cluster.clients().await;
    send_on_each(&clients, 0, "sent").await;
    let appid = cluster.sandbox().config().apps[0].appid.clone();
    // The first replica meets the revoked token, claims the fetch and hangs in it.
    cluster
        .sandbox()
        .inject(Fault::latency(Duration::from_secs(120)).on_token_endpoint());
    cluster.sandbox().revoke_tokens(&appid);
    let mut dying = clients[0].clone();
    let hung = tokio::spawn(async move { dying.send_subscribe(course_request(&openid(1))).await });
    eventually("the first replica holding the fetch lock", || async {
        let held = redis.cli(&["--scan", "--pattern", "*token-lock*"]);
        let claimed = redis.cli(&["--scan", "--pattern", "*rejected:*"]);
        (!held.trim().is_empty() && !claimed.trim().is_empty()).then_some(())
    })
    .await;
    drop(cluster.replicas.remove(0));
    let _ = hung.await;
    cluster.sandbox().clear_faults();

    let mut request = tonic::Request::new(course_request(&openid(2)));
    request.set_timeout(Duration::from_secs(60));
    clients[1]
        .clone()
        .send_subscribe(request)
        .await
        .expect("the other replica fetches once the dead one's claim lapses, and sends");
}

/// The token is fine, but WeChat rejects it for one user: every replica meets the rejection at
/// once and WeChat hands the same token back; the replicas ask WeChat about it once between
/// them (the `rejected:` record in Redis), not once each.
async fn one_fetch_per_rejected_token(cluster: &Cluster) {
    let clients = cluster.clients().await;
    let appid = cluster.sandbox().config().apps[0].appid.clone();
    let faulty = openid(299);
    cluster
        .sandbox()
        .inject(Fault::errcode(40001).for_openid(&faulty));
    // A first rejection, on one replica: its fetch gets the token back and the shared budget
    // forces a new one. The others meet the revoked token on their next send and take the new
    // one from Redis. The force budget is now spent for 30 s.
    let rejected = clients[0]
        .clone()
        .send_subscribe(course_request(&faulty))
        .await
        .unwrap_err();
    assert_eq!(errcode(&rejected), Some(40001));
    send_on_each(&clients, 200, "every replica sends with the new token").await;
    // Now the same rejection on every replica at once, of the token they all hold.
    let before = cluster.sandbox().stats().token_fetches[&appid].clone();
    let mut calls = Vec::new();
    for index in 0..3 * clients.len() {
        let mut client = clients[index % clients.len()].clone();
        let faulty = faulty.clone();
        calls.push(tokio::spawn(async move {
            client.send_subscribe(course_request(&faulty)).await
        }));
    }
    for call in calls {
        let rejected = call.await.unwrap().unwrap_err();
        assert_eq!(errcode(&rejected), Some(40001));
    }
    let after = cluster.sandbox().stats().token_fetches[&appid].clone();
    let forced = after.force_refreshes - before.force_refreshes;
    // One fetch, which hands the token back; kept, as the budget is spent (a machine slow
    // enough to pass its 30 s forces once more, a stable call of its own). One fetch per
    // replica without the shared record.
    assert_eq!(
        after.stable - before.stable - forced,
        1,
        "{before:?} -> {after:?}"
    );
    assert!(forced <= 1, "{before:?} -> {after:?}");
    cluster.sandbox().clear_faults();
    send_on_each(&clients, 210, "the other users are served on every replica").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_met_on_every_replica_makes_one_fetch_for_all() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(&redis.url(), &[], 3).await;
    one_fetch_per_rejected_token(&cluster).await;
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
    assert_eq!(reason(&refused), "STORE_UNAVAILABLE");
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
    assert_eq!(reason(&unrecorded), "STORE_UNAVAILABLE");
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

/// One unkeyed send on each replica, to users `first`, `first + 1`, ...: each then holds a
/// token (and has run its scripts once). Panics with `what` if one fails.
async fn send_on_each(
    clients: &[pb::notify_service_client::NotifyServiceClient<tonic::transport::Channel>],
    first: usize,
    what: &str,
) {
    for (index, client) in clients.iter().enumerate() {
        client
            .clone()
            .send_subscribe(course_request(&openid(first + index)))
            .await
            .expect(what);
    }
}

/// Counter: subscriptions made to the wake-up channel.
const WAKE_SUBSCRIPTIONS: &str = "wechat_notify_store_wake_subscriptions_total";
/// Counter `{result}`: waits for another replica, woken or timed out.
const STORE_WAITS: &str = "wechat_notify_store_waits_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_wake_ups_survive_the_loss_of_the_subscribed_node() {
    wake_ups_survive_losing_the_subscribed_node(NodeLoss::Stopped).await;
}

/// A node that hangs without closing its connections: only a PING left unanswered tells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_wake_ups_survive_a_subscribed_node_that_stops_answering() {
    wake_ups_survive_losing_the_subscribed_node(NodeLoss::Frozen).await;
}

/// How a cluster node is lost.
enum NodeLoss {
    /// The process ends: its connections are closed.
    Stopped,
    /// The process hangs (SIGSTOP): its connections stay open, unanswered.
    Frozen,
}

async fn wake_ups_survive_losing_the_subscribed_node(loss: NodeLoss) {
    let mut redis = RedisCluster::start().await;
    let appid = SandboxConfig::default().apps[0].appid.clone();
    // The node to stop serves neither the app's keys nor the replica set, so that everything
    // but the wake-ups goes on as before; the replicas subscribe to it first.
    let app_node = redis.node_of(&format!("wechat-notify:{{{appid}}}:token"));
    let set_node = redis.node_of("wechat-notify:replicas");
    let victim = (0..3)
        .find(|node| *node != app_node && *node != set_node)
        .unwrap();
    let cluster = Cluster::start(
        &redis.urls_from(victim),
        &[("NOTIFY_REDIS_CLUSTER", "true".to_owned())],
        2,
    )
    .await;
    assert_eq!(cluster.sandbox().config().apps[0].appid, appid);
    let clients = cluster.clients().await;
    send_on_each(&clients, 0, "a token for each replica").await;
    let mut subscribed = Vec::new();
    for replica in &cluster.replicas {
        subscribed.push(
            eventually("the wake-up subscription", || async {
                let made = replica.metric(WAKE_SUBSCRIPTIONS, "").await;
                (made >= 1.0).then_some(made)
            })
            .await,
        );
    }

    match loss {
        NodeLoss::Stopped => redis.nodes[victim].stop(),
        NodeLoss::Frozen => redis.nodes[victim].freeze(),
    }
    for (replica, made) in cluster.replicas.iter().zip(&subscribed) {
        eventually("a subscription on another node", || async {
            (replica.metric(WAKE_SUBSCRIPTIONS, "").await > *made).then_some(())
        })
        .await;
    }

    // A keyed send held at WeChat on replica 0; the same key on replica 1 waits for its claim.
    let woken = r#"result="woken""#;
    let woken_before = cluster.replicas[1].metric(STORE_WAITS, woken).await;
    let requests = cluster.sandbox().stats().send_requests;
    cluster.sandbox().inject(
        Fault::latency(Duration::from_millis(2500))
            .for_openid(OPENID)
            .times(1),
    );
    let first = tokio::spawn({
        let mut client = clients[0].clone();
        async move { client.send_subscribe(keyed(OPENID, "held")).await }
    });
    eventually("the first send at wechat", || async {
        (cluster.sandbox().stats().send_requests > requests).then_some(())
    })
    .await;
    let second = clients[1]
        .clone()
        .send_subscribe(keyed(OPENID, "held"))
        .await
        .expect("answered from the first send's record")
        .into_inner();
    let first = first.await.unwrap().expect("the first send").into_inner();
    assert_eq!(second.msgid, first.msgid);
    assert!(second.deduplicated);
    assert_eq!(cluster.sandbox().inbox(Some(OPENID)).len(), 1);
    // Its bounded waits alone would also have found the record; the count says the wake-up
    // reached it, through a node still up.
    let woken_after = cluster.replicas[1].metric(STORE_WAITS, woken).await;
    assert!(
        woken_after > woken_before,
        "the waiter was woken: {woken_before} -> {woken_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_stopped_node_holds_back_only_its_own_slots() {
    let mut redis = RedisCluster::start().await;
    let appid = SandboxConfig::default().apps[0].appid.clone();
    let app_node = redis.node_of(&format!("wechat-notify:{{{appid}}}:token"));
    let set_node = redis.node_of("wechat-notify:replicas");
    // Another node first: the replica set's if it is elsewhere (the replicas' heartbeat then
    // fails while the app's keys answer).
    let other = if set_node != app_node {
        set_node
    } else {
        (app_node + 1) % 3
    };
    let cluster = Cluster::start(
        &redis.urls(),
        &[("NOTIFY_REDIS_CLUSTER", "true".to_owned())],
        2,
    )
    .await;
    let clients = cluster.clients().await;
    let sent = clients[0]
        .clone()
        .send_subscribe(keyed(OPENID, "before"))
        .await
        .unwrap()
        .into_inner();

    // Another node down: the app's shared state goes on, across replicas, also once they have
    // met the dead node (their heartbeat, or any call routed there, failed).
    let errors = "wechat_notify_store_errors_total";
    let mut failed = Vec::new();
    for replica in &cluster.replicas {
        failed.push(replica.metric(errors, "").await);
    }
    redis.nodes[other].stop();
    if other == set_node {
        for (replica, before) in cluster.replicas.iter().zip(&failed) {
            eventually("a heartbeat failing on the stopped node", || async {
                (replica.metric(errors, "").await > *before).then_some(())
            })
            .await;
        }
    }
    let during = clients[0]
        .clone()
        .send_subscribe(keyed(&openid(1), "other-down"))
        .await
        .expect("keyed sends go on while the app's node is up")
        .into_inner();
    let retried = clients[1]
        .clone()
        .send_subscribe(keyed(&openid(1), "other-down"))
        .await
        .expect("and are answered from the record on another replica")
        .into_inner();
    assert_eq!(retried.msgid, during.msgid);
    assert!(retried.deduplicated);
    redis.nodes[other].resume().await;

    // The app's own node down: keyed sends whose record cannot be checked are refused.
    redis.nodes[app_node].stop();
    let refused = clients[1]
        .clone()
        .send_subscribe(keyed(OPENID, "before"))
        .await
        .expect_err("the record cannot be checked on replica 1");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "STORE_UNAVAILABLE");
    let fresh = clients[0]
        .clone()
        .send_subscribe(keyed(&openid(2), "app-down"))
        .await
        .expect_err("a new key cannot be claimed");
    assert_eq!(fresh.code(), Code::Unavailable, "{fresh:?}");
    clients[1]
        .clone()
        .send_subscribe(course_request(&openid(3)))
        .await
        .expect("unkeyed sends go on");

    redis.nodes[app_node].resume().await;
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
    assert!(again.deduplicated);
    assert_eq!(again.msgid, sent.msgid);
    clients[0]
        .clone()
        .send_subscribe(keyed(&openid(2), "app-down"))
        .await
        .expect("new keys are claimed again");
    assert_eq!(
        cluster.sandbox().inbox(Some(OPENID)).len(),
        1,
        "no duplicate"
    );
    assert_eq!(cluster.sandbox().inbox(Some(&openid(2))).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_each_replica_sends_its_share_of_the_rate() {
    const RATE: u64 = 30;
    const REPLICAS: usize = 3;
    let mut redis = RedisServer::start().await;
    let cluster = Cluster::start(
        &redis.url(),
        &[("NOTIFY_RATE_PER_SEC", RATE.to_string())],
        REPLICAS,
    )
    .await;
    let clients = cluster.clients().await;
    send_on_each(&clients, 0, "a token before the outage").await;
    // Each replica's share is the rate over the replicas it counted at its last heartbeat:
    // wait until all are in the set, then until each has beaten once more (and so counted all).
    let beats = || {
        let listed = redis.cli(&["zrange", "wechat-notify:replicas", "0", "-1", "withscores"]);
        let values: Vec<String> = listed.lines().map(str::to_owned).collect();
        values
            .chunks(2)
            .map(|pair| (pair[0].clone(), pair[1].parse::<u64>().unwrap()))
            .collect::<std::collections::BTreeMap<String, u64>>()
    };
    let all_in = eventually("every replica in the set", || async {
        let seen = beats();
        (seen.len() == REPLICAS).then_some(seen)
    })
    .await;
    eventually("every replica counting all", || async {
        let seen = beats();
        all_in
            .iter()
            .all(|(replica, at)| seen.get(replica).is_some_and(|now| now > at))
            .then_some(())
    })
    .await;

    redis.stop();
    let before = cluster.sandbox().stats().delivered;
    let started = tokio::time::Instant::now();
    // Far more than the rate allows, from every replica at once; each call waits at most 2 s.
    let mut calls = Vec::new();
    for index in 0..360 {
        let mut client = clients[index % clients.len()].clone();
        calls.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(course_request(&openid(1000 + index)));
            request.set_timeout(Duration::from_secs(2));
            client.send_subscribe(request).await
        }));
    }
    for call in calls {
        let _ = call.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = cluster.sandbox().stats().delivered - before;
    // Each replica: one second's burst of its share, then its share per second. A replica
    // taking the whole rate would let three times that through.
    let share = (RATE / REPLICAS as u64) as f64;
    let most = REPLICAS as f64 * share * (1.0 + elapsed) + share;
    assert!(
        (delivered as f64) <= most,
        "{delivered} delivered in {elapsed:.1}s while redis was down, at most {most:.0} allowed"
    );
    assert!(
        delivered as f64 >= share,
        "unkeyed sends go on: {delivered}"
    );
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
    for index in 0..cluster.replicas.len() {
        ledgers.push(cluster.ledger(index).await);
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
    assert_not_subscribed(&refused);
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
    let mut ledger = cluster.ledger(0).await;

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

/// Under `enforce`, a keyed send's lookup rides on its claim: a send the shared ledger knows
/// cannot be delivered is refused without calling WeChat on any replica, the refusal is not
/// recorded under the key (a retry after the user accepts sends), and a send to a user with a
/// grant goes through and uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_enforce_keyed_sends_are_checked_with_their_claim() {
    let redis = RedisServer::start().await;
    let enforce = [("NOTIFY_SUBSCRIPTION_CHECK", "enforce".to_owned())];
    let cluster = Cluster::start(&redis.url(), &enforce, 2).await;
    let clients = cluster.clients().await;
    let mut ledger = cluster.ledger(0).await;

    let user = openid(1);
    record(&mut ledger, &user, "reject").await.unwrap();
    let requests = cluster.sandbox().stats().send_requests;
    // The lookup is a step of the claim's script, not a read of its own (HMGET).
    let lookups = || {
        let stats = redis.cli(&["info", "commandstats"]);
        let line = stats
            .lines()
            .find(|line| line.starts_with("cmdstat_hmget:"));
        line.map(str::to_owned).unwrap_or_default()
    };
    let lookups_before = lookups();
    for client in &clients {
        let refused = client
            .clone()
            .send_subscribe(keyed(&user, "enforced-1"))
            .await
            .unwrap_err();
        assert_not_subscribed(&refused);
    }
    assert_eq!(
        cluster.sandbox().stats().send_requests,
        requests,
        "nothing was sent to WeChat"
    );
    assert_eq!(lookups(), lookups_before, "no lookup of its own");

    // The refusal released the claim: once the user accepts, the same key sends, once.
    record(&mut ledger, &user, "accept").await.unwrap();
    let before = cluster.sandbox().stats().delivered;
    let sent = clients[1]
        .clone()
        .send_subscribe(keyed(&user, "enforced-1"))
        .await
        .expect("sent after the accept")
        .into_inner();
    let again = clients[0]
        .clone()
        .send_subscribe(keyed(&user, "enforced-1"))
        .await
        .expect("answered from the record")
        .into_inner();
    assert_eq!(again.msgid, sent.msgid);
    assert!(again.deduplicated);
    assert_eq!(cluster.sandbox().stats().delivered - before, 1);
    let entry = get(&mut ledger, &user).await;
    assert_eq!(entry[0].remaining, 0, "the grant was used");

    // With the grant used, the next key is refused (a one-time template), on either replica.
    let refused = clients[0]
        .clone()
        .send_subscribe(keyed(&user, "enforced-2"))
        .await
        .unwrap_err();
    assert_not_subscribed(&refused);
}

fn assert_not_subscribed(status: &tonic::Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(status), "NOT_SUBSCRIBED", "{status:?}");
}
