//! Wake-ups between replicas: one pub/sub channel per key prefix, whose messages name the key
//! that changed (a token fetched, an idempotency claim settled). Waiters listen here instead
//! of polling Redis; they still look again after a bounded while, in case a message was lost
//! (pub/sub does not queue for a reconnecting subscriber).

use std::sync::Arc;

use futures::StreamExt;
use tokio::{sync::broadcast, time::Duration};

/// Messages buffered per listener; one that falls behind simply looks again.
const BUFFERED: usize = 1024;

/// Delay before subscribing again after the subscription failed or ended.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

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

    /// Subscribes to `channel` through `client` and forwards its messages to the listeners,
    /// subscribing again whenever the subscription ends. Runs until aborted.
    pub async fn run(self, client: ::redis::Client, channel: String) {
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        tracing::debug!(%channel, "subscribed to wake-ups");
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            if let Ok(key) = message.get_payload::<String>() {
                                let _ = self.sender.send(Arc::from(key));
                            }
                        }
                    }
                    Err(error) => tracing::debug!(%error, "cannot subscribe to wake-ups"),
                },
                Err(error) => tracing::debug!(%error, "cannot connect for wake-ups"),
            }
            tokio::time::sleep(RESUBSCRIBE_DELAY).await;
        }
    }
}

/// Waits for one key's wake-up.
pub(crate) struct Listener {
    receiver: broadcast::Receiver<Arc<str>>,
}

impl Listener {
    /// Returns when `key` was announced, or after `at_most`, whichever is first.
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
        let _ = tokio::time::timeout(at_most, woken).await;
    }
}
