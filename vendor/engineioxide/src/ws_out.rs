//! The way out of a websocket: packets written by the task that sends them.
//!
//! A socket's packets went through its channel to a writer task of its own, which wrote them to the
//! websocket, so a broadcast to N sockets paid N channel sends, N task wake-ups and N writer polls on
//! top of the N writes. Now, when nothing is queued before a packet and the websocket can take it, the
//! sender writes it itself. The channel and the writer task stay for everything else: a websocket that
//! cannot take more yet, a flush to finish, volatile packets, the polling transport.
//!
//! A websocket sent a packet less than [`BUSY`] before takes the next through the channel too, so that the writer
//! task writes packets that come faster than it is scheduled in one TLS record and one system call.
//!
//! Order is kept by one rule: a packet goes straight to the websocket only when nothing is waiting
//! before it, and everything (sends, the writer's work, the start) happens under one lock.

use std::{
    collections::VecDeque,
    future::Future,
    pin::{Pin, pin},
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion};
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc::Receiver;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::socket::QueuedPackets;

/// The websocket's sending half, whatever stream it runs on.
pub(crate) type WsSink = Pin<Box<dyn Sink<Message, Error = tungstenite::Error> + Send>>;

/// Empty until a websocket writer starts (and again once it stops): then every packet goes to the channel.
#[derive(Default)]
pub(crate) struct WsOut(Mutex<Option<Box<Writer>>>);

pub(crate) struct Writer {
    /// Taken by the writer task while it writes and flushes, so that senders wait on no system call: they
    /// queue meanwhile.
    io: Option<Io>,
    /// The writer task's: whatever the websocket makes a sender wait for wakes the task that finishes it.
    waker: Waker,
    /// Packets in the channel: while there are any, a sender queues behind them.
    queued: usize,
    /// Packets taken from the channel (or volatile ones) that the websocket could not take yet.
    held: VecDeque<Packet>,
    /// When the websocket was last written to or found quiet, and for how long after that it is busy ([`BUSY`]).
    last_write: Option<Instant>,
    busy: Duration,
}

/// A websocket written to (or sent a packet) less than this before is busy: its packets go through the channel
/// to the writer task, so that packets coming faster than the task is scheduled share one TLS record and one
/// system call (as they did when the writer task wrote every packet), while a packet to a quiet websocket is
/// written and flushed at once.
const BUSY: Duration = Duration::from_millis(1);

/// Apart from the writer's other fields, so that a sender polls it with the writer task's waker as it is.
struct Io {
    sink: WsSink,
    protocol: ProtocolVersion,
    /// Written but not flushed: the writer task flushes once the websocket can take more.
    unflushed: bool,
}

impl std::fmt::Debug for WsOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsOut").finish_non_exhaustive()
    }
}

impl WsOut {
    fn lock(&self) -> MutexGuard<'_, Option<Box<Writer>>> {
        // A sender that panicked while writing leaves at worst a packet unsent: the next one can go on.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `packets` now if the websocket can take them and nothing waits before them; gives what is left
    /// (all of them for a transport that is not a websocket) to `queue`, the channel.
    pub(crate) fn write_or_queue<E>(
        &self,
        packets: PacketBuf,
        queue: impl FnOnce(QueuedPackets) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut guard = self.lock();
        // Queued under the lock, so that `start` counts what it finds in the channel.
        let Some(writer) = guard.as_deref_mut() else {
            return queue(Box::new(packets));
        };
        match writer.write_now(packets) {
            None => Ok(()),
            Some(rest) => {
                queue(Box::new(rest))?;
                writer.queued += 1;
                Ok(())
            }
        }
    }

    /// Hands the websocket's sink to senders. `waker` is the writer task's, `rx` its channel.
    pub(crate) fn start(
        &self,
        sink: WsSink,
        protocol: ProtocolVersion,
        waker: Waker,
        rx: &Receiver<QueuedPackets>,
    ) {
        let mut guard = self.lock();
        *guard = Some(Box::new(Writer {
            io: Some(Io {
                sink,
                protocol,
                unflushed: false,
            }),
            waker,
            queued: rx.len(),
            held: VecDeque::new(),
            last_write: None,
            busy: BUSY,
        }));
    }

    /// Packets in the channel, while a writer has the sink.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Option<usize> {
        self.lock().as_ref().map(|writer| writer.queued)
    }

    /// How long after a write the websocket counts as busy.
    #[cfg(test)]
    pub(crate) fn set_busy(&self, busy: Duration) {
        if let Some(writer) = self.lock().as_deref_mut() {
            writer.busy = busy;
        }
    }

    /// Takes the sink back from senders, for the writer task to close it.
    pub(crate) fn stop(&self) -> Option<Box<Writer>> {
        self.lock().take()
    }

    /// Volatile packets: written after what waits already.
    pub(crate) fn hold(&self, packets: PacketBuf) {
        if let Some(writer) = self.lock().as_deref_mut() {
            writer.held.extend(packets);
        }
    }

    /// The writer task's part: writes what is held and queued, flushes. Ready once the channel is closed.
    pub(crate) fn poll_writer(
        &self,
        rx: &mut Receiver<QueuedPackets>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut guard = self.lock();
        let Some(writer) = guard.as_deref_mut() else {
            return Poll::Ready(());
        };
        if !writer.waker.will_wake(cx.waker()) {
            writer.waker = cx.waker().clone();
        }
        let Some(mut io) = writer.io.take() else {
            unreachable!("only the writer task takes the websocket, and gives it back before it returns");
        };
        let mut held = std::mem::take(&mut writer.held);
        let writer_had_held = !held.is_empty();
        drop(guard);

        let mut received = 0;
        let closed = loop {
            if io.write_all(&mut held, cx).is_pending() {
                break false;
            }
            match rx.poll_recv(cx) {
                Poll::Ready(Some(packets)) => {
                    received += 1;
                    held.extend(*packets);
                }
                Poll::Ready(None) => break true,
                Poll::Pending => break false,
            }
        };
        if io.unflushed {
            io.flush(cx);
        }

        let wrote = received > 0 || writer_had_held;
        let mut guard = self.lock();
        let writer = guard.as_deref_mut().expect("only the writer task stops the writer");
        if wrote {
            writer.last_write = Some(Instant::now());
        }
        writer.io = Some(io);
        writer.held = held;
        writer.queued -= received;
        if closed {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Writer {
    /// `None` when every packet was written; else the packets from the first the websocket could not take.
    fn write_now(&mut self, packets: PacketBuf) -> Option<PacketBuf> {
        if self.io.is_none() || self.queued > 0 || !self.held.is_empty() {
            return Some(packets);
        }
        // Read only when nothing else makes the packet wait: the clock costs as much as a packet's queueing.
        let now = Instant::now();
        let busy = self
            .last_write
            .is_some_and(|last| now.saturating_duration_since(last) < self.busy);
        self.last_write = Some(now);
        let Some(io) = self.io.as_mut().filter(|_| !busy) else {
            return Some(packets);
        };
        let mut cx = Context::from_waker(&self.waker);
        // A flush already waiting for the websocket is the writer task's to finish.
        let flush = !io.unflushed;
        // The sender's task may have used up its tokio budget (a broadcast writes to many sockets in one
        // poll): the websocket would then say "not now" to every socket left and wake each writer task.
        unconstrained(|| {
            let mut packets = packets.into_iter();
            while let Some(packet) = packets.next() {
                if io.poll_ready(&mut cx).is_pending() {
                    return Some(std::iter::once(packet).chain(packets).collect());
                }
                io.start_send(packet);
            }
            if flush {
                io.flush(&mut cx);
            }
            None
        })
    }

    /// Writes what is held, flushes and closes the websocket.
    pub(crate) async fn close(mut self: Box<Self>) {
        let Writer { io, held, .. } = &mut *self;
        let Some(io) = io else {
            return;
        };
        std::future::poll_fn(|cx| io.write_all(held, cx)).await;
        io.sink.flush().await.ok();
        io.sink.close().await.ok();
    }
}

impl Io {
    /// Ready when the sink takes a packet, or fails (the packet is then dropped, as the reader ends the
    /// session on a broken connection).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.sink.as_mut().poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(_e)) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("error sending packet: {_e}");
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_all(&mut self, packets: &mut VecDeque<Packet>, cx: &mut Context<'_>) -> Poll<()> {
        while !packets.is_empty() {
            std::task::ready!(self.poll_ready(cx));
            let packet = packets.pop_front().expect("not empty");
            self.start_send(packet);
        }
        Poll::Ready(())
    }

    fn start_send(&mut self, packet: Packet) {
        let Some(msg) = to_message(packet, self.protocol) else {
            return;
        };
        if let Err(_e) = self.sink.as_mut().start_send(msg) {
            #[cfg(feature = "tracing")]
            tracing::debug!("error sending packet: {_e}");
        }
        self.unflushed = true;
    }

    fn flush(&mut self, cx: &mut Context<'_>) {
        if let Poll::Ready(_res) = self.sink.as_mut().poll_flush(cx) {
            #[cfg(feature = "tracing")]
            if let Err(e) = _res {
                tracing::debug!("error flushing: {e}");
            }
            self.unflushed = false;
        }
    }
}

/// A packet as a websocket message; `None` for a packet that is not sent on a websocket.
fn to_message(packet: Packet, protocol: ProtocolVersion) -> Option<Message> {
    Some(match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) if protocol == ProtocolVersion::V3 => {
            // v3 carries the packet type as the first byte.
            let mut buf = Vec::with_capacity(bin.len() + 1);
            buf.push(0x04);
            buf.extend(bin);
            Message::Binary(buf.into())
        }
        Packet::Binary(bin) | Packet::BinaryV3(bin) => Message::Binary(bin),
        // A NOOP for a polling request that ended before the upgrade: nothing to say on a websocket.
        Packet::Noop => return None,
        packet => {
            let text: String = packet.into();
            Message::Text(text.into())
        }
    })
}

/// Runs `f` outside tokio's cooperative budget.
fn unconstrained<R>(f: impl FnOnce() -> R) -> R {
    let mut f = Some(f);
    let fut = pin!(tokio::task::unconstrained(std::future::poll_fn(|_| {
        Poll::Ready(f.take().expect("polled once")())
    })));
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => unreachable!("the closure is ready at once"),
    }
}
