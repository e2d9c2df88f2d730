//! The socket.io Redis emitter protocol, accepted by every node (docs/emitter.md): backends that push with
//! `@socket.io/redis-emitter` (or its PHP, Go, Python, Java ports) reach our clients with their code unchanged.
//!
//! Every node `PSUBSCRIBE`s `{key}#*` and `{key}-request#*` on a subscriber of its own (classic pub/sub: the
//! emitter `PUBLISH`es, which a Redis Cluster delivers to every node's subscribers) and applies each message to
//! its own sockets only: a broadcast is a local emit, a join, leave or disconnect a local one. Nothing is
//! published again, so each matching socket of the cluster gets a message once.
//!
//! Except what must happen once per cluster: a broadcast to a reliable user room (stored, acknowledged, as
//! `POST /send` does), a broadcast to a namespace with connection state recovery (recorded in its log, which every
//! node delivers), a server-side emit (one envelope on the gateway's stream). One node, the first to claim the
//! message ([`once`]), handles it for the whole cluster; the others do nothing with it.
//!
//! * [`wire`]: the messages, checked (they come from Redis: anyone with access may publish).
//! * [`once`]: which node handles a message that must be handled once, identical messages included.
//! * [`compat`]: with `NODE_ADAPTER_COMPAT`, this cluster's broadcasts published in `@socket.io/redis-adapter`'s
//!   format, for the Node servers of a cluster being migrated.
//!
//! Namespaces the config does not serve are dropped (the emitter never creates one); malformed messages are
//! counted (`emitter_messages_total{kind, outcome}`) and logged at most once a second.

pub mod compat;
pub mod once;
pub mod wire;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fred::{interfaces::PubsubInterface, prelude::EventInterface, types::Message};
use socketioxide::{BroadcastError, SocketIo, adapter::Adapter, operators::BroadcastOperators};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    realtime::{
        NodeInfo,
        args::Relayed,
        deliver::{Deliver, DeliverError, Outgoing},
        push::Push,
    },
    redis::{self, Endpoint, RedisError},
    telemetry::metrics::{EmitterMessage, Metrics, RedisWatch},
};
use once::{Digest, Occurrences};
use wire::{Broadcast, Channel, Request, Target};

/// At most one log line a second about refused messages: a flood of them must not flood the logs.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// What the protocol needs from the node's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The emitter's key (`EMITTER_KEY`, `socket.io` by default).
    pub key: String,
    /// The uid this cluster would publish with: messages carrying it are its own, already delivered.
    pub own_uid: String,
    /// Largest message accepted, in bytes (as large as a client may send: `MAX_PAYLOAD_BYTES`).
    pub max_bytes: usize,
    /// Prefix of the keys that make a message handled once cluster-wide ([`once`]).
    pub once_prefix: String,
}

/// The uid this cluster's own messages carry in the protocol: one for every node of a cluster (its prefix), so
/// that a node ignores what any node of its cluster published.
pub fn cluster_uid(redis_prefix: &str) -> String {
    format!("socket-identity:{redis_prefix}")
}

/// The protocol running on this node: its subscriber and the task applying messages.
pub struct Emitter {
    sub: redis::Subscriber,
    task: tokio::task::JoinHandle<()>,
    /// Counts the subscriber's errors and reconnects while it lives.
    _watch: RedisWatch,
}

impl Emitter {
    /// Connects a subscriber, subscribes the protocol's channels and starts applying what comes to `io`'s
    /// sockets. On failure nothing stays open.
    pub async fn start<A: Adapter>(
        settings: Settings,
        endpoint: &Endpoint,
        io: SocketIo<A>,
        info: &NodeInfo,
        client: fred::clients::Client,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let sub = redis::Subscriber::new(endpoint, timeout)?;
        let watch = info.metrics.watch_redis(&sub.client, "emitter_subscriber");
        let key = wire::glob_escape(&settings.key);
        let patterns = vec![format!("{key}#*"), format!("{key}-request#*")];
        let messages = sub.client.message_rx();
        let subscribed = async {
            redis::init(&sub.client, endpoint).await?;
            sub.client
                .psubscribe(patterns)
                .await
                .map_err(|e| redis::connect_err(endpoint, e))
        };
        if let Err(e) = subscribed.await {
            sub.close().await;
            return Err(e);
        }
        tracing::info!(
            key = settings.key,
            "accepting the socket.io Redis emitter protocol"
        );
        let node = Applier {
            settings,
            push: Arc::new(io.clone()),
            io,
            info: info.clone(),
            client,
            occurrences: Occurrences::default(),
            last_log: None,
        };
        let task = tokio::spawn(node.run(messages));
        Ok(Self {
            sub,
            task,
            _watch: watch,
        })
    }

    /// Stops applying messages and closes the subscriber.
    pub async fn stop(&self) {
        self.task.abort();
        self.sub.close().await;
    }
}

/// Applies the protocol's messages to this node's sockets, one at a time (in the order they were published).
struct Applier<A: Adapter> {
    settings: Settings,
    io: SocketIo<A>,
    /// The same, for pushes handled once for the cluster ([`Deliver`]).
    push: Arc<dyn Push>,
    info: NodeInfo,
    /// For the claims of [`Self::once`].
    client: fred::clients::Client,
    /// How many times each message to handle once was read lately ([`once`]).
    occurrences: Occurrences,
    /// When a refused message was last logged.
    last_log: Option<Instant>,
}

/// What became of a message, for the metric.
type Outcome = &'static str;

impl<A: Adapter> Applier<A> {
    async fn run(mut self, mut messages: tokio::sync::broadcast::Receiver<Message>) {
        loop {
            match messages.recv().await {
                Ok(message) => self.handle(message).await,
                Err(RecvError::Lagged(n)) => {
                    self.count_by("unknown", "dropped", n);
                    self.log(format_args!("{n} messages dropped: this node fell behind"));
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn handle(&mut self, message: Message) {
        let Some(payload) = message.value.as_bytes() else {
            self.refused("unknown", &message.channel, "not a string or bytes");
            return;
        };
        match Channel::of(&self.settings.key, &message.channel) {
            Some(Channel::Broadcast { rest }) => {
                match Broadcast::parse(rest, payload, self.settings.max_bytes) {
                    Ok(b) => {
                        if let Some(outcome) = self.broadcast(b, payload).await {
                            self.count("broadcast", outcome);
                        }
                    }
                    Err(why) => self.refused("broadcast", &message.channel, &why.to_string()),
                }
            }
            Some(Channel::Request { namespace }) => {
                match Request::parse(payload, self.settings.max_bytes) {
                    Ok(request) => {
                        let kind = request.kind();
                        if let Some(outcome) = self.request(namespace, request, payload).await {
                            self.count(kind, outcome);
                        }
                    }
                    Err(why) => self.refused("request", &message.channel, &why.to_string()),
                }
            }
            None => self.refused("unknown", &message.channel, "not a channel of the protocol"),
        }
    }

    /// The namespace's operators when the config serves it and it exists on this node; never created.
    fn served(&self, namespace: &str) -> Option<BroadcastOperators<A>> {
        self.info.namespaces.find(namespace)?;
        self.io.of(namespace)
    }

    /// `None`: counted later, by the task that takes the message over if the first node does not
    /// ([`Self::once`]).
    async fn broadcast(&mut self, b: Broadcast, payload: &[u8]) -> Option<Outcome> {
        if b.uid == self.settings.own_uid {
            return Some("own");
        }
        let Some(config) = self.info.namespaces.find(&b.namespace) else {
            return Some("unknown_namespace");
        };
        // Volatile: to the sockets that can take it now, so neither stored for later nor recorded for replay.
        let to_user_room = config.reliable.as_ref().is_some_and(|r| {
            b.rooms
                .iter()
                .any(|room| r.is_user_room(room) && !b.except.contains(room))
        });
        if !b.volatile && (to_user_room || config.recovery.is_some()) {
            return self.broadcast_once(b, payload).await;
        }
        let Some(ops) = self.served(&b.namespace) else {
            return Some("unknown_namespace");
        };
        let mut ops = ops.local().to(b.rooms).except(b.except);
        if b.volatile {
            ops = ops.volatile();
        }
        Some(match ops.emit(&b.event, &Relayed(b.args)).await {
            // Some sockets could not take it (closed a moment ago, or not reading): the others got it.
            Ok(()) | Err(BroadcastError::Socket(_)) => "delivered",
            Err(e) => {
                self.log(format_args!("emitter broadcast not delivered: {e}"));
                "failed"
            }
        })
    }

    /// A broadcast handled by one node for the cluster: pushed as `POST /send` pushes ([`Deliver`]), so that its
    /// user rooms' messages are stored and acknowledged, and a recovering namespace's log records it once.
    ///
    /// A binary argument cannot be stored (the store keeps JSON): such a message goes to its user rooms live like
    /// to any room, once, without ack or `batch` (counted `unstored`).
    async fn broadcast_once(&mut self, b: Broadcast, payload: &[u8]) -> Option<Outcome> {
        let reliable = self
            .info
            .namespaces
            .find(&b.namespace)
            .and_then(|config| config.reliable.clone());
        let here = self.io.of(&b.namespace).is_some();
        let deliver = Deliver {
            push: self.push.clone(),
            store: self.info.delivery().cloned(),
            metrics: self.info.metrics.clone(),
            relay: self.info.cluster.get().cloned(),
        };
        match self.once("broadcast", &b.namespace, payload, here).await {
            Ok(Turn::Now) => {}
            Ok(Turn::Lost) => return Some("other_node"),
            Ok(Turn::Later(key)) => {
                let (client, metrics) = (self.client.clone(), self.info.metrics.clone());
                tokio::spawn(async move {
                    let outcome = match take_over(&client, key).await {
                        Some(true) => push_once(deliver, reliable, b).await.unwrap_or_else(|e| e),
                        Some(false) => "other_node",
                        None => "failed",
                    };
                    count(&metrics, "broadcast", outcome, 1);
                });
                return None;
            }
            Err(outcome) => return Some(outcome),
        }
        Some(push_once(deliver, reliable, b).await.unwrap_or_else(|e| e))
    }

    async fn request(
        &mut self,
        namespace: &str,
        request: Request,
        payload: &[u8],
    ) -> Option<Outcome> {
        let targeted = |target: Target| {
            self.served(namespace)
                .map(|ops| ops.local().to(target.rooms).except(target.except))
        };
        let applied = match request {
            Request::Join { target, rooms } => match targeted(target) {
                Some(ops) => ops.join(rooms).await.map_err(|e| e.to_string()),
                None => return Some("unknown_namespace"),
            },
            Request::Leave { target, rooms } => match targeted(target) {
                Some(ops) => ops.leave(rooms).await.map_err(|e| e.to_string()),
                None => return Some("unknown_namespace"),
            },
            // `close` would also close the client's other namespaces: socketioxide closes a connection only when
            // its last namespace is left, so the sockets targeted are disconnected either way.
            Request::Disconnect { target, close: _ } => match targeted(target) {
                Some(ops) => match ops.disconnect().await {
                    Ok(()) | Err(BroadcastError::Socket(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
                None => return Some("unknown_namespace"),
            },
            Request::ServerSideEmit { uid, data } => {
                return self.server_side_emit(namespace, uid, data, payload).await;
            }
            Request::Other(_) => return Some("unsupported"),
        };
        Some(match applied {
            Ok(()) => "applied",
            Err(e) => {
                self.log(format_args!("emitter request not applied: {e}"));
                "failed"
            }
        })
    }

    /// To the event-bus gateway's `onmessage` stream, when there is one: once cluster-wide (every node reads the
    /// request; the one that wins [`Self::once`] publishes it), as the backend reading the stream is one.
    async fn server_side_emit(
        &mut self,
        namespace: &str,
        uid: Option<String>,
        data: Vec<serde_json::Value>,
        payload: &[u8],
    ) -> Option<Outcome> {
        if uid.as_deref() == Some(self.settings.own_uid.as_str()) {
            return Some("own");
        }
        if self.info.namespaces.find(namespace).is_none() {
            return Some("unknown_namespace");
        }
        let Some(bus) = self.info.bus.get().cloned() else {
            return Some("dropped");
        };
        let mut data = data.into_iter();
        let Some(serde_json::Value::String(event)) = data.next() else {
            return Some("malformed");
        };
        let (ns, args) = (namespace.to_owned(), data.collect());
        let publish = async move |bus: Arc<dyn crate::realtime::bus::Bus>| match bus
            .server_side_emit(&ns, &event, args)
            .await
        {
            true => "published",
            false => "dropped",
        };
        match self
            .once("server_side_emit", namespace, payload, true)
            .await
        {
            Ok(Turn::Now) => Some(publish(bus).await),
            Ok(Turn::Lost) => Some("other_node"),
            Ok(Turn::Later(key)) => {
                let (client, metrics) = (self.client.clone(), self.info.metrics.clone());
                tokio::spawn(async move {
                    let outcome = match take_over(&client, key).await {
                        Some(true) => publish(bus).await,
                        Some(false) => "other_node",
                        None => "failed",
                    };
                    count(&metrics, "server_side_emit", outcome, 1);
                });
                None
            }
            Err(outcome) => Some(outcome),
        }
    }

    /// Whether this node handles this occurrence of `payload` (of `kind`, in `namespace`) for the cluster: counts
    /// it ([`Occurrences`]), then, on the first node ([`crate::cluster::Cluster::is_first`]), claims it at once;
    /// the other nodes claim it [`TAKE_OVER`] later ([`Turn::Later`]), which they win only if the first did not
    /// (it died, or fell far behind). So one node handles them all, in the order they were published, while it
    /// lives. Every node counts, whether it claims or not (`here` false: a broadcast to a dynamic namespace without
    /// sockets on this node), so that counts stay alike. `Err`: the outcome to count instead.
    async fn once(
        &mut self,
        kind: &str,
        namespace: &str,
        payload: &[u8],
        here: bool,
    ) -> Result<Turn, Outcome> {
        use sha2::Digest as _;
        let digest: Digest = sha2::Sha256::new()
            .chain_update(kind.as_bytes())
            .chain_update([0])
            .chain_update(namespace.as_bytes())
            .chain_update([0])
            .chain_update(payload)
            .finalize()
            .into();
        let n = self.occurrences.next(digest, tokio::time::Instant::now());
        if !here {
            return Err("unknown_namespace");
        }
        let key = once::claim_key(&self.settings.once_prefix, &digest, n);
        if !self.info.cluster.get().is_none_or(|c| c.is_first()) {
            return Ok(Turn::Later(key));
        }
        match claim(&self.client, key).await {
            Ok(true) => Ok(Turn::Now),
            Ok(false) => Ok(Turn::Lost),
            Err(e) => {
                self.log(format_args!("emitter message not claimed: {e}"));
                Err("failed")
            }
        }
    }

    fn count(&self, kind: &'static str, outcome: Outcome) {
        self.count_by(kind, outcome, 1);
    }

    fn count_by(&self, kind: &'static str, outcome: Outcome, n: u64) {
        count(&self.info.metrics, kind, outcome, n);
    }

    /// A message that does not follow the protocol: counted, and logged unless one was logged in the last second.
    fn refused(&mut self, kind: &'static str, channel: &str, why: &str) {
        self.count(kind, "malformed");
        let channel: String = channel.chars().take(200).collect();
        self.log(format_args!(
            "malformed emitter message on {channel:?} skipped: {why}"
        ));
    }

    fn log(&mut self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            return;
        }
        self.last_log = Some(now);
        tracing::warn!("{what}");
    }
}

/// How long a node other than the first waits before it claims a message to handle once: longer than the first
/// node takes to read and claim it, shorter than a claim lives ([`once::CLAIM_TTL`]).
const TAKE_OVER: Duration = Duration::from_secs(1);

/// Whether this node handles a message for the cluster ([`Applier::once`]).
enum Turn {
    /// It claimed it.
    Now,
    /// Another node claimed it.
    Lost,
    /// Claim this key after [`TAKE_OVER`] ([`take_over`]): the first node will have claimed it if it lives.
    Later(String),
}

/// Claims a message's key: whether this node was the first to.
async fn claim(client: &fred::clients::Client, key: String) -> Result<bool, fred::error::Error> {
    use fred::{interfaces::KeysInterface, types::SetOptions};
    let ttl = i64::try_from(once::CLAIM_TTL.as_millis()).unwrap_or(i64::MAX);
    let set: Option<String> = client
        .set(
            key,
            "1",
            Some(fred::types::Expiration::PX(ttl)),
            Some(SetOptions::NX),
            false,
        )
        .await?;
    Ok(set.is_some())
}

/// Claims `key` after [`TAKE_OVER`]; `None` if Redis did not answer (logged).
async fn take_over(client: &fred::clients::Client, key: String) -> Option<bool> {
    tokio::time::sleep(TAKE_OVER).await;
    match claim(client, key).await {
        Ok(won) => {
            if won {
                tracing::info!("emitter message taken over: the first node did not handle it");
            }
            Some(won)
        }
        Err(e) => {
            tracing::warn!(error = %e, "emitter message not claimed");
            None
        }
    }
}

/// Pushes a broadcast claimed for the cluster as `POST /send` pushes ([`Deliver`]). A binary argument cannot be
/// stored (the store keeps JSON): such a message goes to its user rooms live like to any room, once, without ack
/// or `batch` (`unstored`). `Err`: the outcome of a failure, logged.
async fn push_once(
    deliver: Deliver,
    reliable: Option<crate::realtime::namespaces::Reliable>,
    b: Broadcast,
) -> Result<Outcome, Outcome> {
    let args = Relayed(b.args);
    let binary = args.to_json().is_none();
    let unstored = binary
        && reliable
            .as_ref()
            .is_some_and(|r| b.rooms.iter().any(|room| r.is_user_room(room)));
    let out = Outgoing {
        ns: &b.namespace,
        rooms: &b.rooms,
        except: &b.except,
        event: &b.event,
        args: &args,
        resync: false,
    };
    // Node's servers (NODE_ADAPTER_COMPAT) read the message from Redis as we did: not published again.
    // Node's servers (NODE_ADAPTER_COMPAT) read the message from Redis as we did: not published again.
    match compat::unpublished(deliver.push(reliable.as_ref().filter(|_| !binary), out)).await {
        Ok(_) if unstored => Ok("unstored"),
        Ok(_) => Ok("delivered"),
        Err(e @ DeliverError::Room { .. }) => {
            tracing::warn!(error = %e, "emitter broadcast to an invalid user room");
            Err("malformed")
        }
        Err(e) => {
            tracing::warn!(error = %e, "emitter broadcast not delivered");
            Err("failed")
        }
    }
}

fn count(metrics: &Metrics, kind: &'static str, outcome: Outcome, n: u64) {
    metrics
        .emitter_messages
        .get_or_create(&EmitterMessage { kind, outcome })
        .inc_by(n);
}
