//! Failed logins per client address (`LOGIN_FAILURES_PER_MINUTE`), for the admin UI and `credentials`
//! namespaces.
//!
//! A password check costs tens of milliseconds of CPU and they run one at a time (one per spare core): one
//! address guessing passwords would keep everyone else's logins waiting. Each address may fail that many logins
//! a minute (a burst of as many, then one more every `60 / n` seconds); once it has used them up, its logins are
//! refused at once, without a check, until it may fail again. A success costs nothing, so many users behind one
//! address who know their passwords are never refused. Callers check twice: before queueing for a check, and
//! again when their turn comes, so a burst of attempts sent at once stops at the limit too.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock, Reference},
    middleware::StateInformationMiddleware,
    state::keyed::DashMapStateStore,
};

use crate::domain::client;

/// Addresses remembered at most. Beyond it (addresses with failures in the last minute), failures are not
/// counted until some are forgotten: the check queue still bounds the CPU they take.
const MAX_ADDRESSES: usize = 100_000;

/// Forget addresses whose failures are all older than a minute, every this many failures.
const FORGET_EVERY: u64 = 1024;

/// Why a login was refused before its password was checked: the client's `connect_error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed logins from this address: retry in {} s", retry_secs(*.0))]
pub struct Backoff(pub Duration);

/// Whole seconds, rounded up, at least 1.
fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Failed logins per address; see the module docs.
pub struct FailedLogins<C: Clock = DefaultClock> {
    /// `None`: no limit.
    limit: Option<Limit<C>>,
}

struct Limit<C: Clock> {
    failures: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, StateInformationMiddleware>,
    /// Addresses that used up their failures, until when: refused without a check.
    locked: Mutex<HashMap<IpAddr, C::Instant>>,
    counted: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for FailedLogins<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedLogins")
            .field("limited", &self.limit.is_some())
            .field("addresses", &self.addresses())
            .finish()
    }
}

impl FailedLogins {
    /// `per_minute` failed logins per address; 0: no limit.
    pub fn new(per_minute: u32) -> Self {
        Self::with_clock(per_minute, DefaultClock::default())
    }
}

impl Default for FailedLogins {
    /// No limit (tests and embedders that do not choose one).
    fn default() -> Self {
        Self::new(0)
    }
}

impl<C: Clock> FailedLogins<C> {
    pub fn with_clock(per_minute: u32, clock: C) -> Self {
        let limit = NonZeroU32::new(per_minute).map(|n| Limit {
            failures: RateLimiter::dashmap_with_clock(Quota::per_minute(n), clock)
                .with_middleware::<StateInformationMiddleware>(),
            locked: Mutex::default(),
            counted: AtomicU64::new(0),
        });
        Self { limit }
    }

    /// Whether `client` may have a password checked now. Clients without an address are never refused.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Backoff> {
        let (Some(limit), Some(ip)) = (&self.limit, client) else {
            return Ok(());
        };
        let now = limit.failures.clock().now();
        match limit.locked.lock().unwrap().get(&client::key(ip)) {
            Some(until) if *until > now => Err(Backoff(until.duration_since(now).into())),
            _ => Ok(()),
        }
    }

    /// Counts a failed login of `client`. The failure that uses up its allowance locks it out until it may fail
    /// again.
    pub fn failed(&self, client: Option<IpAddr>) {
        let (Some(limit), Some(ip)) = (&self.limit, client) else {
            return;
        };
        if limit.counted.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.forget_old();
        }
        if limit.failures.len() >= MAX_ADDRESSES {
            tracing::warn!(
                max = MAX_ADDRESSES,
                "failed logins of too many addresses: not counted until some are a minute old"
            );
            return;
        }
        let key = client::key(ip);
        let now = limit.failures.clock().now();
        let until = match limit.failures.check_key(&key) {
            Ok(state) if state.remaining_burst_capacity() > 0 => return,
            // The last allowed one: the next is allowed once one more has been earned.
            Ok(state) => now + state.quota().replenish_interval().into(),
            // Attempts that were let through together before the first of them failed.
            Err(not_until) => not_until.earliest_possible(),
        };
        limit.locked.lock().unwrap().insert(key, until);
    }

    /// Forgets addresses back to a full allowance, and lockouts that are over.
    fn forget_old(&self) {
        let Some(limit) = &self.limit else { return };
        limit.failures.retain_recent();
        limit.failures.shrink_to_fit();
        let now = limit.failures.clock().now();
        let mut locked = limit.locked.lock().unwrap();
        locked.retain(|_, until| *until > now);
        locked.shrink_to_fit();
    }

    /// Addresses remembered now.
    pub fn addresses(&self) -> usize {
        self.limit.as_ref().map_or(0, |l| l.failures.len())
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_address_that_fails_too_often_waits_and_others_do_not() {
        let clock = FakeRelativeClock::default();
        let logins = FailedLogins::with_clock(5, clock.clone());
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for _ in 0..4 {
            assert_eq!(logins.check(a), Ok(()));
            logins.failed(a);
        }
        assert_eq!(logins.check(a), Ok(()), "a fifth try");
        logins.failed(a);
        assert_eq!(logins.check(a), Err(Backoff(12 * SECOND)), "60 s / 5");
        assert_eq!(
            Backoff(12 * SECOND).to_string(),
            "too many failed logins from this address: retry in 12 s"
        );
        assert_eq!(logins.check(b), Ok(()), "another address is not held up");
        clock.advance(10 * SECOND);
        assert_eq!(logins.check(a), Err(Backoff(2 * SECOND)));
        clock.advance(2 * SECOND);
        assert_eq!(logins.check(a), Ok(()), "one more try earned");
        logins.failed(a);
        assert_eq!(logins.check(a), Err(Backoff(12 * SECOND)), "and only one");
        clock.advance(60 * SECOND);
        for _ in 0..4 {
            logins.failed(a);
        }
        assert_eq!(logins.check(a), Ok(()), "a minute later, a full allowance");
    }

    #[test]
    fn tries_let_through_together_stop_at_the_limit() {
        let clock = FakeRelativeClock::default();
        let logins = FailedLogins::with_clock(5, clock.clone());
        let a = ip("192.0.2.1");
        // Twenty attempts checked before any failed: each is checked again when its turn comes.
        let refused = (0..20)
            .filter(|_| match logins.check(a) {
                Ok(()) => {
                    logins.failed(a);
                    false
                }
                Err(_) => true,
            })
            .count();
        assert_eq!(refused, 15);
        clock.advance(11 * SECOND);
        logins.failed(a);
        assert_eq!(
            logins.check(a),
            Err(Backoff(SECOND)),
            "a failure refused by the limiter keeps the address locked until it may fail again"
        );
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let logins = FailedLogins::with_clock(1, FakeRelativeClock::default());
        logins.failed(ip("2001:db8:1:2::1"));
        assert!(
            logins.check(ip("2001:db8:1:2:ffff::7")).is_err(),
            "same /64"
        );
        assert!(logins.check(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        logins.failed(ip("198.51.100.7"));
        assert!(
            logins.check(ip("::ffff:198.51.100.7")).is_err(),
            "IPv4 mapped is IPv4"
        );
    }

    #[test]
    fn no_limit_at_zero_nor_without_an_address() {
        let off = FailedLogins::with_clock(0, FakeRelativeClock::default());
        let on = FailedLogins::with_clock(1, FakeRelativeClock::default());
        for _ in 0..10 {
            off.failed(ip("192.0.2.1"));
            on.failed(None);
        }
        assert_eq!(off.check(ip("192.0.2.1")), Ok(()));
        assert_eq!(on.check(None), Ok(()));
        assert_eq!(off.addresses() + on.addresses(), 0);
    }

    #[test]
    fn forgets_addresses_a_minute_after_their_failures() {
        let clock = FakeRelativeClock::default();
        let logins = FailedLogins::with_clock(5, clock.clone());
        for i in 0..100u8 {
            logins.failed(Some(IpAddr::from([10, 0, 0, i])));
        }
        assert_eq!(logins.addresses(), 100);
        clock.advance(61 * SECOND);
        let last = ip("10.0.1.1");
        for _ in 0..FORGET_EVERY {
            logins.failed(last);
            clock.advance(12 * SECOND);
        }
        assert_eq!(logins.addresses(), 1);
        assert!(logins.limit.unwrap().locked.lock().unwrap().len() <= 1);
    }
}
