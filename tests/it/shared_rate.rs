//! An app's rate over all replicas is a token bucket in Redis, from which each replica leases a
//! few permits per round trip (`src/store/limits.rs`). A round trip leases one permit for every
//! send waiting for it, up to 2% of a second's rate: a backlog (the sends held up by a slow
//! moment of Redis) is admitted in a round trip or two, not one round trip per 20 sends, while
//! a low rate still leases little.

use std::sync::Arc;

use wechat_notify::store::limits::{Admit, MAX_LEASE, SharedLimits};

use crate::common::redis::{RedisServer, connected_store};

/// Sends that ask for the rate at once.
const SENDS: u32 = 200;

/// The scripts Redis ran by their digest: the leases, and the store's heartbeat (once a second).
fn scripts_run(redis: &RedisServer) -> u64 {
    let stats = redis.info("commandstats", "cmdstat_evalsha");
    stats
        .strip_prefix("calls=")
        .and_then(|stats| stats.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of calls in {stats}"))
}

/// Round trips to Redis that `SENDS` sends asking at once take at `rate_per_sec`, after a first
/// send (which loads the script and leases the usual batch, 20 permits, one of them its own).
async fn round_trips_for_a_backlog(rate_per_sec: u32) -> u64 {
    let redis = RedisServer::start().await;
    let (store, _upkeep) = connected_store(&redis, "shared-rate").await;
    let limits = Arc::new(SharedLimits::new(store, "wxrate000000000001", rate_per_sec));
    assert_eq!(limits.acquire().await, Admit::Granted);
    let before = scripts_run(&redis);
    let sends: Vec<_> = (0..SENDS)
        .map(|_| {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.acquire().await })
        })
        .collect();
    for send in sends {
        assert_eq!(send.await.unwrap(), Admit::Granted);
    }
    scripts_run(&redis) - before
}

// One worker, as a busy replica runs: every send is polled, and waits for the lease, while the
// first round trip is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn one_round_trip_leases_a_permit_for_every_send_waiting() {
    // 2% of 100,000 a second is 2,000: room for every send waiting. The 19 permits left from
    // the first lease go first; the next round trip leaves while only its own send waits (20
    // permits), and the one after it covers all the rest. Leases of 20 would take 10 trips.
    let trips = round_trips_for_a_backlog(100_000).await;
    assert!(
        trips <= 4,
        "{SENDS} sends waiting at once took {trips} round trips (a heartbeat may add one)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_lease_stays_within_two_percent_of_a_seconds_rate() {
    // At 1,000 a second, 2% is the usual lease of 20: the backlog takes a trip per 20 sends.
    assert_eq!(1_000 / 50, MAX_LEASE);
    let trips = round_trips_for_a_backlog(1_000).await;
    let at_least = u64::from((SENDS - (MAX_LEASE - 1)) / MAX_LEASE);
    assert!(
        trips >= at_least,
        "{SENDS} sends at 1,000/s took {trips} round trips; leases of at most {MAX_LEASE} need {at_least}"
    );
}
