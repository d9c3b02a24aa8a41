//! Whether the shared store answers: counted in metrics and logged once per change of state,
//! never per call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::telemetry::catalog::{self, StoreState};

/// The shared store's state as last seen.
#[derive(Debug)]
pub(crate) struct StoreHealth {
    up: AtomicBool,
    /// Becomes true at the first successful connection (health SERVING waits for it).
    connected: watch::Sender<bool>,
    /// Replicas seen recently (this one included); the local share of the rate during an outage
    /// is the rate divided by this.
    replicas: AtomicUsize,
}

impl StoreHealth {
    pub fn new() -> Self {
        catalog::set_store_state(StoreState::Down);
        Self {
            up: AtomicBool::new(false),
            connected: watch::Sender::new(false),
            replicas: AtomicUsize::new(1),
        }
    }

    /// True while calls succeed.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A call succeeded.
    pub fn record_ok(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            catalog::set_store_state(StoreState::Up);
            if *self.connected.borrow() {
                tracing::info!("redis reachable again; shared state resumed");
            } else {
                tracing::info!("redis connected; replicas share state");
            }
            self.connected.send_replace(true);
        }
    }

    /// A call failed.
    pub fn record_error(&self, error: &::redis::RedisError) {
        catalog::count_store_error();
        if self.up.swap(false, Ordering::AcqRel) {
            catalog::set_store_state(StoreState::Down);
            tracing::warn!(
                %error,
                "redis unreachable; keyed sends are refused unless their record is known here, \
                 unkeyed sends go on with this replica's token and share of the rate"
            );
        }
    }

    /// Resolves once the store has answered at least once.
    pub async fn wait_connected(&self) {
        let mut connected = self.connected.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we are borrowed.
        let _ = connected.wait_for(|connected| *connected).await;
    }

    pub fn set_replicas(&self, replicas: usize) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
    }

    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed)
    }
}
