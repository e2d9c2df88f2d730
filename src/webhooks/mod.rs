//! Lifecycle webhooks (`[[webhook]]`, docs/webhooks.md): a backend told over signed HTTP when a room gets its
//! first socket or loses its last one, and when a user gets their first socket in a room or loses their last
//! one, **cluster-wide**, once per cluster, in order per room.
//!
//! * [`Store`]: the counts and the outbox, in Redis (a cluster) or in memory (a single node), with the same
//!   semantics ([`conformance`] checks them). Per namespace, the sockets per room and per (room, user), and each
//!   node's own contribution. A change that makes a count go 0→1 or 1→0 appends its event to the namespace's
//!   outbox **in the same atomic step** (a Lua script in Redis), so an event cannot be lost between the change
//!   and the send, nor sent twice by two nodes. A node declared down has its contribution taken away in one step
//!   ([`Store::reap`]), which writes the events of the rooms and members it held last (and the sockets'
//!   `socket.disconnected`, when wanted).
//! * Changes are numbered per worker ([`Stamp`]) and the store keeps each worker's last number in the node's
//!   contribution: a change applied again (a retry after a lost reply) is skipped, and a worker whose number is
//!   gone knows its node was reaped meanwhile; its sockets are then counted again ([`Store::restore`]).
//! * [`tracker::Tracker`]: what this node's sockets do (connect, join, leave, disconnect), turned into changes
//!   applied in order per socket, off the socket's path (a bounded queue).
//! * [`dispatch::Dispatcher`]: one node at a time per (webhook, namespace) holds a lease and sends the outbox in
//!   order from a cursor stored beside it; another node takes over when the lease expires. At-least-once: the
//!   `webhook-id` of an event is stable, so receivers drop duplicates.

use futures_util::future::BoxFuture;

use crate::config::file::EventKind;

pub mod conformance;
pub mod dispatch;
mod memory;
mod redis;
pub mod tracker;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// Events an outbox keeps (approximately, in Redis); older ones not yet sent are dropped and counted by the
/// dispatcher (a receiver down for long, with churn).
pub const OUTBOX_CAP: u64 = 100_000;

/// A socket's rooms changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub socket: String,
    pub user: Option<String>,
    /// Its identity was verified (not `claim` or `none`).
    pub verified: bool,
    /// Joined (true) or left (false).
    pub joined: bool,
    pub rooms: Vec<String>,
    /// Also write `socket.connected` / `socket.disconnected` (the socket connects or disconnects now).
    pub socket_event: bool,
}

/// Where a change stands in the sequence of the worker applying it: what makes applying it twice harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The worker of the node applying it (each applies its changes in order).
    pub worker: u32,
    /// Its number in that worker's sequence: increasing over the node's life (a new life is reaped first).
    pub n: u64,
    /// That worker has had a change counted in this namespace before, so its number is there unless the node
    /// was reaped since.
    pub counted: bool,
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Counted; this many events written.
    Events(u64),
    /// Skipped: a change of this number or a later one was applied already (a retry after a lost reply).
    Again,
    /// Skipped: the node was reaped since the worker's last change (declared down while its sockets stayed
    /// connected); they are to be counted again with [`Store::restore`].
    Reaped,
}

/// Where a dispatcher is in an outbox: the last entry it is done with, and that entry's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The outbox entry id (`<ms>-<seq>`); `0-0` before the first.
    pub id: String,
    pub seq: u64,
}

impl Cursor {
    pub fn start() -> Self {
        Self {
            id: "0-0".into(),
            seq: 0,
        }
    }

    fn encode(&self) -> String {
        format!("{} {}", self.id, self.seq)
    }

    fn decode(text: &str) -> Option<Self> {
        let (id, seq) = text.split_once(' ')?;
        Some(Self {
            id: id.to_owned(),
            seq: seq.parse().ok()?,
        })
    }
}

/// One event of an outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its outbox entry id: with the namespace, the stable part of its `webhook-id`.
    pub id: String,
    /// Its number in the namespace's sequence (1, 2, ...): a gap is events the outbox's cap dropped.
    pub seq: u64,
    pub kind: EventKind,
    pub room: Option<String>,
    pub user: Option<String>,
    /// With a user: whether their identity was verified.
    pub verified: Option<bool>,
    pub socket: Option<String>,
    /// When it happened (Unix ms), by the store's clock.
    pub at_ms: u64,
}

/// Why a store could not answer. The memory store never fails.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply to {command}: {reply}")]
    Reply {
        command: &'static str,
        reply: String,
    },
}

pub type Result<T> = std::result::Result<T, WebhookError>;

/// The counts, outboxes, leases and cursors of every tracked namespace.
pub trait Store: Send + Sync + 'static {
    /// Names `ns` among the tracked namespaces (before its first change), so that dispatchers and reaping find it.
    fn register<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Every tracked namespace.
    fn namespaces(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    /// Applies a change of `node`'s socket, unless `stamp` says it was applied already or the node was reaped.
    fn apply<'a>(
        &'a self,
        ns: &'a str,
        node: &'a str,
        stamp: Stamp,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Applied>>;
    /// Counts `sockets` (joins of every room each is in) as `stamp.worker`'s, if that worker's number is not in
    /// `node`'s contribution (reaped, or never counted); then records `stamp.n`. The events written, or `None`
    /// when its sockets were counted already.
    fn restore<'a>(
        &'a self,
        ns: &'a str,
        node: &'a str,
        stamp: Stamp,
        sockets: &'a [Change],
    ) -> BoxFuture<'a, Result<Option<u64>>>;
    /// Takes `node`'s whole contribution away; returns the events it wrote. Idempotent.
    fn reap<'a>(&'a self, ns: &'a str, node: &'a str) -> BoxFuture<'a, Result<u64>>;
    /// Up to `count` events after `after`, oldest first.
    fn read<'a>(
        &'a self,
        ns: &'a str,
        after: &'a Cursor,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>>>;
    /// Takes or renews the lease of `hook` on `ns` for `me`, for `ttl_ms`; whether `me` holds it.
    fn lease<'a>(
        &'a self,
        ns: &'a str,
        hook: &'a str,
        me: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>>;
    /// Where `hook` is in `ns`'s outbox ([`Cursor::start`] at first).
    fn cursor<'a>(&'a self, ns: &'a str, hook: &'a str) -> BoxFuture<'a, Result<Cursor>>;
    /// Moves `hook`'s cursor if `me` still holds the lease; whether it did.
    fn advance<'a>(
        &'a self,
        ns: &'a str,
        hook: &'a str,
        me: &'a str,
        to: &'a Cursor,
    ) -> BoxFuture<'a, Result<bool>>;
}
