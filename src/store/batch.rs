//! One write to Redis for the requests of every call that is ready at the same moment.
//!
//! The redis crate's multiplexed connection pipelines concurrent requests, but writes as soon
//! as its queue is empty, and its writer is the task a request wakes: the runtime runs it right
//! after the caller that woke it, before any other ready caller has asked, so under load nearly
//! every request is a write of its own (and a read and a wake-up of Redis). [`Batched`] holds a
//! request until the calls that are ready have run, then sends everything they asked for as one
//! pipeline and hands each call its replies: fewer writes and reads for the service and for
//! Redis, each a trip through the kernel's network stack (docs/benchmarks.md has the figures).
//! A request waits for that only until the calls ready beside it have run.
//!
//! Nothing else changes: a request's replies are the same values, in the same order, a server
//! error stays an error value of its own command, and a failed connection fails every request
//! of the batch, as it fails every request in flight on it.

use std::sync::{Arc, Mutex};

use redis::{
    Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager},
};
use tokio::sync::oneshot;

/// A connection to one Redis whose requests are sent in batches.
#[derive(Clone)]
pub struct Batched {
    connection: ConnectionManager,
    next: Arc<Mutex<Batch>>,
}

/// The requests waiting for the next write.
#[derive(Default)]
struct Batch {
    commands: Pipeline,
    /// Each request's number of commands, in order, and where its replies go.
    requests: Vec<(usize, oneshot::Sender<RedisResult<Vec<Value>>>)>,
    /// A task will write this batch.
    scheduled: bool,
}

impl Batched {
    /// Batches the requests made on `connection`.
    pub fn new(connection: ConnectionManager) -> Self {
        Self {
            connection,
            next: Arc::default(),
        }
    }

    /// Adds `commands` to the next write and answers their replies.
    async fn send<'a>(&self, commands: impl Iterator<Item = &'a Cmd>) -> RedisResult<Vec<Value>> {
        let (reply, replied) = oneshot::channel();
        let write = {
            let mut batch = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let mut count = 0;
            for command in commands {
                batch.commands.add_command(command.clone());
                count += 1;
            }
            batch.requests.push((count, reply));
            !std::mem::replace(&mut batch.scheduled, true)
        };
        if write {
            tokio::spawn(write_batch(self.connection.clone(), self.next.clone()));
        }
        replied.await.unwrap_or_else(|_| Err(dropped()))
    }
}

/// Lets every task that is ready run (and add its requests), then sends the batch as one
/// pipeline and hands out the replies.
async fn write_batch(mut connection: ConnectionManager, next: Arc<Mutex<Batch>>) {
    tokio::task::yield_now().await;
    let batch = std::mem::take(&mut *next.lock().unwrap_or_else(|e| e.into_inner()));
    let count = batch.requests.iter().map(|(count, _)| count).sum();
    let result = connection
        .req_packed_commands(&batch.commands, 0, count)
        .await;
    match result {
        Ok(replies) if replies.len() == count => {
            let mut replies = replies.into_iter();
            for (count, reply) in batch.requests {
                let _ = reply.send(Ok(replies.by_ref().take(count).collect()));
            }
        }
        Ok(_) => {
            for (_, reply) in batch.requests {
                let _ = reply.send(Err(short_answer()));
            }
        }
        Err(error) => {
            for (_, reply) in batch.requests {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn dropped() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the batch's writer stopped",
    ))
}

fn short_answer() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "redis answered fewer replies than requests",
    ))
}

impl ConnectionLike for Batched {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut replies = self.send(std::iter::once(cmd)).await?;
            replies.pop().ok_or_else(short_answer)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // A transaction's replies are its EXEC's, which a batch does not know how to pick out.
        if pipeline.is_transaction() {
            return self.connection.req_packed_commands(pipeline, offset, count);
        }
        Box::pin(async move {
            let replies = self.send(pipeline.cmd_iter()).await?;
            Ok(replies.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}
