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
//!
//! The Redis layout, and what each store's `len` counts, are described at the top of `redis.rs`.

use std::{fmt, str::FromStr, time::Duration};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub mod adapter;
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
    /// Its rooms.
    pub rooms: Vec<String>,
    /// The log's last offset when the socket first connected: nothing before it was for this socket, whatever
    /// offset its client sends.
    pub start: String,
    pub holder: Holder,
}

/// Why a store could not answer. The memory stores never fail.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Redis could not be reached or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A tail's own connection could not be opened.
    #[error(transparent)]
    Connect(#[from] crate::redis::RedisError),
    /// Redis answered something our commands and scripts never return.
    #[error("unexpected reply from Redis to {command}: {reply}")]
    Reply {
        command: &'static str,
        reply: String,
    },
    /// An entry or a session could not be encoded (never happens with these types; typed rather than a panic).
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// Entries read from a log, oldest first, with their offsets; one that does not parse is `None`.
pub type Entries = Vec<(Offset, Option<Entry>)>;

/// A namespace's log of broadcasts, for replaying what a socket missed.
#[expect(
    clippy::len_without_is_empty,
    reason = "`len` is the store's size for `/metrics`, asynchronous; nobody asks whether it is empty"
)]
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
    ) -> BoxFuture<'a, Result<Entries, RecoveryError>>;

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
    ) -> BoxFuture<'_, Result<Entries, RecoveryError>>;

    /// Lets go of what the reader holds (its connection).
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// The sessions of disconnected (and connected) sockets, by namespace and private id (`pid`).
#[expect(
    clippy::len_without_is_empty,
    reason = "`len` is the store's size for `/metrics`, asynchronous; nobody asks whether it is empty"
)]
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

/// A duration in whole milliseconds, at most about a century (Redis refuses an expiry past its clock's range).
fn millis(d: Duration) -> u64 {
    const CENTURY_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(CENTURY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_back_their_text_and_refuse_anything_else() {
        for (text, ms, seq) in [
            ("0-0", 0, 0),
            ("1700000000000-3", 1_700_000_000_000, 3),
            ("007-01", 7, 1),
            (
                "18446744073709551615-18446744073709551615",
                u64::MAX,
                u64::MAX,
            ),
        ] {
            let offset: Offset = text.parse().unwrap();
            assert_eq!(offset, Offset { ms, seq });
            assert_eq!(offset.to_string().parse::<Offset>(), Ok(offset));
        }
        assert_eq!(Offset { ms: 12, seq: 0 }.to_string(), "12-0");
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "-",
            "a-1",
            "1-b",
            "1-2-3",
            " 1-2",
            "1-2 ",
            "+1-2",
            "1.5-2",
            "١-2",
            "18446744073709551616-0",
            "0-18446744073709551616",
            "100000000000000000000-0",
            "000000000000000000001-0",
            "0-000000000000000000001",
        ] {
            assert_eq!(bad.parse::<Offset>(), Err(BadOffset), "{bad:?}");
        }
        assert!(Offset { ms: 1, seq: 9 } < Offset { ms: 2, seq: 0 });
        assert!(Offset::ZERO < Offset { ms: 0, seq: 1 });
    }

    fn entry() -> Entry {
        Entry {
            data: "[\"msg\",{\"_placeholder\":true,\"num\":0},\"é\"]".into(),
            attachments: vec![
                serde_bytes::ByteBuf::from(vec![0, 1, 0xff]),
                serde_bytes::ByteBuf::from(Vec::new()),
            ],
            rooms: vec!["a".into(), "b".into()],
            except: vec!["c".into()],
            sender: Some("sid".into()),
        }
    }

    #[test]
    fn entries_round_trip_through_msgpack() {
        let e = entry();
        let bytes = rmp_serde::to_vec_named(&e).unwrap();
        assert_eq!(rmp_serde::from_slice::<Entry>(&bytes).unwrap(), e);
        // Attachments are msgpack binaries (`bin 8`: 0xc4, length), not arrays of numbers.
        assert!(bytes.windows(5).any(|w| w == [0xc4, 3, 0, 1, 0xff]));
        // Written with field names: the optional fields may be missing (an older writer).
        let minimal = rmp_serde::to_vec_named(&serde_json::json!({ "data": "[\"e\"]" })).unwrap();
        let read: Entry = rmp_serde::from_slice(&minimal).unwrap();
        assert_eq!(read.data, "[\"e\"]");
        assert!(read.attachments.is_empty() && read.rooms.is_empty() && read.except.is_empty());
        assert_eq!(read.sender, None);
        for bad in [&b""[..], b"\xc0", b"not msgpack", &bytes[..bytes.len() - 1]] {
            assert!(rmp_serde::from_slice::<Entry>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sessions_round_trip_through_json() {
        let s = Session {
            sid: "sid".into(),
            id_user: Some("user_1".into()),
            session: None,
            rooms: vec!["room é".into()],
            start: "1-0".into(),
            holder: Holder {
                node: "n1".into(),
                conn: "c1".into(),
            },
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Session>(&json).unwrap(), s);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value["holder"],
            serde_json::json!({ "node": "n1", "conn": "c1" })
        );
        assert_eq!(value["session"], serde_json::Value::Null);
        for bad in ["", "{}", "[]", "{\"sid\":1}", &json[..json.len() - 1]] {
            assert!(serde_json::from_str::<Session>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_become_bounded_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::MAX), 100 * 365 * 24 * 3600 * 1000);
    }
}
