//! Idempotency records: a request whose key already succeeded is answered from the record, and
//! concurrent requests with one key share one send.
//!
//! The store is a small trait so that a shared store (for many replicas) can replace the
//! in-memory one without touching the service.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;

use crate::store::{Rider, RiderAnswer};

/// What is remembered of a delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// WeChat's message id, when it gave one.
    pub msgid: Option<u64>,
    /// Upstream attempts the original send took.
    pub attempts: u32,
    /// Recipient of the original send: a key reused for another recipient or template is an
    /// error, not a silent deduplication.
    pub touser: String,
    /// Template of the original send.
    pub template_id: String,
}

/// How a keyed request was answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Keyed {
    /// The record of the one send made under this key.
    pub record: Record,
    /// True when this caller did not make the send itself (answered from the record, or from a
    /// concurrent caller's send).
    pub deduplicated: bool,
    /// The answer of the [`Rider`] given with the send, when this caller made the send and the
    /// store ran the rider with its record; `None` otherwise (the rider's feature then does its
    /// step by itself).
    pub ridden: Option<RiderAnswer>,
}

/// A send to run at most once per key: it yields the record on success, or an error that is
/// shared (not recorded) with every concurrent caller of the same key.
pub type SendOnce<E> = Pin<Box<dyn Future<Output = Result<Record, E>> + Send>>;

/// Steps of other features that ride on a keyed send's round trips to a shared store (the
/// subscription ledger's): the in-memory store has no round trip to share and ignores them.
#[derive(Default)]
pub struct Riders {
    /// Runs in the claim's script when this caller claims the key (not when a record or
    /// another's claim answers); the store puts its answer in `claimed` before it runs the
    /// send, so the send can read it (the ledger's lookup under `enforce`).
    pub claim: Option<(Rider, Arc<OnceLock<RiderAnswer>>)>,
    /// Runs in the record's script after a successful send; its answer comes back in
    /// [`Keyed::ridden`] (the ledger's record of the outcome).
    pub record: Option<Rider>,
}

/// A shared store could not be asked whether a key has a record, so the send must not be
/// risked (it might be a duplicate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the idempotency store is unavailable")]
pub struct StoreUnavailable;

/// Keeps idempotency records. Keys start with the appid and a newline (the notifier scopes
/// them so); a shared store keeps each app's keys together by it.
#[async_trait]
pub trait IdempotencyStore<E: Send + Sync + 'static>: Send + Sync + 'static {
    /// Runs `send` unless `key` already has a record. Concurrent calls with one key run `send`
    /// once and all get its outcome; a failure is not recorded, so a later call tries again.
    /// A shared store runs `riders` in the same round trips as the claim and the record.
    async fn once(&self, key: String, send: SendOnce<E>, riders: Riders) -> Result<Keyed, Arc<E>>;
}

/// In-process records: bounded in count, each kept for the configured time to live.
pub struct MemoryIdempotencyStore {
    records: moka::future::Cache<String, Record>,
}

impl MemoryIdempotencyStore {
    /// A store keeping at most `capacity` records, each for `ttl`.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        let records = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build();
        Self { records }
    }
}

#[async_trait]
impl<E: Send + Sync + 'static> IdempotencyStore<E> for MemoryIdempotencyStore {
    async fn once(&self, key: String, send: SendOnce<E>, _riders: Riders) -> Result<Keyed, Arc<E>> {
        // moka runs one initialiser per key and hands its result to every waiter; an error is
        // shared with the waiters and not inserted.
        let entry = self.records.entry(key).or_try_insert_with(send).await?;
        Ok(Keyed {
            deduplicated: !entry.is_fresh(),
            record: entry.into_value(),
            ridden: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn record(msgid: u64) -> Record {
        Record {
            msgid: Some(msgid),
            attempts: 1,
            touser: "user".into(),
            template_id: "tpl".into(),
        }
    }

    fn counting_send(calls: Arc<AtomicU32>, outcome: Result<Record, String>) -> SendOnce<String> {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            outcome
        })
    }

    #[tokio::test]
    async fn a_recorded_key_is_answered_without_a_second_send() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(86_400), 100);
        let calls = Arc::new(AtomicU32::new(0));
        let first = store
            .once(
                "k".into(),
                counting_send(calls.clone(), Ok(record(7))),
                Riders::default(),
            )
            .await
            .unwrap();
        let second = store
            .once(
                "k".into(),
                counting_send(calls.clone(), Ok(record(8))),
                Riders::default(),
            )
            .await
            .unwrap();
        assert!(!first.deduplicated);
        assert!(second.deduplicated);
        assert_eq!(second.record.msgid, Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_recorded() {
        let store = MemoryIdempotencyStore::new(Duration::from_secs(86_400), 100);
        let calls = Arc::new(AtomicU32::new(0));
        let failed = store
            .once(
                "k".into(),
                counting_send(calls.clone(), Err("busy".into())),
                Riders::default(),
            )
            .await;
        assert_eq!(failed.unwrap_err().as_str(), "busy");
        let retried = store
            .once(
                "k".into(),
                counting_send(calls.clone(), Ok(record(9))),
                Riders::default(),
            )
            .await
            .unwrap();
        assert!(!retried.deduplicated);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_send() {
        let store = Arc::new(MemoryIdempotencyStore::new(
            Duration::from_secs(86_400),
            100,
        ));
        let calls = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                let send = counting_send(calls.clone(), Ok(record(i)));
                tokio::spawn(async move {
                    store
                        .once("k".into(), send, Riders::default())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut fresh = 0;
        let mut msgids = std::collections::HashSet::new();
        for task in tasks {
            let keyed = task.await.unwrap();
            fresh += u32::from(!keyed.deduplicated);
            msgids.insert(keyed.record.msgid);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(fresh, 1, "exactly one caller made the send");
        assert_eq!(msgids.len(), 1, "every caller got the one outcome");
    }
}
