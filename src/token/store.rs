//! Where the current token is kept between fetches, behind a small trait so that many replicas
//! can later share one token (e.g. Redis) instead of each fetching its own.

use std::sync::Mutex;

use async_trait::async_trait;
use tokio::time::{Duration, Instant};

use crate::secret::Secret;

/// A token with the facts needed to judge its age.
///
/// A shared store keeps the token with a TTL of [`StoredToken::remaining`] and the original
/// `lifetime`; loading it back rebuilds `fetched_at = now - (lifetime - remaining_ttl)`, so
/// `Instant`s never cross a process boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    /// The access token (redacted in Debug).
    pub token: Secret,
    /// When the fetch that produced it *started*: its lifetime counts from here, so network time
    /// can only make us think it expires earlier than it does, never later.
    pub fetched_at: Instant,
    /// WeChat's `expires_in`, as given.
    pub lifetime: Duration,
}

impl StoredToken {
    /// When WeChat stops accepting it (at the latest).
    pub fn expires_at(&self) -> Instant {
        self.fetched_at + self.lifetime
    }

    /// Lifetime left at `now` (zero once expired).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at().saturating_duration_since(now)
    }
}

/// A token store failed (a shared store can be unreachable). The cache then falls back to
/// fetching from WeChat and keeping the token in-process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("token store: {0}")]
pub struct TokenStoreError(pub String);

/// Whose turn it is to fetch from WeChat, when several replicas share a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchTurn {
    /// This replica fetches (it holds the store's fetch lock, or the store has none).
    Mine,
    /// Another replica is fetching: wait ([`TokenStore::wait_for_fetch`]) and load its token.
    Another,
}

/// Whether a `force_refresh` may be made now, by a budget shared through the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForceBudget {
    /// The store keeps no budget: the cache's own applies.
    Local,
    /// Allowed, and counted.
    Granted,
    /// Not allowed for this long.
    Wait(Duration),
}

/// Whose the one fetch after a rejection of a token value is, when replicas share a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionTurn {
    /// The store keeps no such record: the cache's own memory of its rejection fetches applies.
    Local,
    /// This replica makes the fetch (and ends it with [`TokenStore::end_rejection`]).
    Mine,
    /// Another replica made it or is making it: wait for its outcome
    /// ([`TokenStore::wait_for_rejection`]) instead of fetching.
    Another,
}

/// What a replica waiting for another's rejection fetch learned
/// ([`TokenStore::wait_for_rejection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionWait {
    /// It may still be running.
    Running,
    /// It ended (its outcome is in the store), or the store cannot tell.
    Ended,
    /// Its claim lapsed before it ended: the replica that made it died or lost the store. The
    /// fetch is anyone's to claim again.
    Abandoned,
}

/// One app's token storage. Object-safe; every method is called only on the cache's slow path
/// (misses, refreshes and rejections), never on the hot read path.
///
/// On a rejection of token T the cache calls `invalidate_if(T)`, then `load` (another replica
/// may have stored a new token), then `save` with whatever it installs: a new token, or T again
/// when WeChat hands T back and no force refresh is allowed (T is *kept*) or the fetch fails.
/// So a store never stays empty after a rejection while the token endpoint answers. The
/// rejection bookkeeping (one fetch per token value per 30 s) is the store's when it keeps one
/// ([`TokenStore::claim_rejection`], shared by the replicas), else the cache's, per process.
///
/// The fetch lock and the force-refresh budget have in-process defaults (the cache's own
/// single flight and budget already cover one process); a store shared by replicas overrides
/// them.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The stored token, if any (it may be expired; the cache judges).
    async fn load(&self) -> Result<Option<StoredToken>, TokenStoreError>;
    /// Replaces the stored token.
    async fn save(&self, token: &StoredToken) -> Result<(), TokenStoreError>;
    /// Removes the stored token only if it is `rejected` (compare-and-delete); true when it did.
    async fn invalidate_if(&self, rejected: &Secret) -> Result<bool, TokenStoreError>;

    /// Takes the fetch lock if no one holds it. A lock has an owner and an expiry, so a replica
    /// that dies mid-fetch blocks the others for no longer than the lock's life.
    async fn begin_fetch(&self) -> Result<FetchTurn, TokenStoreError> {
        Ok(FetchTurn::Mine)
    }

    /// Releases the fetch lock taken by [`TokenStore::begin_fetch`] and wakes the waiters.
    async fn end_fetch(&self) {}

    /// Waits until the fetch lock is released (woken, not polled) or `at_most` passed.
    async fn wait_for_fetch(&self, at_most: Duration) {
        let _ = at_most;
    }

    /// Asks the shared force-refresh budget for one `force_refresh`: at most one per
    /// `interval` and `daily_limit` in any rolling 24 hours.
    async fn claim_force_refresh(
        &self,
        interval: Duration,
        daily_limit: usize,
    ) -> Result<ForceBudget, TokenStoreError> {
        let _ = (interval, daily_limit);
        Ok(ForceBudget::Local)
    }

    /// Claims the one fetch that a rejection of `rejected` earns within `interval`, for every
    /// replica sharing the store. The store may keep a digest of the token, never the token.
    /// The claim lapses if its replica does not end it within the fetch lock's life, so a
    /// replica that dies mid-fetch does not hold the others back for longer than that.
    async fn claim_rejection(
        &self,
        rejected: &Secret,
        interval: Duration,
    ) -> Result<RejectionTurn, TokenStoreError> {
        let _ = (rejected, interval);
        Ok(RejectionTurn::Local)
    }

    /// Ends the rejection fetch claimed with [`TokenStore::claim_rejection`] (its outcome, a
    /// token, is saved by then), keeping it spent for `interval`, and wakes the replicas
    /// waiting for it.
    async fn end_rejection(&self, rejected: &Secret, interval: Duration) {
        let _ = (rejected, interval);
    }

    /// Waits (woken, not polled) for the end of another replica's rejection fetch of `rejected`
    /// for at most `at_most`, and says what became of it.
    async fn wait_for_rejection(&self, rejected: &Secret, at_most: Duration) -> RejectionWait {
        let _ = (rejected, at_most);
        RejectionWait::Ended
    }
}

/// The default store: one slot in this process.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    slot: Mutex<Option<StoredToken>>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<StoredToken>> {
        // A poisoned slot still holds a whole value (writes are single assignments).
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self) -> Result<Option<StoredToken>, TokenStoreError> {
        Ok(self.slot().clone())
    }

    async fn save(&self, token: &StoredToken) -> Result<(), TokenStoreError> {
        *self.slot() = Some(token.clone());
        Ok(())
    }

    async fn invalidate_if(&self, rejected: &Secret) -> Result<bool, TokenStoreError> {
        let mut slot = self.slot();
        if slot
            .as_ref()
            .is_some_and(|stored| stored.token == *rejected)
        {
            *slot = None;
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_store_compares_before_deleting() {
        let store = MemoryTokenStore::new();
        assert_eq!(store.load().await.unwrap(), None);
        let stored = StoredToken {
            token: Secret::new("t1"),
            fetched_at: Instant::now(),
            lifetime: Duration::from_secs(7200),
        };
        store.save(&stored).await.unwrap();
        assert!(!store.invalidate_if(&Secret::new("t0")).await.unwrap());
        assert_eq!(store.load().await.unwrap(), Some(stored.clone()));
        tokio::time::advance(Duration::from_secs(7000)).await;
        assert_eq!(stored.remaining(Instant::now()), Duration::from_secs(200));
        assert!(store.invalidate_if(&Secret::new("t1")).await.unwrap());
        assert_eq!(store.load().await.unwrap(), None);
    }
}
