//! The cluster's store: one Redis stream per room, changed only by Lua scripts (see the module docs for the
//! layout and why), so every node sees the same queue and each change to a room is atomic.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{SetsInterface, StreamsInterface},
    types::Value,
};
use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value as Json;

use super::{
    Acked, Holder, MessageId, Policy, Pushed, RoomKey, Store, StoreError, StoredMessage, Ttl,
    Vacancy, entry, now_ms,
};
use crate::redis::Script;

macro_rules! lua {
    ($file:literal) => {
        concat!(include_str!("lua/prelude.lua"), include_str!($file))
    };
}

struct Scripts {
    push: Script,
    ack: Script,
    ack_one: Script,
    occupy: Script,
    release: Script,
}

/// Pending messages in Redis, shared by every node.
pub struct RedisStore {
    /// Replaced by a new client when fred's gets stuck (see [`RedisStore::rebuilding_from`]).
    client: Arc<RwLock<Client>>,
    /// How to connect a replacement; `None`: never replaced.
    endpoint: Option<(crate::redis::Endpoint, Duration)>,
    /// Set while a replacement is being connected.
    rebuilding: Arc<AtomicBool>,
    /// `{REDIS_PREFIX}:delivery`.
    prefix: String,
    scripts: Scripts,
    /// Stream entries that did not parse, skipped (registered in `/metrics` by the caller).
    malformed: Counter,
}

impl RedisStore {
    /// A store on `client` (connected with [`crate::redis::connect_client`]), its keys under
    /// `{redis_prefix}:delivery`.
    pub fn new(client: Client, redis_prefix: &str) -> Self {
        Self {
            client: Arc::new(RwLock::new(client)),
            endpoint: None,
            rebuilding: Arc::default(),
            prefix: format!("{redis_prefix}:delivery"),
            scripts: Scripts {
                push: Script::new("push", lua!("lua/push.lua")),
                ack: Script::new("ack", lua!("lua/ack.lua")),
                ack_one: Script::new("ack_one", lua!("lua/ack_one.lua")),
                occupy: Script::new("occupy", lua!("lua/occupy.lua")),
                release: Script::new("release", lua!("lua/release.lua")),
            },
            malformed: Counter::default(),
        }
    }

    /// Replaces the client by a new one connected to `endpoint` when a Redis Cluster command fails to route
    /// (fred 10 leaves that client without connections for good: a script sent while its slot is half-moved
    /// between shards, `ASK` then `TRYAGAIN`, uses up its redirections and every later command times out).
    pub fn rebuilding_from(mut self, endpoint: &crate::redis::Endpoint, timeout: Duration) -> Self {
        self.endpoint = Some((endpoint.clone(), timeout));
        self
    }

    fn client(&self) -> Client {
        self.client.read().unwrap().clone()
    }

    /// After a routing failure in a Redis Cluster, connects a new client in the background and swaps it in.
    fn recover(&self, error: &fred::error::Error) {
        let Some((endpoint, timeout)) = self.endpoint.clone() else {
            return;
        };
        if *error.kind() != fred::error::ErrorKind::Routing
            || self.rebuilding.swap(true, Ordering::AcqRel)
        {
            return;
        }
        tracing::warn!(%error, "Redis Cluster routing failed: the delivery store reconnects");
        let (slot, rebuilding) = (self.client.clone(), self.rebuilding.clone());
        tokio::spawn(async move {
            match crate::redis::connect_client(&endpoint, timeout).await {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut *slot.write().unwrap(), fresh);
                    let _ = fred::interfaces::ClientLike::quit(&old).await;
                }
                Err(e) => tracing::error!(error = %e, "the delivery store could not reconnect"),
            }
            rebuilding.store(false, Ordering::Release);
        });
    }

    /// Counts skipped malformed entries in `counter` (one registered in `/metrics`) instead of its own.
    pub fn counting_malformed_in(mut self, counter: Counter) -> Self {
        self.malformed = counter;
        self
    }

    /// The counter of skipped malformed entries, to register in `/metrics`.
    pub fn malformed_entries(&self) -> Counter {
        self.malformed.clone()
    }

    /// The stream of `room`'s pending messages (public for tests and operators).
    pub fn queue_key(&self, room: &RoomKey) -> String {
        format!("{}:{{{}}}:q", self.prefix, room.tag())
    }

    /// The set of `room`'s holders.
    pub fn holders_key(&self, room: &RoomKey) -> String {
        format!("{}:{{{}}}:holders", self.prefix, room.tag())
    }

    /// The set of the rooms `node` holds (no hash tag: touched by one command at a time).
    pub fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// Runs `script` on `room`'s keys.
    async fn run(
        &self,
        script: &Script,
        room: &RoomKey,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let keys = vec![self.queue_key(room), self.holders_key(room)];
        let args = args.into_iter().map(Value::from).collect();
        let done = script.run(&self.client(), keys, args).await;
        if let Err(e) = &done {
            self.recover(e);
        }
        Ok(done?)
    }

    /// Reads `XRANGE` entries; malformed ones are logged, counted and skipped.
    fn entries(&self, room: &RoomKey, reply: Value) -> Result<Vec<StoredMessage>, StoreError> {
        let Value::Array(entries) = reply else {
            return Err(unexpected("XRANGE", &reply));
        };
        let mut messages = Vec::with_capacity(entries.len());
        for raw in entries {
            let parsed = split_entry(raw)
                .and_then(|(id, pairs)| entry::parse(&id, &pairs).map_err(|e| (Some(id), e)));
            match parsed {
                Ok(message) => messages.push(message),
                Err((id, error)) => {
                    self.malformed.inc();
                    tracing::warn!(%room, id, %error, "malformed delivery entry skipped");
                }
            }
        }
        Ok(messages)
    }
}

/// An entry's `(field, value)` pairs.
type Fields = Vec<(String, String)>;
/// Why an entry was skipped, with its id when it has one.
type Skipped = (Option<String>, entry::Malformed);

/// An entry's id and fields; the fields as a flat array (what Redis sends) or a map.
fn split_entry(raw: Value) -> Result<(String, Fields), Skipped> {
    let shape = |id: Option<String>| (id, entry::Malformed::Shape);
    let Value::Array(mut parts) = raw else {
        return Err(shape(None));
    };
    if parts.len() != 2 {
        return Err(shape(None));
    }
    let fields = parts.pop().expect("two parts");
    let id = text(&parts[0]).ok_or_else(|| shape(None))?;
    let pairs = match fields {
        Value::Array(flat) if flat.len() % 2 == 0 => flat
            .chunks(2)
            .map(|p| Some((text(&p[0])?, text(&p[1])?)))
            .collect::<Option<Vec<_>>>(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(k, v)| Some((k.into_string()?, text(&v)?)))
            .collect(),
        _ => None,
    };
    match pairs {
        Some(pairs) => Ok((id, pairs)),
        None => Err(shape(Some(id))),
    }
}

/// A bulk string as UTF-8 text; anything else (numbers included: Redis never sends them here) is `None`.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        _ => None,
    }
}

/// The push script's list of the room's holder nodes, sorted and each once. A name that is not a node id (the set
/// is Redis's, so untrusted) is left out: nothing could be published to it.
fn node_ids(v: &Value) -> Option<Vec<String>> {
    // An empty Lua table comes back as an empty array (RESP2) or as nil in some conversions.
    let items = match v {
        Value::Array(items) => items.as_slice(),
        Value::Null => &[],
        _ => return None,
    };
    let mut nodes: Vec<String> = items
        .iter()
        .filter_map(text)
        .filter(|node| crate::domain::validate::node_id(node).is_ok())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    Some(nodes)
}

fn unexpected(command: &'static str, reply: &Value) -> StoreError {
    StoreError::Reply {
        command,
        reply: crate::redis::shown(reply),
    }
}

/// A script's reply as integers after an optional leading text (`{id, n}` or `{n, n, n}`).
fn integers(script: &Script, reply: &Value, len: usize) -> Result<Vec<i64>, StoreError> {
    match reply {
        Value::Array(items) if items.len() == len => items
            .iter()
            .map(|v| match v {
                Value::Integer(n) => Some(*n),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| unexpected(script.name, reply)),
        _ => Err(unexpected(script.name, reply)),
    }
}

fn count(script: &Script, reply: &Value, n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| unexpected(script.name, reply))
}

impl Store for RedisStore {
    fn push<'a>(
        &'a self,
        room: &'a RoomKey,
        event: &'a str,
        args: &'a [Json],
        resync: bool,
        policy: Policy,
    ) -> BoxFuture<'a, Result<Pushed, StoreError>> {
        Box::pin(async move {
            let script = &self.scripts.push;
            let [event, args, resync, at_ms] = entry::fields(event, args, resync, now_ms());
            let argv = vec![
                policy.cap.to_string(),
                policy.ttl.millis().to_string(),
                event,
                args,
                resync,
                at_ms,
            ];
            let reply = self.run(script, room, argv).await?;
            let parsed = match &reply {
                Value::Array(items) if items.len() == 3 => text(&items[0])
                    .and_then(|id| id.parse::<MessageId>().ok())
                    .zip(items[1].as_i64().and_then(|n| u64::try_from(n).ok()))
                    .zip(node_ids(&items[2])),
                _ => None,
            };
            let ((id, dropped), nodes) = parsed.ok_or_else(|| unexpected(script.name, &reply))?;
            Ok(Pushed { id, dropped, nodes })
        })
    }

    fn pending<'a>(
        &'a self,
        room: &'a RoomKey,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, StoreError>> {
        Box::pin(async move {
            let reply: Value = self
                .client()
                .xrange(self.queue_key(room), "-", "+", None)
                .await?;
            self.entries(room, reply)
        })
    }

    fn ack<'a>(
        &'a self,
        room: &'a RoomKey,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(0);
            }
            let script = &self.scripts.ack;
            let argv = ids.iter().map(MessageId::to_string).collect();
            let reply = self.run(script, room, argv).await?;
            match reply {
                Value::Integer(n) => count(script, &reply, n),
                _ => Err(unexpected(script.name, &reply)),
            }
        })
    }

    fn ack_one_with_resync<'a>(
        &'a self,
        room: &'a RoomKey,
        id: MessageId,
    ) -> BoxFuture<'a, Result<Acked, StoreError>> {
        Box::pin(async move {
            let script = &self.scripts.ack_one;
            let reply = self.run(script, room, vec![id.to_string()]).await?;
            let len = match &reply {
                Value::Array(items) => items.len(),
                _ => 0,
            };
            match integers(script, &reply, len)?.as_slice() {
                [0] => Ok(Acked::Gone),
                [1] => Ok(Acked::Removed),
                [2, n] => Ok(Acked::Resync {
                    cleared: count(script, &reply, *n)?,
                }),
                _ => Err(unexpected(script.name, &reply)),
            }
        })
    }

    fn occupied<'a>(
        &'a self,
        room: &'a RoomKey,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // The node's list first: a crash in between leaves a listed room without a holder (harmless), never
            // a holder that `forget_node` cannot find.
            let _: Value = self
                .client()
                .sadd(self.node_key(holder.node()), room.tag())
                .await?;
            self.run(&self.scripts.occupy, room, vec![holder.member()])
                .await?;
            Ok(())
        })
    }

    fn vacated<'a>(
        &'a self,
        room: &'a RoomKey,
        holder: &'a Holder,
        ttl: Ttl,
    ) -> BoxFuture<'a, Result<Vacancy, StoreError>> {
        Box::pin(async move {
            let (left, still) = self
                .release(room, "one", holder.member(), ttl, holder.node())
                .await?
                .1;
            if !still {
                // A socket of this node joining meanwhile may be unlisted by this: then a crash of this node
                // would leave its holder behind, and the room kept (never lost).
                let _: Value = self
                    .client()
                    .srem(self.node_key(holder.node()), room.tag())
                    .await?;
            }
            Ok(match (left, ttl) {
                (0, Ttl::Forever) => Vacancy::Kept,
                (0, Ttl::After(_)) => Vacancy::Expiring,
                _ => Vacancy::Held,
            })
        })
    }

    fn forget_node<'a>(
        &'a self,
        node: &'a str,
        ttl_of: &'a (dyn Fn(&RoomKey) -> Ttl + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let index = self.node_key(node);
            let reply: Value = self.client().smembers(&index).await?;
            let Value::Array(tags) = reply else {
                return Err(unexpected("SMEMBERS", &reply));
            };
            let mut removed = 0;
            for raw in tags {
                let tag = text(&raw);
                if let Some(room) = tag.as_deref().and_then(RoomKey::from_tag) {
                    let prefix = Holder::node_prefix(node);
                    removed += self
                        .release(&room, "node", prefix, ttl_of(&room), node)
                        .await?
                        .0;
                } else {
                    tracing::warn!(node, tag = ?raw, "malformed room in a node's delivery list removed");
                }
                // Removed one by one: rooms listed meanwhile (this very node restarting) stay listed.
                let _: Value = self.client().srem(&index, raw).await?;
            }
            Ok(removed)
        })
    }
}

impl RedisStore {
    /// Runs the release script; returns `(removed, (holders left, whether node still holds the room))`.
    async fn release(
        &self,
        room: &RoomKey,
        mode: &str,
        target: String,
        ttl: Ttl,
        node: &str,
    ) -> Result<(u64, (u64, bool)), StoreError> {
        let script = &self.scripts.release;
        let argv = vec![
            mode.to_owned(),
            target,
            ttl.millis().to_string(),
            Holder::node_prefix(node),
        ];
        let reply = self.run(script, room, argv).await?;
        match integers(script, &reply, 3)?.as_slice() {
            &[removed, left, still] => Ok((
                count(script, &reply, removed)?,
                (count(script, &reply, left)?, still == 1),
            )),
            _ => Err(unexpected(script.name, &reply)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::hash_tag;

    fn store() -> RedisStore {
        // Never connected: only key names and reply parsing are tested here (tests/delivery_store.rs uses Redis).
        RedisStore::new(Client::default(), "socket-identity")
    }

    #[test]
    fn a_rooms_keys_share_one_slot() {
        let s = store();
        let room = RoomKey::new("/chat", "user_1").unwrap();
        assert_eq!(
            s.queue_key(&room),
            "socket-identity:delivery:{/chat|user_1}:q"
        );
        assert_eq!(
            s.holders_key(&room),
            "socket-identity:delivery:{/chat|user_1}:holders"
        );
        assert_eq!(hash_tag(&s.queue_key(&room)), "/chat|user_1");
        assert_eq!(hash_tag(&s.holders_key(&room)), "/chat|user_1");
        let other = RoomKey::new("/chat", "user_2").unwrap();
        assert_ne!(hash_tag(&s.queue_key(&other)), "/chat|user_1");
        assert_eq!(s.node_key("n1"), "socket-identity:delivery:node:n1");
    }

    #[test]
    fn scripts_are_named_by_their_sha1() {
        let s = Script::new("t", "return 1");
        // `redis-cli SCRIPT LOAD "return 1"`
        assert_eq!(s.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let all = store().scripts;
        for script in [all.push, all.ack, all.ack_one, all.occupy, all.release] {
            assert!(
                script
                    .body
                    .starts_with("-- Shared by every delivery script")
            );
            assert_eq!(script.sha.len(), 40);
        }
    }

    #[test]
    fn entries_are_read_leniently() {
        let s = store();
        let room = RoomKey::new("/chat", "user_1").unwrap();
        let good = |id: &str| {
            Value::Array(vec![
                id.into(),
                Value::Array(
                    ["event", "e", "args", "[1]", "resync", "0", "at_ms", "7"]
                        .into_iter()
                        .map(Value::from)
                        .collect(),
                ),
            ])
        };
        let reply = Value::Array(vec![
            good("1-0"),
            Value::Integer(3),
            Value::Array(vec!["2-0".into()]),
            Value::Array(vec!["3-0".into(), Value::Array(vec!["event".into()])]),
            Value::Array(vec![Value::Null, Value::Array(vec![])]),
            Value::Array(vec![
                "4-0".into(),
                Value::Array(vec!["event".into(), Value::Integer(1)]),
            ]),
            Value::Array(vec![
                "5-0".into(),
                Value::Array(vec!["event".into(), Value::Bytes(vec![0xff].into())]),
            ]),
            good("not-an-id"),
            good("6-0"),
        ]);
        let messages = s.entries(&room, reply).unwrap();
        assert_eq!(ids(&messages), [MessageId::new(1, 0), MessageId::new(6, 0)]);
        assert_eq!(s.malformed.get(), 7);
        assert!(s.entries(&room, Value::Null).is_err());
    }

    fn ids(messages: &[StoredMessage]) -> Vec<MessageId> {
        super::super::ids(messages)
    }

    #[test]
    fn unexpected_replies_are_errors_and_short() {
        let s = store();
        let long = Value::String("é".repeat(500).into());
        let e = unexpected("push", &long).to_string();
        assert!(
            e.starts_with("unexpected reply from Redis to push: "),
            "{e}"
        );
        assert!(e.chars().count() < 300, "{e}");
        let script = &s.scripts.release;
        assert!(integers(script, &Value::Array(vec![1.into(), "x".into()]), 2).is_err());
        assert!(integers(script, &Value::Array(vec![1.into()]), 2).is_err());
        assert_eq!(
            integers(script, &Value::Array(vec![1.into(), 2.into()]), 2).unwrap(),
            [1, 2]
        );
        assert!(count(script, &Value::Null, -1).is_err());
    }

    #[test]
    fn holder_nodes_are_read_as_untrusted() {
        let reply = Value::Array(vec![
            "n2".into(),
            "n1".into(),
            "n2".into(),
            "bad/node".into(),
            "".into(),
            7.into(),
        ]);
        assert_eq!(node_ids(&reply).unwrap(), ["n1", "n2"]);
        assert_eq!(
            node_ids(&Value::Array(Vec::new())).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(node_ids(&Value::Null).unwrap(), Vec::<String>::new());
        assert!(node_ids(&"n1".into()).is_none(), "not a list");
    }
}
