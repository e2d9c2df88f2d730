//! Reliable per-user delivery (as in the reliable push service): the queue of messages pushed to a user room, kept
//! until the client acknowledges them, behind one [`Store`] trait with two implementations of the same semantics:
//! [`MemoryStore`] (a single node without Redis) and [`RedisStore`] (a cluster).
//!
//! This module is storage only: it knows nothing of sockets or HTTP. `POST /send` pushes, the handshake reads the
//! pending messages into one [`Batch`], acks remove, and joins/leaves of user rooms tell the store who holds a
//! room (see [`Store`] for each call).
//!
//! ## Semantics (both stores; [`conformance::check_store`] checks them)
//! * **Order and ids.** A room's messages come back in send order; each has a [`MessageId`] (`<ms>-<seq>`) that
//!   grows in send order, so a client can recognise a duplicate (at-least-once: one is redelivered only when its
//!   ack was lost).
//! * **Ack removes exactly the given ids**, never a message pushed after the batch was read (the reliable push
//!   service's batch ack deleted those).
//! * **Cap.** A room keeps at most [`Policy::cap`] messages; a push beyond it drops the oldest and says how many
//!   ([`Pushed::dropped`]), for `/metrics` and the `POST /send` answer.
//! * **Resync** (the reliable push service's `resync=true`): acking a message pushed with resync that is not the
//!   first pending message *of the same event name* in its room clears the room's whole queue and asks for a
//!   `resync` event ([`Acked::Resync`]). Other events do not count ("first for that user and event"), and an ack of a message that
//!   is no longer pending (another socket of the user acked it first) is not a gap: nothing happens.
//! * **Expiry.** A room with at least one [`Holder`] (socket, on any node) keeps its messages. When its last
//!   holder leaves, its messages expire [`Ttl`] later; a push to a room nobody holds starts that clock if it is
//!   not running (a user who never connects does not keep messages for ever) and never extends it. A holder
//!   arriving stops the clock. `client_ttl_s = 0` is [`Ttl::Forever`]: kept until acknowledged (the reliable push
//!   service turned 0 into 3600).
//! * **Dead nodes.** A node killed without saying goodbye leaves its holders behind, which would keep its rooms
//!   from ever expiring; [`Store::forget_node`] removes them. It is called at start-up for the node's own id, at
//!   the end of a graceful drain for the node's own id, and by every survivor when membership declares a node
//!   down ([`crate::cluster::membership::Change::Down`]). A node declared down that was only cut off (paused, or
//!   away from Redis) and still has its sockets writes their holders again with [`Store::occupied`] when it comes
//!   back ([`crate::cluster::membership::Change::Back`], `realtime::reliable::hold_again`).
//!
//! ## Redis layout ([`RedisStore`])
//! With `<P>` the store's prefix (`REDIS_PREFIX` then `:delivery`) and `<T>` the room's [`RoomKey::tag`]
//! (`/chat|user_1`); the braces are literal:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<P>:{<T>}:q` | stream | the pending messages, one entry each: `event`, `args` (JSON array), `resync` (`0`/`1`),
//! `at_ms` |
//! | `<P>:{<T>}:holders` | set | the room's holders, `<node>/<socket>` |
//! | `<P>:node:<node>` | set | the tags of the rooms `<node>` holds, for [`Store::forget_node`] |
//!
//! The braces are a hash tag: a room's two keys live on one Redis Cluster slot, so each operation on a room is
//! one Lua script, atomic. A stream because it is exactly this queue: Redis assigns increasing ids (kept across
//! restarts and even when every entry is deleted), `XRANGE` reads in order, `XDEL` removes given ids in
//! O(log n) each, and `XADD MAXLEN` caps it, in listpacks that store the field names once. (A list would need
//! `LREM` by value and a separate id counter; a sorted set a second key for the payloads.) The cap is exact
//! (`MAXLEN =`), not `~`: the answer to `POST /send` states how many messages were dropped, which must be exact
//! and the same as in memory, and a queue of at most a few thousand entries trims cheaply either way. A stream
//! whose last entry is acknowledged is kept (empty) for a minute rather than deleted, so that the next push still
//! gets a larger id. Entries are read as untrusted: one that does not parse is skipped, counted
//! ([`RedisStore::malformed_entries`]) and left in place (a newer node may have written it).

pub mod conformance;
mod entry;
mod key;
mod memory;
mod redis;
mod wire;

use std::{num::NonZeroU32, time::Duration};

use futures_util::future::BoxFuture;
use serde_json::Value;

pub use key::{Holder, RoomKey};
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use wire::{BadId, Batch, BatchItem, MessageId, StoredMessage, ids, with_id};

/// How long a room's messages outlive its last socket (`client_ttl_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Kept until acknowledged (or dropped by the cap).
    Forever,
    /// Dropped this long after the room's last socket went away (at least 1 ms).
    After(Duration),
}

impl Ttl {
    /// `client_ttl_s`: 0 means [`Ttl::Forever`], as the reliable push service documents (its code made it 3600).
    pub fn from_secs(secs: u64) -> Self {
        match secs {
            0 => Self::Forever,
            s => Self::After(Duration::from_secs(s)),
        }
    }

    /// The expiry in milliseconds, 0 for [`Ttl::Forever`] (the scripts' convention).
    pub(crate) fn millis(self) -> u64 {
        match self {
            Self::Forever => 0,
            Self::After(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    pub(crate) fn duration(self) -> Option<Duration> {
        match self {
            Self::Forever => None,
            Self::After(_) => Some(Duration::from_millis(self.millis())),
        }
    }
}

/// A namespace's rules for its user rooms, passed with each push (namespaces may differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Most messages a room keeps; a push beyond it drops the oldest.
    pub cap: NonZeroU32,
    pub ttl: Ttl,
}

impl Policy {
    /// The cap of a namespace without `max_pending`: the config file's default, written there.
    pub const DEFAULT_CAP: NonZeroU32 = crate::config::file::NamespaceConfig::DEFAULT_MAX_PENDING;
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The new message's id: emit it with the message, ack it with [`Store::ack_one_with_resync`].
    pub id: MessageId,
    /// How many of the oldest messages the cap dropped to make room (0 or 1 unless the cap was lowered).
    pub dropped: u64,
    /// The nodes holding the room when the message was stored, sorted, each once: the only ones with sockets to
    /// send it to live. A node that starts holding the room later reads the message in its socket's `batch`
    /// (holders are written before the batch is read).
    pub nodes: Vec<String>,
}

/// What acknowledging one live message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// It was pending and is removed.
    Removed,
    /// It was not pending (already acknowledged by another socket, expired, cleared): nothing changed.
    Gone,
    /// Pushed with resync and not the first pending message of its event: the room's queue (`cleared`
    /// messages, this one included) is emptied and the client must get a `resync` event.
    Resync { cleared: u64 },
}

/// What a holder leaving did to the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vacancy {
    /// Other sockets still hold it: its messages stay.
    Held,
    /// Nobody holds it: its messages expire after the TTL.
    Expiring,
    /// Nobody holds it, and the TTL is [`Ttl::Forever`]: its messages stay until acknowledged.
    Kept,
}

/// Why a store could not answer. The memory store never fails.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or refused the command (the caller answers 503, or retries).
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis answered something our scripts never return.
    #[error("unexpected reply from Redis to {command}: {reply}")]
    Reply {
        command: &'static str,
        reply: String,
    },
}

/// The queue of one user room per [`RoomKey`], shared by every node of the cluster.
///
/// Object-safe (boxed futures), so the application holds an `Arc<dyn Store>` chosen at start-up.
pub trait Store: Send + Sync + 'static {
    /// Stores a message **before** it is emitted (so it cannot be lost), after the room's other messages, and
    /// enforces the cap. A room nobody holds starts its expiry clock (if not running) with `policy.ttl`. Says
    /// which nodes hold the room at that moment, atomically with the store ([`Pushed::nodes`]).
    fn push<'a>(
        &'a self,
        room: &'a RoomKey,
        event: &'a str,
        args: &'a [Value],
        resync: bool,
        policy: Policy,
    ) -> BoxFuture<'a, Result<Pushed, StoreError>>;

    /// Every pending message of the room, in send order (the `batch` on join).
    fn pending<'a>(
        &'a self,
        room: &'a RoomKey,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, StoreError>>;

    /// Removes exactly these messages (a batch's ack); returns how many were still pending.
    fn ack<'a>(
        &'a self,
        room: &'a RoomKey,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Acknowledges one live message, applying the resync rule when it was pushed with resync (see the module
    /// docs). Atomic: no push or ack of the room can come between the check and the removal.
    fn ack_one_with_resync<'a>(
        &'a self,
        room: &'a RoomKey,
        id: MessageId,
    ) -> BoxFuture<'a, Result<Acked, StoreError>>;

    /// A socket joined the room: the room is held, its expiry (if any) is cancelled. Idempotent.
    fn occupied<'a>(
        &'a self,
        room: &'a RoomKey,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A socket left the room. When it was the last holder, on any node, the room's messages expire after `ttl`
    /// (or stay, for [`Ttl::Forever`]). A holder that was not there changes nothing (a repeated call).
    fn vacated<'a>(
        &'a self,
        room: &'a RoomKey,
        holder: &'a Holder,
        ttl: Ttl,
    ) -> BoxFuture<'a, Result<Vacancy, StoreError>>;

    /// Removes every holder of `node` (a node that died, or this node at start-up before it serves), as if each
    /// had left; `ttl_of` gives each room's TTL (its namespace's). Returns how many holders were removed.
    fn forget_node<'a>(
        &'a self,
        node: &'a str,
        ttl_of: &'a (dyn Fn(&RoomKey) -> Ttl + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// Milliseconds since the Unix epoch, for [`StoredMessage::at_ms`] and in-memory ids.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ttl_means_kept_until_acknowledged() {
        assert_eq!(Ttl::from_secs(0), Ttl::Forever);
        assert_eq!(Ttl::from_secs(0).millis(), 0);
        assert_eq!(Ttl::from_secs(0).duration(), None);
        assert_eq!(Ttl::from_secs(3600), Ttl::After(Duration::from_secs(3600)));
        assert_eq!(Ttl::from_secs(3600).millis(), 3_600_000);
        // A zero duration is not "forever": the shortest expiry there is.
        assert_eq!(Ttl::After(Duration::ZERO).millis(), 1);
        assert_eq!(
            Ttl::After(Duration::from_micros(10)).duration(),
            Some(Duration::from_millis(1))
        );
    }
}
