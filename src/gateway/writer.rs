//! A plain WebSocket client's frames, written into its websocket by the task that has them (the one delivering a
//! broadcast, a `send` entry, a reply), not handed to a task of the client's own: a broadcast to N clients was N
//! channel sends and N task wake-ups on top of its N writes.
//!
//! The client's serving task finishes what a sender could not ([`Writer::poll_write`]): frames that came while
//! the websocket could not take more or was busy, a flush that could not complete. Order: a frame is written at
//! once only when nothing waits before it, and every write happens under one `std::sync::Mutex` held for
//! synchronous polls only. A sender's poll registers no waker of its own: whatever it leaves wakes the serving
//! task, whose next poll registers its waker where the websocket said "not now".
//!
//! A websocket written to less than `busy` before counts as busy: its frames are queued, so that frames coming
//! faster than the serving task is scheduled share one TLS record and one system call rather than one each.

use std::{
    collections::VecDeque,
    pin::{Pin, pin},
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures_util::Sink;
use tokio::time::Instant;

use crate::realtime::bus::Delivery;

/// A websocket's sending half, shared by whoever writes to it.
pub struct Writer<S, M> {
    inner: Mutex<Inner<S, M>>,
    /// Frames that may wait for the websocket; beyond it, new ones are dropped (the client is not reading).
    cap: usize,
    busy: Duration,
}

struct Inner<S, M> {
    sink: S,
    /// Frames waiting for the websocket, oldest first.
    queued: VecDeque<M>,
    /// Something was written and not flushed yet.
    unflushed: bool,
    /// The serving task's, woken when a sender leaves it work.
    waker: Option<Waker>,
    last_write: Option<Instant>,
    /// The websocket failed: nothing more is written.
    failed: bool,
    /// Closing: frames are not taken any more.
    shut: bool,
}

impl<S, M> std::fmt::Debug for Writer<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("cap", &self.cap).finish()
    }
}

impl<S, M> Writer<S, M>
where
    S: Sink<M> + Unpin,
    S::Error: std::fmt::Display,
{
    pub fn new(sink: S, cap: usize, busy: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                sink,
                queued: VecDeque::new(),
                unflushed: false,
                waker: None,
                last_write: None,
                failed: false,
                shut: false,
            }),
            cap,
            busy,
        }
    }

    /// Writes `msg` now if nothing waits before it and the websocket takes it, else queues it for the serving task;
    /// never waits.
    pub fn send(&self, msg: M) -> Delivery {
        let mut inner = self.inner.lock().unwrap();
        if inner.failed || inner.shut {
            return Delivery::Closed;
        }
        let now = Instant::now();
        let busy = inner
            .last_write
            .is_some_and(|last| now.saturating_duration_since(last) < self.busy);
        inner.last_write = Some(now);
        if busy || inner.unflushed || !inner.queued.is_empty() {
            if inner.queued.len() >= self.cap {
                return Delivery::Full;
            }
            inner.queued.push_back(msg);
            inner.wake();
            return Delivery::Taken;
        }
        // A broadcast writes to many websockets in one poll of its task: past tokio's budget, every websocket left
        // would say "not now" and be handed to its serving task.
        let delivery = unconstrained(|| inner.write_now(msg));
        if inner.failed || inner.unflushed || !inner.queued.is_empty() {
            inner.wake();
        }
        delivery
    }

    /// The serving task's part: writes and flushes what senders left, and keeps its waker for them. Ready once the
    /// websocket failed.
    pub fn poll_write(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock().unwrap();
        if !inner
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.waker = Some(cx.waker().clone());
        }
        if inner.failed {
            return Poll::Ready(());
        }
        match inner.drain(cx) {
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "gateway client's websocket failed");
                inner.failed = true;
                Poll::Ready(())
            }
            _ => Poll::Pending,
        }
    }

    /// From now on frames are refused ([`Delivery::Closed`]).
    pub fn shut(&self) {
        self.inner.lock().unwrap().shut = true;
    }

    /// Shuts, then writes what is queued and `last`, flushes and closes the websocket.
    pub async fn close(&self, last: Option<M>) {
        {
            let mut inner = self.inner.lock().unwrap();
            inner.shut = true;
            inner.queued.extend(last);
        }
        let _ = std::future::poll_fn(|cx| {
            let mut inner = self.inner.lock().unwrap();
            if inner.failed {
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(inner.drain(cx))?;
            Pin::new(&mut inner.sink).poll_close(cx)
        })
        .await;
    }
}

impl<S, M> Inner<S, M>
where
    S: Sink<M> + Unpin,
{
    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }

    /// Writes and flushes `msg` with no waker of its own: what the websocket does not finish is left to
    /// [`Inner::drain`].
    fn write_now(&mut self, msg: M) -> Delivery {
        let mut cx = Context::from_waker(Waker::noop());
        let sink = Pin::new(&mut self.sink);
        match sink.poll_ready(&mut cx) {
            Poll::Pending => {
                self.queued.push_back(msg);
                return Delivery::Taken;
            }
            Poll::Ready(Err(_)) => {
                self.failed = true;
                return Delivery::Closed;
            }
            Poll::Ready(Ok(())) => {}
        }
        if Pin::new(&mut self.sink).start_send(msg).is_err() {
            self.failed = true;
            return Delivery::Closed;
        }
        match Pin::new(&mut self.sink).poll_flush(&mut cx) {
            Poll::Pending => self.unflushed = true,
            Poll::Ready(Err(_)) => self.failed = true,
            Poll::Ready(Ok(())) => {}
        }
        Delivery::Taken
    }

    /// Writes every queued frame, then flushes; pending where the websocket is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        while !self.queued.is_empty() {
            std::task::ready!(Pin::new(&mut self.sink).poll_ready(cx))?;
            let msg = self.queued.pop_front().expect("not empty");
            Pin::new(&mut self.sink).start_send(msg)?;
            self.unflushed = true;
        }
        if self.unflushed {
            std::task::ready!(Pin::new(&mut self.sink).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// Runs `f` outside tokio's cooperative budget.
fn unconstrained<R>(f: impl FnOnce() -> R) -> R {
    let mut f = Some(f);
    let fut = pin!(tokio::task::unconstrained(std::future::poll_fn(|_| {
        Poll::Ready(f.take().expect("polled once")())
    })));
    match std::future::Future::poll(fut, &mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => unreachable!("the closure is ready at once"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    /// A websocket's sending half whose readiness and flushes the test decides.
    #[derive(Clone, Default)]
    struct Fake(Arc<FakeState>);

    #[derive(Default)]
    struct FakeState {
        /// Frames taken, in order.
        taken: Mutex<Vec<u32>>,
        /// Frames taken and flushed so far.
        flushed: AtomicUsize,
        /// `poll_ready` and `poll_flush` say "not now".
        stuck: AtomicBool,
        /// `poll_flush` says "not now".
        flush_stuck: AtomicBool,
        broken: AtomicBool,
        closed: AtomicBool,
    }

    impl Fake {
        fn stuck(&self, stuck: bool) {
            self.0.stuck.store(stuck, Ordering::SeqCst);
        }
        fn taken(&self) -> Vec<u32> {
            self.0.taken.lock().unwrap().clone()
        }
        fn flushed(&self) -> usize {
            self.0.flushed.load(Ordering::SeqCst)
        }
        fn status(&self) -> Poll<Result<(), String>> {
            if self.0.broken.load(Ordering::SeqCst) {
                Poll::Ready(Err("broken".into()))
            } else if self.0.stuck.load(Ordering::SeqCst) {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }
    }

    impl Sink<u32> for Fake {
        type Error = String;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            self.status()
        }
        fn start_send(self: Pin<&mut Self>, item: u32) -> Result<(), String> {
            self.0.taken.lock().unwrap().push(item);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            if self.0.flush_stuck.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            let status = self.status();
            if status.is_ready() {
                let n = self.0.taken.lock().unwrap().len();
                self.0.flushed.store(n, Ordering::SeqCst);
            }
            status
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
            let status = self.as_mut().poll_flush(cx);
            if status.is_ready() {
                self.0.closed.store(true, Ordering::SeqCst);
            }
            status
        }
    }

    /// A waker that counts its wake-ups: the serving task's.
    struct Counting(AtomicUsize);
    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A writer (queue of 4) over a fake websocket, with its serving task's waker registered, as `serve` has it
    /// before any frame.
    struct Case {
        sink: Fake,
        w: Writer<Fake, u32>,
        wakes: Arc<Counting>,
        waker: Waker,
    }

    impl Case {
        fn new(busy: Duration) -> Self {
            let sink = Fake::default();
            let wakes = Arc::new(Counting(AtomicUsize::new(0)));
            let case = Self {
                w: Writer::new(sink.clone(), 4, busy),
                sink,
                waker: Waker::from(wakes.clone()),
                wakes,
            };
            assert!(case.poll().is_pending());
            case
        }

        /// The serving task's poll.
        fn poll(&self) -> Poll<()> {
            self.w.poll_write(&mut Context::from_waker(&self.waker))
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_to_a_quiet_websocket_is_written_and_flushed_by_its_sender() {
        let case = &Case::new(Duration::from_millis(1));
        let (sink, w) = (&case.sink, &case.w);
        assert_eq!(w.send(1), Delivery::Taken);
        assert_eq!((sink.taken(), sink.flushed()), (vec![1], 1));
        assert_eq!(case.wakes(), 0, "nothing left to the serving task");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_to_a_busy_websocket_wait_for_the_serving_task_and_keep_their_order() {
        let case = &Case::new(Duration::from_millis(1));
        let (sink, w) = (&case.sink, &case.w);
        assert_eq!(w.send(1), Delivery::Taken);
        // Within the busy time: queued, the serving task woken, written together by it.
        assert_eq!(w.send(2), Delivery::Taken);
        assert_eq!(w.send(3), Delivery::Taken);
        assert_eq!(sink.taken(), vec![1]);
        assert!(case.wakes() >= 1);
        assert!(case.poll().is_pending());
        assert_eq!((sink.taken(), sink.flushed()), (vec![1, 2, 3], 3));
        // Quiet again: written by the sender.
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(w.send(4), Delivery::Taken);
        assert_eq!((sink.taken(), sink.flushed()), (vec![1, 2, 3, 4], 4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_websocket_that_cannot_take_more_is_written_by_the_serving_task_in_order_and_bounded()
    {
        let case = &Case::new(Duration::ZERO);
        let (sink, w) = (&case.sink, &case.w);
        sink.stuck(true);
        for i in 1..=4 {
            assert_eq!(w.send(i), Delivery::Taken);
        }
        assert_eq!(w.send(5), Delivery::Full, "the queue is bounded");
        assert!(sink.taken().is_empty());
        assert!(case.wakes() >= 1);
        assert!(case.poll().is_pending());
        assert!(sink.taken().is_empty());
        sink.stuck(false);
        // Nothing jumps the queue, even a frame sent when the websocket can take it.
        assert_eq!(w.send(6), Delivery::Full);
        assert!(case.poll().is_pending());
        assert_eq!((sink.taken(), sink.flushed()), (vec![1, 2, 3, 4], 4));
        assert_eq!(w.send(7), Delivery::Taken);
        assert_eq!(sink.taken(), vec![1, 2, 3, 4, 7]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_flush_is_the_serving_task_s_and_later_frames_wait_behind_it() {
        let case = &Case::new(Duration::ZERO);
        let (sink, w) = (&case.sink, &case.w);
        // The websocket takes the frame; its flush cannot finish now.
        sink.0.flush_stuck.store(true, Ordering::SeqCst);
        assert_eq!(w.send(1), Delivery::Taken);
        assert_eq!((sink.taken(), sink.flushed()), (vec![1], 0));
        assert!(case.wakes() >= 1, "the flush is left to the serving task");
        assert_eq!(w.send(2), Delivery::Taken);
        assert_eq!(sink.taken(), vec![1], "behind the unfinished flush");
        assert!(case.poll().is_pending());
        assert_eq!(sink.taken(), vec![1, 2]);
        sink.0.flush_stuck.store(false, Ordering::SeqCst);
        assert!(case.poll().is_pending());
        assert_eq!((sink.taken(), sink.flushed()), (vec![1, 2], 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_websocket_refuses_frames_and_ends_the_serving_task() {
        let case = &Case::new(Duration::ZERO);
        let (sink, w) = (&case.sink, &case.w);
        sink.0.broken.store(true, Ordering::SeqCst);
        assert_eq!(w.send(1), Delivery::Closed);
        assert!(case.wakes() >= 1);
        assert!(case.poll().is_ready());
        assert_eq!(w.send(2), Delivery::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_writes_what_waits_then_the_last_frame_and_refuses_the_rest() {
        let case = &Case::new(Duration::ZERO);
        let (sink, w) = (&case.sink, &case.w);
        sink.stuck(true);
        assert_eq!(w.send(1), Delivery::Taken);
        w.shut();
        assert_eq!(w.send(2), Delivery::Closed);
        sink.stuck(false);
        w.close(Some(9)).await;
        assert_eq!((sink.taken(), sink.flushed()), (vec![1, 9], 2));
        assert!(sink.0.closed.load(Ordering::SeqCst));
    }
}
