//! The cross-node query over Redis pub/sub (see the crate docs for the protocol).
//!
//! One request is published to every node; each answers about its local sockets of the namespace (a room's
//! members, the rooms and their sizes, the number of views). The asker waits
//! for the nodes it knows to be alive ([`Membership`], from heartbeats), so it returns as soon as the last of them
//! has answered; it stops waiting for a node declared down meanwhile, and at the deadline answers with whatever
//! arrived, marked partial. That waiting logic is [`query`], over a small transport trait; this module gives it
//! Redis, answers other nodes' requests and sends the heartbeats.
//!
//! It also reports the membership changes that concern the holders of user rooms ([`Cluster::changes`]): a node
//! declared down, this node back from being cut off. What to do about them is not the cluster's business (the
//! delivery store and the sockets are elsewhere): the application listens.

mod local;
pub mod membership;
pub mod protocol;
pub mod query;
pub mod seal;

pub use local::LocalRooms;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::{
    clients::Client,
    prelude::{ClientLike, EventInterface, PubsubInterface},
    types::Message,
};
use tokio::{
    sync::{Semaphore, broadcast, mpsc},
    time::Instant,
};
use uuid::Uuid;

pub use query::Answer;

use crate::{
    cluster::membership::{Change, Membership, Seen},
    cluster::protocol::{Heartbeat, Live, Query, Request, Response},
    cluster::seal::{Freshness, Once, RejectionLog, Seal, SealError},
    redis::{self, RedisError, Subscriber},
    telemetry::metrics::{Metrics, Outcome, RedisWatch},
};

/// Most replies this node computes at once; requests beyond it are dropped (the asker marks its answer partial).
const MAX_CONCURRENT_REPLIES: usize = 256;
/// Most queries this node asks at once; more wait for a place (within their timeout). Kept well under what a node
/// answers at once, so that a few nodes asking at full tilt are still all answered.
const MAX_CONCURRENT_QUERIES: usize = 64;
/// Membership changes buffered for a slow listener; they are rare (a node down, this one back).
const CHANGES_BUFFER: usize = 64;
/// Replies buffered per pending request; forged floods beyond it are dropped.
const REPLY_BUFFER: usize = 1024;
/// How long the readiness probe waits for Redis.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Requests in flight, by id.
#[derive(Default)]
struct Pending(Mutex<HashMap<Uuid, mpsc::Sender<Response>>>);

impl Pending {
    fn deliver(&self, id: Uuid, reply: Response) {
        let tx = self.0.lock().unwrap().get(&id).cloned();
        match tx {
            Some(tx) => {
                if tx.try_send(reply).is_err() {
                    tracing::warn!(%id, "reply buffer full, reply dropped");
                }
            }
            None => tracing::debug!(%id, "reply to an unknown or finished request ignored"),
        }
    }
}

/// Removes a pending request however its query ends (also when the HTTP client goes away).
struct Registration<'a> {
    pending: &'a Pending,
    id: Uuid,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.pending.0.lock().unwrap().remove(&self.id);
    }
}

/// This node's membership in the cluster protocol.
pub struct Cluster {
    node: Arc<str>,
    beats: Beats,
    transport: RedisTransport,
    subscriber: Subscriber,
    pending: Arc<Pending>,
    membership: Arc<Membership>,
    /// Where [`Change`]s go, for whoever listens ([`Cluster::changes`]).
    changes: broadcast::Sender<Change>,
    local: Arc<dyn LocalRooms>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    listener: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Notes Redis' reconnects and topology changes for [`Disturbance`].
    watcher: tokio::task::JoinHandle<()>,
    /// Places for the queries this node asks at once ([`MAX_CONCURRENT_QUERIES`]).
    queries: Semaphore,
    /// Count the publisher's and the subscriber's Redis events for as long as the cluster lives.
    _watches: [RedisWatch; 2],
}

/// How this node takes part in the cluster protocol.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `REDIS_PREFIX`: every channel name starts with it.
    pub prefix: String,
    pub node: Arc<str>,
    /// How long a query waits for the other nodes.
    pub timeout: Duration,
    /// How often this node says it is alive.
    pub heartbeat: Duration,
    /// Signs and checks every message when `CLUSTER_SECRET` is set.
    pub seal: Seal,
}

impl Cluster {
    /// Connects to Redis, subscribes to the request, nodes and reply channels, announces this node, and starts
    /// answering other nodes and sending a heartbeat every `heartbeat`.
    pub async fn start(
        redis: &redis::Endpoint,
        settings: Settings,
        local: Arc<dyn LocalRooms>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, RedisError> {
        let Settings {
            prefix,
            node,
            timeout,
            heartbeat,
            seal,
        } = settings;
        let publisher = redis::connect_client(redis, timeout).await?;
        let subscriber = match Subscriber::new(redis, Duration::from_secs(5)) {
            Ok(subscriber) => subscriber,
            Err(e) => {
                let _ = publisher.quit().await;
                return Err(e);
            }
        };
        let watches = [
            metrics.watch_redis(&publisher, "publisher"),
            metrics.watch_redis(&subscriber.client, "cluster_subscriber"),
        ];
        let request_channel = format!("{prefix}:users#req");
        let reply_prefix = format!("{prefix}:users#reply#");
        let reply_channel = format!("{reply_prefix}{node}");
        let nodes_channel = format!("{prefix}:nodes");
        let live_channel = format!("{prefix}:delivery#live");
        let live_prefix = format!("{live_channel}#");
        let own_live_channel = format!("{live_prefix}{node}");
        let pending = Arc::new(Pending::default());
        let membership = Arc::new(Membership::new(node.clone(), heartbeat));
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let beats = Beats {
            node: node.clone(),
            channel: nodes_channel.clone(),
            seal: seal.clone(),
        };
        let answering = Arc::new(AtomicBool::new(false));
        // Listen before subscribing, so nothing published after the SUBSCRIBE is missed.
        let listener = tokio::spawn(listen(
            subscriber.client.message_rx(),
            Handler {
                node: node.clone(),
                request_channel: request_channel.clone(),
                reply_channel: reply_channel.clone(),
                nodes_channel: nodes_channel.clone(),
                live_channel: live_channel.clone(),
                own_live_channel: own_live_channel.clone(),
                reply_prefix: reply_prefix.clone(),
                publisher: publisher.clone(),
                pending: pending.clone(),
                membership: membership.clone(),
                changes: changes.clone(),
                beats: beats.clone(),
                answering: answering.clone(),
                local: local.clone(),
                permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLIES)),
                metrics: metrics.clone(),
                seal: seal.clone(),
                fresh: Freshness::default(),
                requests: Once::default(),
                refusals: RejectionLog::default(),
            },
        ));
        let joined = async {
            let failed = |source| redis::connect_err(redis, source);
            redis::init(&subscriber.client, redis).await?;
            // Sharded channels (Redis 7): in a Redis Cluster each lives on the shard of its hash slot, so a
            // message costs that shard alone, and the subscriber counts SPUBLISH and SHARDNUMSUB answer are the
            // whole cluster's. One SSUBSCRIBE per channel: they hash to different slots.
            for channel in [
                &request_channel,
                &reply_channel,
                &nodes_channel,
                &live_channel,
                &own_live_channel,
            ] {
                subscriber
                    .client
                    .ssubscribe(channel.as_str())
                    .await
                    .map_err(failed)?;
            }
            // Announce ourselves before answering: a node must not receive our reply before it knows us.
            publisher
                .spublish::<i64, _, _>(&nodes_channel, beats.alive())
                .await
                .map_err(failed)?;
            Ok::<_, RedisError>(())
        };
        if let Err(e) = joined.await {
            // Leave nothing behind for the next attempt: the listener, both connections (fred keeps a client
            // connected, and reconnecting, until it quits) and, as `watches` drops, their watchers.
            listener.abort();
            subscriber.close().await;
            let _ = publisher.quit().await;
            return Err(e);
        }
        answering.store(true, Ordering::Relaxed);
        // Started once connected: the first connections are no disturbance.
        let disturbance = Arc::new(Disturbance::default());
        let watcher = tokio::spawn(watch_disturbances(
            publisher.clone(),
            subscriber.client.clone(),
            disturbance.clone(),
        ));
        let settle = membership.down_after();
        let heartbeat = tokio::spawn(beat(
            publisher.clone(),
            beats.clone(),
            membership.clone(),
            changes.clone(),
            heartbeat,
        ));
        Ok(Arc::new(Self {
            node,
            beats,
            transport: RedisTransport {
                publisher,
                request_channel,
                live_channel,
                live_prefix,
                reply_prefix,
                seal,
                disturbance,
                settle,
            },
            subscriber,
            pending,
            membership,
            changes,
            local,
            timeout,
            metrics,
            listener,
            heartbeat,
            watcher,
            queries: Semaphore::new(MAX_CONCURRENT_QUERIES),
            _watches: watches,
        }))
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Live nodes, this one included.
    pub fn size(&self) -> usize {
        self.membership.size()
    }

    /// Whether this node has the smallest id of the live nodes ([`membership::Membership::is_first`]).
    pub fn is_first(&self) -> bool {
        self.membership.is_first()
    }

    /// The membership changes from now on: a node declared down, this node back from being cut off (see
    /// [`membership`]). A listener too slow to keep up misses some (and is told so by `Lagged`).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// How long a node may stay silent before it is declared down.
    pub fn down_after(&self) -> Duration {
        self.membership.down_after()
    }

    /// Asks every node about its sockets of namespace `ns`; returns the replies of those that answer within the
    /// request timeout.
    pub async fn ask(&self, ns: &str, query: Query) -> Answer {
        let started = Instant::now();
        let answer = self.query(ns, query).await;
        let outcome = match (&answer.error, answer.is_partial()) {
            (Some(_), _) => "failed",
            (None, true) => "partial",
            (None, false) => "complete",
        };
        let m = &self.metrics;
        m.cluster_requests.get_or_create(&Outcome { outcome }).inc();
        m.cluster_request_seconds
            .observe(started.elapsed().as_secs_f64());
        m.cluster_nodes_answering
            .set(answer.answered.try_into().unwrap_or(i64::MAX));
        answer
    }

    /// Whether this node takes part in the cluster now (its subscription is up and Redis answers), and how many
    /// nodes are alive, this one included.
    pub async fn probe(&self) -> Result<usize, String> {
        if !self.subscriber.client.is_connected() {
            return Err("the cluster subscription to Redis is down".into());
        }
        let channel = &self.transport.request_channel;
        let counts =
            redis::shard_subscribers(&self.transport.publisher, std::slice::from_ref(channel));
        let counts = tokio::time::timeout(PROBE_TIMEOUT, counts)
            .await
            .map_err(|_| "Redis did not answer in time".to_string())??;
        // Zero means our own subscription is not restored yet.
        match counts.get(channel) {
            Some(n) if *n > 0 => Ok(self.membership.size()),
            Some(_) => Err("the cluster channels are not subscribed yet".into()),
            None => Err("unexpected PUBSUB SHARDNUMSUB reply".into()),
        }
    }

    async fn query(&self, ns: &str, query: Query) -> Answer {
        let deadline = Instant::now() + self.timeout;
        let request = Request::new(&self.node, ns, query);
        let (tx, mut rx) = mpsc::channel(REPLY_BUFFER);
        self.pending.0.lock().unwrap().insert(request.id, tx);
        let _registration = Registration {
            pending: &self.pending,
            id: request.id,
        };
        let asker = query::Asker {
            transport: &self.transport,
            membership: &self.membership,
            rejected: &self.metrics.cluster_messages_rejected,
            in_flight: &self.queries,
        };
        let mine = || Answer::local(self.node.clone(), self.local.answer(ns, &request.query));
        asker.gather(&request, mine, &mut rx, deadline).await
    }

    /// Publishes a stored message of a user room to the other nodes of `nodes` (those holding the room as it was
    /// stored, [`crate::delivery::Pushed::nodes`]), each on its own live channel, for their sockets of the room
    /// ([`LocalRooms::live`]); this node emits to its own. Fire and forget: nobody answers, and a node that misses
    /// it has the message in the room's next `batch` (it is stored).
    ///
    /// A node nobody listens for on its own channel is of a version before those channels (during an upgrade), or
    /// gone: the message goes to it on the channel every node hears, marked for it alone ([`Live::to`]).
    pub async fn live(&self, mut live: Live, nodes: &[String]) -> Result<(), fred::error::Error> {
        let others: Vec<&String> = nodes.iter().filter(|n| **n != *self.node).collect();
        if others.is_empty() {
            return Ok(());
        }
        live.v = protocol::VERSION;
        live.id = Uuid::new_v4();
        live.from = self.node.to_string();
        let t = &self.transport;
        let encoded = protocol::encode(&live);
        let sends = others.iter().map(|node| {
            let channel = format!("{}{node}", t.live_prefix);
            let message = t.seal.seal(&channel, encoded.clone());
            t.publisher.spublish::<i64, _, _>(channel, message)
        });
        let heard = futures_util::future::try_join_all(sends).await?;
        live.to = others
            .into_iter()
            .zip(heard)
            .filter(|(_, n)| *n == 0)
            .map(|(node, _)| node.clone())
            .collect();
        if !live.to.is_empty() {
            self.metrics.delivery_live_shared.inc();
            let message = t.seal.seal(&t.live_channel, protocol::encode(&live));
            t.publisher
                .spublish::<i64, _, _>(&t.live_channel, message)
                .await?;
        }
        Ok(())
    }

    /// Says goodbye (so the others stop waiting for us at once), stops answering and leaves the channels.
    pub async fn stop(&self) {
        self.heartbeat.abort();
        self.watcher.abort();
        let publisher = &self.transport.publisher;
        let _ = publisher
            .spublish::<i64, _, _>(&self.beats.channel, self.beats.leaving())
            .await;
        self.listener.abort();
        let _ = self.subscriber.client.unsubscribe_all().await;
        self.subscriber.close().await;
        let _ = publisher.quit().await;
    }
}

/// The query's transport: requests on the request channel, `PUBSUB SHARDNUMSUB` on the reply channels.
struct RedisTransport {
    publisher: Client,
    request_channel: String,
    /// Where stored messages go to nodes of before the nodes' own live channels ([`Cluster::live`]).
    live_channel: String,
    /// A node's live channel is this followed by its id ([`Cluster::live`]).
    live_prefix: String,
    /// A node's reply channel is this followed by its id.
    reply_prefix: String,
    seal: Seal,
    disturbance: Arc<Disturbance>,
    /// How long after a disturbance Redis counts as unsettled.
    settle: Duration,
}

impl query::Transport for RedisTransport {
    fn settled(&self) -> bool {
        self.disturbance.settled(self.settle)
    }

    fn disturbances(&self) -> u64 {
        self.disturbance.count()
    }

    async fn publish(&self, request: &Request) -> Result<usize, String> {
        let subscribers: i64 = self
            .publisher
            .spublish(
                &self.request_channel,
                self.seal
                    .seal(&self.request_channel, protocol::encode(request)),
            )
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(usize::try_from(subscribers).unwrap_or(0))
    }

    async fn reply_subscribers(
        &self,
        nodes: &[Arc<str>],
    ) -> Result<HashMap<Arc<str>, u64>, String> {
        let channels: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}{n}", self.reply_prefix))
            .collect();
        let counts = redis::shard_subscribers(&self.publisher, &channels).await?;
        Ok(nodes
            .iter()
            .zip(channels)
            .filter_map(|(node, channel)| Some((node.clone(), *counts.get(&channel)?)))
            .collect())
    }
}

/// When this node last saw Redis disturbed: a connection re-established (Redis restarted, a failover, a network
/// cut) or, in a Redis Cluster, its slots reassigned. For a while after that, subscriptions may still be being
/// restored everywhere, so a channel without subscribers proves nothing; and what was published just before may
/// have been lost with the server that took it, so a query waiting then sends its request again.
#[derive(Default)]
struct Disturbance(std::sync::Mutex<Disturbed>);

#[derive(Default)]
struct Disturbed {
    last: Option<Instant>,
    count: u64,
}

impl Disturbance {
    fn now(&self) {
        let mut seen = self.0.lock().unwrap();
        seen.last = Some(Instant::now());
        seen.count += 1;
    }

    fn settled(&self, after: Duration) -> bool {
        self.0
            .lock()
            .unwrap()
            .last
            .is_none_or(|at| at.elapsed() >= after)
    }

    fn count(&self) -> u64 {
        self.0.lock().unwrap().count
    }
}

async fn watch_disturbances(
    publisher: Client,
    subscriber: fred::clients::SubscriberClient,
    seen: Arc<Disturbance>,
) {
    use broadcast::error::RecvError::Closed;
    let (mut a, mut b) = (publisher.reconnect_rx(), subscriber.reconnect_rx());
    let (mut c, mut d) = (
        publisher.cluster_change_rx(),
        subscriber.cluster_change_rx(),
    );
    loop {
        let closed = tokio::select! {
            r = a.recv() => matches!(r, Err(Closed)),
            r = b.recv() => matches!(r, Err(Closed)),
            r = c.recv() => matches!(r, Err(Closed)),
            r = d.recv() => matches!(r, Err(Closed)),
        };
        if closed {
            return;
        }
        tracing::debug!(
            "Redis reconnected or its cluster changed: missing subscriptions prove nothing for a while"
        );
        seen.now();
    }
}

/// This node's heartbeats, sealed when they are sent (a signed one carries the time it was sent).
#[derive(Clone)]
struct Beats {
    node: Arc<str>,
    /// The nodes channel.
    channel: String,
    seal: Seal,
}

impl Beats {
    fn alive(&self) -> Vec<u8> {
        self.encode(false)
    }

    fn leaving(&self) -> Vec<u8> {
        self.encode(true)
    }

    fn encode(&self, leaving: bool) -> Vec<u8> {
        let hb = Heartbeat {
            v: protocol::VERSION,
            node: self.node.to_string(),
            leaving,
        };
        self.seal.seal(&self.channel, protocol::encode(&hb))
    }
}

/// Everything the listening task needs.
struct Handler {
    node: Arc<str>,
    request_channel: String,
    reply_channel: String,
    nodes_channel: String,
    /// Stored messages to every node, from nodes of before 2026-12-04, or for the nodes named in them.
    live_channel: String,
    /// Stored messages to this node alone.
    own_live_channel: String,
    reply_prefix: String,
    publisher: Client,
    pending: Arc<Pending>,
    membership: Arc<Membership>,
    changes: broadcast::Sender<Change>,
    /// Our heartbeat, sent again at once when a node joins, so it knows us without waiting.
    beats: Beats,
    /// Set once our heartbeat is out: before that, nobody may receive a reply from a node it does not know.
    answering: Arc<AtomicBool>,
    local: Arc<dyn LocalRooms>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Opens what arrives (checks signatures when `CLUSTER_SECRET` is set) and seals our replies.
    seal: Seal,
    /// The time of the last signed heartbeat accepted from each node.
    fresh: Freshness,
    /// The signed requests accepted lately: each is accepted once.
    requests: Once,
    refusals: RejectionLog,
}

async fn listen(mut messages: broadcast::Receiver<Message>, h: Handler) {
    loop {
        match messages.recv().await {
            Ok(msg) => h.handle(msg),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "cluster listener lagged, messages lost");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Handler {
    fn handle(&self, msg: Message) {
        let Some(bytes) = msg.value.as_bytes() else {
            tracing::warn!(channel = %msg.channel, "non-binary pub/sub message ignored");
            self.metrics.cluster_messages_rejected.inc();
            return;
        };
        let (bytes, sealed_at) = match self.seal.open(&msg.channel, bytes) {
            Ok(opened) => (opened.msg, opened.ts),
            Err(e) => return self.refuse(&msg.channel, &e),
        };
        if *msg.channel == *self.request_channel {
            match protocol::decode_request(bytes) {
                Ok(req) if *req.from == *self.node => {}
                Ok(req) => match sealed_at.map_or(Ok(()), |ts| self.requests.first(req.id, ts)) {
                    Err(e) => self.refuse(&msg.channel, &e),
                    Ok(()) if !self.answering.load(Ordering::Relaxed) => {
                        tracing::debug!(from = %req.from, "request before our announcement ignored");
                    }
                    Ok(()) => self.answer(req),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "bad cluster request ignored");
                    self.metrics.cluster_messages_rejected.inc();
                }
            }
        } else if *msg.channel == *self.reply_channel {
            match protocol::decode_response(bytes) {
                Ok(resp) => self.pending.deliver(resp.id, resp),
                Err(e) => {
                    tracing::warn!(error = %e, "bad cluster reply ignored");
                    self.metrics.cluster_messages_rejected.inc();
                }
            }
        } else if *msg.channel == *self.own_live_channel || *msg.channel == *self.live_channel {
            match protocol::decode_live(bytes) {
                Ok(live) if *live.from == *self.node => {}
                // On the channel every node hears, for other nodes: this one had its copy on its own.
                Ok(live) if !live.to.is_empty() && !live.to.iter().any(|n| **n == *self.node) => {}
                Ok(live) => match sealed_at.map_or(Ok(()), |ts| self.requests.first(live.id, ts)) {
                    Err(e) => self.refuse(&msg.channel, &e),
                    Ok(()) => self.local.live(live),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "bad live message ignored");
                    self.metrics.cluster_messages_rejected.inc();
                }
            }
        } else if *msg.channel == *self.nodes_channel {
            match protocol::decode_heartbeat(bytes) {
                Ok(hb) if sealed_at.is_some_and(|ts| !self.fresh.accept(&hb.node, ts)) => {
                    self.refuse(&msg.channel, &SealError::Replayed);
                }
                Ok(hb) if hb.leaving => self.membership.remove(&hb.node, "it is shutting down"),
                Ok(hb) => match self.membership.alive(&hb.node) {
                    Seen::Joined => {
                        let publisher = self.publisher.clone();
                        let (channel, alive) = (self.nodes_channel.clone(), self.beats.alive());
                        tokio::spawn(async move {
                            let _ = publisher.spublish::<i64, _, _>(channel, alive).await;
                        });
                    }
                    Seen::Back => {
                        let _ = self.changes.send(Change::Back);
                    }
                    Seen::Known => {}
                },
                Err(e) => {
                    tracing::warn!(error = %e, "bad heartbeat ignored");
                    self.metrics.cluster_messages_rejected.inc();
                }
            }
        }
    }

    /// Counts and logs (at most once a minute per kind) a message refused for its seal.
    fn refuse(&self, channel: &str, error: &SealError) {
        self.refusals.warn(channel, error);
        self.metrics.cluster_messages_rejected.inc();
    }

    fn answer(&self, req: Request) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(from = %req.from, "too many cluster requests at once, one dropped");
            return;
        };
        let response = Response {
            v: protocol::VERSION,
            id: req.id,
            node: self.node.to_string(),
            reply: self.local.answer(&req.ns, &req.query),
        };
        let channel = format!("{}{}", self.reply_prefix, req.from);
        let publisher = self.publisher.clone();
        let sent = self.metrics.cluster_replies_sent.clone();
        let seal = self.seal.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let message = seal.seal(&channel, protocol::encode(&response));
            match publisher.spublish::<i64, _, _>(channel, message).await {
                Ok(_) => {
                    sent.inc();
                }
                Err(e) => tracing::warn!(error = %e, "cluster reply could not be published"),
            }
        });
    }
}

/// Publishes our heartbeat every `every`, and declares down the nodes that stopped sending theirs.
async fn beat(
    publisher: Client,
    beats: Beats,
    membership: Arc<Membership>,
    changes: broadcast::Sender<Change>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = publisher
            .spublish::<i64, _, _>(&beats.channel, beats.alive())
            .await
        {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
        for node in membership.sweep() {
            let _ = changes.send(Change::Down(node));
        }
    }
}
