//! Live events for the console: `GET /sandbox/events`, a Server-Sent Events stream of what
//! happens in the sandbox (a delivery, a refused send, a change made through the control API)
//! and, once a second, the counters.
//!
//! Events go through a bounded broadcast channel. A client too slow to keep up loses the oldest
//! and is told to `resync` (read the lists again), so a slow browser tab never holds back a
//! send. Nothing is built or cloned for the channel while no one listens.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::Stream;
use serde::Serialize;
use serde_json::json;
use tokio::{
    sync::broadcast::{self, error::RecvError},
    time::MissedTickBehavior,
};

use super::{Sandbox, failures::FailedSend, state::InboxMessage};

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
    fn into_sse(self) -> Event {
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
fn resync_event(missed: u64) -> Event {
    Event::default()
        .event("resync")
        .data(json!({ "missed": missed }).to_string())
}

/// The sending side, kept in the sandbox's state.
pub(crate) struct EventHub {
    sender: broadcast::Sender<SandboxEvent>,
    /// Cancelled when a server of this sandbox shuts down, so that open streams end and the
    /// graceful shutdown does not wait for a browser tab.
    closing: tokio_util::sync::CancellationToken,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(EVENTS_CAPACITY).0,
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl EventHub {
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

/// `GET /sandbox/events`.
pub(crate) async fn events(
    State(sandbox): State<Sandbox>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hub = &sandbox.inner.events;
    let receiver = hub.sender.subscribe();
    let closing = hub.closing.clone();
    let mut ticks = tokio::time::interval(STATS_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (sandbox, receiver, ticks, closing),
        |(sandbox, mut receiver, mut ticks, closing)| async move {
            let event = tokio::select! {
                () = closing.cancelled() => return None,
                received = receiver.recv() => match received {
                    Ok(event) => event.into_sse(),
                    Err(RecvError::Lagged(missed)) => resync_event(missed),
                    Err(RecvError::Closed) => return None,
                },
                _ = ticks.tick() => stats_event(&sandbox),
            };
            Some((Ok(event), (sandbox, receiver, ticks, closing)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn stats_event(sandbox: &Sandbox) -> Event {
    Event::default()
        .event("stats")
        .json_data(sandbox.stats())
        .unwrap_or_else(|_| resync_event(0))
}
