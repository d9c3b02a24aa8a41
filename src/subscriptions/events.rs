//! Per-app event broadcast. Each watcher reads from a bounded ring (tokio's broadcast): a
//! publisher never waits for a watcher, and a watcher that falls more than
//! [`WATCH_BUFFER`] events behind is told how many it lost, then carries on from the oldest
//! event still held.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use super::LedgerEvent;

/// Events buffered per app for its slowest watcher.
pub const WATCH_BUFFER: usize = 1024;

/// What a watcher gets next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    /// An event.
    Event(Arc<LedgerEvent>),
    /// The watcher fell behind and missed this many events.
    Lost(u64),
}

/// One sender per app, made on first use.
#[derive(Default)]
pub struct EventHub {
    channels: Mutex<HashMap<String, broadcast::Sender<Arc<LedgerEvent>>>>,
}

impl EventHub {
    fn sender(&self, appid: &str) -> broadcast::Sender<Arc<LedgerEvent>> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(appid.to_owned())
            .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
            .clone()
    }

    /// Sends `event` to the app's watchers; nobody watching is fine.
    pub fn publish(&self, appid: &str, event: LedgerEvent) {
        let _no_watchers = self.sender(appid).send(Arc::new(event));
    }

    /// A watcher of the app's events from now on.
    pub fn watch(&self, appid: &str) -> Watcher {
        Watcher {
            receiver: self.sender(appid).subscribe(),
        }
    }
}

/// One watcher's view of an app's events.
pub struct Watcher {
    receiver: broadcast::Receiver<Arc<LedgerEvent>>,
}

impl Watcher {
    /// The next item; `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<WatchItem> {
        match self.receiver.recv().await {
            Ok(event) => Some(WatchItem::Event(event)),
            Err(broadcast::error::RecvError::Lagged(lost)) => Some(WatchItem::Lost(lost)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(msgid: u64) -> LedgerEvent {
        LedgerEvent::Delivery {
            openid: "o".into(),
            template_id: "t".into(),
            msgid,
            errcode: 0,
            status: "success".into(),
        }
    }

    #[tokio::test]
    async fn a_slow_watcher_is_told_what_it_lost_and_carries_on() {
        let hub = EventHub::default();
        let mut slow = hub.watch("wxa");
        let mut other_app = hub.watch("wxb");
        let total = WATCH_BUFFER as u64 + 10;
        for msgid in 0..total {
            hub.publish("wxa", delivery(msgid));
        }
        assert_eq!(slow.next().await, Some(WatchItem::Lost(10)));
        assert_eq!(
            slow.next().await,
            Some(WatchItem::Event(Arc::new(delivery(10))))
        );
        hub.publish("wxb", delivery(1));
        assert_eq!(
            other_app.next().await,
            Some(WatchItem::Event(Arc::new(delivery(1))))
        );
    }
}
