//! Connections that are not requests yet, bounded in time and in number (slowloris).
//!
//! A connection is *pending* from its TCP accept until its first request head has been read, i.e. until its
//! first request reaches our service: through the TLS handshake and while the client sends (or does not send)
//! that head. A websocket or a long-polling request is a request, so a socket is never pending. A client that
//! never gets that far holds a file descriptor and a task for nothing; a few thousand of them would exhaust the
//! node's descriptors and lock everyone out. So:
//!
//! - **In time.** A pending connection is closed `HEADER_READ_TIMEOUT_MS` after its accept, whatever it is
//!   stuck in: the TLS handshake, the bytes hyper-util reads before any parser to tell HTTP/1 from HTTP/2 (which
//!   nothing else bounds), or the request head. After the first request, hyper's own `header_read_timeout` (set
//!   to the same value by [`crate::app`]) bounds every later head, idle keep-alive included.
//! - **In number.** At most `MAX_PENDING_CONNECTIONS` are pending at once; a new connection beyond that closes
//!   the *oldest* pending one. Refusing the newcomer instead would let an attacker lock every new client out with
//!   the cap's worth of connections per timeout (about 100 a second by default); closing the oldest makes them
//!   open more than the cap within the few milliseconds a real client takes to send its first request.
//!
//! How: [`Acceptor`] wraps the TCP stream *under* TLS in a [`Guarded`] stream and the connection's service in a
//! [`Released`] one, both sharing the connection's [`Ticket`]. The service releases the ticket at its first call
//! (hyper has read a whole head); until then every read, write and flush of the stream fails once the deadline
//! passes or the connection is chosen to make room, which closes it wherever it is stuck. After the release the
//! stream passes everything through untouched.

use std::{
    collections::BTreeMap,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::telemetry::metrics::{Metrics, Reason};

/// Warn about a flood of pending connections at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The pending connections of one listener and their limits.
pub struct Pending {
    cap: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    /// Pending connections by accept order: the first is the oldest.
    waiting: BTreeMap<u64, Arc<Slot>>,
    last_warning: Option<Instant>,
}

const PENDING: u8 = 0;
/// Its first request arrived: no limit applies any more.
const RELEASED: u8 = 1;
/// Closed to make room for a newer one.
const EVICTED: u8 = 2;
/// Not a request within the timeout.
const TIMED_OUT: u8 = 3;
/// Ended (by the client or an error) while pending.
const GONE: u8 = 4;

struct Slot {
    id: u64,
    state: AtomicU8,
    /// The connection's task, woken when the connection is evicted.
    waker: AtomicWaker,
}

impl Pending {
    pub fn new(cap: usize, timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            timeout,
            metrics,
            state: Mutex::default(),
        })
    }

    /// How many connections are pending now.
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().waiting.len()
    }

    /// Registers a new connection, closing the oldest pending one if the cap is reached.
    fn admit(self: &Arc<Self>) -> Ticket {
        let mut queue = self.state.lock().unwrap();
        let id = queue.next_id;
        queue.next_id += 1;
        let mut evicted = 0;
        while queue.waiting.len() >= self.cap {
            let Some((_, oldest)) = queue.waiting.pop_first() else {
                break;
            };
            if oldest
                .state
                .compare_exchange(PENDING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                oldest.waker.wake();
                evicted += 1;
            }
        }
        if evicted > 0 {
            let now = Instant::now();
            if queue
                .last_warning
                .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
            {
                queue.last_warning = Some(now);
                tracing::warn!(
                    cap = self.cap,
                    "too many connections without a request (MAX_PENDING_CONNECTIONS): closing the oldest to make \
                     room (counted in pending_connections_closed_total; this warning is repeated at most every \
                     {}s)",
                    WARN_EVERY.as_secs()
                );
            }
            self.count_closed("evicted", evicted);
        }
        let slot = Arc::new(Slot {
            id,
            state: AtomicU8::new(PENDING),
            waker: AtomicWaker::new(),
        });
        queue.waiting.insert(id, slot.clone());
        Ticket {
            slot,
            pending: self.clone(),
        }
    }

    fn forget(&self, slot: &Slot) {
        self.state.lock().unwrap().waiting.remove(&slot.id);
    }

    fn count_closed(&self, reason: &'static str, n: u64) {
        self.metrics
            .pending_closed
            .get_or_create(&Reason { reason })
            .inc_by(n);
    }
}

/// One connection's place among the pending ones, shared by its stream and its service.
pub struct Ticket {
    slot: Arc<Slot>,
    pending: Arc<Pending>,
}

impl Ticket {
    /// Leaves the pending state for `to`; false if it had already left it.
    fn leave(&self, to: u8) -> bool {
        let left = self
            .slot
            .state
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if left {
            self.pending.forget(&self.slot);
        }
        left
    }

    /// The first request arrived.
    fn release(&self) {
        if self.slot.state.load(Ordering::Acquire) == PENDING {
            self.leave(RELEASED);
        }
    }

    fn state(&self) -> u8 {
        self.slot.state.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave(GONE);
    }
}

/// An axum-server acceptor that puts every accepted connection under the limits, then hands it to `inner` (the
/// TLS acceptor, or none for plain HTTP).
#[derive(Clone)]
pub struct Acceptor<A> {
    inner: A,
    pending: Arc<Pending>,
}

impl<A> Acceptor<A> {
    pub fn new(inner: A, pending: Arc<Pending>) -> Self {
        Self { inner, pending }
    }
}

impl<A, I, S> axum_server::accept::Accept<I, S> for Acceptor<A>
where
    A: axum_server::accept::Accept<Guarded<I>, Released<S>>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = A::Future;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let ticket = Arc::new(self.pending.admit());
        let deadline = Box::pin(tokio::time::sleep(self.pending.timeout));
        let stream = Guarded {
            inner: stream,
            limits: Some((ticket.clone(), deadline)),
        };
        let service = Released {
            inner: service,
            ticket,
        };
        self.inner.accept(stream, service)
    }
}

/// A connection's stream: fails every read, write and flush once the connection is evicted or its deadline
/// passes while it is pending; plain after its first request.
pub struct Guarded<T> {
    inner: T,
    /// Dropped at the first poll after the release: a websocket carries nothing of this for its life.
    limits: Option<(Arc<Ticket>, Pin<Box<tokio::time::Sleep>>)>,
}

impl<T> Guarded<T> {
    /// Whether the connection may go on; registers the task to be woken when it may not.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some((ticket, deadline)) = &mut self.limits else {
            return Ok(());
        };
        // Registered before reading the state, so an eviction in between still wakes us.
        ticket.slot.waker.register(cx.waker());
        let closed = match ticket.state() {
            PENDING if deadline.as_mut().poll(cx).is_ready() => {
                if ticket.leave(TIMED_OUT) {
                    ticket.pending.count_closed("timeout", 1);
                    TIMED_OUT
                } else {
                    ticket.state()
                }
            }
            state => state,
        };
        match closed {
            PENDING => Ok(()),
            RELEASED => {
                self.limits = None;
                Ok(())
            }
            EVICTED => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for newer connections (MAX_PENDING_CONNECTIONS)",
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within HEADER_READ_TIMEOUT_MS",
            )),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's service: its first call (hyper has read a whole request head) releases the connection.
#[derive(Clone)]
pub struct Released<S> {
    inner: S,
    ticket: Arc<Ticket>,
}

impl<S, R> tower_service::Service<R> for Released<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.ticket.release();
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum_server::accept::{Accept, DefaultAcceptor};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tower_service::Service;

    #[derive(Clone)]
    struct Echo;
    impl Service<()> for Echo {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    type Conn = (Guarded<DuplexStream>, Released<Echo>, DuplexStream);

    async fn connect(acceptor: &Acceptor<DefaultAcceptor>) -> Conn {
        let (server, client) = tokio::io::duplex(1024);
        let (stream, service) = acceptor.accept(server, Echo).await.unwrap();
        (stream, service, client)
    }

    fn closed(metrics: &Metrics, reason: &'static str) -> u64 {
        metrics
            .pending_closed
            .get_or_create(&Reason { reason })
            .get()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_closed_at_the_deadline() {
        let metrics = Arc::new(Metrics::new());
        let pending = Pending::new(10, Duration::from_secs(5), metrics.clone());
        let acceptor = Acceptor::new(DefaultAcceptor, pending.clone());
        let (mut stream, _service, mut client) = connect(&acceptor).await;
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 8);
        let start = tokio::time::Instant::now();
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(pending.count(), 0);
        assert_eq!(closed(&metrics, "timeout"), 1);
        // Writes fail too.
        assert!(stream.write_all(b"x").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_lifts_every_limit() {
        let metrics = Arc::new(Metrics::new());
        let pending = Pending::new(1, Duration::from_secs(5), metrics.clone());
        let acceptor = Acceptor::new(DefaultAcceptor, pending.clone());
        let (mut stream, mut service, mut client) = connect(&acceptor).await;
        assert_eq!(pending.count(), 1);
        service.call(()).await.unwrap();
        assert_eq!(pending.count(), 0);
        // Long after the deadline, with newer connections arriving, it carries on.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _newer = connect(&acceptor).await;
        let _newest = connect(&acceptor).await;
        client.write_all(b"later").await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(b"ok").await.unwrap();
        assert!(stream.limits.is_none());
        assert_eq!(closed(&metrics, "timeout") + closed(&metrics, "evicted"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_cap_the_oldest_is_closed() {
        let metrics = Arc::new(Metrics::new());
        let pending = Pending::new(2, Duration::from_secs(5), metrics.clone());
        let acceptor = Acceptor::new(DefaultAcceptor, pending.clone());
        let (mut first, _s1, _c1) = connect(&acceptor).await;
        let (mut second, _s2, _c2) = connect(&acceptor).await;
        // A read waiting on the oldest is woken by the eviction.
        let waiting = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            first.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        let (_third, _s3, _c3) = connect(&acceptor).await;
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(pending.count(), 2);
        assert_eq!(closed(&metrics, "evicted"), 1);
        // The newer ones are untouched.
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(1), second.read(&mut buf)).await;
        assert!(read.is_err(), "the second connection was closed: {read:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_gives_its_place_back() {
        let metrics = Arc::new(Metrics::new());
        let pending = Pending::new(2, Duration::from_secs(5), metrics.clone());
        let acceptor = Acceptor::new(DefaultAcceptor, pending.clone());
        let conn = connect(&acceptor).await;
        assert_eq!(pending.count(), 1);
        drop(conn);
        assert_eq!(pending.count(), 0);
        assert_eq!(closed(&metrics, "timeout") + closed(&metrics, "evicted"), 0);
    }
}
