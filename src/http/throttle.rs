//! `QUERY_RATE`: how many cluster queries (`GET /{room}/users`, `GET /api/rooms`) one client may ask per second.
//!
//! Each of those requests fans out to every node, and a node answers at most a few hundred at once: without a
//! limit, one client asking in a loop makes every asker's answers partial. Clients are told apart by address;
//! IPv6 clients by their /64 (one host can use any address of it). Behind a proxy every client has the proxy's
//! address: raise the rate there, or turn it off.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};

use crate::domain::client::key;

/// Forget clients idle long enough to be back at a full burst, every this many checks: the map of clients stays
/// as small as the set of clients asking now.
const FORGET_EVERY: u64 = 4096;

/// A rate of queries per client address.
pub struct QueryLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    checks: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for QueryLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryLimit")
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl QueryLimit {
    /// `rate` queries per second per client, in bursts of as many; `None` for 0 (no limit).
    pub fn new(rate: u32) -> Option<Self> {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> QueryLimit<C> {
    pub fn with_clock(rate: u32, clock: C) -> Option<Self> {
        let quota = Quota::per_second(NonZeroU32::new(rate)?);
        Some(Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
            checks: AtomicU64::new(0),
        })
    }

    /// Whether `client` may ask now; if not, how long until it may.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&key(client))
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Clients remembered now.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_each_client_to_its_rate() {
        let clock = FakeRelativeClock::default();
        let limit = QueryLimit::with_clock(5, clock.clone()).unwrap();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert!((0..5).all(|_| limit.check(a).is_ok()), "a burst of `rate`");
        assert_eq!(limit.check(a), Err(Duration::from_millis(200)));
        assert!(limit.check(b).is_ok(), "each client has its own");
        clock.advance(Duration::from_millis(150));
        assert_eq!(limit.check(a), Err(Duration::from_millis(50)));
        clock.advance(Duration::from_millis(50));
        assert!(limit.check(a).is_ok());
        assert!(limit.check(a).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(
            (0..5).all(|_| limit.check(a).is_ok()),
            "a second later: served"
        );
        assert!(QueryLimit::new(0).is_none(), "0: no limit");
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let limit = QueryLimit::with_clock(1, FakeRelativeClock::default()).unwrap();
        assert!(limit.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(limit.check(ip("2001:db8:1:2:ffff::7")).is_err(), "same /64");
        assert!(limit.check(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        assert!(limit.check(ip("198.51.100.7")).is_ok());
        assert!(
            limit.check(ip("::ffff:198.51.100.7")).is_err(),
            "IPv4 mapped is IPv4"
        );
    }

    #[test]
    fn forgets_idle_clients() {
        let clock = FakeRelativeClock::default();
        let limit = QueryLimit::with_clock(10, clock.clone()).unwrap();
        for i in 0..100u8 {
            let _ = limit.check(IpAddr::from([10, 0, 0, i]));
        }
        assert_eq!(limit.clients(), 100);
        clock.advance(Duration::from_secs(2));
        for _ in 0..FORGET_EVERY {
            let _ = limit.check(ip("10.0.1.1"));
        }
        assert!(
            limit.clients() <= 2,
            "{} clients remembered",
            limit.clients()
        );
    }
}
