//! This cluster's broadcasts for Node servers (`NODE_ADAPTER_COMPAT`, docs/emitter.md, "Mixed clusters during a
//! migration"): published in `@socket.io/redis-adapter`'s format, so that a Node socket.io server with that adapter
//! on the same Redis delivers them to its sockets while a Node cluster is replaced one node at a time.
//!
//! [`NodeCompat`] wraps a namespace's adapter. A broadcast that starts on this node (its adapter's `broadcast`, not
//! a `local()` one) goes on as before, and is also encoded and queued for the [`Publisher`]'s task, which
//! `PUBLISH`es it with this cluster's uid: our nodes' emitter subscribers ignore it, Node's adapters deliver it. The
//! other nodes re-deliver a broadcast through the real adapter's local side, never through here, and recovery's
//! sequencers do the same: each broadcast is published once, by the node it started on. The queue is bounded and
//! never waited on: a full queue or a Redis failure is counted, never felt by the broadcast.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::interfaces::PubsubInterface;
use prometheus_client::metrics::{counter::Counter, family::Family};
use socketioxide_core::{
    Value,
    adapter::{
        BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter, Room,
        RoomParam, SocketEmitter, errors::BroadcastError,
    },
    packet::{Packet, PacketData},
    parser::Parse,
};
use tokio::sync::mpsc;

use super::wire::{self, Flags, Opts, RawBroadcast};
use crate::{realtime::args::Relayed, telemetry::metrics::Outcome};

/// Broadcasts queued for Redis at most; beyond, they are dropped (counted): a slow Redis must not grow memory.
const QUEUE: usize = 4096;
/// Broadcasts sent in one pipeline at most: one round trip for a burst.
const BATCH: usize = 256;
/// At most one log line a second about broadcasts not published.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A broadcast encoded for Node's adapter: its channel and its msgpack.
type Message = (String, Bytes);

/// Queues this node's broadcasts for Node's adapters; one for every namespace of the node.
#[derive(Clone)]
pub struct Publisher {
    key: Arc<str>,
    uid: Arc<str>,
    queue: mpsc::Sender<Message>,
    counts: Family<Outcome, Counter>,
    log: Throttled,
}

impl Publisher {
    /// A publisher with `key` (the Node adapter's `key`, our `EMITTER_KEY`) and `uid` (the cluster's,
    /// [`super::cluster_uid`]), and the task that publishes on `client`: the caller keeps it, to stop it.
    pub fn start(
        key: &str,
        uid: &str,
        client: fred::clients::Client,
        counts: Family<Outcome, Counter>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let log = Throttled::default();
        let task = tokio::spawn(publish(client, rx, counts.clone(), log.clone()));
        tracing::info!(
            key,
            "publishing broadcasts for @socket.io/redis-adapter servers (NODE_ADAPTER_COMPAT)"
        );
        let publisher = Self {
            key: key.into(),
            uid: uid.into(),
            queue,
            counts,
            log,
        };
        (publisher, task)
    }

    /// Queues `packet` of namespace `ns` when it is a broadcast Node's servers should deliver too; never waits.
    fn offer(&self, ns: &str, packet: &Packet, opts: &BroadcastOptions) {
        let message = match encode(&self.key, &self.uid, ns, packet, opts) {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(why) => {
                self.count("unencodable");
                self.log.warn(format_args!(
                    "broadcast of {ns} not published for Node servers: {why}"
                ));
                return;
            }
        };
        if self.queue.try_send(message).is_err() {
            self.count("dropped");
            self.log.warn(format_args!(
                "broadcast of {ns} not published for Node servers: the queue to Redis is full"
            ));
        }
    }

    fn count(&self, outcome: &'static str) {
        self.counts.get_or_create(&Outcome { outcome }).inc();
    }
}

/// Why a broadcast cannot be written in Node's format.
#[derive(Debug, thiserror::Error)]
pub enum Unencodable {
    #[error("not in the common parser's form")]
    NotText,
    #[error("its arguments do not decode: {0}")]
    Arguments(String),
    #[error("msgpack: {0}")]
    Msgpack(String),
}

/// Whether a broadcast starts here and goes to the rooms (or the namespace) of every server: not `local()`, and
/// not an emit to one socket of another node (`io.to(sid)` names a room, and does cross: no Node socket has it).
fn crosses(opts: &BroadcastOptions) -> bool {
    !opts.has_flag(BroadcastFlags::Local)
        && (!opts.rooms.is_empty()
            || opts.has_flag(BroadcastFlags::Broadcast)
            || opts.sid.is_none())
}

/// `packet`, broadcast with `opts` in namespace `ns`, as `@socket.io/redis-adapter` 8 publishes a broadcast:
/// msgpack `[uid, {type: 2, data: [event, ...args], nsp}, {rooms, except, flags}]` on `{key}#{ns}#`, or
/// `{key}#{ns}#{room}#` for exactly one room. `None` for what is not an event broadcast to other servers.
///
/// The type stays 2 with binary arguments (msgpack `bin`), as Node's adapter publishes it: Node's encoder makes it a
/// binary event when it sends it, and would mis-encode a 5. A socket's `broadcast` excludes the sender by its id,
/// which Node's adapter does with `except`.
pub fn encode(
    key: &str,
    uid: &str,
    ns: &str,
    packet: &Packet,
    opts: &BroadcastOptions,
) -> Result<Option<Message>, Unencodable> {
    if !crosses(opts) {
        return Ok(None);
    }
    let value = match &packet.inner {
        PacketData::Event(value, None) | PacketData::BinaryEvent(value, None) => value,
        _ => return Ok(None),
    };
    if !matches!(value, Value::Str(..)) {
        return Err(Unencodable::NotText);
    }
    // The parser takes attachments out of the value it decodes: a copy (its text and attachments are shared).
    let mut value = value.clone();
    let Relayed(data) = socketioxide_parser_common::CommonParser
        .decode_value(&mut value, false)
        .map_err(|e| Unencodable::Arguments(e.to_string()))?;
    let names = |rooms: &[Room]| rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    let mut except = names(&opts.except);
    if let Some(sid) = opts
        .sid
        .filter(|_| opts.has_flag(BroadcastFlags::Broadcast))
    {
        except.push(sid.to_string());
    }
    let rooms = names(&opts.rooms);
    let channel = match rooms.as_slice() {
        [room] => format!("{key}#{ns}#{room}#"),
        _ => format!("{key}#{ns}#"),
    };
    let volatile = opts.has_flag(BroadcastFlags::Volatile);
    let message = RawBroadcast(
        uid.to_owned(),
        wire::Packet {
            kind: wire::EVENT,
            data,
            nsp: Some(ns.to_owned()),
            id: None,
        },
        Opts {
            rooms,
            except,
            flags: Flags {
                volatile: volatile.then_some(true),
                compress: None,
            },
        },
    );
    let bytes =
        rmp_serde::to_vec_named(&message).map_err(|e| Unencodable::Msgpack(e.to_string()))?;
    Ok(Some((channel, bytes.into())))
}

/// Publishes what is queued, in order, a pipeline of at most [`BATCH`] at a time.
async fn publish(
    client: fred::clients::Client,
    mut rx: mpsc::Receiver<Message>,
    counts: Family<Outcome, Counter>,
    log: Throttled,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let pipeline = client.pipeline();
        let mut failed = 0;
        for (channel, message) in batch.drain(..) {
            let queued: Result<(), _> = pipeline
                .publish(channel, fred::types::Value::Bytes(message))
                .await;
            if let Err(e) = queued {
                failed += 1;
                log.warn(format_args!(
                    "broadcast not published for Node servers: {e}"
                ));
            }
        }
        let mut published = 0;
        for result in pipeline.try_all::<fred::types::Value>().await {
            match result {
                Ok(_) => published += 1,
                Err(e) => {
                    failed += 1;
                    log.warn(format_args!(
                        "broadcast not published for Node servers: {e}"
                    ));
                }
            }
        }
        counts
            .get_or_create(&Outcome {
                outcome: "published",
            })
            .inc_by(published);
        counts
            .get_or_create(&Outcome { outcome: "failed" })
            .inc_by(failed);
    }
}

/// A warning logged at most once a second, whichever task or broadcast has one.
#[derive(Clone, Default)]
struct Throttled(Arc<Mutex<Option<Instant>>>);

impl Throttled {
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        {
            let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|l| now.duration_since(l) < LOG_EVERY) {
                return;
            }
            *last = Some(now);
        }
        tracing::warn!("{what}");
    }
}

/// The shared state of [`NodeCompat`] adapters: the real adapter's, and the publisher when compat is on.
pub struct CompatState<S> {
    pub inner: S,
    pub publisher: Option<Publisher>,
}

tokio::task_local! {
    /// Set while a message that came from Redis in this format (an emitter's or a Node server's) is pushed for the
    /// cluster ([`unpublished`]).
    static FROM_REDIS: ();
}

/// Runs `push` without publishing its broadcasts for Node's servers: they came from Redis in this very format, so
/// Node's servers had them already, and publishing them again would give their sockets each message twice.
pub async fn unpublished<F: Future>(push: F) -> F::Output {
    FROM_REDIS.scope((), push).await
}

fn is_unpublished() -> bool {
    FROM_REDIS.try_with(|_| ()).is_ok()
}

/// A namespace's adapter: the real one, whose broadcasts are also offered to the [`Publisher`].
pub struct NodeCompat<A> {
    /// An `Arc` of its own: the real adapter's `init` takes one (its subscriptions' tasks keep it).
    inner: Arc<A>,
    ns: String,
    publisher: Option<Publisher>,
}

impl<E: SocketEmitter, A: CoreAdapter<E>> CoreAdapter<E> for NodeCompat<A> {
    type Error = A::Error;
    type State = CompatState<A::State>;
    type AckStream = A::AckStream;
    type InitRes = A::InitRes;

    fn new(state: &Self::State, local: CoreLocalAdapter<E>) -> Self {
        let ns = local.path().to_string();
        Self {
            inner: Arc::new(A::new(&state.inner, local)),
            ns,
            publisher: state.publisher.clone(),
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        self.inner.clone().init(on_success)
    }

    fn close(&self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }

    fn server_count(&self) -> impl Future<Output = Result<u16, Self::Error>> + Send {
        self.inner.server_count()
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        if let Some(publisher) = self.publisher.as_ref().filter(|_| !is_unpublished()) {
            publisher.offer(&self.ns, &packet, &opts);
        }
        self.inner.broadcast(packet, opts).await
    }

    /// Not published: Node's sockets could not ack back to us, and a client that expects a callback with the
    /// event would have none.
    fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Self::AckStream, Self::Error>> + Send {
        if let Some(publisher) = self.publisher.as_ref().filter(|_| crosses(&opts)) {
            publisher.count("acked");
        }
        self.inner.broadcast_with_ack(packet, opts, timeout)
    }

    fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.add_sockets(opts, rooms)
    }

    fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.del_sockets(opts, rooms)
    }

    fn disconnect_socket(
        &self,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<(), BroadcastError>> + Send {
        self.inner.disconnect_socket(opts)
    }

    fn rooms(
        &self,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<Vec<Room>, Self::Error>> + Send {
        self.inner.rooms(opts)
    }

    fn fetch_sockets(
        &self,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<Vec<socketioxide_core::adapter::RemoteSocketData>, Self::Error>>
    + Send {
        self.inner.fetch_sockets(opts)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        self.inner.get_local()
    }
}

impl<A: DefinedAdapter> DefinedAdapter for NodeCompat<A> {}

#[cfg(test)]
mod tests {
    use socketioxide_core::{Sid, Str};

    use super::*;
    use crate::realtime::args::Arg;

    const MAX: usize = 65_536;

    /// What socketioxide hands the adapter for `emit(event, args)`.
    fn packet(ns: &str, event: &str, args: &Relayed) -> Packet {
        let value = socketioxide_parser_common::CommonParser
            .encode_value(args, Some(event))
            .unwrap();
        Packet::event(Str::from(ns.to_owned()), value)
    }

    fn to(rooms: &[&'static str]) -> BroadcastOptions {
        let mut opts = BroadcastOptions::default();
        opts.rooms = rooms.iter().copied().map(Room::from).collect();
        opts
    }

    #[test]
    fn a_room_broadcast_is_published_as_node_adapter_publishes_it_binary_included() {
        let args = Relayed(vec![
            Arg::Number(1.into()),
            Arg::Bytes(vec![0, 255]),
            Arg::Object(vec![("f".into(), Arg::Bytes(vec![7]))]),
        ]);
        let mut opts = to(&["r1"]);
        opts.except = ["x"].into_iter().map(Room::from).collect();
        opts.add_flag(BroadcastFlags::Volatile);
        let (channel, bytes) = encode(
            "socket.io",
            "us",
            "/chat",
            &packet("/chat", "news", &args),
            &opts,
        )
        .unwrap()
        .unwrap();
        assert_eq!(channel, "socket.io#/chat#r1#");
        // Read back as our own nodes (and Node's) read it.
        let b = wire::Broadcast::parse("/chat#r1#", &bytes, MAX).unwrap();
        assert_eq!(
            (b.uid.as_str(), b.namespace.as_str(), b.event.as_str()),
            ("us", "/chat", "news")
        );
        assert_eq!(b.args, args.0);
        assert_eq!(
            (b.rooms, b.except, b.volatile),
            (vec!["r1".into()], vec!["x".into()], true)
        );
        // Type 2 even with binary, as Node's adapter publishes it; binary as msgpack bin.
        let RawBroadcast(_, raw, _) = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(raw.kind, wire::EVENT);
        assert!(bytes.windows(3).any(|w| w == [0xc4, 2, 0]));
    }

    #[test]
    fn several_rooms_or_none_go_on_the_namespace_channel_and_a_sender_is_excepted() {
        let p = packet("/", "e", &Relayed(vec![]));
        let (channel, _) = encode("k", "us", "/", &p, &to(&["a", "b"]))
            .unwrap()
            .unwrap();
        assert_eq!(channel, "k#/#");
        let (channel, bytes) = encode("k", "us", "/", &p, &to(&[])).unwrap().unwrap();
        assert_eq!(channel, "k#/#");
        let b = wire::Broadcast::parse("/#", &bytes, MAX).unwrap();
        assert!(b.rooms.is_empty() && b.except.is_empty() && !b.volatile);

        // `socket.broadcast.to(room)`: everyone in it but the sender.
        let sid = Sid::new();
        let mut opts = BroadcastOptions::new(sid);
        opts.add_flag(BroadcastFlags::Broadcast);
        opts.rooms = ["a"].into_iter().map(Room::from).collect();
        let (_, bytes) = encode("k", "us", "/", &p, &opts).unwrap().unwrap();
        let b = wire::Broadcast::parse("/#a#", &bytes, MAX).unwrap();
        assert_eq!(b.except, [sid.to_string()]);
    }

    #[test]
    fn local_and_single_socket_emits_and_non_events_are_not_published() {
        let p = packet("/", "e", &Relayed(vec![]));
        let mut local = to(&["a"]);
        local.add_flag(BroadcastFlags::Local);
        assert!(encode("k", "us", "/", &p, &local).unwrap().is_none());
        let one = BroadcastOptions::new(Sid::new());
        assert!(encode("k", "us", "/", &p, &one).unwrap().is_none());
        let mut acked = p.clone();
        acked.inner.set_ack_id(1);
        assert!(
            encode("k", "us", "/", &acked, &to(&["a"]))
                .unwrap()
                .is_none()
        );
        let bytes = Packet::event("/", Value::Bytes(Bytes::from_static(b"\x91\xa1e")));
        assert!(matches!(
            encode("k", "us", "/", &bytes, &to(&["a"])),
            Err(Unencodable::NotText)
        ));
    }
}
