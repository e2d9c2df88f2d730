//! Lifecycle webhooks (docs/webhooks.md, issue 24), ours only (the Node reference has none): sockets churn through
//! many rooms on K nodes while the cluster tells a receiver in this process, over signed POSTs, each room's
//! `room.occupied` / `room.vacated` and each user's `member.added` / `member.removed`.
//!
//! The receiver ([`Receiver`]) is a plain HTTP/1.1 server on loopback that answers `200` at once, takes one event or
//! (with `batch_ms > 0`) a JSON array of them, and records each event's lag: its arrival here minus its `timestamp`
//! (when the change happened, by Redis's clock; the same host's clock, to the millisecond). Signatures are not
//! checked here (the tests do, with the official `standardwebhooks` package); an event already received (same
//! type, room, user and timestamp) counts as a duplicate, and so does a request whose `webhook-id` came before.
//!
//! The churn: socket `j` is due at `j / rate` s (open loop, whatever the earlier ones did), connects to node
//! `j mod K` as its own user `w{j}` into the room `r{j mod rooms}`, and disconnects `lifetime` after its due time.
//! A room is used again only `rooms / rate` s later, after its previous socket left (the phase refuses flags where
//! it would not be), so every connected socket makes exactly 4 events: `room.occupied` and `member.added` when it
//! connects, `member.removed` and `room.vacated` when it leaves. Every expected event must arrive exactly once
//! (duplicates are reported; at-least-once allows them, but a run with no node dying should have none), room
//! events in order per room, and the nodes' own counters must show nothing given up, dropped or unrecorded.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming};
use serde::Serialize;
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::{Client, FanoutProbe, Login},
    procs::{self, Node, Target},
    send::wait_until,
};

/// The namespace of the churning sockets, the only one the webhook reports.
const WH_NS: &str = "/bench-wh";
/// The webhook's Standard Webhooks secret (`whsec_` and base64 of the key's bytes); the receiver does not check it.
const SECRET: &str = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OWFi";
/// The four event types, each socket making one of each.
const TYPES: [&str; 4] = [
    "room.occupied",
    "member.added",
    "member.removed",
    "room.vacated",
];
/// How long the last events may take after the last socket left, before the missing ones count as lost.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// After every expected event arrived, how long a duplicate has to show up.
const QUIET: Duration = Duration::from_secs(1);
/// A room is used again at least this long after its previous socket left.
const ROOM_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Serialize)]
pub struct WebhookChurnResult {
    pub k: usize,
    pub rooms: usize,
    /// Sockets per second asked for, for `secs` seconds, each living `lifetime_ms` from its due time.
    pub rate: usize,
    pub secs: u64,
    pub lifetime_ms: u64,
    /// The webhook's `batch_ms`.
    pub batch_ms: u64,
    /// Sockets connected and refused (or timed out); their handshake latency from the due time.
    pub connected: usize,
    pub connect_errors: usize,
    pub connect: Summary,
    /// Events expected (4 per connected socket), received once, received again, and room events out of order.
    pub expected: usize,
    pub received: usize,
    pub duplicates: usize,
    pub duplicate_ids: usize,
    pub out_of_order: usize,
    /// Events of no expected type or room, or that did not parse.
    pub unexpected: usize,
    /// Events missing at the end (expected, never received).
    pub lost: usize,
    /// Requests the receiver got.
    pub requests: usize,
    /// Expected events per second from the first socket's due time to the last one's leaving (`secs + lifetime`;
    /// while sockets both come and go it is `4 x rate`), and events received per second from the first due time to
    /// the last arrival: equal when the webhook keeps up.
    pub offered_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Arrival here minus the event's `timestamp`.
    pub lag: Summary,
    /// From the last socket's disconnect until the last event arrived.
    pub tail_secs: f64,
    /// The nodes' own counters over the measurement (`webhook_events_total`, `webhook_delivery_seconds`).
    pub server_delivered: u64,
    pub server_given_up: u64,
    pub server_dropped: u64,
    pub server_unrecorded: u64,
    pub server_mean_lag_ms: f64,
    /// CPU used, in cores (CPU seconds per second, from the first due time to the last arrival): the nodes, Redis,
    /// and this process (clients and receiver).
    pub cpu_nodes: f64,
    pub cpu_redis: f64,
    pub cpu_bench: f64,
}

impl WebhookChurnResult {
    fn errors(&self) -> usize {
        self.connect_errors
            + self.lost
            + self.received.saturating_sub(self.expected)
            + self.out_of_order
            + self.unexpected
            + (self.server_given_up + self.server_dropped + self.server_unrecorded) as usize
    }
}

/// Errors of the webhook phase in a report.
pub fn error_count(r: &Report) -> usize {
    r.webhook_churn.iter().map(WebhookChurnResult::errors).sum()
}

/// What the receiver has taken in so far.
#[derive(Default)]
struct Inbox {
    requests: usize,
    /// Events received once (by their key), and each kind of trouble.
    received: usize,
    duplicates: usize,
    duplicate_ids: usize,
    out_of_order: usize,
    unexpected: usize,
    lags: Vec<Duration>,
    last: Option<Instant>,
    /// Keys of the events received (type, room, user, timestamp), and `webhook-id`s.
    seen: HashSet<String>,
    ids: HashSet<String>,
    /// Whether each room is occupied, by the events so far.
    occupied: HashMap<String, bool>,
}

impl Inbox {
    /// One request's body, arrived at `at` (`now` by the wall clock).
    fn take(&mut self, id: &str, body: &[u8], at: Instant, now: SystemTime) {
        self.requests += 1;
        if !self.ids.insert(id.to_owned()) {
            self.duplicate_ids += 1;
        }
        self.last = Some(at);
        let events = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(events)) => events,
            Ok(event) => vec![event],
            Err(_) => {
                self.unexpected += 1;
                return;
            }
        };
        for e in &events {
            self.event(e, now);
        }
    }

    fn event(&mut self, e: &Value, now: SystemTime) {
        let (Some(kind), Some(timestamp), Some(room)) = (
            e["type"].as_str(),
            e["timestamp"].as_str(),
            e["data"]["room"].as_str(),
        ) else {
            self.unexpected += 1;
            return;
        };
        let Ok(at) = humantime::parse_rfc3339(timestamp) else {
            self.unexpected += 1;
            return;
        };
        if !TYPES.contains(&kind) || e["data"]["namespace"] != WH_NS {
            self.unexpected += 1;
            return;
        }
        let user = e["data"]["id_user"].as_str().unwrap_or("");
        if !self
            .seen
            .insert(format!("{kind} {room} {user} {timestamp}"))
        {
            self.duplicates += 1;
            return;
        }
        self.received += 1;
        // The timestamp has milliseconds only: an event of this very millisecond is 0 late, not negative.
        self.lags
            .push(now.duration_since(at).unwrap_or(Duration::ZERO));
        let now_occupied = match kind {
            "room.occupied" => true,
            "room.vacated" => false,
            _ => return,
        };
        let was = self.occupied.insert(room.to_owned(), now_occupied);
        if was.unwrap_or(false) == now_occupied {
            self.out_of_order += 1;
            if self.out_of_order <= 3 {
                eprintln!("  webhook: {kind} of {room} out of order");
            }
        }
    }
}

/// The webhook's backend: `POST /hooks` on loopback, `200` to everything. Dropping it stops it and its connections.
struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let filled = inbox.clone();
        let task = tokio::spawn(async move {
            // Aborted with the accept loop, so no connection outlives the receiver.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let inbox = filled.clone();
                let service = hyper::service::service_fn(move |req| answer(req, inbox.clone()));
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            url: format!("http://{addr}/hooks"),
            inbox,
            task,
        })
    }

    /// Forgets everything received so far (the warm-up's events).
    fn reset(&self) {
        *self.inbox.lock().unwrap() = Inbox::default();
    }

    fn received(&self) -> usize {
        self.inbox.lock().unwrap().received
    }
}

/// One request: recorded, answered `200` with no body.
async fn answer(
    req: Request<Incoming>,
    inbox: Arc<Mutex<Inbox>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let (at, now) = (Instant::now(), SystemTime::now());
    inbox.lock().unwrap().take(&id, &body, at, now);
    Ok(Response::new(Full::new(Bytes::new())))
}

/// The nodes' webhook counters, summed: `socket_identity_webhook_events_total` by outcome, and `webhook_delivery_seconds`' sum and
/// count.
#[derive(Debug, Default, Clone, Copy)]
struct ServerCounts {
    delivered: u64,
    given_up: u64,
    dropped: u64,
    unrecorded: u64,
    lag_sum: f64,
    lag_count: u64,
}

impl ServerCounts {
    /// Adds one node's `/metrics` text.
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            // Every metric is prefixed `socket_identity_` (docs/operations.md).
            let Some((name, value)) = line
                .strip_prefix("socket_identity_")
                .and_then(|l| l.rsplit_once(' '))
            else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            match name {
                r#"webhook_events_total{outcome="delivered"}"# => self.delivered += v as u64,
                r#"webhook_events_total{outcome="given_up"}"# => self.given_up += v as u64,
                r#"webhook_events_total{outcome="dropped"}"# => self.dropped += v as u64,
                r#"webhook_events_total{outcome="unrecorded"}"# => self.unrecorded += v as u64,
                "webhook_delivery_seconds_sum" => self.lag_sum += v,
                "webhook_delivery_seconds_count" => self.lag_count += v as u64,
                _ => {}
            }
        }
    }

    /// What happened between `before` and `self`.
    fn since(self, before: Self) -> Self {
        Self {
            delivered: self.delivered.saturating_sub(before.delivered),
            given_up: self.given_up.saturating_sub(before.given_up),
            dropped: self.dropped.saturating_sub(before.dropped),
            unrecorded: self.unrecorded.saturating_sub(before.unrecorded),
            lag_sum: self.lag_sum - before.lag_sum,
            lag_count: self.lag_count.saturating_sub(before.lag_count),
        }
    }
}

/// How the churn's sockets fared.
#[derive(Default)]
struct Churned {
    connected: AtomicUsize,
    failed: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
    errors: Mutex<BTreeMap<String, usize>>,
}

/// CPU time used so far by these processes, to the nanosecond.
fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| procs::cpu_time_precise(p)).sum()
}

impl Bench {
    /// Runs the webhook phase, once per `--webhook-batch-ms`, if the flags ask for it (ours only).
    pub(crate) async fn webhook_phase(&self, target: &Target, report: &mut Report) {
        let a = &self.args;
        if a.webhook_churn == 0 || a.webhook_seconds == 0 || a.webhook_rooms == 0 {
            return;
        }
        for &batch_ms in &a.webhook_batch_ms {
            match self.webhook_churn(target, batch_ms).await {
                Ok(r) => report.webhook_churn.push(r),
                Err(e) => report
                    .errors
                    .push(format!("webhook churn, batch_ms {batch_ms}: {e:#}")),
            }
        }
    }

    async fn webhook_churn(
        &self,
        target: &Target,
        batch_ms: u64,
    ) -> anyhow::Result<WebhookChurnResult> {
        let a = &self.args;
        let (rate, secs, rooms, k) = (a.webhook_churn, a.webhook_seconds, a.webhook_rooms, a.nodes);
        let lifetime = Duration::from_millis(a.webhook_lifetime_ms);
        // Each room's previous socket must be gone before the next one comes, or the expected counts are wrong.
        let reuse = Duration::from_secs_f64(rooms as f64 / rate as f64);
        anyhow::ensure!(
            reuse >= lifetime + ROOM_GAP,
            "a room is used again every {reuse:?} (--webhook-rooms / --webhook-churn), which must be at least \
             --webhook-lifetime-ms + {ROOM_GAP:?}"
        );
        // Sockets open at once: `rate x lifetime`, and their connects in flight.
        let open = rate * (lifetime.as_millis() as usize + 1_000) / 1_000;
        anyhow::ensure!(
            clamp_to_fd_limit(open) == open,
            "{open} sockets open at once do not fit the open-files limit"
        );
        let receiver = Receiver::start().await?;
        let logs = self.logs(target, &format!("webhook-batch-{batch_ms}"))?;
        let text = format!(
            r#"# Written by the bench (bench/src/webhook.rs): the namespace whose rooms the webhook reports.
[[namespace]]
name = "{WH_NS}"
auth = "claim"
rooms = ["handshake"]

[[webhook]]
url = "{url}"
secret = "{SECRET}"
namespaces = ["{WH_NS}"]
batch_ms = {batch_ms}
"#,
            url = receiver.url
        );
        let config = crate::tenancy::write_config(&logs, &text)?;
        let (redis, nodes) = self.cluster_in(target, k, &logs, Some(&config)).await?;
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

        // Warm-up: one socket in and out, its 4 events received (a node holds the lease, its connection to the
        // receiver is open), before the clock runs.
        let probe = Arc::new(FanoutProbe::default());
        let warm = Client::connect(
            &self.tls,
            addrs[0],
            &login("warm", "warm"),
            probe.clone(),
            Duration::from_secs(20),
        )
        .await?;
        drop(warm);
        anyhow::ensure!(
            wait_until(SETTLE_LIMIT, || receiver.received() >= 4)
                .await
                .is_some(),
            "warm-up: {} of 4 events within {SETTLE_LIMIT:?}",
            receiver.received()
        );
        receiver.reset();
        // The receiver records a request before it answers, and a node counts the request's events delivered once it
        // has the answer: wait for that too, or the warm-up's 4 could be counted as the churn's.
        let deadline = Instant::now() + SETTLE_LIMIT;
        let server_before = loop {
            let counts = self.server_counts(&nodes).await?;
            if counts.delivered >= 4 {
                break counts;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "warm-up: the nodes counted {} of its 4 events delivered within {SETTLE_LIMIT:?}",
                counts.delivered
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let node_pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        let me = [std::process::id()];
        let cpu_before = (cpu(&node_pids), cpu(&[redis.pid()]), cpu(&me));
        let churned = Arc::new(Churned::default());
        let start = Instant::now();
        let total = rate * secs as usize;
        let due = |j: usize| start + Duration::from_secs_f64(j as f64 / rate as f64);
        let mut sockets = tokio::task::JoinSet::new();
        let mut j = 0;
        // Open loop: every socket due by now starts at each wake-up, however the earlier ones are doing.
        while j < total {
            tokio::time::sleep_until(due(j).into()).await;
            let now = Instant::now();
            while j < total && due(j) <= now {
                let (tls, addr, probe, churned) = (
                    self.tls.clone(),
                    addrs[j % addrs.len()],
                    probe.clone(),
                    churned.clone(),
                );
                let (login, leave_at) = (
                    login(&format!("w{j}"), &format!("r{}", j % rooms)),
                    due(j) + lifetime,
                );
                let due = due(j);
                sockets.spawn(async move {
                    match Client::connect(&tls, addr, &login, probe, Duration::from_secs(20)).await
                    {
                        Ok(client) => {
                            churned.latencies.lock().unwrap().push(due.elapsed());
                            churned.connected.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep_until(leave_at.into()).await;
                            drop(client);
                        }
                        Err(e) => {
                            churned.failed.fetch_add(1, Ordering::SeqCst);
                            *churned
                                .errors
                                .lock()
                                .unwrap()
                                .entry(e.to_string())
                                .or_default() += 1;
                        }
                    }
                });
                j += 1;
            }
            while sockets.try_join_next().is_some() {}
        }
        while sockets.join_next().await.is_some() {}
        let left = Instant::now();
        let connected = churned.connected.load(Ordering::SeqCst);
        let expected = 4 * connected;
        wait_until(SETTLE_LIMIT, || receiver.received() >= expected).await;
        let cpu_after = (cpu(&node_pids), cpu(&[redis.pid()]), cpu(&me));
        tokio::time::sleep(QUIET).await;
        let server = self.server_counts(&nodes).await?.since(server_before);
        for (e, count) in churned.errors.lock().unwrap().iter() {
            eprintln!("  webhook churn: {count} connection(s) failed: {e}");
        }

        let inbox = receiver.inbox.lock().unwrap();
        let last = inbox.last.unwrap_or(left);
        let wall = last.duration_since(start).as_secs_f64();
        let cores =
            |after: Duration, before: Duration| after.saturating_sub(before).as_secs_f64() / wall;
        let r = WebhookChurnResult {
            k: nodes.len(),
            rooms,
            rate,
            secs,
            lifetime_ms: a.webhook_lifetime_ms,
            batch_ms,
            connected,
            connect_errors: churned.failed.load(Ordering::SeqCst),
            connect: Summary::of(churned.latencies.lock().unwrap().clone()),
            expected,
            received: inbox.received,
            duplicates: inbox.duplicates,
            duplicate_ids: inbox.duplicate_ids,
            out_of_order: inbox.out_of_order,
            unexpected: inbox.unexpected,
            lost: expected.saturating_sub(inbox.received),
            requests: inbox.requests,
            offered_per_sec: expected as f64 / (secs as f64 + lifetime.as_secs_f64()),
            delivered_per_sec: inbox.received as f64 / wall,
            lag: Summary::of(inbox.lags.clone()),
            tail_secs: last.saturating_duration_since(left).as_secs_f64(),
            server_delivered: server.delivered,
            server_given_up: server.given_up,
            server_dropped: server.dropped,
            server_unrecorded: server.unrecorded,
            server_mean_lag_ms: server.lag_sum * 1e3 / server.lag_count.max(1) as f64,
            cpu_nodes: cores(cpu_after.0, cpu_before.0),
            cpu_redis: cores(cpu_after.1, cpu_before.1),
            cpu_bench: cores(cpu_after.2, cpu_before.2),
        };
        println!(
            "  webhook churn: {} sockets/s for {} s over {} rooms on {} nodes, batch_ms {}: {} connected ({} \
             errors); {} of {} events received ({} twice, {} out of order, {} unexpected) in {} requests, \
             {:.0}/s offered, {:.0}/s delivered, lag p50 {:.1} ms p99 {:.1} ms max {:.1} ms, tail {:.2} s; \
             CPU cores: nodes {:.2}, redis {:.2}, bench {:.2}",
            r.rate,
            r.secs,
            r.rooms,
            r.k,
            r.batch_ms,
            r.connected,
            r.connect_errors,
            r.received,
            r.expected,
            r.duplicates,
            r.out_of_order,
            r.unexpected,
            r.requests,
            r.offered_per_sec,
            r.delivered_per_sec,
            r.lag.p50,
            r.lag.p99,
            r.lag.max,
            r.tail_secs,
            r.cpu_nodes,
            r.cpu_redis,
            r.cpu_bench
        );
        Ok(r)
    }

    /// The webhook counters of every node's `/metrics`, summed.
    async fn server_counts(&self, nodes: &[Node]) -> anyhow::Result<ServerCounts> {
        let mut counts = ServerCounts::default();
        for node in nodes {
            let text = self
                .http
                .get(format!("{}/metrics", node.base))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            counts.add(&text);
        }
        Ok(counts)
    }
}

/// A socket of `/bench-wh` as user `id_user` in the room `room`.
fn login(id_user: &str, room: &str) -> Login {
    Login {
        namespace: WH_NS.into(),
        query: vec![("id_user", id_user.into()), ("room", room.into())],
        auth: None,
    }
}

/// The webhook table of a report (nothing if the phase did not run).
pub fn print(r: &Report) {
    if r.webhook_churn.is_empty() {
        return;
    }
    println!(
        "\n| webhook churn: sockets/s | for (s) | lifetime (s) | rooms | K | batch_ms | connected (errors) \
         | connect p50 (ms) | events expected | received | twice | out of order, unexpected | requests \
         | offered/s | delivered/s | lag p50 | p90 | p99 | max (ms) | tail (s) \
         | nodes: delivered, mean lag (ms), given up, dropped, unrecorded | CPU cores nodes, redis, bench |"
    );
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for x in &r.webhook_churn {
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {} ({}) | {:.1} | {} | {} | {} | {}, {} | {} | {:.0} | {:.0} \
             | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {}, {:.1}, {}, {}, {} | {:.2}, {:.2}, {:.2} |",
            x.rate,
            x.secs,
            x.lifetime_ms as f64 / 1e3,
            x.rooms,
            x.k,
            x.batch_ms,
            x.connected,
            x.connect_errors,
            x.connect.p50,
            x.expected,
            x.received,
            x.duplicates,
            x.out_of_order,
            x.unexpected,
            x.requests,
            x.offered_per_sec,
            x.delivered_per_sec,
            x.lag.p50,
            x.lag.p90,
            x.lag.p99,
            x.lag.max,
            x.tail_secs,
            x.server_delivered,
            x.server_mean_lag_ms,
            x.server_given_up,
            x.server_dropped,
            x.server_unrecorded,
            x.cpu_nodes,
            x.cpu_redis,
            x.cpu_bench
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, room: &str, user: Option<&str>, timestamp: &str) -> Value {
        let mut data = serde_json::json!({ "namespace": WH_NS, "room": room });
        if let Some(user) = user {
            data["id_user"] = user.into();
        }
        serde_json::json!({ "type": kind, "timestamp": timestamp, "data": data })
    }

    #[test]
    fn counts_lag_duplicates_and_room_order() {
        let mut inbox = Inbox::default();
        let now = humantime::parse_rfc3339("2026-12-02T15:39:53.200Z").unwrap();
        let occupied = event("room.occupied", "r1", None, "2026-12-02T15:39:53.123Z");
        let added = event("member.added", "r1", Some("w1"), "2026-12-02T15:39:53.123Z");
        let batch = Value::Array(vec![occupied.clone(), added]).to_string();
        inbox.take("msg_1", batch.as_bytes(), Instant::now(), now);
        assert_eq!((inbox.received, inbox.duplicates), (2, 0));
        assert_eq!(inbox.lags, vec![Duration::from_millis(77); 2]);
        // The same event again, under the same id: a duplicate, not a second occupation.
        inbox.take(
            "msg_1",
            occupied.to_string().as_bytes(),
            Instant::now(),
            now,
        );
        assert_eq!(
            (inbox.received, inbox.duplicates, inbox.duplicate_ids),
            (2, 1, 1)
        );
        assert_eq!(inbox.out_of_order, 0);
        // Occupied again without a vacated in between: out of order. A vacated of a room never occupied too.
        let again = event("room.occupied", "r1", None, "2026-12-02T15:39:53.150Z");
        inbox.take("msg_2", again.to_string().as_bytes(), Instant::now(), now);
        let vacated = event("room.vacated", "r2", None, "2026-12-02T15:39:53.150Z");
        inbox.take("msg_3", vacated.to_string().as_bytes(), Instant::now(), now);
        assert_eq!(inbox.out_of_order, 2);
        // An event from a later millisecond than the receiver's clock counts 0 late; garbage is unexpected.
        let ahead = event(
            "member.removed",
            "r1",
            Some("w1"),
            "2026-12-02T15:39:53.201Z",
        );
        inbox.take("msg_4", ahead.to_string().as_bytes(), Instant::now(), now);
        assert_eq!(inbox.lags.last(), Some(&Duration::ZERO));
        inbox.take("msg_5", b"not json", Instant::now(), now);
        assert_eq!(inbox.unexpected, 1);
        assert_eq!(inbox.requests, 6);
    }

    #[test]
    fn sums_the_nodes_counters() {
        let text = "# TYPE socket_identity_webhook_events counter\n\
                    socket_identity_webhook_events_total{outcome=\"delivered\"} 40\n\
                    socket_identity_webhook_events_total{outcome=\"given_up\"} 1\n\
                    socket_identity_webhook_delivery_seconds_sum 2.0\n\
                    socket_identity_webhook_delivery_seconds_count 40\n\
                    socket_identity_webhook_delivery_seconds_bucket{le=\"0.001\"} 3\n\
                    webhook_events_total{outcome=\"delivered\"} 1000\n";
        let mut c = ServerCounts::default();
        c.add(text);
        c.add(text);
        let d = c.since(ServerCounts {
            delivered: 30,
            ..Default::default()
        });
        assert_eq!((d.delivered, d.given_up, d.lag_count), (50, 2, 80));
        assert!((d.lag_sum - 4.0).abs() < 1e-9);
    }
}
