//! Access tokens: issuing (classic and stable families), validity, revocation.
//!
//! Pure bookkeeping over [`Instant`]s handed in by the caller, so every rule is testable without
//! a clock. Tokens of the two families are isolated: neither fetch touches the other's tokens.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use crate::config::{FORCE_REFRESH_DAILY_LIMIT, FORCE_REFRESH_MIN_INTERVAL};

/// Token records remembered at most; beyond it, the longest-dead ones are forgotten (a
/// forgotten token then answers 40014 instead of 40001 or 42001).
const MAX_TOKEN_RECORDS: usize = 10_000;
/// Random characters after the app tag of a token.
const TOKEN_RANDOM_LEN: usize = 125;
const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// Which token endpoint issued a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// `GET /cgi-bin/token`.
    Classic,
    /// `POST /cgi-bin/stable_token`.
    Stable,
}

/// A token handed out, with its `expires_in` in whole seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Issued {
    pub token: String,
    pub expires_in: u64,
    /// True when the call created a new token (false: the current one was returned again).
    pub fresh: bool,
    /// True when the call was an effective force refresh.
    pub forced: bool,
}

/// What a presented token is worth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// Valid for this app.
    Valid { appid: String },
    /// No token given (41001).
    Missing,
    /// Never issued, or forgotten (40014).
    Unknown,
    /// Superseded or revoked (40001).
    Revoked,
    /// Past its lifetime (42001).
    Expired,
}

impl TokenCheck {
    /// The errcode WeChat answers for an unusable token.
    pub fn errcode(&self) -> Option<i32> {
        match self {
            TokenCheck::Valid { .. } => None,
            TokenCheck::Missing => Some(41001),
            TokenCheck::Unknown => Some(40014),
            TokenCheck::Revoked => Some(40001),
            TokenCheck::Expired => Some(42001),
        }
    }
}

/// The daily cap of force refreshes is used up (45009).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ForceRefreshCapped;

struct TokenRecord {
    appid: String,
    family: Family,
    expires_at: Instant,
    /// From this instant on the token answers 40001 (superseded or revoked).
    invalid_from: Option<Instant>,
}

impl TokenRecord {
    fn usable(&self, now: Instant) -> bool {
        now < self.expires_at && self.invalid_from.is_none_or(|t| now < t)
    }

    /// When the token stopped (or will stop) being usable.
    fn dead_from(&self) -> Instant {
        self.invalid_from
            .map_or(self.expires_at, |t| t.min(self.expires_at))
    }
}

#[derive(Default)]
struct AppTokens {
    classic_current: Option<String>,
    stable_current: Option<String>,
    last_force_refresh: Option<Instant>,
    force_refresh_day: u64,
    force_refreshes_today: u32,
}

/// All tokens of all apps.
pub(crate) struct TokenStore {
    lifetime: Duration,
    classic_overlap: Duration,
    stable_rollover: Duration,
    records: HashMap<String, TokenRecord>,
    apps: HashMap<String, AppTokens>,
    rng: fastrand::Rng,
}

impl TokenStore {
    pub fn new(lifetime: Duration, classic_overlap: Duration, stable_rollover: Duration) -> Self {
        Self {
            lifetime,
            classic_overlap,
            stable_rollover,
            records: HashMap::new(),
            apps: HashMap::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// `GET /cgi-bin/token`: always a new token; the previous classic token of the app stays
    /// valid for the overlap window, then answers 40001.
    pub fn issue_classic(&mut self, appid: &str, now: Instant) -> Issued {
        let token = self.issue(appid, Family::Classic, now);
        let overlap_end = now + self.classic_overlap;
        let app = self.apps.entry(appid.to_string()).or_default();
        if let Some(previous) = app.classic_current.replace(token.clone())
            && let Some(record) = self.records.get_mut(&previous)
        {
            record.invalid_from = Some(
                record
                    .invalid_from
                    .map_or(overlap_end, |t| t.min(overlap_end)),
            );
        }
        Issued {
            token,
            expires_in: self.lifetime.as_secs(),
            fresh: true,
            forced: false,
        }
    }

    /// `POST /cgi-bin/stable_token`. `day` numbers the sandbox day (for the force-refresh cap).
    pub fn stable(
        &mut self,
        appid: &str,
        force_refresh: bool,
        now: Instant,
        day: u64,
    ) -> Result<Issued, ForceRefreshCapped> {
        if force_refresh && self.force_refresh_allowed(appid, now, day)? {
            // Revoke every stable token of the app: a force refresh is for a leaked token.
            for record in self.records.values_mut() {
                if record.appid == appid && record.family == Family::Stable && record.usable(now) {
                    record.invalid_from = Some(now);
                }
            }
            let token = self.issue(appid, Family::Stable, now);
            let app = self.apps.entry(appid.to_string()).or_default();
            app.stable_current = Some(token.clone());
            app.last_force_refresh = Some(now);
            app.force_refreshes_today += 1;
            return Ok(Issued {
                token,
                expires_in: self.lifetime.as_secs(),
                fresh: true,
                forced: true,
            });
        }
        let current = self
            .apps
            .get(appid)
            .and_then(|app| app.stable_current.as_ref())
            .and_then(|token| Some((token, self.records.get(token)?)));
        if let Some((token, record)) = current
            && record.usable(now)
        {
            let remaining = record.expires_at - now;
            if remaining > self.stable_rollover {
                return Ok(Issued {
                    token: token.clone(),
                    expires_in: remaining.as_secs(),
                    fresh: false,
                    forced: false,
                });
            }
        }
        // None yet, unusable, or in the rollover window: a new token; an old one keeps its
        // own expiry.
        let token = self.issue(appid, Family::Stable, now);
        self.apps
            .entry(appid.to_string())
            .or_default()
            .stable_current = Some(token.clone());
        Ok(Issued {
            token,
            expires_in: self.lifetime.as_secs(),
            fresh: true,
            forced: false,
        })
    }

    /// Whether a force refresh happens now: not within the minimum interval of the previous
    /// one (then the call acts like a normal one), and not beyond the daily cap.
    fn force_refresh_allowed(
        &mut self,
        appid: &str,
        now: Instant,
        day: u64,
    ) -> Result<bool, ForceRefreshCapped> {
        let app = self.apps.entry(appid.to_string()).or_default();
        if app
            .last_force_refresh
            .is_some_and(|last| now - last < FORCE_REFRESH_MIN_INTERVAL)
        {
            return Ok(false);
        }
        if app.force_refresh_day != day {
            app.force_refresh_day = day;
            app.force_refreshes_today = 0;
        }
        if app.force_refreshes_today >= FORCE_REFRESH_DAILY_LIMIT {
            return Err(ForceRefreshCapped);
        }
        Ok(true)
    }

    /// What `token` is worth now.
    pub fn check(&self, token: Option<&str>, now: Instant) -> TokenCheck {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return TokenCheck::Missing;
        };
        let Some(record) = self.records.get(token) else {
            return TokenCheck::Unknown;
        };
        let expired = now >= record.expires_at;
        let invalidated = record.invalid_from.filter(|t| now >= *t);
        match (invalidated, expired) {
            // Whichever happened first decides.
            (Some(invalid_from), true) if invalid_from < record.expires_at => TokenCheck::Revoked,
            (_, true) => TokenCheck::Expired,
            (Some(_), false) => TokenCheck::Revoked,
            (None, false) => TokenCheck::Valid {
                appid: record.appid.clone(),
            },
        }
    }

    /// The app a token was issued to, valid or not.
    pub fn owner(&self, token: &str) -> Option<&str> {
        self.records.get(token).map(|r| r.appid.as_str())
    }

    /// Makes every usable token of the app answer 40001 from now on. Returns how many.
    pub fn revoke_app(&mut self, appid: &str, now: Instant) -> usize {
        let mut revoked = 0;
        for record in self.records.values_mut() {
            if record.appid == appid && record.usable(now) {
                record.invalid_from = Some(now);
                revoked += 1;
            }
        }
        revoked
    }

    fn issue(&mut self, appid: &str, family: Family, now: Instant) -> String {
        let token = self.new_token_string(appid);
        self.records.insert(
            token.clone(),
            TokenRecord {
                appid: appid.to_string(),
                family,
                expires_at: now + self.lifetime,
                invalid_from: None,
            },
        );
        self.forget_dead_tokens(now);
        token
    }

    fn forget_dead_tokens(&mut self, now: Instant) {
        if self.records.len() <= MAX_TOKEN_RECORDS {
            return;
        }
        let mut dead: Vec<(Instant, String)> = self
            .records
            .iter()
            .filter(|(_, r)| !r.usable(now))
            .map(|(token, r)| (r.dead_from(), token.clone()))
            .collect();
        dead.sort();
        let excess = self.records.len() - MAX_TOKEN_RECORDS;
        for (_, token) in dead.into_iter().take(excess.max(MAX_TOKEN_RECORDS / 10)) {
            self.records.remove(&token);
        }
    }

    /// A WeChat-looking token: a generation number, a tag derived from the appid (so tokens of
    /// different apps are told apart at a glance), then random characters.
    fn new_token_string(&mut self, appid: &str) -> String {
        let mut token = String::with_capacity(3 + 8 + TOKEN_RANDOM_LEN);
        token.push_str("86_");
        token.push_str(&app_tag(appid));
        for _ in 0..TOKEN_RANDOM_LEN {
            let i = self.rng.usize(..TOKEN_ALPHABET.len());
            token.push(TOKEN_ALPHABET[i] as char);
        }
        token
    }
}

/// Eight alphanumeric characters derived from the appid (FNV-1a), stable across runs.
pub(crate) fn app_tag(appid: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in appid.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..8)
        .map(|i| TOKEN_ALPHABET[((hash >> (i * 6)) % 62) as usize] as char)
        .collect()
}

/// At most six leading characters of a token, for logs.
pub(crate) fn token_prefix(token: &str) -> &str {
    let end = token.char_indices().nth(6).map_or(token.len(), |(i, _)| i);
    &token[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "wxapp";
    const MIN: Duration = Duration::from_secs(60);

    fn store() -> TokenStore {
        TokenStore::new(Duration::from_secs(7200), 5 * MIN, 5 * MIN)
    }

    fn valid() -> TokenCheck {
        TokenCheck::Valid {
            appid: APP.to_string(),
        }
    }

    #[test]
    fn tokens_look_realistic_and_carry_an_app_tag() {
        let mut store = store();
        let now = Instant::now();
        let a = store.issue_classic(APP, now).token;
        let b = store.issue_classic("wxother", now).token;
        assert!(a.len() >= 64);
        assert!(a.bytes().all(|c| TOKEN_ALPHABET.contains(&c)));
        assert_eq!(&a[3..11], app_tag(APP));
        assert_ne!(&a[3..11], &b[3..11]);
        assert_eq!(token_prefix(&a), "86_".to_string() + &app_tag(APP)[..3]);
    }

    #[test]
    fn classic_fetch_supersedes_the_previous_token_after_the_overlap() {
        let mut store = store();
        let t0 = Instant::now();
        let first = store.issue_classic(APP, t0);
        assert_eq!(first.expires_in, 7200);
        let second = store.issue_classic(APP, t0 + MIN);
        assert_ne!(first.token, second.token);
        let first = Some(first.token.as_str());
        assert_eq!(store.check(first, t0 + 5 * MIN), valid());
        assert_eq!(store.check(first, t0 + 6 * MIN), TokenCheck::Revoked);
        assert_eq!(store.check(Some(&second.token), t0 + 6 * MIN), valid());
        // A third fetch does not extend the first token's overlap.
        store.issue_classic(APP, t0 + 5 * MIN);
        assert_eq!(store.check(first, t0 + 6 * MIN), TokenCheck::Revoked);
    }

    #[test]
    fn stable_returns_the_same_token_with_falling_expires_in() {
        let mut store = store();
        let t0 = Instant::now();
        let first = store.stable(APP, false, t0, 0).unwrap();
        let again = store.stable(APP, false, t0 + 10 * MIN, 0).unwrap();
        assert_eq!(first.token, again.token);
        assert_eq!(first.expires_in, 7200);
        assert_eq!(again.expires_in, 7200 - 600);
        assert!(!again.fresh);
    }

    #[test]
    fn stable_rolls_over_in_the_last_minutes_and_the_old_token_lives_on() {
        let mut store = store();
        let t0 = Instant::now();
        let first = store.stable(APP, false, t0, 0).unwrap();
        let before = store.stable(APP, false, t0 + 114 * MIN, 0).unwrap();
        assert_eq!(before.token, first.token);
        assert_eq!(before.expires_in, 360);
        let rolled = store.stable(APP, false, t0 + 116 * MIN, 0).unwrap();
        assert_ne!(rolled.token, first.token);
        assert_eq!(rolled.expires_in, 7200);
        assert_eq!(store.check(Some(&first.token), t0 + 119 * MIN), valid());
        assert_eq!(
            store.check(Some(&first.token), t0 + 120 * MIN),
            TokenCheck::Expired
        );
        assert_eq!(store.check(Some(&rolled.token), t0 + 120 * MIN), valid());
    }

    #[test]
    fn force_refresh_revokes_at_most_every_30_seconds_and_20_times_a_day() {
        let mut store = store();
        let t0 = Instant::now();
        let first = store.stable(APP, false, t0, 0).unwrap();
        let forced = store.stable(APP, true, t0 + MIN, 0).unwrap();
        assert_ne!(forced.token, first.token);
        assert!(forced.forced);
        assert_eq!(
            store.check(Some(&first.token), t0 + MIN),
            TokenCheck::Revoked
        );
        // Within 30 s: the current token, no refresh.
        let soon = store
            .stable(APP, true, t0 + MIN + Duration::from_secs(29), 0)
            .unwrap();
        assert_eq!(soon.token, forced.token);
        assert!(!soon.forced);
        let mut now = t0 + MIN;
        for _ in 1..FORCE_REFRESH_DAILY_LIMIT {
            now += FORCE_REFRESH_MIN_INTERVAL;
            assert!(store.stable(APP, true, now, 0).unwrap().forced);
        }
        now += FORCE_REFRESH_MIN_INTERVAL;
        assert_eq!(store.stable(APP, true, now, 0), Err(ForceRefreshCapped));
        // A new sandbox day resets the cap.
        assert!(store.stable(APP, true, now, 1).unwrap().forced);
    }

    #[test]
    fn families_are_isolated() {
        let mut store = store();
        let t0 = Instant::now();
        let stable = store.stable(APP, false, t0, 0).unwrap();
        let classic = store.issue_classic(APP, t0);
        store.issue_classic(APP, t0);
        assert_eq!(store.check(Some(&stable.token), t0 + 10 * MIN), valid());
        store.stable(APP, true, t0, 0).unwrap();
        assert_eq!(store.check(Some(&classic.token), t0 + MIN), valid());
    }

    #[test]
    fn check_classifies_missing_unknown_expired_and_revoked() {
        let mut store = store();
        let t0 = Instant::now();
        let token = store.issue_classic(APP, t0).token;
        assert_eq!(store.check(None, t0), TokenCheck::Missing);
        assert_eq!(store.check(Some(""), t0), TokenCheck::Missing);
        assert_eq!(store.check(Some("nonsense"), t0), TokenCheck::Unknown);
        assert_eq!(
            store.check(Some(&token), t0 + Duration::from_secs(7200)),
            TokenCheck::Expired
        );
        assert_eq!(store.revoke_app(APP, t0 + MIN), 1);
        assert_eq!(store.check(Some(&token), t0 + MIN), TokenCheck::Revoked);
        // Revoked before it expired: still 40001 afterwards.
        assert_eq!(
            store.check(Some(&token), t0 + Duration::from_secs(9000)),
            TokenCheck::Revoked
        );
        assert_eq!(store.owner(&token), Some(APP));
    }

    #[test]
    fn dead_tokens_are_forgotten_beyond_the_cap() {
        let mut store = store();
        let t0 = Instant::now();
        for _ in 0..=MAX_TOKEN_RECORDS + 10 {
            store.issue_classic(APP, t0);
        }
        let later = t0 + 10 * MIN;
        let live = store.issue_classic(APP, later).token;
        assert!(store.records.len() <= MAX_TOKEN_RECORDS);
        assert_eq!(store.check(Some(&live), later), valid());
    }
}
