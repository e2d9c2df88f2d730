//! The cluster's store: counts and outboxes in Redis, changed by Lua scripts so that a count and its event are
//! written together, atomically.
//!
//! ## Layout
//! With `<P>` the prefix (`REDIS_PREFIX` then `:webhooks`) and `<ns>` the namespace; the braces are literal (a
//! hash tag: a namespace's keys live on one Redis Cluster slot, as its scripts need):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<P>:namespaces` | set | the tracked namespaces (dispatchers and reaping go through them) |
//! | `<P>:{<ns>}:rooms` | hash | room → sockets in it, cluster-wide |
//! | `<P>:{<ns>}:members` | hash | `<room>\0<user>` → that user's sockets in it |
//! | `<P>:{<ns>}:node:<node>` | hash | what one node contributes: `r\0<room>`, `m\0<room>\0<user>` → counts, `v\0<room>\0<user>` → verified, `s\0<socket>` → verified then user (only with socket events), `w\0<worker>` → its last change's number |
//! | `<P>:{<ns>}:outbox` | stream | the events, trimmed to about [`OUTBOX_CAP`]: `n` (sequence), `t` (type), `ms`, `r`, `u`, `v`, `s` |
//! | `<P>:{<ns>}:seq` | string | the last event's sequence number |
//! | `<P>:{<ns>}:lease:<hook>` | string | the node sending `<hook>`'s events of `<ns>`, expiring |
//! | `<P>:{<ns>}:cursor:<hook>` | string | `<entry id> <seq>`: the last event `<hook>` is done with |
//!
//! `<hook>` is the webhook's key ([`crate::config::file::CheckedWebhook::key`]).

use fred::{
    clients::Client,
    interfaces::{KeysInterface, SetsInterface, StreamsInterface},
    types::Value,
};
use futures_util::future::{BoxFuture, FutureExt};

use super::{Applied, Change, Cursor, Event, OUTBOX_CAP, Result, Stamp, Store, WebhookError};
use crate::{config::file::EventKind, redis::Script};

macro_rules! counting {
    ($file:literal) => {
        concat!(include_str!("lua/prelude.lua"), include_str!($file))
    };
}

/// Counts and outboxes in Redis, shared by every node.
pub struct RedisStore {
    client: Client,
    /// `{REDIS_PREFIX}:webhooks`.
    prefix: String,
    cap: u64,
    change: Script,
    restore: Script,
    reap: Script,
    lease: Script,
    advance: Script,
}

impl RedisStore {
    pub fn new(client: Client, redis_prefix: &str) -> Self {
        Self::with_cap(client, redis_prefix, OUTBOX_CAP)
    }

    /// A store whose outboxes keep about `cap` events (tests use small ones).
    pub fn with_cap(client: Client, redis_prefix: &str, cap: u64) -> Self {
        Self {
            client,
            prefix: format!("{redis_prefix}:webhooks"),
            cap,
            change: Script::new("webhook_change", counting!("lua/change.lua")),
            restore: Script::new("webhook_restore", counting!("lua/restore.lua")),
            reap: Script::new("webhook_reap", counting!("lua/reap.lua")),
            lease: crate::redis::lease_script("webhook_lease"),
            advance: Script::new("webhook_advance", include_str!("lua/advance.lua")),
        }
    }

    fn key(&self, ns: &str, what: &str) -> String {
        format!("{}:{{{ns}}}:{what}", self.prefix)
    }

    /// The keys of the counting scripts, in the prelude's order.
    fn counting_keys(&self, ns: &str, node: &str) -> Vec<String> {
        vec![
            self.key(ns, "rooms"),
            self.key(ns, "members"),
            self.key(ns, &format!("node:{node}")),
            self.key(ns, "outbox"),
            self.key(ns, "seq"),
        ]
    }
}

fn unexpected(command: &'static str, reply: &Value) -> WebhookError {
    WebhookError::Reply {
        command,
        reply: crate::redis::shown(reply),
    }
}

/// The reply of a counting script: events written, or a negative status.
fn status(command: &'static str, reply: Value) -> Result<std::result::Result<u64, i64>> {
    match reply {
        Value::Integer(n) if n >= 0 => Ok(Ok(n as u64)),
        Value::Integer(n) => Ok(Err(n)),
        other => Err(unexpected(command, &other)),
    }
}

fn flag(b: bool) -> Value {
    if b { "1" } else { "0" }.into()
}

fn integer(command: &'static str, reply: Value) -> Result<u64> {
    match reply {
        Value::Integer(n) if n >= 0 => Ok(n as u64),
        other => Err(unexpected(command, &other)),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One `[id, [field, value, ...]]` outbox entry (fields flat or as a map); `None` when it is not an event.
fn decode(raw: &Value) -> Option<Event> {
    let Value::Array(parts) = raw else {
        return None;
    };
    let [id, fields] = parts.as_slice() else {
        return None;
    };
    let pairs: Vec<(String, String)> = match fields {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
            .collect(),
        Value::Map(map) => map
            .clone()
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), text(v)?)))
            .collect(),
        _ => return None,
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    Some(Event {
        id: text(id)?,
        seq: field("n")?.parse().ok()?,
        kind: EventKind::parse(&field("t")?)?,
        room: field("r"),
        verified: field("u").map(|_| field("v").as_deref() == Some("1")),
        user: field("u"),
        socket: field("s"),
        at_ms: field("ms")?.parse().ok()?,
    })
}

impl Store for RedisStore {
    fn register<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let _: Value = self
                .client
                .sadd(format!("{}:namespaces", self.prefix), ns)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn namespaces(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        async move {
            let reply: Value = self
                .client
                .smembers(format!("{}:namespaces", self.prefix))
                .await?;
            match reply {
                Value::Array(items) => Ok(items.iter().filter_map(text).collect()),
                Value::Null => Ok(Vec::new()),
                other => Err(unexpected("SMEMBERS", &other)),
            }
        }
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        ns: &'a str,
        node: &'a str,
        stamp: Stamp,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Applied>> {
        async move {
            let mut args: Vec<Value> = vec![
                self.cap.to_string().into(),
                stamp.worker.to_string().into(),
                stamp.n.to_string().into(),
                flag(stamp.counted),
                if change.joined { "1" } else { "-1" }.into(),
                change.socket.as_str().into(),
                change.user.as_deref().unwrap_or("").into(),
                flag(change.verified),
                flag(change.socket_event),
            ];
            args.extend(change.rooms.iter().map(|r| Value::from(r.as_str())));
            let reply = self
                .change
                .run(&self.client, self.counting_keys(ns, node), args)
                .await?;
            match status("webhook_change", reply)? {
                Ok(n) => Ok(Applied::Events(n)),
                Err(-1) => Ok(Applied::Again),
                Err(-2) => Ok(Applied::Reaped),
                Err(n) => Err(unexpected("webhook_change", &Value::Integer(n))),
            }
        }
        .boxed()
    }

    fn restore<'a>(
        &'a self,
        ns: &'a str,
        node: &'a str,
        stamp: Stamp,
        sockets: &'a [Change],
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        async move {
            let mut args: Vec<Value> = vec![
                self.cap.to_string().into(),
                stamp.worker.to_string().into(),
                stamp.n.to_string().into(),
            ];
            for c in sockets {
                args.extend([
                    c.socket.as_str().into(),
                    c.user.as_deref().unwrap_or("").into(),
                    flag(c.verified),
                    flag(c.socket_event),
                    c.rooms.len().to_string().into(),
                ]);
                args.extend(c.rooms.iter().map(|r| Value::from(r.as_str())));
            }
            let reply = self
                .restore
                .run(&self.client, self.counting_keys(ns, node), args)
                .await?;
            match status("webhook_restore", reply)? {
                Ok(n) => Ok(Some(n)),
                Err(-1) => Ok(None),
                Err(n) => Err(unexpected("webhook_restore", &Value::Integer(n))),
            }
        }
        .boxed()
    }

    fn reap<'a>(&'a self, ns: &'a str, node: &'a str) -> BoxFuture<'a, Result<u64>> {
        async move {
            let reply = self
                .reap
                .run(
                    &self.client,
                    self.counting_keys(ns, node),
                    vec![self.cap.to_string().into()],
                )
                .await?;
            integer("webhook_reap", reply)
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        ns: &'a str,
        after: &'a Cursor,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>>> {
        async move {
            let reply: Value = self
                .client
                .xrange(
                    self.key(ns, "outbox"),
                    format!("({}", after.id),
                    "+",
                    Some(count as u64),
                )
                .await?;
            let Value::Array(entries) = reply else {
                return match reply {
                    Value::Null => Ok(Vec::new()),
                    other => Err(unexpected("XRANGE", &other)),
                };
            };
            let mut events = Vec::with_capacity(entries.len());
            for entry in &entries {
                match decode(entry) {
                    Some(e) => events.push(e),
                    None => tracing::warn!(
                        namespace = ns,
                        entry = %crate::redis::shown(entry),
                        "webhook outbox entry skipped: not an event"
                    ),
                }
            }
            Ok(events)
        }
        .boxed()
    }

    fn lease<'a>(
        &'a self,
        ns: &'a str,
        hook: &'a str,
        me: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        async move {
            let reply = self
                .lease
                .run(
                    &self.client,
                    vec![self.key(ns, &format!("lease:{hook}"))],
                    vec![me.into(), ttl_ms.to_string().into()],
                )
                .await?;
            Ok(integer("webhook_lease", reply)? == 1)
        }
        .boxed()
    }

    fn cursor<'a>(&'a self, ns: &'a str, hook: &'a str) -> BoxFuture<'a, Result<Cursor>> {
        async move {
            let reply: Value = self
                .client
                .get(self.key(ns, &format!("cursor:{hook}")))
                .await?;
            match &reply {
                Value::Null => Ok(Cursor::start()),
                other => text(other)
                    .and_then(|t| Cursor::decode(&t))
                    .ok_or_else(|| unexpected("GET cursor", other)),
            }
        }
        .boxed()
    }

    fn advance<'a>(
        &'a self,
        ns: &'a str,
        hook: &'a str,
        me: &'a str,
        to: &'a Cursor,
    ) -> BoxFuture<'a, Result<bool>> {
        async move {
            let reply = self
                .advance
                .run(
                    &self.client,
                    vec![
                        self.key(ns, &format!("lease:{hook}")),
                        self.key(ns, &format!("cursor:{hook}")),
                    ],
                    vec![me.into(), to.encode().into()],
                )
                .await?;
            Ok(integer("webhook_advance", reply)? == 1)
        }
        .boxed()
    }
}
