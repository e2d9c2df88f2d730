//! The cross-node room query over Redis pub/sub (see the crate docs for the protocol).
//!
//! One request is published to every node; each answers with its local sockets of the room. The asker counts
//! the nodes from the subscriber count `PUBLISH` returns, so it returns as soon as the last live node has
//! answered, and at the deadline with whatever arrived, marked partial.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
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

use crate::{
    metrics::{Metrics, Outcome},
    protocol::{self, Member, Request, Response},
    redis::{self, RedisError, Subscriber},
    socket::LocalRooms,
};

/// Most replies this node computes at once; requests beyond it are dropped (the asker marks its answer partial).
const MAX_CONCURRENT_REPLIES: usize = 256;
/// Replies buffered per pending request; forged floods beyond it are dropped.
const REPLY_BUFFER: usize = 1024;
/// How long the readiness probe waits for Redis.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The result of a room query across the cluster.
#[derive(Debug)]
pub struct RoomAnswer {
    /// Members grouped by the node that holds them, this node first.
    pub nodes: Vec<(Arc<str>, Vec<Member>)>,
    /// Nodes that answered, this one included.
    pub answered: usize,
    /// Nodes that should have answered, when known (not known when Redis could not be reached).
    pub expected: Option<usize>,
    /// Why the answer may be incomplete, besides nodes that did not answer in time.
    pub error: Option<String>,
}

impl RoomAnswer {
    /// An answer from this node alone, in single-node mode.
    pub fn local(node: Arc<str>, members: Vec<Member>) -> Self {
        Self {
            nodes: vec![(node, members)],
            answered: 1,
            expected: Some(1),
            error: None,
        }
    }

    pub fn is_partial(&self) -> bool {
        self.expected != Some(self.answered)
    }
}

/// What arrives for a pending request.
enum Reply {
    /// Our own request came back on the request channel: our subscription is live and counted by `PUBLISH`.
    Echo,
    Answer(Response),
}

/// Requests in flight, by id.
#[derive(Default)]
struct Pending(Mutex<HashMap<Uuid, mpsc::Sender<Reply>>>);

impl Pending {
    fn deliver(&self, id: Uuid, reply: Reply) {
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
    request_channel: String,
    publisher: Client,
    subscriber: Subscriber,
    pending: Arc<Pending>,
    local: Arc<dyn LocalRooms>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    listener: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Connects to Redis, subscribes to the request channel and this node's reply channel, and starts
    /// answering other nodes.
    pub async fn start(
        redis: &redis::Endpoint,
        prefix: &str,
        node: Arc<str>,
        local: Arc<dyn LocalRooms>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, RedisError> {
        let publisher = redis::connect_client(redis, timeout).await?;
        let subscriber = Subscriber::new(redis, Duration::from_secs(5))?;
        metrics.watch_redis(&publisher, "publisher");
        metrics.watch_redis(&subscriber.client, "cluster_subscriber");
        let request_channel = format!("{prefix}:users#req");
        let reply_prefix = format!("{prefix}:users#reply#");
        let reply_channel = format!("{reply_prefix}{node}");
        let pending = Arc::new(Pending::default());
        // Listen before subscribing, so nothing published after the SUBSCRIBE is missed.
        let listener = tokio::spawn(listen(
            subscriber.client.message_rx(),
            Handler {
                node: node.clone(),
                request_channel: request_channel.clone(),
                reply_channel: reply_channel.clone(),
                reply_prefix,
                publisher: publisher.clone(),
                pending: pending.clone(),
                local: local.clone(),
                permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLIES)),
                metrics: metrics.clone(),
            },
        ));
        redis::init(&subscriber.client, redis).await?;
        subscriber
            .client
            .subscribe(vec![request_channel.clone(), reply_channel])
            .await
            .map_err(|source| redis::connect_err(redis, source))?;
        Ok(Arc::new(Self {
            node,
            request_channel,
            publisher,
            subscriber,
            pending,
            local,
            timeout,
            metrics,
            listener,
        }))
    }

    /// Every socket of `room` on every node that answers within the request timeout.
    pub async fn room_members(&self, room: &str) -> RoomAnswer {
        let started = Instant::now();
        let answer = self.query(room).await;
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

    /// Whether this node takes part in the cluster now, and how many nodes Redis counts on the request channel
    /// (this one included when its subscription is live).
    pub async fn probe(&self) -> Result<usize, String> {
        if !self.subscriber.client.is_connected() {
            return Err("the cluster subscription to Redis is down".into());
        }
        let numsub = self
            .publisher
            .pubsub_numsub::<fred::types::Value, _>(self.request_channel.clone());
        let reply = tokio::time::timeout(PROBE_TIMEOUT, numsub)
            .await
            .map_err(|_| "Redis did not answer in time".to_string())?
            .map_err(|e| format!("redis: {e}"))?;
        // `[channel, count]` (a map in RESP3).
        reply
            .into_array()
            .get(1)
            .and_then(|n| n.as_i64())
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| "unexpected PUBSUB NUMSUB reply".into())
    }

    async fn query(&self, room: &str) -> RoomAnswer {
        let deadline = Instant::now() + self.timeout;
        let request = Request::new(&self.node, room);
        let (tx, mut rx) = mpsc::channel(REPLY_BUFFER);
        self.pending.0.lock().unwrap().insert(request.id, tx);
        let _registration = Registration {
            pending: &self.pending,
            id: request.id,
        };
        let mut answer = RoomAnswer::local(self.node.clone(), self.local.members(room));

        let published = tokio::time::timeout_at(
            deadline,
            self.publisher
                .publish::<i64, _, _>(&self.request_channel, protocol::encode(&request)),
        )
        .await;
        let subscribers = match published {
            // Zero: not even our own subscription is live (Redis just came back, re-subscribing is under way),
            // so nobody can say who else is there.
            Ok(Ok(n)) if n <= 0 => {
                return answer.failed("not subscribed to the cluster channels yet".into());
            }
            Ok(Ok(n)) => usize::try_from(n).unwrap_or(0),
            Ok(Err(e)) => return answer.failed(format!("redis: {e}")),
            Err(_) => return answer.failed("redis: publish timed out".into()),
        };

        // `subscribers` counts us too if our subscription is live, which our own echo proves.
        let mut echoed = false;
        let mut seen = HashSet::new();
        while seen.len() + usize::from(echoed) < subscribers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Reply::Echo)) => echoed = true,
                Ok(Some(Reply::Answer(resp))) => {
                    if *resp.node == *self.node || !seen.insert(resp.node.clone()) {
                        tracing::warn!(from = %resp.node, "duplicate reply ignored");
                        continue;
                    }
                    answer.nodes.push((resp.node.into(), resp.members));
                }
                Ok(None) | Err(_) => break,
            }
        }
        answer.answered += seen.len();
        // Without the echo we are not among the subscribers: every one of them is another node.
        answer.expected =
            Some(if echoed { subscribers } else { subscribers + 1 }.max(answer.answered));
        if answer.is_partial() {
            tracing::warn!(
                room,
                answered = answer.answered,
                expected = ?answer.expected,
                "room query timed out before every node answered"
            );
        }
        answer
    }

    /// Stops answering other nodes and leaves the channels.
    pub async fn stop(&self) {
        self.listener.abort();
        let _ = self.subscriber.client.unsubscribe_all().await;
        self.subscriber.close().await;
        let _ = self.publisher.quit().await;
    }
}

impl RoomAnswer {
    fn failed(mut self, error: String) -> Self {
        tracing::warn!(%error, "room query answered from this node only");
        self.expected = None;
        self.error = Some(error);
        self
    }
}

/// Everything the listening task needs.
struct Handler {
    node: Arc<str>,
    request_channel: String,
    reply_channel: String,
    reply_prefix: String,
    publisher: Client,
    pending: Arc<Pending>,
    local: Arc<dyn LocalRooms>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
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
        if *msg.channel == *self.request_channel {
            match protocol::decode_request(bytes) {
                Ok(req) if *req.from == *self.node => self.pending.deliver(req.id, Reply::Echo),
                Ok(req) => self.answer(req),
                Err(e) => {
                    tracing::warn!(error = %e, "bad cluster request ignored");
                    self.metrics.cluster_messages_rejected.inc();
                }
            }
        } else if *msg.channel == *self.reply_channel {
            match protocol::decode_response(bytes) {
                Ok(resp) => self.pending.deliver(resp.id, Reply::Answer(resp)),
                Err(e) => {
                    tracing::warn!(error = %e, "bad cluster reply ignored");
                    self.metrics.cluster_messages_rejected.inc();
                }
            }
        }
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
            members: self.local.members(&req.room),
        };
        let channel = format!("{}{}", self.reply_prefix, req.from);
        let publisher = self.publisher.clone();
        let sent = self.metrics.cluster_replies_sent.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match publisher
                .publish::<i64, _, _>(channel, protocol::encode(&response))
                .await
            {
                Ok(_) => {
                    sent.inc();
                }
                Err(e) => tracing::warn!(error = %e, "cluster reply could not be published"),
            }
        });
    }
}
