//! Live events for the console (streamed by `GET /sandbox/events`, see `console`): what happens
//! in the sandbox (a delivery, a refused send, a change made through the control API), each as
//! a Server-Sent Event.
//!
//! Events go through a bounded broadcast channel. A client too slow to keep up loses the oldest
//! and is told to `resync` (read the lists again), so a slow browser tab never holds back a
//! send. Nothing is built or cloned for the channel while no one listens.

use std::time::Duration;

use axum::response::sse::Event;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{failures::FailedSend, inbox::InboxMessage};

/// Events kept for a client that has not read them yet; beyond, it resyncs.
pub const EVENTS_CAPACITY: usize = 256;
/// How often each client gets the counters.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// What part of the sandbox a control request changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Changed {
    Subscriptions,
    AutoAccept,
    Inbox,
    Failures,
    Faults,
    Tokens,
    Templates,
}

/// One thing that happened, as the console hears it.
#[derive(Clone, Debug)]
pub(crate) enum SandboxEvent {
    Delivered(Box<InboxMessage>),
    Failed(Box<FailedSend>),
    Changed(Changed),
}

impl SandboxEvent {
    /// The event as the stream sends it.
    pub fn into_sse(self) -> Event {
        let event = match &self {
            SandboxEvent::Delivered(message) => {
                Event::default().event("delivered").json_data(message)
            }
            SandboxEvent::Failed(failure) => Event::default().event("failed").json_data(failure),
            SandboxEvent::Changed(what) => Event::default()
                .event("changed")
                .json_data(json!({ "what": what })),
        };
        event.unwrap_or_else(|_| resync_event(0))
    }
}

/// Tells a client to read every list again.
pub(crate) fn resync_event(missed: u64) -> Event {
    Event::default()
        .event("resync")
        .data(json!({ "missed": missed }).to_string())
}

/// The sending side, kept in the sandbox's state.
pub(crate) struct EventHub {
    sender: broadcast::Sender<SandboxEvent>,
    /// Cancelled when a server of this sandbox shuts down, so that open streams end and the
    /// graceful shutdown does not wait for a browser tab.
    closing: CancellationToken,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(EVENTS_CAPACITY).0,
            closing: CancellationToken::new(),
        }
    }
}

impl EventHub {
    /// A new listener: the events from now on, and the token cancelled when the sandbox's
    /// server shuts down.
    pub fn listen(&self) -> (broadcast::Receiver<SandboxEvent>, CancellationToken) {
        (self.sender.subscribe(), self.closing.clone())
    }

    /// Publishes the event `make` builds, only when someone listens.
    pub fn publish(&self, make: impl FnOnce() -> SandboxEvent) {
        if self.sender.receiver_count() > 0 {
            let _no_listener_left = self.sender.send(make());
        }
    }

    /// Ends every open event stream.
    pub fn close(&self) {
        self.closing.cancel();
    }
}
