//! Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Counters are bumped where things happen (handshake, cluster query, Redis events); the socket and room
//! gauges are read from the node when scraped, so they can never drift from the truth.

use fred::prelude::EventInterface;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Which failure refused a handshake ([`crate::domain::validate::Invalid::kind`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// How a room query ended: `complete`, `partial` (a node did not answer in time) or `failed` (Redis).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// What an emitter message was (`broadcast`, `join`, `leave`, `disconnect`, `server_side_emit`, `unknown`) and
/// what became of it (`delivered`, `applied`, `published`, `other_node`, `unstored`, `malformed`,
/// `unknown_namespace`, `dropped`, `own`, ...: docs/emitter.md).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EmitterMessage {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// Which of the node's Redis connections: `publisher`, `cluster_subscriber` or `adapter_subscriber`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Connection {
    pub connection: &'static str,
}

pub struct Metrics {
    registry: Registry,
    sockets: Gauge,
    rooms: Gauge,
    members: Gauge,
    pub handshakes_refused: Family<Reason, Counter>,
    /// `GET /{room}/users` and `GET /api/rooms` answered `429` (`QUERY_RATE`).
    pub queries_refused: Counter,
    /// Auth webhook calls that gave no usable answer, by reason (`timeout`, `unreachable`, `status`, `body`).
    pub auth_webhook_failures: Family<Reason, Counter>,
    pub rpc: RpcMetrics,
    /// Sockets disconnected for sending events faster than `SOCKET_EVENT_RATE`.
    pub sockets_rate_limited: Counter,
    pub cluster_requests: Family<Outcome, Counter>,
    pub cluster_request_seconds: Histogram,
    /// Nodes that answered the last room query asked on this node, this one included.
    pub cluster_nodes_answering: Gauge,
    pub cluster_replies_sent: Counter,
    /// Malformed, wrong-version or unexpected cluster messages, ignored.
    pub cluster_messages_rejected: Counter,
    pub redis_errors: Family<Connection, Counter>,
    pub redis_reconnects: Family<Connection, Counter>,
    /// Connections closed before their first request: `timeout` (`HEADER_READ_TIMEOUT_MS`) or `evicted` (the
    /// oldest, to make room beyond `MAX_PENDING_CONNECTIONS`).
    pub pending_closed: Family<Reason, Counter>,
    /// Messages `POST /send` stored for reliable delivery (user rooms).
    pub delivery_stored: Counter,
    /// Pending messages of user rooms dropped by the per-room cap (the oldest) to make room for new ones.
    pub delivery_dropped: Counter,
    /// Entries of the Redis delivery store that did not parse, skipped.
    pub delivery_malformed_entries: Counter,
    /// Holders of user rooms removed because their node was declared down (by this node; every survivor tries).
    pub delivery_holders_forgotten: Counter,
    /// Holders of this node's sockets written again after this node was cut off from the cluster.
    pub delivery_holders_restored: Counter,
    /// Stored messages also sent on the live channel every node hears, for holder nodes nobody listened for on
    /// their own (nodes of an older version during an upgrade, or gone).
    pub delivery_live_shared: Counter,
    /// Envelopes the gateway added to Redis Streams (hooks).
    pub gateway_published: Counter,
    /// Frames the gateway handed to its clients (replies, send, broadcast).
    pub gateway_delivered: Counter,
    /// Entries of the gateway's streams that were not valid, logged, acknowledged and skipped.
    pub gateway_malformed_entries: Counter,
    /// Frames the gateway dropped because a client's queue was full (a client not reading).
    pub gateway_dropped: Counter,
    /// Entries `MAXLEN ~ stream_maxlen` removed from the gateway's streams, read or not: the oldest go first.
    pub gateway_trimmed: Counter,
    /// `send` entries the router forwarded to the nodes holding their user (one per node it went to).
    pub gateway_routed: Counter,
    /// Forwarded `send` entries a node skipped because it had them already (a router forwarded a batch again).
    pub gateway_routed_twice: Counter,
    /// 1 while this node routes the gateway's `send` entries (one node of the cluster at a time).
    pub gateway_router: Gauge,
    /// Messages of the socket.io Redis emitter protocol this node read, by kind and outcome.
    pub emitter_messages: Family<EmitterMessage, Counter>,
    /// This node's broadcasts for `@socket.io/redis-adapter` servers (`NODE_ADAPTER_COMPAT`), by outcome:
    /// `published`, `failed` (Redis), `dropped` (the queue to Redis full), `acked` (not published: an ack cannot
    /// come back), `unencodable`.
    pub node_adapter_broadcasts: Family<Outcome, Counter>,
    pub recovery: RecoveryMetrics,
    pub webhooks: WebhookMetrics,
    /// Members' presence events (`presence = true`): sent by the same dispatcher as the webhooks.
    pub presence: WebhookMetrics,
}

/// Lifecycle webhooks (`[[webhook]]`, docs/webhooks.md).
#[derive(Clone)]
pub struct WebhookMetrics {
    /// Events by what became of them: `delivered`, `given_up` (retried for the webhook's `retry_s`), `dropped`
    /// (trimmed from the outbox before any node sent them), `unrecorded` (a socket change Redis did not take).
    pub events: Family<Outcome, Counter>,
    /// From an event's time to its delivery's `2xx`.
    pub lag_seconds: Histogram,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            // 1 ms .. ~65 s: a batch waits `batch_ms`; a receiver that was down makes it minutes.
            lag_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl WebhookMetrics {
    /// Registers `{prefix}_events` and `{prefix}_delivery_seconds`, about `what`.
    fn register(&self, r: &mut Registry, prefix: &str, what: &str) {
        r.register(
            format!("{prefix}_events"),
            format!("{what} events, by outcome (delivered, given_up, dropped, unrecorded)"),
            self.events.clone(),
        );
        r.register(
            format!("{prefix}_delivery_seconds"),
            format!("Time from a {what} event to its delivery"),
            self.lag_seconds.clone(),
        );
    }
}

/// Client events as RPC (`rpc_url`, docs/rpc.md).
#[derive(Clone)]
pub struct RpcMetrics {
    /// Calls by outcome: `ok`, `busy` (over a bound, not sent), `refused` (binary arguments, not sent), `timeout`,
    /// `unreachable`, `status`, `bad_answer`, `bad_actions`.
    pub calls: Family<Outcome, Counter>,
    /// Time from sending a call to its answer read (calls that were sent).
    pub seconds: Histogram,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
        }
    }
}

impl RpcMetrics {
    /// Counts one call that ended with `outcome`.
    pub fn ended(&self, outcome: &'static str) {
        self.calls.get_or_create(&Outcome { outcome }).inc();
    }

    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("rpc");
        r.register(
            "calls",
            "Client events sent to (or kept from) the RPC backend, by outcome",
            self.calls.clone(),
        );
        r.register(
            "duration_seconds",
            "Time from sending a client event to the RPC backend to its answer",
            self.seconds.clone(),
        );
    }
}

/// Connection state recovery (`recovery_window_s`).
#[derive(Clone, Default)]
pub struct RecoveryMetrics {
    /// Clients that came back with a `pid`.
    pub attempted: Counter,
    /// Of them, those that got their socket back.
    pub succeeded: Counter,
    /// Of them, those that did not, by reason (`unknown_session`, `identity`, `offset`, `store`, `busy`, `replay`, `overloaded`).
    pub failed: Family<Reason, Counter>,
    /// Missed events given to recovered sockets.
    pub replayed: Counter,
    /// Broadcasts appended to a namespace's log.
    pub recorded: Counter,
    /// Broadcasts of a recovering namespace sent live without being recorded (the log could not be written).
    pub unrecorded: Counter,
    /// Log entries or sessions that did not parse, skipped.
    pub malformed: Counter,
    /// Sessions kept (live and disconnected sockets), as the store counts them.
    pub sessions: Gauge,
    /// Entries the logs keep.
    pub log_entries: Gauge,
}

impl RecoveryMetrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("recovery");
        r.register(
            "attempts",
            "Clients that reconnected with a pid",
            self.attempted.clone(),
        );
        r.register(
            "succeeded",
            "Clients that got their socket back",
            self.succeeded.clone(),
        );
        r.register(
            "failed",
            "Recoveries that gave a fresh session instead, by reason",
            self.failed.clone(),
        );
        r.register(
            "replayed",
            "Missed events replayed to recovered sockets",
            self.replayed.clone(),
        );
        r.register(
            "recorded",
            "Broadcasts appended to a namespace's recovery log",
            self.recorded.clone(),
        );
        r.register(
            "unrecorded",
            "Broadcasts of recovering namespaces sent without being recorded (the log could not be written)",
            self.unrecorded.clone(),
        );
        r.register(
            "malformed",
            "Recovery log entries and sessions that did not parse, skipped",
            self.malformed.clone(),
        );
        r.register(
            "sessions",
            "Recovery sessions kept, as the store counts them",
            self.sessions.clone(),
        );
        r.register(
            "log_entries",
            "Entries the recovery logs keep",
            self.log_entries.clone(),
        );
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let sockets = Gauge::default();
        let rooms = Gauge::default();
        let members = Gauge::default();
        let handshakes_refused = Family::default();
        let queries_refused = Counter::default();
        let auth_webhook_failures = Family::default();
        let sockets_rate_limited = Counter::default();
        let recovery = RecoveryMetrics::default();
        let webhooks = WebhookMetrics::default();
        let presence = WebhookMetrics::default();
        let cluster_requests = Family::default();
        // 0.25 ms .. ~4 s: a local answer is sub-millisecond, a timed-out one is the request timeout.
        let cluster_request_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 15));
        let cluster_nodes_answering = Gauge::default();
        let cluster_replies_sent = Counter::default();
        let cluster_messages_rejected = Counter::default();
        let redis_errors = Family::default();
        let redis_reconnects = Family::default();
        let pending_closed = Family::default();
        let delivery_stored = Counter::default();
        let delivery_dropped = Counter::default();
        let delivery_malformed_entries = Counter::default();
        let delivery_holders_forgotten = Counter::default();
        let delivery_holders_restored = Counter::default();
        let delivery_live_shared = Counter::default();
        let gateway_published = Counter::default();
        let gateway_delivered = Counter::default();
        let gateway_malformed_entries = Counter::default();
        let gateway_dropped = Counter::default();
        let gateway_trimmed = Counter::default();
        let gateway_routed = Counter::default();
        let gateway_routed_twice = Counter::default();
        let gateway_router = Gauge::default();

        let mut r = Registry::with_prefix("socket_identity");
        r.register(
            "connected_sockets",
            "Socket.IO sockets connected to this node",
            sockets.clone(),
        );
        r.register(
            "rooms",
            "Rooms with at least one socket on this node",
            rooms.clone(),
        );
        r.register(
            "cluster_members",
            "Live nodes in the cluster by their heartbeats, this one included (1 without Redis)",
            members.clone(),
        );
        r.register(
            "handshakes_refused",
            "Socket.IO handshakes refused, by reason",
            handshakes_refused.clone(),
        );
        r.register(
            "queries_refused",
            "Cluster queries (GET /{room}/users, GET /api/rooms) refused for exceeding QUERY_RATE",
            queries_refused.clone(),
        );
        r.register(
            "auth_webhook_failures",
            "Auth webhook calls that gave no usable answer (the handshake was refused), by reason",
            auth_webhook_failures.clone(),
        );
        recovery.register(&mut r);
        let rpc = RpcMetrics::default();
        rpc.register(&mut r);
        webhooks.register(&mut r, "webhook", "Lifecycle webhook");
        presence.register(&mut r, "presence", "Members' presence");
        r.register(
            "sockets_rate_limited",
            "Sockets disconnected for sending events faster than SOCKET_EVENT_RATE",
            sockets_rate_limited.clone(),
        );
        r.register(
            "cluster_requests",
            "Room queries asked on this node, by outcome",
            cluster_requests.clone(),
        );
        r.register(
            "cluster_request_seconds",
            "Time to answer a room query across the cluster",
            cluster_request_seconds.clone(),
        );
        r.register(
            "cluster_nodes_answering",
            "Nodes that answered the last room query asked on this node, this one included",
            cluster_nodes_answering.clone(),
        );
        r.register(
            "cluster_replies_sent",
            "Answers this node sent to other nodes' room queries",
            cluster_replies_sent.clone(),
        );
        r.register(
            "cluster_messages_rejected",
            "Cluster messages ignored because they were malformed or unexpected",
            cluster_messages_rejected.clone(),
        );
        r.register(
            "redis_errors",
            "Errors on a Redis connection",
            redis_errors.clone(),
        );
        r.register(
            "redis_reconnects",
            "Successful (re)connections of a Redis connection",
            redis_reconnects.clone(),
        );
        r.register(
            "pending_connections_closed",
            "Connections closed before their first request, by reason: timeout, or evicted to make room",
            pending_closed.clone(),
        );
        r.register(
            "delivery_stored",
            "Messages stored for reliable delivery to user rooms (POST /send)",
            delivery_stored.clone(),
        );
        r.register(
            "delivery_dropped",
            "Pending messages of user rooms dropped by the per-room cap (the oldest first)",
            delivery_dropped.clone(),
        );
        r.register(
            "delivery_malformed_entries",
            "Entries of the Redis delivery store that did not parse, skipped and left in place",
            delivery_malformed_entries.clone(),
        );
        r.register(
            "delivery_holders_forgotten",
            "Holders of user rooms removed by this node because their node was declared down",
            delivery_holders_forgotten.clone(),
        );
        r.register(
            "delivery_holders_restored",
            "Holders of this node's sockets written again after this node was cut off from the cluster",
            delivery_holders_restored.clone(),
        );
        r.register(
            "delivery_live_shared",
            "Stored messages also sent on the shared live channel, for holder nodes not listening on their own (older or gone)",
            delivery_live_shared.clone(),
        );
        r.register(
            "gateway_published",
            "Envelopes the gateway added to Redis Streams (hooks)",
            gateway_published.clone(),
        );
        r.register(
            "gateway_delivered",
            "Frames the gateway handed to its clients (replies, send, broadcast)",
            gateway_delivered.clone(),
        );
        r.register(
            "gateway_malformed_entries",
            "Entries of the gateway's streams that were not valid, logged, acknowledged and skipped",
            gateway_malformed_entries.clone(),
        );
        r.register(
            "gateway_dropped",
            "Frames the gateway dropped because a client's queue was full (a client not reading)",
            gateway_dropped.clone(),
        );
        r.register(
            "gateway_entries_trimmed",
            "Entries stream_maxlen trimmed from the gateway's streams, whether anyone had read them or not",
            gateway_trimmed.clone(),
        );
        r.register(
            "gateway_routed",
            "send entries the gateway's router forwarded to the nodes holding their user (one per node)",
            gateway_routed.clone(),
        );
        r.register(
            "gateway_routed_twice",
            "Forwarded send entries this node skipped because it had them already (a batch forwarded again)",
            gateway_routed_twice.clone(),
        );
        r.register(
            "gateway_router",
            "1 while this node routes the gateway's send entries (one node of the cluster at a time)",
            gateway_router.clone(),
        );
        let emitter_messages = Family::<EmitterMessage, Counter>::default();
        r.register(
            "emitter_messages",
            "Messages of the socket.io Redis emitter protocol read by this node, by kind and outcome",
            emitter_messages.clone(),
        );
        let node_adapter_broadcasts = Family::<Outcome, Counter>::default();
        r.register(
            "node_adapter_broadcasts",
            "Broadcasts of this node published for @socket.io/redis-adapter servers (NODE_ADAPTER_COMPAT), by outcome",
            node_adapter_broadcasts.clone(),
        );
        Self {
            registry: r,
            sockets,
            rooms,
            members,
            handshakes_refused,
            queries_refused,
            auth_webhook_failures,
            rpc,
            sockets_rate_limited,
            cluster_requests,
            cluster_request_seconds,
            cluster_nodes_answering,
            cluster_replies_sent,
            cluster_messages_rejected,
            redis_errors,
            redis_reconnects,
            pending_closed,
            delivery_stored,
            delivery_dropped,
            delivery_malformed_entries,
            delivery_holders_forgotten,
            delivery_holders_restored,
            delivery_live_shared,
            gateway_published,
            gateway_delivered,
            gateway_malformed_entries,
            gateway_dropped,
            gateway_trimmed,
            gateway_routed,
            gateway_routed_twice,
            gateway_router,
            emitter_messages,
            node_adapter_broadcasts,
            recovery,
            webhooks,
            presence,
        }
    }

    /// The text exposition, with the gauges read now.
    /// The text exposition; the gauges that are read rather than counted are set here.
    pub fn render(&self, sockets: usize, rooms: usize, members: usize) -> String {
        self.sockets.set(sockets.try_into().unwrap_or(i64::MAX));
        self.rooms.set(rooms.try_into().unwrap_or(i64::MAX));
        self.members.set(members.try_into().unwrap_or(i64::MAX));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts the errors and reconnections fred reports for `client`, until the returned guard is dropped: the
    /// owner of the connection keeps it as long as the connection (a failed start-up attempt drops both).
    pub fn watch_redis(
        &self,
        client: &impl EventInterface,
        connection: &'static str,
    ) -> RedisWatch {
        let label = Connection { connection };
        let mut errors = client.error_rx();
        let counter = self.redis_errors.get_or_create(&label).clone();
        let on_error = tokio::spawn(async move {
            while let Ok((error, _)) = errors.recv().await {
                tracing::warn!(connection, %error, "Redis connection error");
                counter.inc();
            }
        });
        let mut reconnects = client.reconnect_rx();
        let counter = self.redis_reconnects.get_or_create(&label).clone();
        // fred reports the first connection like a reconnect: that one is not counted.
        let mut first = !client.is_connected();
        let on_reconnect = tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                if !std::mem::take(&mut first) {
                    counter.inc();
                }
            }
        });
        RedisWatch([on_error, on_reconnect])
    }
}

/// The two tasks counting one Redis connection's events ([`Metrics::watch_redis`]); stopped when dropped.
#[must_use = "the watchers stop when this is dropped"]
#[derive(Debug)]
pub struct RedisWatch([tokio::task::JoinHandle<()>; 2]);

impl Drop for RedisWatch {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchers of a connection stop with their guard (a failed start-up attempt must not leave them).
    #[tokio::test]
    async fn redis_watchers_stop_with_their_guard() {
        let endpoint = crate::redis::Endpoint::parse("redis://127.0.0.1:1", None).unwrap();
        let sub =
            crate::redis::Subscriber::new(&endpoint, std::time::Duration::from_secs(1)).unwrap();
        let m = Metrics::new();
        let watch = m.watch_redis(&sub.client, "publisher");
        let handles: Vec<_> = watch.0.iter().map(|t| t.abort_handle()).collect();
        tokio::task::yield_now().await;
        assert!(handles.iter().all(|h| !h.is_finished()), "watching");
        drop(watch);
        for _ in 0..100 {
            if handles.iter().all(|h| h.is_finished()) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the watchers outlived their guard");
    }

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.handshakes_refused
            .get_or_create(&Reason { reason: "missing" })
            .inc();
        m.cluster_requests
            .get_or_create(&Outcome {
                outcome: "complete",
            })
            .inc();
        m.cluster_request_seconds.observe(0.002);
        m.pending_closed
            .get_or_create(&Reason { reason: "timeout" })
            .inc();
        let text = m.render(3, 2, 4);
        for line in [
            "socket_identity_connected_sockets 3",
            "socket_identity_rooms 2",
            "socket_identity_cluster_members 4",
            "socket_identity_handshakes_refused_total{reason=\"missing\"} 1",
            "socket_identity_cluster_requests_total{outcome=\"complete\"} 1",
            "socket_identity_cluster_request_seconds_count 1",
            "socket_identity_pending_connections_closed_total{reason=\"timeout\"} 1",
            "socket_identity_delivery_dropped_total 0",
            "socket_identity_delivery_holders_forgotten_total 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
