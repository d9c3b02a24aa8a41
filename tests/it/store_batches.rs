//! On one Redis, the store sends the requests of every call that is ready at the same moment in
//! one write (`src/store/batch.rs`). Each call must still get exactly its own replies, a server
//! error must stay in the request that caused it, and the batching must really happen (Redis
//! counts the reads it made).

use std::sync::Arc;

use redis::Value;

use crate::common::redis::{RedisServer, connected_store};

/// Calls made at once.
const CALLS: usize = 64;

/// Redis's count of the reads it made from its clients.
fn reads(redis: &RedisServer) -> u64 {
    redis
        .info("stats", "total_reads_processed")
        .parse()
        .expect("a count")
}

// One worker, as a busy runtime behaves: each call is a task of its own, and a task that wakes
// the connection's writer has it run right after itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn calls_made_at_once_share_a_write_and_each_gets_its_own_replies() {
    let redis = RedisServer::start().await;
    let (store, _upkeep) = connected_store(&redis, "store-batches").await;
    redis.cli(&["SET", "not-a-number", "text"]);
    let before = reads(&redis);

    // Every call a command, then a pipeline of its own: set its key, read it back, and (every
    // eighth call) a command Redis refuses, between the two.
    let calls: Vec<_> = (0..CALLS)
        .map(|call| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let key = format!("key-{call}");
                let mut pipeline = redis::pipe();
                pipeline.cmd("SET").arg(&key).arg(format!("value-{call}"));
                if call % 8 == 0 {
                    pipeline.cmd("INCR").arg("not-a-number");
                }
                pipeline.cmd("GET").arg(&key);
                let single: Option<String> = store
                    .query(redis::cmd("GET").arg("not-a-number"))
                    .await
                    .unwrap();
                (call, store.pipeline(&mut pipeline).await.unwrap(), single)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }

    let after = reads(&redis);
    for (call, replies, single) in answers {
        assert_eq!(single.as_deref(), Some("text"), "call {call}'s own command");
        let own = Value::BulkString(format!("value-{call}").into_bytes());
        if call % 8 == 0 {
            assert_eq!(replies.len(), 3, "call {call}: {replies:?}");
            assert!(
                matches!(&replies[1], Value::ServerError(_)),
                "call {call}'s refused command answers its error: {replies:?}"
            );
            assert_eq!(replies[2], own, "call {call}");
        } else {
            assert_eq!(replies.len(), 2, "call {call}: {replies:?}");
            assert_eq!(replies[1], own, "call {call}");
        }
    }
    // 128 requests (a command and a pipeline per call), which leave in a few batches (the
    // commands together, then the pipelines), plus the cli's own INFO and the heartbeat's
    // scripts. Unbatched, Redis reads about one per request.
    assert!(
        after - before <= 12,
        "Redis read {} times for {} requests",
        after - before,
        2 * CALLS
    );
}

#[tokio::test]
async fn a_transaction_is_sent_as_it_was_written() {
    let redis = RedisServer::start().await;
    let (store, _upkeep) = connected_store(&redis, "store-batches").await;
    let mut transaction = redis::pipe();
    transaction
        .atomic()
        .cmd("SET")
        .arg("counted")
        .arg(41)
        .ignore()
        .cmd("INCR")
        .arg("counted");
    let replies = store.pipeline(&mut transaction).await.unwrap();
    assert_eq!(replies, vec![Value::Int(42)]);
}
