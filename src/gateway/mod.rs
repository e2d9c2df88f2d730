//! The event-bus gateway on Redis Streams (docs/gateway.md): what happens on clients
//! (connect, messages by type, close) is added to streams the backend reads with consumer groups; the backend's
//! replies, `send` and `broadcast` entries come back to the clients, on every node.
//!
//! * [`wire`]: frames and stream entries (untrusted, checked).
//! * [`hub`]: this node's clients and the replies they wait for.
//! * [`route`], [`router`]: `send` entries routed to the nodes holding their user (the bookkeeping; the tasks).
//! * [`streams`]: the Redis commands.
//! * [`ws`]: the plain WebSocket endpoint; [`writer`]: its clients' frames, written by their sender. Socket.IO
//!   clients come through [`crate::realtime::bus`].

pub mod hub;
pub mod route;
pub mod router;
pub mod streams;
pub mod wire;
pub mod writer;
pub mod ws;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::{clients::Client as Redis, interfaces::ClientLike};
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::{
    StartError,
    config::file::GatewayConfig,
    realtime::{
        Namespaces, NodeInfo,
        admission::Admission,
        auth::jwt::{Jwt, JwtKeys},
        bus::{Bus, Client, Delivery, Frame, Outgoing},
    },
    redis::{self, Endpoint},
    telemetry::metrics::Metrics,
};
use hub::{Hub, Waiting};
use wire::{BroadcastEntry, Context, Envelope, Headers, Params, Reply, SendEntry};

/// How often the reply stream and the `send`/`broadcast` streams are trimmed, and waiting replies expired.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// How long a node's reply stream outlives the node.
const REPLIES_TTL: Duration = Duration::from_secs(3600);
/// After a failed read, the pause before the next (Redis away).
const READ_RETRY: Duration = Duration::from_millis(500);

/// The stream keys, with `stream_prefix`.
#[derive(Debug, Clone)]
struct Keys {
    onconnect: Option<String>,
    onmessage: Option<String>,
    /// (type, stream key, topic) of `onmessage.types`.
    types: Vec<(String, String, String)>,
    onclose: Option<String>,
    send: Option<String>,
    broadcast: Option<String>,
    /// This node's reply stream.
    replies: String,
}

pub struct Gateway {
    config: GatewayConfig,
    node: Arc<str>,
    keys: Keys,
    /// `[gateway]`'s JWT settings: they verify plain WebSocket clients of `claim` and `none` namespaces only
    /// (other namespaces verify with their own auth).
    jwt: Jwt,
    namespaces: Arc<Namespaces>,
    /// The node's socket cap, handshake rate and origins apply to plain WebSocket clients too.
    admission: Arc<Admission>,
    /// `SOCKET_EVENT_RATE`, per plain WebSocket client as per Socket.IO socket; `None`: no limit.
    event_rate: Option<crate::realtime::node::EventQuota>,
    hub: Mutex<Hub>,
    /// Where this node's users are written for the router, and the routing's keys.
    routing: router::Routing,
    publisher: Redis,
    metrics: Arc<Metrics>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    readers: Vec<Redis>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("node", &self.node)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Connects to Redis (one connection to add, one per blocking reader), creates this node's consumer groups
    /// and starts reading.
    pub async fn start(
        config: GatewayConfig,
        endpoint: &Endpoint,
        info: &NodeInfo,
        timeout: Duration,
    ) -> Result<Arc<Self>, StartError> {
        let node = info.id.clone();
        let jwt = Jwt::with_keys(JwtKeys {
            secret: config.jwt_secret.as_deref(),
            public_key: config.jwt_public_key.as_deref(),
            user_claim: config.user_claim(),
            session_claim: "sid",
            audience: config.jwt_audience.as_deref(),
            issuer: config.jwt_issuer.as_deref(),
            // Only when set: a cookie is sent by the browser whoever opened the connection.
            cookie: config.jwt_cookie.as_deref(),
        })
        .map_err(|e| StartError::ConfigFile(format!("[gateway]: {e}")))?;
        let prefix = &config.stream_prefix;
        let key = |topic: &String| format!("{prefix}{topic}");
        let keys = Keys {
            onconnect: config.onconnect.as_ref().map(|p| key(&p.publish)),
            onmessage: config.onmessage.as_ref().map(|p| key(&p.publish)),
            types: config
                .onmessage
                .iter()
                .flat_map(|m| &m.types)
                .map(|t| (t.kind.clone(), key(&t.publish), t.publish.clone()))
                .collect(),
            onclose: config.onclose.as_ref().map(|p| key(&p.publish)),
            send: config.send.as_ref().map(|s| key(&s.subscribe)),
            broadcast: config.broadcast.as_ref().map(|s| key(&s.subscribe)),
            replies: format!("{prefix}gateway:replies:{node}"),
        };
        let reader_timeout =
            Duration::from_millis(streams::BLOCK_MS) + timeout + Duration::from_secs(5);
        let publisher = redis::connect_client(endpoint, timeout).await?;
        // Blocking reads hold their connection: one reader for the replies; with `send`, one for the `send` stream
        // (read while this node routes) and one for this node's inbox; with `broadcast`, one for it (one stream per
        // read, as a Redis Cluster may keep them on different shards).
        let wanted =
            1 + 2 * usize::from(keys.send.is_some()) + usize::from(keys.broadcast.is_some());
        let mut readers = Vec::new();
        for _ in 0..wanted {
            match redis::connect_client(endpoint, reader_timeout).await {
                Ok(c) => readers.push(c),
                Err(e) => {
                    for c in readers.iter().chain([&publisher]) {
                        let _ = c.quit().await;
                    }
                    return Err(e.into());
                }
            }
        }
        let (routing, directory) = router::Routing::new(&config.stream_prefix);
        let gateway = Arc::new(Self {
            config,
            node,
            keys,
            routing,
            jwt,
            namespaces: info.namespaces.clone(),
            admission: info.admission.clone(),
            event_rate: info.event_rate.clone(),
            hub: Mutex::default(),
            publisher,
            metrics: info.metrics.clone(),
            tasks: Mutex::default(),
            readers: readers.clone(),
        });
        // Everything that can fail comes before any task is started.
        let inbox_from = match gateway.keys.send.clone() {
            Some(send) => {
                let inbox = gateway.routing.inbox(&gateway.node);
                // Read from the inbox's end now, before any client can be routed to it.
                let joined = match gateway.join_routing(&send).await {
                    Ok(()) => streams::last_id(&gateway.publisher, &inbox).await,
                    Err(e) => Err(e),
                };
                match joined {
                    Ok(after) => Some((send, after)),
                    Err(e) => {
                        gateway.stop().await;
                        return Err(redis::connect_err(endpoint, e).into());
                    }
                }
            }
            None => None,
        };
        if let Some(broadcast) = &gateway.keys.broadcast
            && let Err(e) =
                streams::ensure_group(&gateway.publisher, broadcast, &gateway.group()).await
        {
            gateway.stop().await;
            return Err(redis::connect_err(endpoint, e).into());
        }
        let mut readers = readers.into_iter();
        let mut tasks = Vec::new();
        if let Some(reader) = readers.next() {
            tasks.push(tokio::spawn(read_replies(gateway.clone(), reader)));
        }
        tasks.push(tokio::spawn(housekeeping(gateway.clone())));
        if let (Some((send, after)), Some(router), Some(inbox)) =
            (inbox_from, readers.next(), readers.next())
        {
            tasks.push(tokio::spawn(router::write_directory(
                gateway.clone(),
                directory,
            )));
            tasks.push(tokio::spawn(router::route(gateway.clone(), router, send)));
            tasks.push(tokio::spawn(router::read_inbox(
                gateway.clone(),
                inbox,
                after,
            )));
        }
        if let (Some(broadcast), Some(reader)) = (gateway.keys.broadcast.clone(), readers.next()) {
            tasks.push(tokio::spawn(read_broadcasts(
                gateway.clone(),
                reader,
                broadcast,
            )));
        }
        gateway.tasks.lock().unwrap().extend(tasks);
        tracing::info!(path = gateway.config.path, keys = ?gateway.keys, "gateway started");
        Ok(gateway)
    }

    /// Stops reading and closes the Redis connections.
    pub async fn stop(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        // The readers first: a blocking read still waiting in Redis would take entries after the lease is given
        // up (Redis answers QUIT once that read ends), and the next router must find them pending.
        for c in &self.readers {
            let _ = c.quit().await;
        }
        if !tasks.is_empty() && self.keys.send.is_some() {
            self.leave_routing().await;
        }
        let _ = self.publisher.quit().await;
    }

    pub fn path(&self) -> &str {
        &self.config.path
    }

    /// This node's consumer group on the `broadcast` stream (and on the `send` stream before routing).
    fn group(&self) -> String {
        format!("gateway:{}", self.node)
    }

    /// Adds one envelope to `stream`, and waits for its reply when `waiting`; whether it was added.
    async fn publish(
        &self,
        stream: &str,
        client: &Client,
        kind: &str,
        payload: Value,
        waiting: Option<Waiting>,
    ) -> bool {
        let envelope = Envelope {
            id: uuid::Uuid::new_v4().to_string(),
            topic: stream
                .strip_prefix(&self.config.stream_prefix)
                .unwrap_or(stream)
                .to_owned(),
            node: self.node.to_string(),
            socket: client.socket.clone(),
            username: client.username.clone(),
            namespace: client.namespace.clone(),
            kind: kind.to_owned(),
            payload,
            reply_to: self.keys.replies.clone(),
            context: Context {
                headers: Headers {
                    jwt: (*client.claims).clone(),
                },
                params: Params((*client.params).clone()),
                verified: client.verified,
            },
        };
        if let Some(what) = waiting {
            self.hub.lock().unwrap().expect(
                envelope.id.clone(),
                &client.namespace,
                &client.socket,
                what,
                Instant::now(),
            );
        }
        let data = serde_json::to_string(&envelope).expect("plain types");
        match streams::add(&self.publisher, stream, self.config.stream_maxlen(), data).await {
            Ok(trimmed) => {
                self.metrics.gateway_published.inc();
                self.metrics.gateway_trimmed.inc_by(trimmed);
                true
            }
            Err(e) => {
                tracing::warn!(stream, error = %e, "envelope not added to its stream");
                if kind != "onclose" {
                    let frame = Frame::new(
                        "error",
                        serde_json::json!({"error": "the event bus is unavailable"}),
                    );
                    self.deliver(client, Outgoing::Frame(frame));
                }
                false
            }
        }
    }

    /// Hands `out` to a client without waiting: a client whose queue is full loses it (counted).
    fn deliver(&self, client: &Client, out: Outgoing) {
        match client.sink.deliver(out) {
            Delivery::Taken => {
                self.metrics.gateway_delivered.inc();
            }
            Delivery::Full => {
                self.metrics.gateway_dropped.inc();
                tracing::debug!(
                    socket = client.socket,
                    "gateway client not reading: frame dropped"
                );
            }
            Delivery::Closed => {}
        }
    }

    /// A reply from the backend, to the client that waits for it.
    fn replied(&self, reply: Reply) {
        let Some((client, what)) = self.hub.lock().unwrap().take(reply.id()) else {
            return;
        };
        let out = match (reply, what) {
            (Reply::Reply { payload, .. }, Waiting::Connect) => {
                Outgoing::Frame(Frame::new("onconnect", payload))
            }
            (Reply::Fail { error, .. }, Waiting::Connect) => Outgoing::Close(error),
            (Reply::Reply { payload, .. }, Waiting::Message { topic }) => {
                Outgoing::Frame(Frame::new(topic, payload))
            }
            (Reply::Fail { error, .. }, Waiting::Message { .. }) => {
                Outgoing::Frame(Frame::new("error", error))
            }
        };
        self.deliver(&client, out);
    }

    fn send(&self, send: SendEntry) {
        let clients = self
            .hub
            .lock()
            .unwrap()
            .of_user(&send.namespace, &send.username);
        for client in clients {
            self.deliver(&client, Outgoing::Frame(send.frame.clone()));
        }
    }

    fn broadcast(&self, broadcast: BroadcastEntry) {
        let clients = self.hub.lock().unwrap().all(broadcast.namespace.as_deref());
        for client in clients {
            self.deliver(&client, Outgoing::Frame(broadcast.frame.clone()));
        }
    }

    fn malformed(&self, stream: &str, id: &str, why: &str) {
        self.metrics.gateway_malformed_entries.inc();
        tracing::warn!(stream, id, why, "malformed gateway entry skipped");
    }
}

/// A failure's text as a WebSocket close reason (at most 123 bytes).
pub fn close_reason(error: &Value) -> String {
    let text = match error {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl Bus for Gateway {
    fn open(&self, client: Client) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let client = Arc::new(client);
            let listed = {
                let mut hub = self.hub.lock().unwrap();
                let first = !hub.has_user(&client.namespace, &client.username);
                hub.add(client.clone());
                // Queued under the lock: the set of held users is written in the order clients come and go.
                (first && self.keys.send.is_some()).then(|| {
                    let (done, listed) = tokio::sync::oneshot::channel();
                    let tag = route::tag(&client.namespace, &client.username);
                    self.routing.queue(router::Op::Add(tag, done));
                    listed
                })
            };
            // The backend hears of the client once entries for its user are routed here.
            if let Some(listed) = listed {
                let _ = listed.await;
            }
            if let Some(stream) = &self.keys.onconnect {
                self.publish(
                    stream,
                    &client,
                    "onconnect",
                    Value::Null,
                    Some(Waiting::Connect),
                )
                .await;
            }
        })
    }

    fn message<'a>(
        &'a self,
        namespace: &'a str,
        socket: &'a str,
        frame: Frame,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(client) = self.hub.lock().unwrap().get(namespace, socket) else {
                return;
            };
            if let Some(stream) = &self.keys.onmessage {
                let topic = self
                    .config
                    .onmessage
                    .as_ref()
                    .map(|m| m.publish.clone())
                    .unwrap_or_default();
                let waiting = Some(Waiting::Message { topic });
                self.publish(stream, &client, &frame.kind, frame.payload.clone(), waiting)
                    .await;
            }
            let typed = self
                .keys
                .types
                .iter()
                .filter(|(kind, _, _)| *kind == frame.kind);
            for (_, stream, topic) in typed {
                let waiting = Some(Waiting::Message {
                    topic: topic.clone(),
                });
                self.publish(stream, &client, &frame.kind, frame.payload.clone(), waiting)
                    .await;
            }
        })
    }

    fn server_side_emit<'a>(
        &'a self,
        namespace: &'a str,
        event: &'a str,
        args: Vec<Value>,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(stream) = &self.keys.onmessage else {
                return false;
            };
            // From no socket and no user: the backend tells it by its empty `socket`. Its sink is never read.
            let (sink, _) = tokio::sync::mpsc::channel(1);
            let client = Client {
                socket: String::new(),
                namespace: namespace.to_owned(),
                username: String::new(),
                claims: Arc::default(),
                verified: false,
                params: Arc::new(crate::realtime::bus::params(None, namespace)),
                sink: Box::new(sink),
            };
            self.publish(stream, &client, event, Value::Array(args), None)
                .await
        })
    }

    fn close<'a>(
        &'a self,
        namespace: &'a str,
        socket: &'a str,
        reason: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let client = {
                let mut hub = self.hub.lock().unwrap();
                let Some(client) = hub.remove(namespace, socket) else {
                    return;
                };
                if self.keys.send.is_some() && !hub.has_user(namespace, &client.username) {
                    let tag = route::tag(namespace, &client.username);
                    self.routing.queue(router::Op::Remove(tag));
                }
                client
            };
            if let Some(stream) = &self.keys.onclose {
                let payload = serde_json::json!({ "reason": reason });
                self.publish(stream, &client, "onclose", payload, None)
                    .await;
            }
        })
    }
}

/// This node's reply stream, from its end when the gateway started.
async fn read_replies(gateway: Arc<Gateway>, reader: Redis) {
    let mut after = "$".to_owned();
    loop {
        match streams::read(&reader, &gateway.keys.replies, &after).await {
            Ok(entries) => {
                for entry in entries {
                    after = entry.id.clone();
                    match Reply::parse(entry.data()) {
                        Ok(reply) => gateway.replied(reply),
                        Err(why) => gateway.malformed(&entry.stream, &entry.id, &why),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "gateway replies not read");
                // Redis may come back empty (no persistence), its ids starting over: read what comes next.
                after = "$".to_owned();
                tokio::time::sleep(READ_RETRY).await;
            }
        }
    }
}

/// The `broadcast` stream through this node's consumer group: first what this node read before but did not
/// acknowledge (it stopped half-way), then new entries. Each entry is acknowledged once delivered to this node's
/// clients, valid or not.
async fn read_broadcasts(gateway: Arc<Gateway>, reader: Redis, stream: String) {
    let group = gateway.group();
    let consumer = gateway.node.to_string();
    let mut backlog = true;
    loop {
        let (id, block) = match backlog {
            true => ("0", None),
            false => (">", Some(streams::BLOCK_MS)),
        };
        let entries =
            match streams::read_group(&reader, &group, &consumer, &stream, id, block).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway broadcast stream not read");
                    if e.details().contains("NOGROUP") {
                        // The stream (and its group) was deleted: make them again, from the end.
                        let _ = streams::ensure_group(&gateway.publisher, &stream, &group).await;
                    }
                    tokio::time::sleep(READ_RETRY).await;
                    continue;
                }
            };
        if backlog && entries.is_empty() {
            backlog = false;
            continue;
        }
        let mut acks = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Err(why) = BroadcastEntry::parse(entry.data()).map(|b| gateway.broadcast(b)) {
                gateway.malformed(&entry.stream, &entry.id, &why);
            }
            acks.push(entry.id);
        }
        if !acks.is_empty()
            && let Err(e) = streams::ack(&gateway.publisher, &stream, &group, acks).await
        {
            tracing::warn!(stream, error = %e, "gateway entries not acknowledged: they may come again");
        }
    }
}

/// Trims the streams this node reads (the backend adds to them without a cap) and forgets replies that never came.
async fn housekeeping(gateway: Arc<Gateway>) {
    let mut every = tokio::time::interval(HOUSEKEEPING);
    loop {
        every.tick().await;
        gateway.hub.lock().unwrap().expire(Instant::now());
        // A node that is gone for good (node ids are fresh per start unless NODE_ID is set) leaves its reply
        // stream behind: it expires unless its node keeps it.
        let ttl = i64::try_from(REPLIES_TTL.as_secs()).unwrap_or(i64::MAX);
        let expiry = fred::interfaces::KeysInterface::expire::<(), _>(
            &gateway.publisher,
            &gateway.keys.replies,
            ttl,
            None,
        );
        if let Err(e) = expiry.await {
            tracing::debug!(error = %e, "gateway reply stream expiry not set");
        }
        if gateway.keys.send.is_some()
            && let Err(e) = gateway.keep_routing().await
        {
            tracing::debug!(error = %e, "gateway routing not renewed");
        }
        let maxlen = gateway.config.stream_maxlen();
        for key in [
            Some(&gateway.keys.replies),
            gateway.keys.send.as_ref(),
            gateway.keys.broadcast.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            match streams::trim(&gateway.publisher, key, maxlen).await {
                Ok(trimmed) => {
                    gateway.metrics.gateway_trimmed.inc_by(trimmed);
                }
                Err(e) => tracing::debug!(key, error = %e, "gateway stream not trimmed"),
            }
        }
    }
}
