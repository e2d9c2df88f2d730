//! The event-bus gateway phases (README "Event-bus gateway", seed 003), ours only: the Node reference has no
//! gateway, so there is nothing to compare with. Each phase has its own Redis and K nodes started with a config
//! file the bench writes (`[gateway]` with `onmessage` and `send`, and the namespace `/bench-gw`, `auth = "jwt"`,
//! `gateway = true`). Clients are plain WebSockets over TLS at `/connect?namespace=/bench-gw&token=<jwt>`, each
//! with an HS256 token the bench signs (`preferred_username` = `u{i}`), client `i` on node `i mod K`. The
//! application's backend is played here, as a real one would be written: `fred` clients reading the stream
//! through a consumer group and answering in pipelines.
//!
//! 1. **Round trip.** `--gateway-clients` clients; for each rate of `--gateway-rates`, messages are sent at that
//!    aggregate rate for `--gateway-seconds` (open loop: message `j` is due at `j / rate` s, from client
//!    `j mod N`, whether or not earlier ones were answered). Each payload carries its sequence number and its due
//!    time; the node adds the envelope to `socket:generalMessage`; `--gateway-consumers` backend consumers in
//!    one group read it (`XREADGROUP COUNT BLOCK`) and, per batch, pipeline one `XADD <reply_to> data
//!    {"id", "reply": <payload>}` per envelope and one `XACK`; the node hands the reply to the client as
//!    `{"type": "socket:generalMessage", "payload": ...}`. Latency is from the due time to the reply's arrival.
//!    Every message must get exactly one reply.
//! 2. **`send` to many users.** `--gateway-send-users` clients, each its own user; per round the backend adds one
//!    `socket:send` entry per user (`{username, namespace, type, payload: {"round": r}}`, one pipeline), timed
//!    from before the first `XADD` until every client has its frame. Every client must get each round once.
//!    Then as many rounds of one `socket:broadcast` entry to the same clients: the same frames delivered, without
//!    reading one entry per user, so its CPU is the floor of what delivering a round costs.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use fred::{
    clients::Client as Redis,
    interfaces::{ClientLike, StreamsInterface},
    types::{
        Value,
        config::Config,
        streams::{XCapKind, XCapTrim},
    },
};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{net::TcpStream, sync::Notify, task::JoinHandle};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::ConnectError,
    procs::{self, Node, Target},
};

/// The gateway namespace, and the HS256 secret of `[gateway]` and of the namespace.
const GW_NS: &str = "/bench-gw";
const GW_SECRET: &str = "bench-gateway-secret-0123456789abcdef";
/// `onmessage.publish` and `send.subscribe`.
const GENERAL: &str = "socket:generalMessage";
const SEND_STREAM: &str = "socket:send";
const BROADCAST_STREAM: &str = "socket:broadcast";
/// Broadcast rounds are numbered from here, apart from `send` rounds.
const BROADCAST_ROUNDS_FROM: u64 = 1_000_000;
/// The backend's consumer group on `socket:generalMessage`.
const BACKEND_GROUP: &str = "bench-backend";
/// The type of the bench's messages, and of its `send` frames.
const MESSAGE_TYPE: &str = "bench";
const PUSH_TYPE: &str = "bench-push";
/// Envelopes a backend consumer reads at once, and how long a read blocks.
const READ_COUNT: u64 = 256;
const BLOCK_MS: u64 = 1_000;
/// The backend trims the reply streams as it adds, as a backend that runs for ever must.
const REPLY_MAXLEN: i64 = 100_000;
/// How long replies and `send` frames may take after the last message was sent (or the round started).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// How long the `send` phase looks for the nodes' sets of held users before it takes the build for one without
/// routing; a node writes a user's arrival at once, so a routing build shows one well within it.
const NO_SETS_AFTER: Duration = Duration::from_secs(3);
/// Watched for late duplicates once everything expected has arrived.
const QUIET: Duration = Duration::from_millis(300);
/// Frames waiting to be written by one client: the sender never waits for a client, it counts it as unsent.
const OUTBOX: usize = 256;

#[derive(Debug, Default, Serialize)]
pub struct GatewayRateResult {
    pub clients: usize,
    pub k: usize,
    pub consumers: usize,
    pub connect_errors: usize,
    /// Messages per second asked for, for `secs` seconds.
    pub rate: usize,
    pub secs: u64,
    pub sent: usize,
    /// Messages the bench could not hand to their client (its writer was behind): each is an error.
    pub unsent: usize,
    /// Sent per second of sending, and replies per second from the first due time to the last reply.
    pub sent_per_sec: f64,
    pub replied_per_sec: f64,
    pub replies: usize,
    /// Sent but never answered within the settle limit, answered twice, or answered with an `error` frame.
    pub lost: usize,
    pub duplicates: usize,
    pub error_frames: usize,
    /// From a message's due time until its reply arrived.
    pub latency: Summary,
    /// CPU time per message: the nodes and Redis, and this process (clients and backend); Redis's share of the
    /// first, to tell where the time goes.
    pub cpu_servers_ms: f64,
    pub cpu_bench_ms: f64,
    pub cpu_redis_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct GatewaySendResult {
    pub users: usize,
    /// Added straight to the inboxes (`--gateway-send-direct`): routing free.
    pub direct: bool,
    pub k: usize,
    pub connect_secs: f64,
    pub connect_errors: usize,
    pub rounds: usize,
    /// From before the first `XADD` until the last client has its frame.
    pub delivered: Summary,
    /// Until the pipeline of `XADD`s was answered.
    pub added: Summary,
    /// Entries per second at the median round (users / delivered p50).
    pub entries_per_sec: f64,
    /// Rounds some client did not get within the settle limit, frames missing at the end, frames twice.
    pub lost_rounds: usize,
    pub missing: usize,
    pub duplicates: usize,
    pub cpu_servers_ms: f64,
    pub cpu_bench_ms: f64,
    pub cpu_redis_ms: f64,
    /// The same clients, one `broadcast` entry per round: the delivery alone.
    pub broadcast: BroadcastFloor,
}

/// Rounds of one `broadcast` entry to every client of the `send` phase.
#[derive(Debug, Default, Serialize)]
pub struct BroadcastFloor {
    pub delivered: Summary,
    pub lost_rounds: usize,
    pub cpu_servers_ms: f64,
    pub cpu_redis_ms: f64,
}

impl GatewayRateResult {
    fn errors(&self) -> usize {
        self.connect_errors + self.unsent + self.lost + self.duplicates + self.error_frames
    }
}

impl GatewaySendResult {
    fn errors(&self) -> usize {
        self.connect_errors
            + self.lost_rounds
            + self.missing
            + self.duplicates
            + self.broadcast.lost_rounds
    }
}

/// Errors of the gateway phases in a report (refused connections, lost or duplicated replies and frames).
pub fn error_count(r: &Report) -> usize {
    r.gateway_rates
        .iter()
        .map(GatewayRateResult::errors)
        .sum::<usize>()
        + r.gateway_send.as_ref().map_or(0, GatewaySendResult::errors)
}

/// Our config file: the gateway with the two hooks measured, and its namespace.
fn write_gateway_config(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let text = format!(
        r#"# Written by the bench (bench/src/gateway.rs): the gateway, messages to one stream, `send` back.
[gateway]
path = "/connect"
onmessage = {{ publish = "{GENERAL}" }}
send = {{ subscribe = "{SEND_STREAM}" }}
broadcast = {{ subscribe = "{BROADCAST_STREAM}" }}
jwt_secret = "{GW_SECRET}"

[[namespace]]
name = "{GW_NS}"
auth = "jwt"
jwt_secret = "{GW_SECRET}"
user_claim = "preferred_username"
gateway = true
"#
    );
    crate::tenancy::write_config(dir, &text)
}

/// User `u{i}`'s token, signed before any clock starts.
fn token(i: usize, exp: u64) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "preferred_username": format!("u{i}"), "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(GW_SECRET.as_bytes()),
    )?)
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

/// What every client reports: replies with their latency, `send` frames of the current round, and anything wrong.
pub struct GwProbe {
    /// Due times in messages are microseconds since this instant.
    epoch: Instant,
    samples: Mutex<Vec<Duration>>,
    replies: AtomicUsize,
    duplicates: AtomicUsize,
    error_frames: AtomicUsize,
    /// When the latest reply arrived.
    last_reply: Mutex<Option<Instant>>,
    round: AtomicU64,
    arrived: AtomicUsize,
    target: AtomicUsize,
    last: Mutex<Option<Instant>>,
    done: Notify,
}

impl GwProbe {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            samples: Mutex::default(),
            replies: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            error_frames: AtomicUsize::new(0),
            last_reply: Mutex::default(),
            round: AtomicU64::new(0),
            arrived: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            last: Mutex::default(),
            done: Notify::new(),
        }
    }

    /// `at` as microseconds since the epoch, what a message carries.
    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_micros() as u64
    }

    fn replied(&self, due_micros: u64) {
        let now = Instant::now();
        let took = Duration::from_micros(self.micros(now).saturating_sub(due_micros));
        self.samples.lock().unwrap().push(took);
        *self.last_reply.lock().unwrap() = Some(now);
        self.replies.fetch_add(1, Ordering::SeqCst);
    }

    /// Starts `send` round `round`, complete once `target` clients have it.
    fn arm(&self, round: u64, target: usize) {
        *self.last.lock().unwrap() = None;
        self.arrived.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        self.round.store(round, Ordering::SeqCst);
    }

    fn pushed(&self, round: u64) {
        if round != self.round.load(Ordering::SeqCst) {
            return;
        }
        let n = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.target.load(Ordering::SeqCst) {
            *self.last.lock().unwrap() = Some(Instant::now());
            self.done.notify_one();
        }
    }

    /// When the round completed, or `None` at the deadline.
    async fn wait(&self, limit: Duration) -> Option<Instant> {
        let _ = tokio::time::timeout(limit, self.done.notified()).await;
        *self.last.lock().unwrap()
    }
}

/// A frame from the gateway, as far as the bench reads it.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

/// What one client has seen, to tell duplicates: message sequence numbers and `send` rounds.
#[derive(Default)]
struct Seen {
    seqs: HashSet<u64>,
    rounds: HashSet<u64>,
}

impl Seen {
    /// Reports one text frame to the probe; `pushes` counts this client's distinct `send` frames.
    fn frame(&mut self, text: &str, probe: &GwProbe, pushes: &AtomicUsize) {
        let Ok(frame) = serde_json::from_str::<Incoming>(text) else {
            return;
        };
        let number = |key: &str| frame.payload[key].as_u64();
        match frame.kind.as_str() {
            GENERAL => {
                let (Some(seq), Some(due)) = (number("s"), number("t")) else {
                    return;
                };
                match self.seqs.insert(seq) {
                    true => probe.replied(due),
                    false => _ = probe.duplicates.fetch_add(1, Ordering::SeqCst),
                }
            }
            PUSH_TYPE => {
                let Some(round) = number("round") else { return };
                match self.rounds.insert(round) {
                    true => {
                        pushes.fetch_add(1, Ordering::SeqCst);
                        probe.pushed(round);
                    }
                    false => _ = probe.duplicates.fetch_add(1, Ordering::SeqCst),
                }
            }
            // Every error frame is counted; the first few are shown.
            "error" if probe.error_frames.fetch_add(1, Ordering::SeqCst) < 3 => {
                eprintln!("  gateway error frame: {text}");
            }
            _ => {}
        }
    }
}

/// A plain WebSocket client of the gateway: a task reads (and answers pings) and writes what is queued.
/// Dropping it closes the connection.
pub struct GwClient {
    outbox: tokio::sync::mpsc::Sender<String>,
    task: JoinHandle<()>,
    /// Distinct `send` frames received.
    pushes: Arc<AtomicUsize>,
}

impl Drop for GwClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GwClient {
    /// Connects to `addr`'s `/connect` in `/bench-gw` with `token` in the query, within `limit`.
    async fn connect(
        tls: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
        token: &str,
        probe: Arc<GwProbe>,
        limit: Duration,
    ) -> Result<Self, ConnectError> {
        tokio::time::timeout(limit, Self::handshake(tls, addr, token, probe))
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    async fn handshake(
        tls: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
        token: &str,
        probe: Arc<GwProbe>,
    ) -> Result<Self, ConnectError> {
        let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let stream = tls
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(ConnectError::Tls)?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("namespace", GW_NS)
            .append_pair("token", token)
            .finish();
        let url = format!("wss://{addr}/connect?{query}");
        // As in client.rs: a small read buffer, or tungstenite zeroes 128 KiB before each read.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        let (outbox, inbox) = tokio::sync::mpsc::channel(OUTBOX);
        let pushes = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(ws, inbox, probe, pushes.clone()));
        Ok(Self {
            outbox,
            task,
            pushes,
        })
    }

    /// Queues a text frame; false when this client's writer is behind (or gone).
    fn send(&self, text: String) -> bool {
        self.outbox.try_send(text).is_ok()
    }
}

/// One client's loop: frames in to the probe, queued frames out, until the connection ends.
async fn run<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mut inbox: tokio::sync::mpsc::Receiver<String>,
    probe: Arc<GwProbe>,
    pushes: Arc<AtomicUsize>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => seen.frame(t.as_str(), &probe, &pushes),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // tungstenite answers pings itself.
                Some(Ok(_)) => {}
            },
            Some(text) = inbox.recv() => {
                if ws.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The backend

/// A fred client on the phase's Redis; commands time out rather than hang.
async fn redis_client(url: &str) -> anyhow::Result<Redis> {
    let config = Config::from_url(url)?;
    let client = fred::types::Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .build()?;
    client.init().await.context("connect to redis")?;
    Ok(client)
}

/// `MAXLEN ~ n`.
fn cap(n: i64) -> (XCapKind, XCapTrim, i64, Option<i64>) {
    (XCapKind::MaxLen, XCapTrim::AlmostExact, n, None)
}

/// The application's backend: consumers of one group on `socket:generalMessage`, each on its own connection (a
/// blocked read holds it), answering every envelope. Stopped when dropped.
struct Backend {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Backend {
    /// Creates the group at the stream's end and starts `consumers` consumers.
    async fn start(url: &str, consumers: usize) -> anyhow::Result<Self> {
        let admin = redis_client(url).await?;
        match admin
            .xgroup_create::<Value, _, _, _>(GENERAL, BACKEND_GROUP, "$", true)
            .await
        {
            Err(e) if !e.details().contains("BUSYGROUP") => return Err(e.into()),
            _ => {}
        }
        let _ = admin.quit().await;
        let mut tasks = Vec::new();
        for c in 0..consumers.max(1) {
            let client = redis_client(url).await?;
            tasks.push(tokio::spawn(consume(client, format!("backend-{c}"))));
        }
        Ok(Self { tasks })
    }
}

/// One consumer: read a batch, then one pipeline with a reply per envelope and the batch's `XACK`.
async fn consume(client: Redis, consumer: String) {
    loop {
        let read = client
            .xreadgroup::<Value, _, _, _, _>(
                BACKEND_GROUP,
                consumer.as_str(),
                Some(READ_COUNT),
                Some(BLOCK_MS),
                false,
                GENERAL,
                ">",
            )
            .await;
        let batch = match read {
            Ok(raw) => entries(raw),
            Err(e) => {
                eprintln!("  backend {consumer}: read failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = answer(&client, &batch).await {
            eprintln!("  backend {consumer}: replies not added: {e}");
        }
    }
}

/// The envelope fields the backend needs; the payload is passed back untouched.
#[derive(Deserialize)]
struct Envelope<'a> {
    id: &'a str,
    reply_to: &'a str,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

/// The reply stream and `data` of an envelope's reply: `{"id": <id>, "reply": <its payload>}`.
fn reply_of(data: &[u8]) -> Option<(String, String)> {
    let e: Envelope = serde_json::from_slice(data).ok()?;
    let id = serde_json::to_string(e.id).ok()?;
    Some((
        e.reply_to.to_owned(),
        format!(r#"{{"id":{id},"reply":{}}}"#, e.payload.get()),
    ))
}

/// Replies to a batch and acknowledges it, in one pipeline (one round trip).
async fn answer(client: &Redis, batch: &[(String, Option<Vec<u8>>)]) -> anyhow::Result<()> {
    let pipeline = client.pipeline();
    for (id, data) in batch {
        let Some((stream, reply)) = data.as_deref().and_then(reply_of) else {
            eprintln!("  backend: entry {id} is not an envelope");
            continue;
        };
        pipeline
            .xadd::<(), _, _, _, _>(stream, false, cap(REPLY_MAXLEN), "*", vec![("data", reply)])
            .await?;
    }
    let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
    pipeline
        .xack::<(), _, _, _>(GENERAL, BACKEND_GROUP, ids)
        .await?;
    pipeline.all::<Value>().await?;
    Ok(())
}

/// The (id, `data`) entries of an `XREADGROUP` answer of one stream (RESP2 arrays or RESP3 maps; a read that
/// timed out is nil).
fn entries(raw: Value) -> Vec<(String, Option<Vec<u8>>)> {
    let lists: Vec<Value> = match raw {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.inner().into_values().collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for list in lists {
        let Value::Array(list) = list else { continue };
        for entry in list {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            let fields = parts.pop();
            let Some(id) = parts.pop().and_then(|id| id.as_string()) else {
                continue;
            };
            out.push((id, fields.and_then(data_field)));
        }
    }
    out
}

/// The `data` field of an entry's `[k, v, ...]`.
fn data_field(fields: Value) -> Option<Vec<u8>> {
    let Value::Array(list) = fields else {
        return None;
    };
    list.chunks(2)
        .find(|kv| kv.len() == 2 && kv[0].as_bytes() == Some(b"data"))
        .and_then(|kv| kv[1].as_bytes().map(<[u8]>::to_vec))
}

/// Adds one `send` entry per user `u0..u{users}` for round `round`, in one pipeline.
/// `rounds` rounds of one `broadcast` entry to every client (the probe counts it as a push), timed and costed
/// like the `send` rounds.
async fn broadcast_rounds(
    backend: &Redis,
    probe: &GwProbe,
    pids: &[u32],
    redis_pid: u32,
    rounds: usize,
) -> anyhow::Result<BroadcastFloor> {
    let (servers_before, redis_before) = (cpu(pids), cpu(&[redis_pid]));
    let (mut delivered, mut lost_rounds) = (Vec::new(), 0);
    let target = probe.target.load(Ordering::SeqCst);
    for r in 1..=rounds as u64 {
        let round = BROADCAST_ROUNDS_FROM + r;
        probe.arm(round, target);
        let started = Instant::now();
        let data = json!({"namespace": GW_NS, "type": PUSH_TYPE, "payload": {"round": round}});
        backend
            .xadd::<Value, _, _, _, _>(
                BROADCAST_STREAM,
                false,
                None::<()>,
                "*",
                vec![("data", data.to_string())],
            )
            .await?;
        match probe.wait(SETTLE_LIMIT).await {
            Some(last) => delivered.push(last.duration_since(started)),
            None => {
                lost_rounds += 1;
                eprintln!(
                    "  gateway broadcast round {r}: {} of {target} clients got it within {SETTLE_LIMIT:?}",
                    probe.arrived.load(Ordering::SeqCst),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let per_round = |d: Duration| d.as_secs_f64() * 1e3 / rounds.max(1) as f64;
    Ok(BroadcastFloor {
        delivered: Summary::of(delivered),
        lost_rounds,
        cpu_servers_ms: per_round(cpu(pids).saturating_sub(servers_before)),
        cpu_redis_ms: per_round(cpu(&[redis_pid]).saturating_sub(redis_before)),
    })
}

/// The `data` of user `u<i>`'s `send` entry of `round`.
fn send_data(i: usize, round: u64) -> String {
    json!({
        "username": format!("u{i}"),
        "namespace": GW_NS,
        "type": PUSH_TYPE,
        "payload": { "round": round },
    })
    .to_string()
}

async fn push_round(client: &Redis, users: usize, round: u64) -> anyhow::Result<()> {
    let pipeline = client.pipeline();
    for i in 0..users {
        let data = send_data(i, round);
        pipeline
            .xadd::<(), _, _, _, _>(SEND_STREAM, false, None::<()>, "*", vec![("data", data)])
            .await?;
    }
    pipeline.all::<Value>().await?;
    Ok(())
}

/// For each user `u<i>`, the inbox of the node whose set holds it (`--gateway-send-direct`).
async fn inboxes(backend: &Redis, users: usize) -> anyhow::Result<Vec<String>> {
    let mut inbox = vec![String::new(); users];
    let keys: Vec<String> = backend
        .custom(fred::cmd!("KEYS"), vec!["*gateway:holds:*"])
        .await?;
    for key in keys {
        let tags: Vec<String> = backend
            .custom(fred::cmd!("SMEMBERS"), vec![key.clone()])
            .await?;
        for tag in tags {
            let i = tag
                .strip_prefix(&format!("{GW_NS}|u"))
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(slot) = i.and_then(|i| inbox.get_mut(i)) {
                *slot = key.replace("gateway:holds:", "gateway:inbox:");
            }
        }
    }
    anyhow::ensure!(
        inbox.iter().all(|k| !k.is_empty()),
        "a user is in no node's set of held users"
    );
    Ok(inbox)
}

/// One `send` round added straight to the inboxes, one entry per user as the backend adds them, each field named
/// by an id of its own as the router names them.
async fn push_round_direct(client: &Redis, inboxes: &[String], round: u64) -> anyhow::Result<()> {
    let pipeline = client.pipeline();
    for (i, inbox) in inboxes.iter().enumerate() {
        let id = format!("{round}-{i}");
        pipeline
            .xadd::<(), _, _, _, _>(
                inbox.as_str(),
                false,
                None::<()>,
                "*",
                vec![(id, send_data(i, round))],
            )
            .await?;
    }
    pipeline.all::<Value>().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The phases

/// CPU time used so far by these processes.
fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| procs::cpu_time(p)).sum()
}

/// Whether the nodes' sets of held users (`gateway:holds:<node>`) come to hold `users` users within [`SETTLE_LIMIT`].
/// A build from before routing writes no sets (each of its nodes reads every entry): when none has appeared after
/// [`NO_SETS_AFTER`], there is nothing to wait for.
async fn all_held(backend: &Redis, users: usize) -> anyhow::Result<bool> {
    let started = Instant::now();
    let deadline = started + SETTLE_LIMIT;
    loop {
        let keys: Vec<String> = backend
            .custom(fred::cmd!("KEYS"), vec!["*gateway:holds:*"])
            .await?;
        if keys.is_empty() && started.elapsed() > NO_SETS_AFTER {
            println!(
                "  gateway send: no sets of held users (a build without routing): not waited for"
            );
            return Ok(true);
        }
        let mut held = 0;
        for key in keys {
            let n: i64 = backend.custom(fred::cmd!("SCARD"), vec![key]).await?;
            held += usize::try_from(n).unwrap_or(0);
        }
        if held >= users {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` every 2 ms until it holds or `limit` has passed.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

impl Bench {
    /// Runs the gateway phases the flags ask for into `report` (ours only).
    pub(crate) async fn gateway_phases(&self, target: &Target, report: &mut Report) {
        let a = &self.args;
        if a.gateway_clients > 0
            && !a.gateway_rates.is_empty()
            && let Err(e) = self.gateway_round_trip(target, report).await
        {
            report.errors.push(format!("gateway round trip: {e:#}"));
        }
        if a.gateway_send_users > 0 {
            match self.gateway_send(target).await {
                Ok(r) => report.gateway_send = Some(r),
                Err(e) => report.errors.push(format!("gateway send: {e:#}")),
            }
        }
    }

    /// K nodes with the gateway config, on their own Redis.
    async fn gateway_cluster(
        &self,
        target: &Target,
        phase: &str,
    ) -> anyhow::Result<(procs::Redis, Vec<Node>)> {
        let logs = self.logs(target, phase)?;
        let config = write_gateway_config(&logs)?;
        self.cluster_in(target, self.args.nodes, &logs, Some(&config))
            .await
    }

    /// Opens `n` gateway clients as users `u0..`, client `i` on node `i mod K`; failures are counted and printed.
    async fn open_gateway(
        &self,
        nodes: &[Node],
        n: usize,
        probe: &Arc<GwProbe>,
    ) -> anyhow::Result<(Vec<GwClient>, usize, f64)> {
        let exp = jsonwebtoken::get_current_timestamp() + 3600;
        let tokens = (0..n)
            .map(|i| token(i, exp))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = Instant::now();
        let results: Vec<_> = futures_util::stream::iter(tokens.iter().enumerate())
            .map(|(i, token)| {
                let addr = nodes[i % nodes.len()].addr;
                GwClient::connect(
                    &self.tls,
                    addr,
                    token,
                    probe.clone(),
                    Duration::from_secs(20),
                )
            })
            .buffered(self.args.concurrency.max(1))
            .collect()
            .await;
        let secs = started.elapsed().as_secs_f64();
        let mut clients = Vec::with_capacity(n);
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for r in results {
            match r {
                Ok(c) => clients.push(c),
                Err(e) => *errors.entry(e.to_string()).or_default() += 1,
            }
        }
        for (e, count) in &errors {
            eprintln!("  {count} gateway connection(s) failed: {e}");
        }
        let failed = n - clients.len();
        Ok((clients, failed, secs))
    }

    /// Phase 1: the round trip at each rate of `--gateway-rates`, on one cluster with one backend.
    async fn gateway_round_trip(&self, target: &Target, report: &mut Report) -> anyhow::Result<()> {
        let a = &self.args;
        let n = clamp_to_fd_limit(a.gateway_clients);
        let (redis, nodes) = self.gateway_cluster(target, "gateway-round-trip").await?;
        let _backend = Backend::start(&redis.url, a.gateway_consumers).await?;
        let probe = Arc::new(GwProbe::new());
        let (clients, connect_errors, _) = self.open_gateway(&nodes, n, &probe).await?;
        anyhow::ensure!(!clients.is_empty(), "no gateway client connected");
        let mut pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        pids.push(redis.pid());
        let mut first_seq = 0;
        for &rate in &a.gateway_rates {
            let r = self
                .gateway_rate(&clients, &probe, &pids, redis.pid(), rate, first_seq)
                .await;
            first_seq += r.sent as u64 + r.unsent as u64;
            let r = GatewayRateResult {
                clients: clients.len(),
                k: nodes.len(),
                consumers: a.gateway_consumers.max(1),
                connect_errors,
                ..r
            };
            println!(
                "  gateway round trip: {} clients on {} nodes, {} msg/s for {} s: sent {:.0}/s, replied {:.0}/s, \
                 p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} lost, {} twice, {} error frames, {} unsent)",
                r.clients,
                r.k,
                r.rate,
                r.secs,
                r.sent_per_sec,
                r.replied_per_sec,
                r.latency.p50,
                r.latency.p99,
                r.latency.max,
                r.lost,
                r.duplicates,
                r.error_frames,
                r.unsent
            );
            report.gateway_rates.push(r);
        }
        Ok(())
    }

    /// Sends at `rate` for `--gateway-seconds` (sequence numbers from `first_seq`), then waits for the replies.
    async fn gateway_rate(
        &self,
        clients: &[GwClient],
        probe: &GwProbe,
        pids: &[u32],
        redis: u32,
        rate: usize,
        first_seq: u64,
    ) -> GatewayRateResult {
        let secs = self.args.gateway_seconds;
        let total = rate * secs as usize;
        probe.samples.lock().unwrap().clear();
        let (replies_before, dups_before, errors_before) = (
            probe.replies.load(Ordering::SeqCst),
            probe.duplicates.load(Ordering::SeqCst),
            probe.error_frames.load(Ordering::SeqCst),
        );
        let me = [std::process::id()];
        let (servers_before, bench_before, redis_before) = (cpu(pids), cpu(&me), cpu(&[redis]));
        let started = Instant::now();
        let (sent, unsent) = send_open_loop(clients, probe, rate, total, first_seq).await;
        let send_secs = started.elapsed().as_secs_f64();
        let replies = || probe.replies.load(Ordering::SeqCst) - replies_before;
        wait_until(SETTLE_LIMIT, || replies() >= sent).await;
        let last_reply = probe.last_reply.lock().unwrap().unwrap_or(started);
        let cpu_servers = cpu(pids).saturating_sub(servers_before);
        let cpu_bench = cpu(&me).saturating_sub(bench_before);
        let cpu_redis = cpu(&[redis]).saturating_sub(redis_before);
        tokio::time::sleep(QUIET).await;
        let got = replies();
        let per_message = |d: Duration| d.as_secs_f64() * 1e3 / sent.max(1) as f64;
        GatewayRateResult {
            rate,
            secs,
            sent,
            unsent,
            sent_per_sec: sent as f64 / send_secs,
            replied_per_sec: got as f64 / last_reply.duration_since(started).as_secs_f64(),
            replies: got,
            lost: sent.saturating_sub(got),
            duplicates: probe.duplicates.load(Ordering::SeqCst) - dups_before,
            error_frames: probe.error_frames.load(Ordering::SeqCst) - errors_before,
            latency: Summary::of(std::mem::take(&mut *probe.samples.lock().unwrap())),
            cpu_servers_ms: per_message(cpu_servers),
            cpu_bench_ms: per_message(cpu_bench),
            cpu_redis_ms: per_message(cpu_redis),
            ..Default::default()
        }
    }

    /// Phase 2: `send` entries to `--gateway-send-users` users on K nodes, `--gateway-send-rounds` rounds.
    async fn gateway_send(&self, target: &Target) -> anyhow::Result<GatewaySendResult> {
        let a = &self.args;
        let users = clamp_to_fd_limit(a.gateway_send_users);
        let (redis, nodes) = self.gateway_cluster(target, "gateway-send").await?;
        let probe = Arc::new(GwProbe::new());
        let (clients, connect_errors, connect_secs) =
            self.open_gateway(&nodes, users, &probe).await?;
        let backend = redis_client(&redis.url).await?;
        // As a backend would (it hears `onconnect` then): send once the nodes hold every user. Sooner, an entry for
        // a user whose node has not written it yet would find nobody holding it, and be dropped.
        anyhow::ensure!(
            all_held(&backend, clients.len()).await?,
            "the nodes did not hold the {} users within {SETTLE_LIMIT:?}",
            clients.len()
        );
        let mut pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        pids.push(redis.pid());
        let me = [std::process::id()];
        let (servers_before, bench_before, redis_before) =
            (cpu(&pids), cpu(&me), cpu(&[redis.pid()]));
        let inboxes = match a.gateway_send_direct {
            true => Some(inboxes(&backend, users).await?),
            false => None,
        };
        let (mut delivered, mut added, mut lost_rounds) = (Vec::new(), Vec::new(), 0);
        for round in 1..=a.gateway_send_rounds as u64 {
            probe.arm(round, clients.len());
            let started = Instant::now();
            match &inboxes {
                Some(inboxes) => push_round_direct(&backend, inboxes, round).await?,
                None => push_round(&backend, users, round).await?,
            }
            added.push(started.elapsed());
            match probe.wait(SETTLE_LIMIT).await {
                Some(last) => delivered.push(last.duration_since(started)),
                None => {
                    lost_rounds += 1;
                    eprintln!(
                        "  gateway send round {round}: {} of {} clients got it within {SETTLE_LIMIT:?}",
                        probe.arrived.load(Ordering::SeqCst),
                        clients.len()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rounds = a.gateway_send_rounds;
        let per_round = |d: Duration| d.as_secs_f64() * 1e3 / rounds.max(1) as f64;
        let cpu_servers_ms = per_round(cpu(&pids).saturating_sub(servers_before));
        let cpu_bench_ms = per_round(cpu(&me).saturating_sub(bench_before));
        let cpu_redis_ms = per_round(cpu(&[redis.pid()]).saturating_sub(redis_before));
        let broadcast = broadcast_rounds(&backend, &probe, &pids, redis.pid(), rounds).await?;
        tokio::time::sleep(QUIET).await;
        let missing = clients
            .iter()
            .map(|c| (2 * rounds).saturating_sub(c.pushes.load(Ordering::SeqCst)))
            .sum();
        let _ = backend.quit().await;
        let delivered = Summary::of(delivered);
        let r = GatewaySendResult {
            users,
            direct: inboxes.is_some(),
            k: nodes.len(),
            connect_secs,
            connect_errors,
            rounds,
            entries_per_sec: users as f64 / (delivered.p50 / 1e3),
            delivered,
            added: Summary::of(added),
            lost_rounds,
            missing,
            duplicates: probe.duplicates.load(Ordering::SeqCst),
            cpu_servers_ms,
            cpu_bench_ms,
            cpu_redis_ms,
            broadcast,
        };
        println!(
            "  gateway send{}: {} users on {} nodes, {} rounds: connect {:.2}s ({} errors), XADDs answered p50 \
             {:.1} ms, last client p50 {:.1} ms p99 {:.1} ms = {:.0} entries/s ({} lost rounds, {} missing, {} \
             twice; CPU per round: servers {:.0} ms, bench {:.0} ms); one broadcast entry to them: last client p50 \
             {:.1} ms, CPU per round: servers {:.0} ms ({} lost rounds)",
            if r.direct {
                " (straight to the inboxes)"
            } else {
                ""
            },
            r.users,
            r.k,
            r.rounds,
            r.connect_secs,
            r.connect_errors,
            r.added.p50,
            r.delivered.p50,
            r.delivered.p99,
            r.entries_per_sec,
            r.lost_rounds,
            r.missing,
            r.duplicates,
            r.cpu_servers_ms,
            r.cpu_bench_ms,
            r.broadcast.delivered.p50,
            r.broadcast.cpu_servers_ms,
            r.broadcast.lost_rounds
        );
        Ok(r)
    }
}

/// Hands `total` messages to the clients at `rate` per second, message `j` due at `j / rate` s and sent by
/// client `j mod N`, never waiting for a reply (open loop); every message due by now goes out at each wake-up.
/// Returns (sent, unsent).
async fn send_open_loop(
    clients: &[GwClient],
    probe: &GwProbe,
    rate: usize,
    total: usize,
    first_seq: u64,
) -> (usize, usize) {
    let start = Instant::now();
    let due = |j: usize| start + Duration::from_secs_f64(j as f64 / rate.max(1) as f64);
    let (mut j, mut sent, mut unsent) = (0, 0, 0);
    while j < total {
        tokio::time::sleep_until(due(j).into()).await;
        let now = Instant::now();
        while j < total && due(j) <= now {
            let text = json!({
                "type": MESSAGE_TYPE,
                "payload": { "s": first_seq + j as u64, "t": probe.micros(due(j)) },
            })
            .to_string();
            match clients[j % clients.len()].send(text) {
                true => sent += 1,
                false => unsent += 1,
            }
            j += 1;
        }
    }
    (sent, unsent)
}

/// The gateway tables of a report (nothing for phases that did not run).
pub fn print(r: &Report) {
    if !r.gateway_rates.is_empty() {
        println!(
            "\n| gateway round trip: clients | K | backend consumers | msg/s asked | for (s) | sent/s | replied/s \
             | p50 | p90 | p99 | max (ms) | lost | twice | error frames | unsent | CPU per message servers (of it Redis), bench (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for g in &r.gateway_rates {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.3} ({:.3}), {:.3} |",
            g.clients,
            g.k,
            g.consumers,
            g.rate,
            g.secs,
            g.sent_per_sec,
            g.replied_per_sec,
            g.latency.p50,
            g.latency.p90,
            g.latency.p99,
            g.latency.max,
            g.lost,
            g.duplicates,
            g.error_frames,
            g.unsent,
            g.cpu_servers_ms,
            g.cpu_redis_ms,
            g.cpu_bench_ms
        );
    }
    if let Some(s) = &r.gateway_send {
        println!(
            "\n| gateway send: users | K | rounds | connect (s) | XADDs answered p50 (ms) | last client p50 | p90 \
             | p99 | max (ms) | entries/s | lost rounds | missing | twice | CPU/round servers (of it Redis), bench (ms) \
             | one broadcast entry instead: last client p50 (ms) | its CPU/round servers (of it Redis) (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} users | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {:.0} ({:.0}), {:.0} \
             | {:.1} | {:.0} ({:.0}) |",
            s.users,
            s.k,
            s.rounds,
            s.connect_secs,
            s.added.p50,
            s.delivered.p50,
            s.delivered.p90,
            s.delivered.p99,
            s.delivered.max,
            s.entries_per_sec,
            s.lost_rounds,
            s.missing,
            s.duplicates,
            s.cpu_servers_ms,
            s.cpu_redis_ms,
            s.cpu_bench_ms,
            s.broadcast.delivered.p50,
            s.broadcast.cpu_servers_ms,
            s.broadcast.cpu_redis_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_the_envelope_id_and_payload_untouched() {
        let data = br#"{"id":"e-1","topic":"t","reply_to":"gateway:replies:n1","payload":{"s":3,"t":9},"x":[1]}"#;
        let (stream, reply) = reply_of(data).unwrap();
        assert_eq!(stream, "gateway:replies:n1");
        assert_eq!(reply, r#"{"id":"e-1","reply":{"s":3,"t":9}}"#);
        assert!(reply_of(b"{}").is_none() && reply_of(b"nope").is_none());
    }

    #[test]
    fn reads_entries_of_an_xreadgroup_answer() {
        let s = |t: &str| Value::String(t.into());
        let raw = Value::Array(vec![Value::Array(vec![
            s(GENERAL),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("data"), s("{}")])]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
        ])]);
        assert_eq!(
            entries(raw),
            [("1-0".into(), Some(b"{}".to_vec())), ("2-0".into(), None)]
        );
        assert!(entries(Value::Null).is_empty());
    }

    #[test]
    fn a_client_counts_each_reply_and_round_once() {
        let probe = GwProbe::new();
        let pushes = AtomicUsize::new(0);
        let mut seen = Seen::default();
        let reply = r#"{"type":"socket:generalMessage","payload":{"s":7,"t":0}}"#;
        seen.frame(reply, &probe, &pushes);
        seen.frame(reply, &probe, &pushes);
        probe.arm(2, 1);
        let push = r#"{"type":"bench-push","payload":{"round":2}}"#;
        seen.frame(push, &probe, &pushes);
        seen.frame(push, &probe, &pushes);
        seen.frame(r#"{"type":"error","payload":{}}"#, &probe, &pushes);
        assert_eq!(probe.replies.load(Ordering::SeqCst), 1);
        assert_eq!(probe.duplicates.load(Ordering::SeqCst), 2);
        assert_eq!(probe.error_frames.load(Ordering::SeqCst), 1);
        assert_eq!(pushes.load(Ordering::SeqCst), 1);
        assert!(probe.last.lock().unwrap().is_some());
    }
}
