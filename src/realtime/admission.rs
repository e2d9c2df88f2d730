//! Who may open a socket: a rate of new Engine.IO sessions, a cap on this node's sockets, and an origin
//! allow-list.
//!
//! The rate is checked on the HTTP request that would open an Engine.IO session (before engineioxide allocates
//! one), so a flood costs a rejected request each. The cap and the origin are checked in the Socket.IO connect
//! middleware, before any state is kept for the socket; the client gets a `connect_error` saying why.

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};

/// Why a handshake was refused by a limit (bad fields are [`crate::domain::validate::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this node is full ({0} sockets): try another")]
    Full(usize),
    #[error("too many new connections per second on this node: retry shortly")]
    TooFast,
    #[error("origin not allowed")]
    Origin,
}

impl Refused {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Full(_) => "full",
            Self::TooFast => "rate",
            Self::Origin => "origin",
        }
    }
}

#[derive(Debug)]
pub struct Admission {
    max_sockets: usize,
    sockets: Arc<AtomicUsize>,
    /// `None`: no limit.
    rate: Option<governor::DefaultDirectRateLimiter>,
    /// `None`: any origin (and none).
    origins: Option<Vec<String>>,
}

/// Held in a socket's extensions: the socket's place under the cap, given back when the socket is dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// `rate`: handshakes per second (bursts of as many), 0 for no limit. `origins`: empty for any.
    pub fn new(max_sockets: usize, rate: u32, origins: Vec<String>) -> Self {
        Self {
            max_sockets,
            sockets: Arc::default(),
            rate: limiter(rate, DefaultClock::default()),
            origins: (!origins.is_empty()).then_some(origins),
        }
    }

    /// Whether a new Engine.IO session may open now (the handshake rate).
    pub fn new_session(&self) -> Result<(), Refused> {
        match &self.rate {
            Some(rate) if rate.check().is_err() => Err(Refused::TooFast),
            _ => Ok(()),
        }
    }

    /// Admits a Socket.IO handshake from `origin` (the `Origin` header, if any), or says why not.
    pub fn admit(&self, origin: Option<&str>) -> Result<Slot, Refused> {
        if let (Some(allowed), Some(origin)) = (&self.origins, origin)
            && !allowed.iter().any(|a| a == origin)
        {
            return Err(Refused::Origin);
        }
        let taken = self.sockets.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(self.sockets.clone());
        if taken >= self.max_sockets {
            return Err(Refused::Full(self.max_sockets));
        }
        Ok(slot)
    }

    /// Sockets holding a place under the cap now: connected, or in the middle of their handshake. A counter
    /// read, where asking socketioxide would clone every socket of every namespace.
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }
}

/// `rate` per second, in bursts of up to `rate` (GCRA, the token bucket's equivalent); `None` for 0: no limit.
fn limiter<C: Clock>(
    rate: u32,
    clock: C,
) -> Option<RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>> {
    NonZeroU32::new(rate).map(|rate| RateLimiter::direct_with_clock(Quota::per_second(rate), clock))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn caps_sockets_and_gives_slots_back() {
        let a = Admission::new(2, 0, vec![]);
        let one = a.admit(None).unwrap();
        let two = a.admit(None).unwrap();
        assert_eq!(a.admit(None).unwrap_err(), Refused::Full(2));
        assert_eq!(a.sockets(), 2, "a refusal takes no slot");
        drop(one);
        let three = a.admit(None).unwrap();
        drop((two, three));
        assert_eq!(a.sockets(), 0);
    }

    #[test]
    fn rate_limits_new_sessions_only_when_set() {
        let unlimited = Admission::new(10, 0, vec![]);
        assert!((0..10_000).all(|_| unlimited.new_session().is_ok()));
        let limited = Admission::new(10, 2, vec![]);
        assert!(limited.new_session().is_ok() && limited.new_session().is_ok());
        assert_eq!(limited.new_session().unwrap_err(), Refused::TooFast);
        assert!(
            limited.admit(None).is_ok(),
            "the rate does not limit the socket itself"
        );
    }

    #[test]
    fn limits_the_handshake_rate() {
        let clock = FakeRelativeClock::default();
        let b = limiter(3, clock.clone()).unwrap();
        assert!((0..3).all(|_| b.check().is_ok()), "a burst of `rate`");
        assert!(b.check().is_err());
        clock.advance(Duration::from_millis(340));
        assert!(b.check().is_ok(), "one more every 1/rate s");
        assert!(b.check().is_err());
        // Idle time refills up to one second's worth, no more.
        clock.advance(Duration::from_secs(60));
        assert!((0..3).all(|_| b.check().is_ok()));
        assert!(b.check().is_err());
        assert!(limiter(0, clock).is_none(), "0: no limit");
    }

    #[test]
    fn checks_the_origin_only_when_a_list_is_set() {
        let any = Admission::new(10, 0, vec![]);
        assert!(any.admit(Some("https://evil.example")).is_ok());
        let list = Admission::new(10, 0, vec!["https://app.example".into()]);
        assert!(list.admit(Some("https://app.example")).is_ok());
        assert!(
            list.admit(None).is_ok(),
            "non-browser clients send no Origin"
        );
        assert_eq!(
            list.admit(Some("https://evil.example")).unwrap_err(),
            Refused::Origin
        );
    }
}
