//! The cluster's stores: a namespace's log is a Redis stream, a session a hash, so that any node can restore any
//! socket.
//!
//! ## Layout
//! With `<P>` the stores' prefix (`REDIS_PREFIX` then `:recovery`) and `<ns>` the namespace; the braces are
//! literal:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<P>:{<ns>}:log` | stream | the broadcasts, one entry each with one field, `e`: the [`Entry`] as msgpack |
//! | `<P>:{<ns>}:s:<pid>` | hash | a session, expiring with it: `holder` (`<node>/<conn>`), `data` (JSON) |
//!
//! The braces are a hash tag: a namespace's keys live on one Redis Cluster slot. A stream because its entry ids
//! are exactly the offsets a client brings back (increasing, kept across restarts, even when the stream was
//! trimmed empty), read in order by `XRANGE`, and waited for by `XREAD BLOCK`. An append is one Lua script that
//! takes the time from Redis (`TIME`), the clock that dates the entries, and trims with `XADD MINID =`: exact,
//! so a reader never gets an entry older than the window, as in memory (`~` would keep up to a listpack node of
//! them). Exact trimming costs about one removal per append, as entries leave the window as fast as they come.
//! A session's holder is a field of its own, so the scripts that save (write unless another connection holds
//! it) and remove (compare and delete) compare it without decoding the JSON.
//!
//! ## What `len` counts
//! A node cannot count a whole Redis cheaply (`SCAN` is linear in every key), so each store counts what this node
//! knows of: [`RedisLog`] the entries of the logs it appended to or tailed (`XLEN` each, pipelined);
//! [`RedisSessions`] the sessions it saved or touched last and has not seen removed or expire (by its own clock).
//! Summed over nodes, a session taken over by another node counts twice until the old node's record expires.
//!
//! Everything read back is untrusted: an entry whose `e` does not decode comes back as `None`, a session that does
//! not decode (or whose `holder` is not its data's) as no session; both are logged and counted
//! ([`RedisLog::malformed`], [`RedisSessions::malformed`]) and left in place (a save replaces a malformed session).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, HashesInterface, KeysInterface, StreamsInterface},
    types::{Value, config::Options},
};
use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{
    Entries, Entry, EventLog, Holder, Offset, RecoveryError, Session, Sessions, Tail, millis,
};
use crate::redis::{Endpoint, Script};

macro_rules! lua {
    ($file:literal) => {
        concat!(include_str!("lua/prelude.lua"), include_str!($file))
    };
}

fn unexpected(command: &'static str, reply: &Value) -> RecoveryError {
    RecoveryError::Reply {
        command,
        reply: crate::redis::shown(reply),
    }
}

/// `<node>/<conn>`: unambiguous, a node id has no `/`.
fn holder_field(holder: &Holder) -> String {
    format!("{}/{}", holder.node, holder.conn)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain sets and maps: consistent even after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every namespace's log in Redis, shared by every node.
pub struct RedisLog {
    client: Client,
    /// Where a tail opens its own connection (a blocked connection serves nothing else).
    endpoint: Endpoint,
    /// The commands' timeout; a tail's blocking read gets its block on top.
    timeout: Duration,
    /// `{REDIS_PREFIX}:recovery`.
    prefix: String,
    append: Script,
    /// The logs this node appended to or tailed: what [`EventLog::len`] counts.
    seen: Mutex<BTreeSet<String>>,
    /// Entries that did not decode (registered in `/metrics` by the caller).
    malformed: Counter,
}

impl RedisLog {
    /// A log on `client` (connected with [`crate::redis::connect_client`]), its keys under `prefix`; tails connect
    /// to `endpoint`, with `timeout` for their commands.
    pub fn new(client: Client, endpoint: Endpoint, timeout: Duration, prefix: &str) -> Self {
        Self {
            client,
            endpoint,
            timeout,
            prefix: prefix.to_owned(),
            append: Script::new("append", lua!("lua/append.lua")),
            seen: Mutex::default(),
            malformed: Counter::default(),
        }
    }

    /// Counts skipped malformed entries in `counter` (one registered in `/metrics`) instead of its own.
    pub fn counting_malformed_in(mut self, counter: Counter) -> Self {
        self.malformed = counter;
        self
    }

    /// How many entries did not decode, read by [`EventLog::after`] or a tail.
    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }

    /// The stream of `ns`'s log (public for tests and operators).
    pub fn log_key(&self, ns: &str) -> String {
        format!("{}:{{{ns}}}:log", self.prefix)
    }

    fn remember(&self, key: &str) {
        let mut seen = lock(&self.seen);
        if !seen.contains(key) {
            seen.insert(key.to_owned());
        }
    }
}

/// A stream entry's offset and its entry (`None`: its `e` does not decode); `None` when even its id is unreadable.
type Decoded = Option<(Offset, Option<Entry>)>;

/// Reads one `[id, [field, value, ...]]` stream entry (fields flat or as a map).
fn decode(raw: Value) -> Decoded {
    let Value::Array(mut parts) = raw else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop().unwrap_or(Value::Null);
    let offset = parts
        .pop()
        .and_then(|id| id.as_str().and_then(|id| id.parse::<Offset>().ok()))?;
    let e = match fields {
        Value::Array(flat) => flat
            .chunks_exact(2)
            .find(|p| p[0].as_bytes() == Some(b"e"))
            .and_then(|p| p[1].as_bytes().map(<[u8]>::to_vec)),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .find(|(k, _)| k.as_bytes() == b"e")
            .and_then(|(_, v)| v.as_bytes().map(<[u8]>::to_vec)),
        _ => None,
    };
    Some((
        offset,
        e.and_then(|bytes| rmp_serde::from_slice::<Entry>(&bytes).ok()),
    ))
}

/// Decodes `XRANGE`-shaped entries; the malformed ones are logged and counted, those without an id skipped.
fn entries(key: &str, list: Vec<Value>, malformed: &Counter) -> Entries {
    let mut out = Vec::with_capacity(list.len());
    for raw in list {
        match decode(raw) {
            Some((offset, Some(entry))) => out.push((offset, Some(entry))),
            Some((offset, None)) => {
                malformed.inc();
                tracing::warn!(key, %offset, "malformed recovery log entry skipped");
                out.push((offset, None));
            }
            None => {
                malformed.inc();
                tracing::warn!(key, "recovery log entry without an id skipped");
            }
        }
    }
    out
}

/// The entries of our one stream in an `XREAD` answer: nil when it timed out, a map of streams (RESP3) or an array
/// of `[stream, entries]` pairs (RESP2).
fn read_answer(raw: Value) -> Result<Vec<Value>, RecoveryError> {
    let list = match raw {
        Value::Null => return Ok(Vec::new()),
        Value::Map(map) => map.inner().into_values().next(),
        Value::Array(mut streams) if streams.len() == 1 => match streams.pop() {
            Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop(),
            _ => None,
        },
        ref other => return Err(unexpected("XREAD", other)),
    };
    match list {
        Some(Value::Array(list)) => Ok(list),
        _ => Err(RecoveryError::Reply {
            command: "XREAD",
            reply: "not one stream's entries".into(),
        }),
    }
}

fn array(command: &'static str, reply: Value) -> Result<Vec<Value>, RecoveryError> {
    match reply {
        Value::Array(list) => Ok(list),
        other => Err(unexpected(command, &other)),
    }
}

impl EventLog for RedisLog {
    fn append<'a>(
        &'a self,
        ns: &'a str,
        entry: &'a Entry,
        keep: Duration,
    ) -> BoxFuture<'a, Result<Offset, RecoveryError>> {
        Box::pin(async move {
            let bytes = rmp_serde::to_vec_named(entry).map_err(|e| RecoveryError::Encode {
                what: "a log entry",
                reason: e.to_string(),
            })?;
            let key = self.log_key(ns);
            let args = vec![millis(keep).to_string().into(), Value::Bytes(bytes.into())];
            let reply = self
                .append
                .run(&self.client, vec![key.clone()], args)
                .await?;
            self.remember(&key);
            reply
                .as_str()
                .and_then(|id| id.parse::<Offset>().ok())
                .ok_or_else(|| unexpected(self.append.name, &reply))
        })
    }

    fn last<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Offset, RecoveryError>> {
        Box::pin(async move {
            let reply: Value = self
                .client
                .xrevrange(self.log_key(ns), "+", "-", Some(1))
                .await?;
            let list = array("XREVRANGE", reply)?;
            match list.into_iter().next() {
                None => Ok(Offset::ZERO),
                Some(raw) => {
                    decode(raw)
                        .map(|(offset, _)| offset)
                        .ok_or_else(|| RecoveryError::Reply {
                            command: "XREVRANGE",
                            reply: "an entry without an id".into(),
                        })
                }
            }
        })
    }

    fn after<'a>(
        &'a self,
        ns: &'a str,
        after: Offset,
        count: usize,
    ) -> BoxFuture<'a, Result<Entries, RecoveryError>> {
        Box::pin(async move {
            // Nothing comes after the largest id (and Redis refuses it as an exclusive start).
            if count == 0 || after == MAX {
                return Ok(Vec::new());
            }
            let key = self.log_key(ns);
            let reply: Value = self
                .client
                .xrange(&key, format!("({after}"), "+", Some(count as u64))
                .await?;
            Ok(entries(&key, array("XRANGE", reply)?, &self.malformed))
        })
    }

    fn tail(&self, ns: &str) -> BoxFuture<'_, Result<Box<dyn Tail>, RecoveryError>> {
        let key = self.log_key(ns);
        Box::pin(async move {
            let client = crate::redis::connect_client(&self.endpoint, self.timeout).await?;
            self.remember(&key);
            let tail = RedisTail {
                client: Some(client),
                key,
                timeout: self.timeout,
                malformed: self.malformed.clone(),
            };
            Ok(Box::new(tail) as Box<dyn Tail>)
        })
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, RecoveryError>> {
        Box::pin(async move {
            let keys: Vec<String> = lock(&self.seen).iter().cloned().collect();
            if keys.is_empty() {
                return Ok(0);
            }
            let pipeline = self.client.pipeline();
            for key in keys {
                pipeline.xlen::<(), _>(key).await?;
            }
            let mut total = 0u64;
            for reply in pipeline.try_all::<Value>().await {
                let reply = reply?;
                total =
                    total.saturating_add(reply.as_u64().ok_or_else(|| unexpected("XLEN", &reply))?);
            }
            Ok(total)
        })
    }
}

/// The largest offset: nothing comes after it.
const MAX: Offset = Offset {
    ms: u64::MAX,
    seq: u64::MAX,
};

/// Waits for a namespace's entries on a connection of its own.
struct RedisTail {
    /// `None` once closed.
    client: Option<Client>,
    key: String,
    timeout: Duration,
    malformed: Counter,
}

impl Tail for RedisTail {
    fn next(
        &mut self,
        after: Offset,
        count: usize,
        block: Duration,
    ) -> BoxFuture<'_, Result<Entries, RecoveryError>> {
        Box::pin(async move {
            let Some(client) = &self.client else {
                return Ok(Vec::new());
            };
            if count == 0 {
                return Ok(Vec::new());
            }
            // `BLOCK 0` would wait for ever: no wait is no `BLOCK`; under a millisecond is one.
            let block_ms = (!block.is_zero()).then(|| millis(block).max(1));
            let options = Options {
                timeout: Some(self.timeout.saturating_add(block)),
                ..Options::default()
            };
            let raw: Value = client
                .with_options(&options)
                .xread(Some(count as u64), block_ms, &self.key, after.to_string())
                .await?;
            Ok(entries(&self.key, read_answer(raw)?, &self.malformed))
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        let client = self.client.take();
        Box::pin(async move {
            if let Some(client) = client {
                let _ = client.quit().await;
            }
        })
    }
}

impl Drop for RedisTail {
    /// A tail dropped without [`Tail::close`] still lets go of its connection.
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// Sessions in Redis, shared by every node.
pub struct RedisSessions {
    client: Client,
    /// `{REDIS_PREFIX}:recovery`.
    prefix: String,
    save: Script,
    remove: Script,
    /// The sessions this node saved or touched last, by key, with when they expire by this node's clock: what
    /// [`Sessions::len`] counts.
    mine: Mutex<HashMap<String, Instant>>,
    /// Sessions that did not decode (registered in `/metrics` by the caller).
    malformed: Counter,
}

impl RedisSessions {
    /// Sessions on `client` (connected with [`crate::redis::connect_client`]), their keys under `prefix`.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            save: Script::new("save", lua!("lua/save.lua")),
            remove: Script::new("remove", lua!("lua/remove.lua")),
            mine: Mutex::default(),
            malformed: Counter::default(),
        }
    }

    /// Counts skipped malformed sessions in `counter` (one registered in `/metrics`) instead of its own.
    pub fn counting_malformed_in(mut self, counter: Counter) -> Self {
        self.malformed = counter;
        self
    }

    /// How many sessions did not decode when loaded.
    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }

    /// The hash of `ns`'s session `pid` (public for tests and operators).
    pub fn session_key(&self, ns: &str, pid: &str) -> String {
        format!("{}:{{{ns}}}:s:{pid}", self.prefix)
    }

    /// A session read back, if it decodes and names the holder its hash does.
    fn decode(holder: Option<&[u8]>, data: Option<&[u8]>) -> Option<Session> {
        let session: Session = serde_json::from_slice(data?).ok()?;
        (holder? == holder_field(&session.holder).as_bytes()).then_some(session)
    }

    fn skip(&self, key: &str, why: &str) -> Result<Option<Session>, RecoveryError> {
        self.malformed.inc();
        tracing::warn!(key, why, "malformed recovery session skipped");
        Ok(None)
    }
}

/// Whether a script said yes (`1`) or no (`0`).
fn yes(script: &Script, reply: &Value) -> Result<bool, RecoveryError> {
    match reply {
        Value::Integer(1) => Ok(true),
        Value::Integer(0) => Ok(false),
        _ => Err(unexpected(script.name, reply)),
    }
}

impl Sessions for RedisSessions {
    fn save<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        session: &'a Session,
        ttl: Duration,
        taking_over: Option<&'a Holder>,
    ) -> BoxFuture<'a, Result<bool, RecoveryError>> {
        Box::pin(async move {
            let data = serde_json::to_string(session).map_err(|e| RecoveryError::Encode {
                what: "a session",
                reason: e.to_string(),
            })?;
            let key = self.session_key(ns, pid);
            let args = vec![
                holder_field(&session.holder).into(),
                data.into(),
                millis(ttl).to_string().into(),
                taking_over.map(holder_field).unwrap_or_default().into(),
            ];
            let reply = self.save.run(&self.client, vec![key.clone()], args).await?;
            let saved = yes(&self.save, &reply)?;
            if saved {
                lock(&self.mine).insert(key, Instant::now() + Duration::from_millis(millis(ttl)));
            }
            Ok(saved)
        })
    }

    fn load<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Session>, RecoveryError>> {
        Box::pin(async move {
            let key = self.session_key(ns, pid);
            let reply = match self
                .client
                .hmget::<Value, _, _>(&key, vec!["holder", "data"])
                .await
            {
                Err(e) if e.details().starts_with("WRONGTYPE") => {
                    return self.skip(&key, "not a hash");
                }
                other => other?,
            };
            let fields = array("HMGET", reply)?;
            let [holder, data] = fields.as_slice() else {
                return Err(RecoveryError::Reply {
                    command: "HMGET",
                    reply: format!("{} values for 2 fields", fields.len()),
                });
            };
            if holder.is_null() && data.is_null() {
                return Ok(None);
            }
            match Self::decode(holder.as_bytes(), data.as_bytes()) {
                Some(session) => Ok(Some(session)),
                None => self.skip(&key, "its data does not decode, or is not its holder's"),
            }
        })
    }

    fn remove<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<bool, RecoveryError>> {
        Box::pin(async move {
            let key = self.session_key(ns, pid);
            let reply = self
                .remove
                .run(
                    &self.client,
                    vec![key.clone()],
                    vec![holder_field(holder).into()],
                )
                .await?;
            let removed = yes(&self.remove, &reply)?;
            if removed {
                lock(&self.mine).remove(&key);
            }
            Ok(removed)
        })
    }

    fn touch<'a>(
        &'a self,
        ns: &'a str,
        pids: &'a [String],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), RecoveryError>> {
        Box::pin(async move {
            if pids.is_empty() {
                return Ok(());
            }
            let ms = i64::try_from(millis(ttl)).unwrap_or(i64::MAX);
            let keys: Vec<String> = pids.iter().map(|p| self.session_key(ns, p)).collect();
            let pipeline = self.client.pipeline();
            for key in &keys {
                // `PEXPIRE` changes only a key that exists: an expired session stays gone.
                pipeline.pexpire::<(), _>(key, ms, None).await?;
            }
            let replies = pipeline.try_all::<Value>().await;
            let until = Instant::now() + Duration::from_millis(millis(ttl));
            let mut mine = lock(&self.mine);
            let mut failed = None;
            for (key, reply) in keys.into_iter().zip(replies) {
                match reply {
                    Ok(Value::Integer(1)) => {
                        mine.insert(key, until);
                    }
                    Ok(Value::Integer(0)) => {
                        mine.remove(&key);
                    }
                    Ok(other) => failed = failed.or(Some(unexpected("PEXPIRE", &other))),
                    Err(e) => failed = failed.or(Some(e.into())),
                }
            }
            failed.map_or(Ok(()), Err)
        })
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, RecoveryError>> {
        let now = Instant::now();
        let mut mine = lock(&self.mine);
        mine.retain(|_, until| *until > now);
        let n = u64::try_from(mine.len()).unwrap_or(u64::MAX);
        Box::pin(std::future::ready(Ok(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::hash_tag;

    fn endpoint() -> Endpoint {
        Endpoint::parse("redis://127.0.0.1:1", None).unwrap()
    }

    fn log() -> RedisLog {
        // Never connected: only key names and reply parsing are tested here (tests/it/recovery_store.rs uses
        // Redis).
        RedisLog::new(
            Client::default(),
            endpoint(),
            Duration::from_secs(1),
            "si:recovery",
        )
    }

    #[test]
    fn a_namespaces_keys_share_one_slot() {
        let sessions = RedisSessions::new(Client::default(), "si:recovery");
        let log = log().log_key("/chat");
        let session = sessions.session_key("/chat", "p1");
        assert_eq!(log, "si:recovery:{/chat}:log");
        assert_eq!(session, "si:recovery:{/chat}:s:p1");
        assert_eq!(hash_tag(&log), "/chat");
        assert_eq!(hash_tag(&session), "/chat");
        assert_eq!(hash_tag(&sessions.session_key("/", "x{y}")), "/");
    }

    #[test]
    fn scripts_are_named_by_their_sha1() {
        let s = Script::new("t", "return 1");
        // `redis-cli SCRIPT LOAD "return 1"`
        assert_eq!(s.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let sessions = RedisSessions::new(Client::default(), "p");
        for script in [log().append, sessions.save, sessions.remove] {
            assert!(
                script
                    .body
                    .starts_with("-- Shared by every recovery script")
            );
            assert_eq!(script.sha.len(), 40);
        }
    }

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    fn packed(entry: &Entry) -> Value {
        Value::Bytes(rmp_serde::to_vec_named(entry).unwrap().into())
    }

    fn entry() -> Entry {
        Entry {
            data: "[\"e\",{\"_placeholder\":true,\"num\":0}]".into(),
            attachments: vec![serde_bytes::ByteBuf::from(vec![0, 0xff])],
            rooms: vec!["r".into()],
            except: Vec::new(),
            sender: Some("sid".into()),
        }
    }

    #[test]
    fn entries_are_read_leniently() {
        let counter = Counter::default();
        let list = vec![
            Value::Array(vec![s("1-0"), Value::Array(vec![s("e"), packed(&entry())])]),
            // Not msgpack, no `e`, `e` not a string, fields of another shape.
            Value::Array(vec![s("2-0"), Value::Array(vec![s("e"), s("not msgpack")])]),
            Value::Array(vec![s("3-0"), Value::Array(vec![s("x"), packed(&entry())])]),
            Value::Array(vec![
                s("4-0"),
                Value::Array(vec![s("e"), Value::Integer(1)]),
            ]),
            Value::Array(vec![s("5-0"), Value::Null]),
            // No id: skipped.
            Value::Array(vec![
                s("not-an-id"),
                Value::Array(vec![s("e"), packed(&entry())]),
            ]),
            Value::Integer(3),
            Value::Array(vec![s("6-0")]),
            Value::Array(vec![s("7-1"), Value::Array(vec![s("e"), packed(&entry())])]),
        ];
        let got = entries("k", list, &counter);
        let at = |ms, seq| Offset { ms, seq };
        assert_eq!(
            got,
            [
                (at(1, 0), Some(entry())),
                (at(2, 0), None),
                (at(3, 0), None),
                (at(4, 0), None),
                (at(5, 0), None),
                (at(7, 1), Some(entry())),
            ]
        );
        assert_eq!(counter.get(), 7);
    }

    #[test]
    fn xread_answers_of_both_protocols() {
        let one = || Value::Array(vec![Value::Array(vec![s("1-0"), Value::Array(vec![])])]);
        assert!(read_answer(Value::Null).unwrap().is_empty(), "timed out");
        let resp2 = Value::Array(vec![Value::Array(vec![s("k"), one()])]);
        assert_eq!(read_answer(resp2).unwrap().len(), 1);
        let mut map = HashMap::new();
        map.insert(fred::types::Key::from("k"), one());
        let resp3 = Value::Map(fred::types::Map::try_from(map).unwrap());
        assert_eq!(read_answer(resp3).unwrap().len(), 1);
        assert!(read_answer(Value::Integer(1)).is_err());
        assert!(read_answer(Value::Array(vec![s("k")])).is_err());
    }

    #[test]
    fn sessions_are_read_as_untrusted() {
        let session = Session {
            sid: "sid".into(),
            id_user: Some("u".into()),
            session: None,
            rooms: vec!["a".into()],
            start: "1-0".into(),
            holder: Holder {
                node: "n1".into(),
                conn: "c1".into(),
            },
        };
        let json = serde_json::to_vec(&session).unwrap();
        let decode = RedisSessions::decode;
        assert_eq!(decode(Some(b"n1/c1"), Some(&json)), Some(session));
        assert_eq!(decode(Some(b"n1/c2"), Some(&json)), None, "another holder");
        assert_eq!(decode(None, Some(&json)), None);
        assert_eq!(decode(Some(b"n1/c1"), None), None);
        assert_eq!(decode(Some(b"n1/c1"), Some(b"{}")), None);
        assert_eq!(decode(Some(b"n1/c1"), Some(b"\xff")), None);
    }

    #[test]
    fn unexpected_replies_are_short() {
        let long = Value::String("é".repeat(500).into());
        let e = unexpected("save", &long).to_string();
        assert!(
            e.starts_with("unexpected reply from Redis to save: "),
            "{e}"
        );
        assert!(e.chars().count() < 300, "{e}");
        let script = Script::new("t", "");
        assert!(yes(&script, &Value::Integer(1)).unwrap());
        assert!(!yes(&script, &Value::Integer(0)).unwrap());
        assert!(yes(&script, &Value::Integer(2)).is_err());
        assert!(yes(&script, &Value::Null).is_err());
    }
}
