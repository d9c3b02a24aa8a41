//! When to try again. Every retry in the service waits by the one backoff formula here
//! ([`Backoff`]), and every wait for WeChat's quotas ends on the [`QuotaClock`]. Whether a
//! failed WeChat call may be tried again at all is decided in one place too: the WeChat
//! client's `WechatError::retry`.
//!
//! Both are on tokio's clock, so everything that waits by them is testable with paused time.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::{Duration, Instant};

/// Exponential backoff with "equal jitter": before retry `n` (1 for the first), the ceiling
/// `min(cap, base · 2^(n-1))`, of which the upper half is kept and the lower half drawn at
/// random. So the wait lies in `[ceiling / 2, ceiling]`.
///
/// Why equal jitter rather than the other common schemes: full jitter (anywhere in
/// `[0, ceiling]`) spreads retries best but may retry at once, which is the wrong answer to a
/// WeChat that just said it is busy (-1), and to a token endpoint with a daily budget; no
/// jitter keeps every replica and every waiting caller in step, retrying together; adding
/// jitter on top of the ceiling would break the cap's promise. Equal jitter keeps a floor of
/// half the delay, never exceeds the cap, and still spreads callers over half the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// No wait is longer.
    pub cap: Duration,
}

impl Backoff {
    /// Waits from `base` doubling up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The wait before retry `retry` (1 for the first; 0 counts as 1).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos().min(u128::from(u64::MAX)) as u64;
        half + Duration::from_nanos(fastrand::u64(0..=spread))
    }

    /// The longest wait before retry `retry`: `min(cap, base · 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        // 2^16 times any base the service uses is far beyond its cap.
        let doublings = retry.saturating_sub(1).min(16);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }
}

/// A minute, WeChat's per-minute limit (45011) window.
const MINUTE: Duration = Duration::from_secs(60);
/// A day, WeChat's daily quota (45009) window.
const DAY: Duration = Duration::from_secs(86_400);
/// China Standard Time (UTC+8): WeChat's quota day ends at midnight there.
const CHINA_OFFSET: Duration = Duration::from_secs(8 * 3_600);

/// The time of day as WeChat's quota windows see it, on tokio's clock: the wall clock is read
/// once, when the clock is made, and from then on it advances with `tokio::time::Instant`. So
/// the pause after a 45011 and the stop after a 45009 are tokio deadlines, and paused time
/// moves them like everything else.
///
/// A step of the system clock after the clock was made (a late NTP sync) is not followed; the
/// windows are off by that much until the process restarts, which WeChat corrects anyway by
/// answering 45011 again.
#[derive(Clone, Copy, Debug)]
pub struct QuotaClock {
    /// Time since the Unix epoch at `read_at`.
    since_epoch: Duration,
    read_at: Instant,
}

impl QuotaClock {
    /// The system's wall clock, read now.
    pub fn system() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::starting_at(since_epoch)
    }

    /// A clock that reads `since_epoch` (time since the Unix epoch) now: for tests, which pick
    /// where in the minute or the day they start.
    pub fn starting_at(since_epoch: Duration) -> Self {
        Self {
            since_epoch,
            read_at: Instant::now(),
        }
    }

    /// When WeChat's per-minute limit resets: the start of the next wall-clock minute.
    pub fn next_minute(&self) -> Instant {
        self.window_end(MINUTE, Duration::ZERO)
    }

    /// When WeChat's daily quota resets: the next midnight in China (UTC+8).
    pub fn quota_day_end(&self) -> Instant {
        self.window_end(DAY, CHINA_OFFSET)
    }

    /// The end of the current `window` of wall-clock time shifted by `offset`: after now, at
    /// most one window away.
    fn window_end(&self, window: Duration, offset: Duration) -> Instant {
        let now = Instant::now();
        let wall = self.since_epoch + now.duration_since(self.read_at) + offset;
        let into_window = wall.as_nanos() % window.as_nanos();
        now + (window - Duration::from_nanos(into_window as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_keep_their_upper_half() {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let ceilings: Vec<_> = (1..=6)
            .map(|retry| backoff.ceiling(retry).as_millis())
            .collect();
        assert_eq!(ceilings, [200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff.ceiling(0), backoff.ceiling(1));
        assert_eq!(backoff.ceiling(u32::MAX), backoff.cap);
        for retry in 0..40 {
            let ceiling = backoff.ceiling(retry);
            for _ in 0..50 {
                let delay = backoff.delay(retry);
                assert!(
                    ceiling / 2 <= delay && delay <= ceiling,
                    "retry {retry}: {delay:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
        // Spread, not fixed: a hundred waits are not all the same.
        let delays: std::collections::BTreeSet<_> = (0..100).map(|_| backoff.delay(3)).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn a_huge_cap_does_not_overflow() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::MAX);
        assert_eq!(backoff.ceiling(40), Duration::from_secs(1 << 16));
        assert!(backoff.delay(u32::MAX) >= Duration::from_secs(1 << 15));
    }

    /// 2024-05-01 12:00:00 UTC (20:00 in China), plus `seconds`.
    fn noon_utc_plus(seconds: u64) -> QuotaClock {
        QuotaClock::starting_at(Duration::from_secs(1_714_564_800 + seconds))
    }

    #[tokio::test(start_paused = true)]
    async fn the_minute_ends_at_the_next_wall_clock_minute_and_moves_with_tokio_time() {
        let clock = noon_utc_plus(45);
        let start = Instant::now();
        assert_eq!(clock.next_minute() - start, Duration::from_secs(15));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(clock.next_minute() - start, Duration::from_secs(15));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            clock.next_minute() - start,
            Duration::from_secs(75),
            "at the minute itself, the next one"
        );
        let clock = noon_utc_plus(0);
        assert_eq!(
            clock.next_minute() - Instant::now(),
            Duration::from_secs(60)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_quota_day_ends_at_midnight_in_china() {
        // 20:00 in China: four hours left.
        let clock = noon_utc_plus(0);
        assert_eq!(
            clock.quota_day_end() - Instant::now(),
            Duration::from_secs(4 * 3_600)
        );
        // 23:59:50 in China: ten seconds, then a whole day.
        let clock = noon_utc_plus(4 * 3_600 - 10);
        let start = Instant::now();
        assert_eq!(clock.quota_day_end() - start, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(clock.quota_day_end() - start, Duration::from_secs(10) + DAY);
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_is_within_its_windows() {
        let clock = QuotaClock::system();
        let minute = clock.next_minute() - Instant::now();
        assert!(minute > Duration::ZERO && minute <= MINUTE);
        let day = clock.quota_day_end() - Instant::now();
        assert!(day > Duration::ZERO && day <= DAY);
    }
}
