//! Who may open a socket: a rate of new Engine.IO sessions, a cap on this node's sockets, a bound on handshakes
//! being verified, a bound on namespaces per Engine.IO session, and an origin allow-list.
//!
//! The rate is checked on the HTTP request that would open an Engine.IO session (before engineioxide allocates
//! one), so a flood costs a rejected request each. The rest is checked in the Socket.IO connect middleware: the
//! origin and the session's namespaces first, then a place among the handshakes being verified (a slow password
//! check or auth webhook holds only that), and a place under the socket cap once the client is verified, so
//! clients that never pass verification cannot fill the node. The client gets a `connect_error` saying why.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::http::{HeaderMap, header};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};
use socketioxide::socket::Sid;
use tokio::sync::Notify;

/// Why a handshake was refused by a limit (bad fields are [`crate::domain::validate::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this node is full ({0} sockets): try another")]
    Full(usize),
    #[error("too many new connections per second on this node: retry shortly")]
    TooFast,
    #[error("origin not allowed")]
    Origin,
    #[error("too many handshakes being verified on this node ({0}): retry shortly")]
    Verifying(usize),
    #[error("too many namespaces on one connection (at most {0})")]
    Namespaces(usize),
}

impl Refused {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Full(_) => "full",
            Self::TooFast => "rate",
            Self::Origin => "origin",
            Self::Verifying(_) => "verifying",
            Self::Namespaces(_) => "namespaces",
        }
    }
}

/// Handshakes being verified at once on a node, in tests (`MAX_VERIFYING_HANDSHAKES` sets it for a node).
const DEFAULT_MAX_VERIFYING: usize = 1024;

/// Namespaces one Engine.IO session may be in or be connecting to at once. Clients multiplex a few namespaces over
/// one connection; each namespace costs the node a socket (and a dynamic one its own adapter), so one connection
/// must not ask for hundreds.
pub const MAX_NAMESPACES_PER_SESSION: usize = 16;

/// How long a namespace's handshake waits, at the bound, for a namespace its client has just left to give its
/// place back ([`Admission::seat`]).
const SEAT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Admission {
    max_sockets: usize,
    sockets: Arc<AtomicUsize>,
    max_verifying: usize,
    verifying: Arc<AtomicUsize>,
    /// Namespaces per Engine.IO session (socketioxide gives a socket its session's id in every namespace).
    sessions: Arc<Mutex<HashMap<Sid, usize>>>,
    /// Told whenever a [`Seat`] is given back.
    seat_freed: Arc<Notify>,
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

/// A handshake's place among those being verified, given back when verification ends.
#[derive(Debug)]
pub struct Verifying(Arc<AtomicUsize>);

impl Drop for Verifying {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held in a socket's extensions: its place among its Engine.IO session's namespaces.
#[derive(Debug)]
pub struct Seat {
    sessions: Arc<Mutex<HashMap<Sid, usize>>>,
    session: Sid,
    freed: Arc<Notify>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut sessions = self.sessions.lock().unwrap();
        if let Some(n) = sessions.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                sessions.remove(&self.session);
            }
        }
        drop(sessions);
        self.freed.notify_waiters();
    }
}

/// Takes one place of `max` on `counter`, or gives it back at once.
fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Arc<AtomicUsize>> {
    let taken = counter.fetch_add(1, Ordering::Relaxed);
    if taken >= max {
        counter.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(counter.clone())
}

impl Admission {
    /// `rate`: handshakes per second (bursts of as many), 0 for no limit. `origins`: empty for any.
    pub fn new(max_sockets: usize, rate: u32, origins: Vec<String>) -> Self {
        Self::with_verifying(max_sockets, DEFAULT_MAX_VERIFYING, rate, origins)
    }

    /// [`Self::new`] with at most `max_verifying` handshakes being verified at once.
    pub fn with_verifying(
        max_sockets: usize,
        max_verifying: usize,
        rate: u32,
        origins: Vec<String>,
    ) -> Self {
        Self {
            max_sockets,
            sockets: Arc::default(),
            max_verifying,
            verifying: Arc::default(),
            sessions: Arc::default(),
            seat_freed: Arc::default(),
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

    /// Admits a client from `origin` (the `Origin` header, if any) to a place under the cap, or says why not.
    pub fn admit(&self, origin: Option<&str>) -> Result<Slot, Refused> {
        self.origin(origin)?;
        self.slot()
    }

    /// Whether a client from `origin` (the `Origin` header, if any) may connect.
    pub fn origin(&self, origin: Option<&str>) -> Result<(), Refused> {
        match (&self.origins, origin) {
            (Some(allowed), Some(origin)) if !allowed.iter().any(|a| a == origin) => {
                Err(Refused::Origin)
            }
            _ => Ok(()),
        }
    }

    /// A place under the socket cap, for a verified client.
    pub fn slot(&self) -> Result<Slot, Refused> {
        take(&self.sockets, self.max_sockets)
            .map(Slot)
            .ok_or(Refused::Full(self.max_sockets))
    }

    /// A place among the handshakes being verified.
    pub fn verifying(&self) -> Result<Verifying, Refused> {
        take(&self.verifying, self.max_verifying)
            .map(Verifying)
            .ok_or(Refused::Verifying(self.max_verifying))
    }

    /// A place among the namespaces of Engine.IO session `session`.
    ///
    /// At the bound, `leaving` says whether one of the session's namespaces is being left: socketioxide marks a
    /// socket disconnected as soon as its client's `DISCONNECT` arrives, but runs the disconnect handler (which
    /// gives the place back) in a task of its own, so a client leaving a namespace and opening another at once
    /// would otherwise find its places still taken. Then this waits for a place to come back, at most
    /// [`SEAT_WAIT`]; a session with all its namespaces open is refused at once.
    pub async fn seat(&self, session: Sid, leaving: impl Fn() -> bool) -> Result<Seat, Refused> {
        let deadline = tokio::time::Instant::now() + SEAT_WAIT;
        loop {
            // Listening before looking, so a place given back in between is not missed.
            let freed = self.seat_freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(seat) = self.try_seat(session) {
                return Ok(seat);
            }
            if !leaving() || tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Refused::Namespaces(MAX_NAMESPACES_PER_SESSION));
            }
        }
    }

    fn try_seat(&self, session: Sid) -> Option<Seat> {
        let mut sessions = self.sessions.lock().unwrap();
        let n = sessions.entry(session).or_default();
        if *n >= MAX_NAMESPACES_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(Seat {
            sessions: self.sessions.clone(),
            session,
            freed: self.seat_freed.clone(),
        })
    }

    /// Whether a browser opened this request from a page that is neither allowed (`CORS_ORIGINS`) nor the node's
    /// own (`Origin` is `https://` or `http://` and the request's `Host`). Browsers send their cookies to us
    /// whoever's page opened the WebSocket, so a token in a cookie proves nothing then (cross-site WebSocket
    /// hijacking). No `Origin`: not a browser, not cross-site.
    pub fn cross_site(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return false;
        };
        let Ok(origin) = origin.to_str() else {
            return true;
        };
        if let Some(allowed) = &self.origins
            && allowed.iter().any(|a| a == origin)
        {
            return false;
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let site = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        !matches!((site, host), (Some(site), Some(host)) if site.eq_ignore_ascii_case(host))
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
    fn verification_has_its_own_small_bound() {
        let a = Admission::with_verifying(3, 2, 0, vec![]);
        let (one, two) = (a.verifying().unwrap(), a.verifying().unwrap());
        assert_eq!(a.verifying().unwrap_err(), Refused::Verifying(2));
        // Clients being verified hold no place under the socket cap.
        let slots: Vec<_> = (0..3).map(|_| a.slot().unwrap()).collect();
        assert_eq!(a.slot().unwrap_err(), Refused::Full(3));
        drop((one, two, slots));
        assert!(a.verifying().is_ok());
        assert_eq!(a.sockets(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_the_namespaces_of_one_session() {
        let a = Admission::new(100, 0, vec![]);
        let (s1, s2) = (Sid::new(), Sid::new());
        let mut seats = Vec::new();
        for _ in 0..MAX_NAMESPACES_PER_SESSION {
            seats.push(a.seat(s1, || false).await.unwrap());
        }
        let started = tokio::time::Instant::now();
        assert_eq!(
            a.seat(s1, || false).await.unwrap_err(),
            Refused::Namespaces(MAX_NAMESPACES_PER_SESSION)
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
        assert!(
            a.seat(s2, || false).await.is_ok(),
            "another session is not affected"
        );
        drop(seats);
        assert!(a.seat(s1, || false).await.is_ok());
        assert!(
            a.sessions.lock().unwrap().is_empty(),
            "nothing kept per session"
        );
    }

    /// A namespace being left gives its place to the one opened right after it, once its disconnect handler runs.
    #[tokio::test(start_paused = true)]
    async fn at_the_bound_a_namespace_being_left_is_waited_for() {
        let a = Arc::new(Admission::new(100, 0, vec![]));
        let s1 = Sid::new();
        let mut seats = Vec::new();
        for _ in 0..MAX_NAMESPACES_PER_SESSION {
            seats.push(a.seat(s1, || false).await.unwrap());
        }
        let left = seats.pop().unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(left);
        });
        let started = tokio::time::Instant::now();
        let seat = a.seat(s1, || true).await;
        assert!(seat.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        // Nothing given back: refused after the wait, still bounded.
        let started = tokio::time::Instant::now();
        assert_eq!(
            a.seat(s1, || true).await.unwrap_err(),
            Refused::Namespaces(MAX_NAMESPACES_PER_SESSION)
        );
        assert_eq!(started.elapsed(), SEAT_WAIT);
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
    fn cross_site_is_a_browser_origin_neither_allowed_nor_the_nodes_own() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let host = ("host", "chat.example:5009");
        let any = Admission::new(10, 0, vec![]);
        assert!(
            !any.cross_site(&headers(&[host])),
            "no Origin: not a browser"
        );
        for own in ["https://chat.example:5009", "http://CHAT.example:5009"] {
            assert!(!any.cross_site(&headers(&[host, ("origin", own)])), "{own}");
        }
        for other in [
            "https://evil.example",
            "https://chat.example",
            "https://chat.example:5009.evil.example",
            "null",
            "wss://chat.example:5009",
        ] {
            assert!(
                any.cross_site(&headers(&[host, ("origin", other)])),
                "{other}"
            );
        }
        assert!(
            any.cross_site(&headers(&[("origin", "https://chat.example:5009")])),
            "no Host to be the node's own"
        );
        let list = Admission::new(10, 0, vec!["https://app.example".into()]);
        assert!(!list.cross_site(&headers(&[host, ("origin", "https://app.example")])));
        assert!(list.cross_site(&headers(&[host, ("origin", "https://evil.example")])));
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
