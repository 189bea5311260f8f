//! Issued tokens and the failed-login counter, both kept in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_lc_rs::digest;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::users::User;

/// Failed logins for one username that trigger the rate limit.
pub const MAX_FAILED_LOGINS: usize = 10;
/// The window in which failed logins are counted.
pub const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Usernames tracked by the limiter before entries without recent failures
/// are dropped.
const MAX_TRACKED_USERNAMES: usize = 10_000;

/// A source of the current time, replaced by a manual clock in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The identity and expiry behind a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub username: String,
    pub sub: String,
    pub roles: Vec<String>,
    pub expires_at: OffsetDateTime,
}

/// Sessions keyed by the SHA-256 of their token, so the map never contains
/// a usable token.
pub struct TokenStore {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl TokenStore {
    pub fn new(ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            ttl,
            clock,
        }
    }

    /// Creates a token of 32 random bytes in hex for `user`. Expired sessions
    /// are dropped on the way.
    pub fn issue(&self, user: &User) -> Result<(Zeroizing<String>, OffsetDateTime), TokenError> {
        let mut random = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(random.as_mut()).map_err(|_| TokenError::Random)?;
        let token = Zeroizing::new(hex::encode(random.as_ref()));
        let now = self.clock.now();
        let expires_at = (now + self.ttl)
            .replace_nanosecond(0)
            .unwrap_or(now + self.ttl);
        let session = Session {
            username: user.username.clone(),
            sub: user.sub.clone(),
            roles: user.roles.clone(),
            expires_at,
        };
        let mut sessions = self.lock();
        sessions.retain(|_, session| session.expires_at > now);
        sessions.insert(token_key(&token), session);
        Ok((token, expires_at))
    }

    /// Returns the session of an issued, unexpired and unrevoked token.
    pub fn validate(&self, token: &str) -> Option<Session> {
        let key = token_key(token);
        let now = self.clock.now();
        let mut sessions = self.lock();
        match sessions.get(&key) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Revokes `token` and returns false when it was unknown or already
    /// expired.
    pub fn revoke(&self, token: &str) -> bool {
        let now = self.clock.now();
        self.lock()
            .remove(&token_key(token))
            .is_some_and(|session| session.expires_at > now)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock cannot leave the map half-updated,
        // because every update is a single insert or remove.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("failed to generate a random token")]
    Random,
}

fn token_key(token: &str) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Counts failed logins per username over a sliding window.
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<OffsetDateTime>>>,
    clock: Arc<dyn Clock>,
}

impl LoginLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Returns `Err(seconds)` with the time until the next attempt is allowed
    /// when `username` has reached [`MAX_FAILED_LOGINS`] within the window.
    pub fn check(&self, username: &str) -> Result<(), u64> {
        let now = self.clock.now();
        let mut failures = self.lock();
        let Some(times) = failures.get_mut(username) else {
            return Ok(());
        };
        prune(times, now);
        if times.len() < MAX_FAILED_LOGINS {
            return Ok(());
        }
        let oldest = times.first().copied().unwrap_or(now);
        let reopens = oldest + FAILED_LOGIN_WINDOW;
        let secs = (reopens - now).whole_seconds().max(1);
        Err(u64::try_from(secs).unwrap_or(1))
    }

    pub fn record_failure(&self, username: &str) {
        let now = self.clock.now();
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED_USERNAMES && !failures.contains_key(username) {
            failures.retain(|_, times| {
                prune(times, now);
                !times.is_empty()
            });
        }
        let times = failures.entry(username.to_owned()).or_default();
        prune(times, now);
        times.push(now);
    }

    pub fn record_success(&self, username: &str) {
        self.lock().remove(username);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<OffsetDateTime>>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn prune(times: &mut Vec<OffsetDateTime>, now: OffsetDateTime) {
    times.retain(|time| *time + FAILED_LOGIN_WINDOW > now);
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::users::{Users, hash_password};

    /// A clock that moves only when a test advances it.
    pub struct ManualClock(Mutex<OffsetDateTime>);

    impl ManualClock {
        pub fn new() -> Arc<Self> {
            Arc::new(Self(Mutex::new(
                OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1 << 30),
            )))
        }

        pub fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap();
            *now += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    fn alice() -> Users {
        let hash = hash_password(b"pw").unwrap();
        Users::parse(&format!(
            "[[users]]\nusername = \"alice\"\npassword_hash = '{hash}'\nroles = [\"admin\"]\n"
        ))
        .unwrap()
    }

    #[test]
    fn issued_token_validates_until_expiry() {
        let clock = ManualClock::new();
        let store = TokenStore::new(Duration::from_secs(3600), clock.clone());
        let users = alice();
        let (token, expires_at) = store.issue(users.get("alice").unwrap()).unwrap();
        assert_eq!(token.len(), 64);
        let session = store.validate(&token).unwrap();
        assert_eq!(session.username, "alice");
        assert_eq!(session.expires_at, expires_at);
        clock.advance(Duration::from_secs(3599));
        assert!(store.validate(&token).is_some());
        clock.advance(Duration::from_secs(1));
        assert!(store.validate(&token).is_none());
    }

    #[test]
    fn revoked_token_is_invalid() {
        let clock = ManualClock::new();
        let store = TokenStore::new(Duration::from_secs(60), clock);
        let users = alice();
        let (token, _) = store.issue(users.get("alice").unwrap()).unwrap();
        assert!(store.revoke(&token));
        assert!(store.validate(&token).is_none());
        assert!(!store.revoke(&token));
    }

    #[test]
    fn expired_token_cannot_be_revoked() {
        let clock = ManualClock::new();
        let store = TokenStore::new(Duration::from_secs(60), clock.clone());
        let users = alice();
        let (token, _) = store.issue(users.get("alice").unwrap()).unwrap();
        clock.advance(Duration::from_secs(61));
        assert!(!store.revoke(&token));
    }

    #[test]
    fn tokens_are_distinct() {
        let store = TokenStore::new(Duration::from_secs(60), ManualClock::new());
        let users = alice();
        let (first, _) = store.issue(users.get("alice").unwrap()).unwrap();
        let (second, _) = store.issue(users.get("alice").unwrap()).unwrap();
        assert_ne!(*first, *second);
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let clock = ManualClock::new();
        let limiter = LoginLimiter::new(clock.clone());
        for _ in 0..MAX_FAILED_LOGINS - 1 {
            limiter.record_failure("alice");
        }
        assert_eq!(limiter.check("alice"), Ok(()));
        limiter.record_failure("alice");
        assert_eq!(limiter.check("alice"), Err(60));
        assert_eq!(limiter.check("bob"), Ok(()));
        clock.advance(Duration::from_secs(59));
        assert_eq!(limiter.check("alice"), Err(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.check("alice"), Ok(()));
    }

    #[test]
    fn limiter_window_slides() {
        let clock = ManualClock::new();
        let limiter = LoginLimiter::new(clock.clone());
        for _ in 0..MAX_FAILED_LOGINS - 1 {
            limiter.record_failure("alice");
        }
        clock.advance(Duration::from_secs(61));
        limiter.record_failure("alice");
        assert_eq!(limiter.check("alice"), Ok(()));
    }

    #[test]
    fn success_clears_failures() {
        let limiter = LoginLimiter::new(ManualClock::new());
        for _ in 0..MAX_FAILED_LOGINS - 1 {
            limiter.record_failure("alice");
        }
        limiter.record_success("alice");
        limiter.record_failure("alice");
        assert_eq!(limiter.check("alice"), Ok(()));
    }
}
