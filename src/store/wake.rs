//! Wake-ups between replicas: one pub/sub channel per key prefix, whose messages name the key
//! that changed (a token fetched, an idempotency claim settled). Waiters listen here instead
//! of polling Redis; they still look again after a bounded while, in case a message was lost
//! (pub/sub does not queue for a reconnecting subscriber).
//!
//! A subscription lives on one node. On a Redis Cluster every node delivers every PUBLISH, so
//! when the node goes away, or stops answering without closing the connection (a frozen or
//! unplugged host), the subscription moves to the next configured node instead of waiting for
//! that one to return ([`relay`]).

use std::sync::Arc;

use futures::StreamExt;
use tokio::{sync::broadcast, time::Duration};

use crate::{
    secret::Secret,
    telemetry::catalog::{self, StoreWait},
};

/// Messages buffered per listener; one that falls behind simply looks again.
const BUFFERED: usize = 1024;

/// Delay before another round over the nodes once none of them took the subscription.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// How long connecting to one node and subscribing there may take: a node that is gone
/// without refusing (a dropped host) costs this long before the next one is tried.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a subscription's node is asked (PING on the subscription's own connection) whether
/// it still answers: a subscriber only reads, so without it a node that stops answering but
/// never closes the connection would hold the subscription, silent, for good.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// How long that PING's answer may take before the node counts as gone.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Stays subscribed to `channel` on one of the nodes `urls` and hands every message to
/// `deliver`. When the subscription ends, or its node leaves a PING unanswered for
/// [`PING_TIMEOUT`], it subscribes on the next node (`subscribed` is called each time it has).
/// Runs until aborted.
pub(crate) async fn relay(
    urls: &[Secret],
    channel: &str,
    mut subscribed: impl FnMut(),
    mut deliver: impl FnMut(::redis::Msg),
) {
    let mut next = 0;
    loop {
        let (mut sink, mut messages) = subscribe(urls, channel, &mut next).await.split();
        subscribed();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => deliver(message),
                    None => break "ended",
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<::redis::Value>());
                    if !matches!(pong.await, Ok(Ok(_))) {
                        break "stopped answering";
                    }
                }
            }
        };
        tracing::debug!(%channel, ended, "subscription lost; subscribing on another node");
    }
}

/// Subscribes to `channel` on one of the nodes `urls`, starting at `*next` and going round them
/// (each try bounded by [`SUBSCRIBE_TIMEOUT`]) until one takes it. `*next` is left at the node
/// after the one subscribed to, so that a caller whose subscription ended tries another node
/// first. Retries until it succeeds.
async fn subscribe(urls: &[Secret], channel: &str, next: &mut usize) -> ::redis::aio::PubSub {
    loop {
        for _ in 0..urls.len() {
            let url = &urls[*next % urls.len()];
            *next = (*next + 1) % urls.len();
            let attempt = async {
                let client = super::redis::client(url.expose())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, ::redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, attempt).await {
                Ok(Ok(pubsub)) => return pubsub,
                // The URL stays out of the log: it may carry a password.
                Ok(Err(error)) => {
                    tracing::debug!(%error, %channel, "cannot subscribe on this node")
                }
                Err(_) => tracing::debug!(%channel, "subscribing on this node timed out"),
            }
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// The local end of the wake-up channel.
#[derive(Debug, Clone)]
pub(crate) struct Wakeups {
    sender: broadcast::Sender<Arc<str>>,
}

impl Wakeups {
    pub fn new() -> Self {
        Self {
            sender: broadcast::Sender::new(BUFFERED),
        }
    }

    /// A listener for keys changed from now on.
    pub fn listen(&self) -> Listener {
        Listener {
            receiver: self.sender.subscribe(),
        }
    }

    /// Subscribes to `channel` on one of `urls` and forwards its messages to the listeners,
    /// moving to the next node when its node goes away ([`relay`]). Runs until aborted.
    pub async fn run(self, urls: Vec<Secret>, channel: String) {
        relay(
            &urls,
            &channel,
            catalog::count_wake_subscription,
            |message| {
                if let Ok(key) = message.get_payload::<String>() {
                    let _ = self.sender.send(Arc::from(key));
                }
            },
        )
        .await;
    }
}

/// Waits for one key's wake-up.
pub(crate) struct Listener {
    receiver: broadcast::Receiver<Arc<str>>,
}

impl Listener {
    /// Returns when `key` was announced, or after `at_most`, whichever is first; counted in
    /// `wechat_notify_store_waits_total` by which it was.
    pub async fn wait(&mut self, key: &str, at_most: Duration) {
        let woken = async {
            loop {
                match self.receiver.recv().await {
                    Ok(changed) if &*changed == key => return,
                    Ok(_) => {}
                    // Fell behind: the key may have been among the lost messages.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let ended = match tokio::time::timeout(at_most, woken).await {
            Ok(()) => StoreWait::Woken,
            Err(_) => StoreWait::TimedOut,
        };
        catalog::count_store_wait(ended);
    }
}
