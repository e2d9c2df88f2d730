//! Connection state recovery (socket.io 4.6's, cluster-wide and crash-safe): what a disconnected socket was
//! (its [`Session`]) and the broadcasts it may have missed (the namespace's [`EventLog`]), kept for the
//! namespace's `recovery_window_s`, behind two traits with two implementations of the same semantics: in memory
//! (a single node without Redis) and in Redis (a cluster; any node can restore any socket).
//!
//! This module is storage only: it knows nothing of sockets. `realtime::recover` saves sessions and restores
//! them; [`adapter::Recording`] records broadcasts and delivers them in log order.
//!
//! ## Semantics (both stores; [`conformance`] checks them)
//! * **Offsets** are the log's entry ids, `<ms>-<seq>`, increasing in append order ([`Offset`]); the client gets
//!   each event's offset as its last argument and sends the last one back when it reconnects.
//! * **The log keeps the window.** [`EventLog::append`] drops entries older than `keep`; a reader that asks for
//!   entries after an offset gets the retained ones, oldest first.
//! * **Sessions belong to a connection.** A session names its [`Holder`] (node and Engine.IO connection). A write
//!   from another connection is refused unless it takes the session over from the holder it read
//!   ([`Sessions::save`]), so a late write of a connection that was replaced cannot undo the restore.
//! * **Expiry.** A session lives `ttl` after its last save or [`Sessions::touch`]; nodes touch their live sockets'
//!   sessions, so a node that dies leaves its sessions for one window.
//! * Entries and sessions read back are untrusted: one that does not parse is skipped (a log entry still moves a
//!   reader past it) and counted.

use std::{fmt, str::FromStr, time::Duration};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub mod conformance;
mod memory;
mod redis;

pub use memory::{MemoryLog, MemorySessions};
pub use redis::{RedisLog, RedisSessions};

/// A position in a namespace's log: a Redis stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl Offset {
    /// Before every entry.
    pub const ZERO: Offset = Offset { ms: 0, seq: 0 };
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The text was not `<ms>-<seq>` (decimal digits only, each fitting u64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an offset")]
pub struct BadOffset;

impl FromStr for Offset {
    type Err = BadOffset;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(BadOffset)?;
        let digits = |t: &str| {
            (!t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<u64>().ok())
                .flatten()
                .ok_or(BadOffset)
        };
        Ok(Offset {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }
}

/// One recorded broadcast: the event as socketioxide's common parser encoded it, and whom it was for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `["event", ...args]`, JSON, binary arguments as placeholders, without the offset.
    pub data: String,
    /// The binary attachments the placeholders refer to, in order.
    #[serde(default)]
    pub attachments: Vec<serde_bytes::ByteBuf>,
    /// The rooms it went to; empty: the whole namespace.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Sockets in any of these rooms did not get it.
    #[serde(default)]
    pub except: Vec<String>,
    /// The socket that sent it with `broadcast()`, which did not get it.
    #[serde(default)]
    pub sender: Option<String>,
}

/// Who holds a session now: a node, and the Engine.IO connection on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    pub conn: String,
}

/// What a socket was, to give it back on its reconnection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The socket id it gets back.
    pub sid: String,
    pub id_user: Option<String>,
    pub session: Option<String>,
    /// Its rooms, its own id's room excepted.
    pub rooms: Vec<String>,
    /// The log's last offset when the socket first connected: nothing before it was for this socket, whatever
    /// offset its client sends.
    pub start: String,
    pub holder: Holder,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// A namespace's log of broadcasts, for replaying what a socket missed.
pub trait EventLog: Send + Sync + 'static {
    /// Appends `entry` after every other entry of `ns`; drops the entries older than `keep`. Returns its offset.
    fn append<'a>(
        &'a self,
        ns: &'a str,
        entry: &'a Entry,
        keep: Duration,
    ) -> BoxFuture<'a, Result<Offset, RecoveryError>>;

    /// The last offset of `ns` ([`Offset::ZERO`] if it has none yet): readers start there.
    fn last<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Offset, RecoveryError>>;

    /// At most `count` entries of `ns` after `after`, oldest first, without waiting. An entry that does not parse
    /// comes as `None` (a reader moves past it).
    fn after<'a>(
        &'a self,
        ns: &'a str,
        after: Offset,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<(Offset, Option<Entry>)>, RecoveryError>>;

    /// A reader of `ns` that waits for new entries (one per namespace and node: in Redis it holds a connection).
    fn tail(&self, ns: &str) -> BoxFuture<'_, Result<Box<dyn Tail>, RecoveryError>>;

    /// How many entries all namespaces hold (the store's size, for `/metrics`).
    fn len(&self) -> BoxFuture<'_, Result<u64, RecoveryError>>;
}

/// Waits for a namespace's new entries.
pub trait Tail: Send + 'static {
    /// At most `count` entries after `after`, oldest first; waits up to `block` for the first one (an empty answer
    /// after that).
    fn next(
        &mut self,
        after: Offset,
        count: usize,
        block: Duration,
    ) -> BoxFuture<'_, Result<Vec<(Offset, Option<Entry>)>, RecoveryError>>;

    /// Lets go of what the reader holds (its connection).
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// The sessions of disconnected (and connected) sockets, by namespace and private id (`pid`).
pub trait Sessions: Send + Sync + 'static {
    /// Writes `session` for `ttl`. Refused (`false`) when another connection than `session.holder` holds the
    /// session, unless it is `taking_over` (the connection the restoring node read it from).
    fn save<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        session: &'a Session,
        ttl: Duration,
        taking_over: Option<&'a Holder>,
    ) -> BoxFuture<'a, Result<bool, RecoveryError>>;

    /// The session, if it has not expired.
    fn load<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Session>, RecoveryError>>;

    /// Deletes the session if `holder` still holds it (a deliberate disconnect); whether it did.
    fn remove<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<bool, RecoveryError>>;

    /// Makes these sessions live `ttl` from now (a node's live sockets, periodically). Expired ones stay gone.
    fn touch<'a>(
        &'a self,
        ns: &'a str,
        pids: &'a [String],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), RecoveryError>>;

    /// How many sessions are kept (the store's size, for `/metrics`).
    fn len(&self) -> BoxFuture<'_, Result<u64, RecoveryError>>;
}
