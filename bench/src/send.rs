//! The `POST /send` phases (seed 001's push API), both targets, each on its own Redis and nodes serving the
//! namespace `/bench-send` (`auth = "claim"`, the handshake room, `api_key`, `user_room_prefix = "user_"`; the
//! Node reference the same from `SEND_SITE`, `SEND_API_KEY`, `USER_ROOM_PREFIX`):
//!
//! 1. **Requests per second.** One node; `--send-room-size` clients in the room `staff` (not a user room: a
//!    plain emit); `--send-concurrency` keep-alive HTTPS clients post `--send-requests` pushes to it. Every
//!    answer must be `200` and every client must get every event.
//! 2. **Fan-out of a push.** `--send-fanout-size` clients in the room `big` on `--nodes` nodes; each of
//!    `--fanout-rounds` rounds posts one push (to node `round mod K`), from before the POST until the last
//!    client has the event.
//! 3. **Reliable delivery.** `--reliable-rooms` clients, client `i` alone in its user room `user_{i}`, on
//!    `--nodes` nodes; `--reliable-rounds` pushes per room, posted `--send-concurrency` at a time, each to a
//!    node that varies by round (so most acks cross the cluster); every client acknowledges every event. The
//!    rate is acknowledged deliveries per second, from the first POST until the store is empty again (read in
//!    Redis: the streams of ours, the hashes of the Node reference).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::{Client, FanoutProbe, Login, SEND_EVENT},
    procs::{self, Node, Redis, Target},
};

/// The pushed namespace, and its name as `site`.
pub(crate) const SEND_NS: &str = "/bench-send";
const SITE: &str = "bench-send";
const API_KEY: &str = "bench-send-key-0123456789abcdef";
const USER_ROOM_PREFIX: &str = "user_";
/// The room of phase 1 (not a user room) and of phase 2.
const STAFF: &str = "staff";
const BIG: &str = "big";
/// How long deliveries and acks may take to arrive after the last POST was answered.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Serialize)]
pub struct SendRateResult {
    pub room_size: usize,
    pub requests: usize,
    pub concurrency: usize,
    pub connect_errors: usize,
    /// From the first POST until the last answer.
    pub secs: f64,
    pub per_sec: f64,
    pub latency: Summary,
    /// Answers other than `200`, and requests that failed.
    pub failed: usize,
    /// Events the clients received, of `expected` (requests x room size).
    pub delivered: usize,
    pub expected: usize,
    /// Clients that did not get every event.
    pub short_clients: usize,
    /// From the first POST until the last event arrived.
    pub delivered_secs: f64,
    /// CPU time per request: the node and Redis, and this load generator.
    pub cpu_servers_ms: f64,
    pub cpu_client_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct SendFanoutResult {
    pub n: usize,
    pub k: usize,
    pub connect_secs: f64,
    pub connect_errors: usize,
    /// Until the POST's answer.
    pub post: Summary,
    /// Until the last client has the event.
    pub fanout: Summary,
    /// Rounds whose answer was not `200` or that some client did not get within 10 s.
    pub lost_rounds: usize,
    pub cpu_servers_ms: f64,
    pub cpu_client_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct ReliableResult {
    pub rooms: usize,
    pub k: usize,
    pub rounds: usize,
    pub concurrency: usize,
    pub connect_errors: usize,
    pub posts: usize,
    /// Answers other than `200`, and requests that failed.
    pub failed: usize,
    /// Messages the answers said were stored (`queued`), emitted (events the clients received) and acknowledged
    /// (acks the clients sent).
    pub stored: u64,
    pub emitted: usize,
    pub acked: usize,
    /// Messages still in the store at the end (`None`: it could not be read).
    pub pending_after: Option<u64>,
    pub latency: Summary,
    /// From the first POST until the last answer, the last ack sent, the store empty.
    pub posted_secs: f64,
    pub acked_secs: f64,
    pub applied_secs: f64,
    /// Acknowledged deliveries per second, until the store was empty.
    pub per_sec: f64,
    /// CPU time per delivery: the nodes and Redis, and this load generator.
    pub cpu_servers_ms: f64,
    pub cpu_client_ms: f64,
}

impl SendRateResult {
    fn errors(&self) -> usize {
        self.connect_errors + self.failed + self.expected.abs_diff(self.delivered)
    }
}

impl SendFanoutResult {
    pub(crate) fn errors(&self) -> usize {
        self.connect_errors + self.lost_rounds
    }
}

impl ReliableResult {
    fn errors(&self) -> usize {
        let expected = self.posts;
        self.connect_errors
            + self.failed
            + (self.stored as usize).abs_diff(expected)
            + self.acked.abs_diff(expected)
            + usize::from(self.pending_after != Some(0))
    }
}

/// Errors of the send phases in a report (refused connections, failed POSTs, lost or extra events and acks, a
/// store not empty at the end).
pub fn error_count(r: &Report) -> usize {
    r.send_rate.as_ref().map_or(0, SendRateResult::errors)
        + r.send_fanout.as_ref().map_or(0, SendFanoutResult::errors)
        + r.reliable.as_ref().map_or(0, ReliableResult::errors)
}

/// Our config file: the pushed namespace, with connection state recovery for `recovery` seconds if asked.
fn write_send_config(
    dir: &std::path::Path,
    recovery: Option<u64>,
) -> anyhow::Result<std::path::PathBuf> {
    let mut text = format!(
        r#"# Written by the bench (bench/src/send.rs): the namespace POST /send pushes to.
[[namespace]]
name = "{SEND_NS}"
auth = "claim"
rooms = ["handshake"]
api_key = "{API_KEY}"
user_room_prefix = "{USER_ROOM_PREFIX}"
"#
    );
    if let Some(window) = recovery {
        text.push_str(&format!("recovery_window_s = {window}\n"));
    }
    crate::tenancy::write_config(dir, &text)
}

/// Client `i` of `/bench-send`: user `u{i}` in `room`.
pub(crate) fn login(i: usize, room: &str) -> Login {
    Login {
        namespace: SEND_NS.into(),
        query: vec![("id_user", format!("u{i}")), ("room", room.into())],
        auth: None,
    }
}

/// The body of a push of the bench's event to `room`, with `arg` as its one argument.
pub(crate) fn push_body(room: &str, arg: serde_json::Value) -> String {
    json!({ "rooms": [room], "event": SEND_EVENT, "args": [arg] }).to_string()
}

/// What a push got: its status and `queued` summed over its rooms (`None`: no answer).
pub(crate) async fn post(http: &reqwest::Client, base: &str, body: String) -> Option<(u16, u64)> {
    let res = http
        .post(format!("{base}/send?site={SITE}"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    let answer: serde_json::Value = res.json().await.unwrap_or_default();
    let queued = answer["rooms"]
        .as_array()
        .map_or(0, |r| r.iter().filter_map(|r| r["queued"].as_u64()).sum());
    Some((status, queued))
}

/// Polls `done` every 2 ms until it holds (`Some` of when it did) or `limit` has passed.
pub(crate) async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// CPU time used so far by these processes.
fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| procs::cpu_time(p)).sum()
}

/// Messages stored for reliable delivery in Redis, under `pattern`: stream entries (ours) and hash fields (the
/// Node reference), counted by one Lua script through `redis-cli`.
pub(crate) async fn pending_in_redis(redis: &Redis, pattern: &str) -> anyhow::Result<u64> {
    const COUNT: &str = "local n = 0 \
        for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
          local t = redis.call('TYPE', k)['ok'] \
          if t == 'stream' then n = n + redis.call('XLEN', k) \
          elseif t == 'hash' then n = n + redis.call('HLEN', k) end \
        end return n";
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("redis-cli")
            .args(["-u", &redis.url, "--raw", "EVAL", COUNT, "0", pattern])
            .output(),
    )
    .await
    .context("redis-cli timed out")?
    .context("redis-cli")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("redis-cli answered {text:?}"))
}

/// Where each target keeps its pending messages (ours: `src/delivery/mod.rs`, the default `REDIS_PREFIX`).
pub(crate) fn store_pattern(target: &Target) -> &'static str {
    match target.name {
        "ours" => "socket-identity:delivery:*",
        _ => "send:*",
    }
}

impl Bench {
    /// Runs the send phases the flags ask for into `report`.
    pub(crate) async fn send_phases(&self, target: &Target, report: &mut Report) {
        if self.args.send_requests > 0 {
            match self.send_rate(target).await {
                Ok(r) => report.send_rate = Some(r),
                Err(e) => report.errors.push(format!("send rate: {e:#}")),
            }
        }
        if self.args.send_fanout_size > 0 {
            let n = clamp_to_fd_limit(self.args.send_fanout_size);
            match self.send_fanout(target, n, "send-fanout", None).await {
                Ok(r) => report.send_fanout = Some(r),
                Err(e) => report.errors.push(format!("send fan-out: {e:#}")),
            }
        }
        if self.args.reliable_rooms > 0 {
            match self.reliable(target).await {
                Ok(r) => report.reliable = Some(r),
                Err(e) => report.errors.push(format!("reliable delivery: {e:#}")),
            }
        }
    }

    /// K nodes serving `/bench-send`: ours from a config file, the Node reference from its environment. With
    /// `recovery` (a window in seconds) the namespace has connection state recovery: ours its
    /// `recovery_window_s`, the Node reference `RECOVERY_WINDOW_S` (the Redis Streams adapter and socket.io's
    /// `connectionStateRecovery` instead of the Redis adapter).
    pub(crate) async fn send_cluster(
        &self,
        target: &Target,
        k: usize,
        phase: &str,
        recovery: Option<u64>,
    ) -> anyhow::Result<(Redis, Vec<Node>)> {
        let logs = self.logs(target, phase)?;
        if target.name == "ours" {
            let config = write_send_config(&logs, recovery)?;
            return self.cluster_in(target, k, &logs, Some(&config)).await;
        }
        let mut env = vec![
            ("SEND_SITE", SITE.to_owned()),
            ("SEND_API_KEY", API_KEY.to_owned()),
            ("USER_ROOM_PREFIX", USER_ROOM_PREFIX.to_owned()),
        ];
        if let Some(window) = recovery {
            env.push(("RECOVERY_WINDOW_S", window.to_string()));
        }
        self.cluster_env(target, k, &logs, None, &env).await
    }

    /// A keep-alive HTTPS client for `concurrency` requests at once, its connections opened by one push per
    /// connection and node to an empty room (so no TLS handshake is measured).
    pub(crate) async fn send_client(
        &self,
        concurrency: usize,
        nodes: &[Node],
    ) -> anyhow::Result<reqwest::Client> {
        let ca = std::fs::read(self.root.join("certs-dev/ca.pem"))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(concurrency)
            .build()?;
        for node in nodes {
            let warm =
                (0..concurrency).map(|_| post(&http, &node.base, push_body("nobody", json!({}))));
            for answer in futures_util::future::join_all(warm).await {
                anyhow::ensure!(
                    matches!(answer, Some((200, _))),
                    "warm-up push to {} answered {answer:?}",
                    node.base
                );
            }
        }
        Ok(http)
    }

    /// Opens the clients of a send phase; the rooms are joined (on every node) once the pause is over.
    pub(crate) async fn open_send(
        &self,
        nodes: &[Node],
        n: usize,
        room: impl Fn(usize) -> String,
        probe: &Arc<FanoutProbe>,
    ) -> (Vec<Client>, usize, f64) {
        let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
        let started = Instant::now();
        let logins = (0..n).map(|i| login(i, &room(i)));
        let opened = self
            .open(&addrs, logins, self.args.concurrency, probe)
            .await;
        let secs = started.elapsed().as_secs_f64();
        // The `40` comes before the connect handler has joined the rooms (and, for ours, held the user rooms).
        tokio::time::sleep(Duration::from_millis(500)).await;
        (opened.clients, opened.failed, secs)
    }

    /// Phase 1: pushes per second to a room of `--send-room-size` on one node.
    async fn send_rate(&self, target: &Target) -> anyhow::Result<SendRateResult> {
        let a = &self.args;
        let (redis, nodes) = self.send_cluster(target, 1, "send-rate", None).await?;
        let probe = Arc::new(FanoutProbe::default());
        let (clients, connect_errors, _) = self
            .open_send(&nodes, a.send_room_size, |_| STAFF.into(), &probe)
            .await;
        let node = &nodes[0];
        let http = self.send_client(a.send_concurrency, &nodes).await?;
        let pids = [node.pid(), redis.pid()];
        let me = [std::process::id()];
        let (servers_before, client_before) = (cpu(&pids), cpu(&me));
        let started = Instant::now();
        let answers: Vec<_> = futures_util::stream::iter(0..a.send_requests)
            .map(|i| {
                let (http, base) = (&http, node.base.as_str());
                async move {
                    let sent = Instant::now();
                    let answer = post(http, base, push_body(STAFF, json!({ "n": i }))).await;
                    (matches!(answer, Some((200, _))), sent.elapsed())
                }
            })
            .buffer_unordered(a.send_concurrency.max(1))
            .collect()
            .await;
        let secs = started.elapsed().as_secs_f64();
        let expected = a.send_requests * clients.len();
        let delivered_at = wait_until(SETTLE_LIMIT, || probe.send_events() >= expected).await;
        let per_request = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e3 / a.send_requests as f64
        };
        let r = SendRateResult {
            room_size: a.send_room_size,
            requests: a.send_requests,
            concurrency: a.send_concurrency,
            connect_errors,
            secs,
            per_sec: a.send_requests as f64 / secs,
            failed: answers.iter().filter(|(ok, _)| !ok).count(),
            latency: Summary::of(answers.into_iter().map(|(_, took)| took).collect()),
            delivered: probe.send_events(),
            expected,
            short_clients: clients
                .iter()
                .filter(|c| c.received() != a.send_requests)
                .count(),
            delivered_secs: delivered_at.map_or(f64::NAN, |at| (at - started).as_secs_f64()),
            cpu_servers_ms: per_request(cpu(&pids), servers_before),
            cpu_client_ms: per_request(cpu(&me), client_before),
        };
        println!(
            "  send rate: {} pushes to a room of {} on one node, {} at once: {:.0}/s, p50 {:.2} ms p99 {:.2} ms \
             ({} failed); {} of {} events delivered in {:.2}s ({} clients short)",
            r.requests,
            r.room_size,
            r.concurrency,
            r.per_sec,
            r.latency.p50,
            r.latency.p99,
            r.failed,
            r.delivered,
            r.expected,
            r.delivered_secs,
            r.short_clients
        );
        Ok(r)
    }

    /// Phase 2: one push per round to a room of `n` on K nodes, until the last client has it; `phase` names
    /// the logs' folder, `recovery` is [`Self::send_cluster`]'s (the recovery phase measures it off and on).
    pub(crate) async fn send_fanout(
        &self,
        target: &Target,
        n: usize,
        phase: &str,
        recovery: Option<u64>,
    ) -> anyhow::Result<SendFanoutResult> {
        let a = &self.args;
        let k = a.nodes;
        let (redis, nodes) = self.send_cluster(target, k, phase, recovery).await?;
        let probe = Arc::new(FanoutProbe::default());
        let (clients, connect_errors, connect_secs) =
            self.open_send(&nodes, n, |_| BIG.into(), &probe).await;
        let http = self.send_client(1, &nodes).await?;
        let mut pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        pids.push(redis.pid());
        let me = [std::process::id()];
        let (servers_before, client_before) = (cpu(&pids), cpu(&me));
        let (mut posts, mut samples, mut lost_rounds) = (Vec::new(), Vec::new(), 0);
        for round in 1..=a.fanout_rounds as u64 {
            probe.arm(round, clients.len());
            let base = &nodes[round as usize % k].base;
            let started = Instant::now();
            let answer = post(&http, base, push_body(BIG, json!({ "round": round }))).await;
            posts.push(started.elapsed());
            match (answer, probe.wait(Duration::from_secs(10)).await) {
                (Some((200, _)), Some(last)) => samples.push(last.duration_since(started)),
                (answer, _) => {
                    lost_rounds += 1;
                    eprintln!(
                        "  send fan-out round {round}: answer {answer:?}, {} of {} got it within 10 s",
                        probe.arrived(),
                        clients.len()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rounds = a.fanout_rounds.max(1) as f64;
        let per_round = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e3 / rounds
        };
        let r = SendFanoutResult {
            n,
            k,
            connect_secs,
            connect_errors,
            post: Summary::of(posts),
            fanout: Summary::of(samples),
            lost_rounds,
            cpu_servers_ms: per_round(cpu(&pids), servers_before),
            cpu_client_ms: per_round(cpu(&me), client_before),
        };
        println!(
            "  {phase}: N={n} K={k}: connect {:.2}s ({} errors), POST answered p50 {:.2} ms, last client \
             p50 {:.2} ms p99 {:.2} ms ({} lost; CPU per round: servers {:.0} ms, client {:.0} ms)",
            r.connect_secs,
            r.connect_errors,
            r.post.p50,
            r.fanout.p50,
            r.fanout.p99,
            r.lost_rounds,
            r.cpu_servers_ms,
            r.cpu_client_ms
        );
        Ok(r)
    }

    /// Phase 3: pushes to `--reliable-rooms` user rooms on K nodes, each stored, emitted and acknowledged.
    async fn reliable(&self, target: &Target) -> anyhow::Result<ReliableResult> {
        let a = &self.args;
        let (rooms, k, rounds) = (
            clamp_to_fd_limit(a.reliable_rooms),
            a.nodes,
            a.reliable_rounds,
        );
        let in_flight = a.reliable_in_flight.unwrap_or(a.send_concurrency).max(1);
        let (redis, nodes) = self.send_cluster(target, k, "reliable", None).await?;
        let probe = Arc::new(FanoutProbe::default());
        // Held until the end: dropping a client closes it.
        let (_clients, connect_errors, _) = self
            .open_send(&nodes, rooms, |i| format!("{USER_ROOM_PREFIX}{i}"), &probe)
            .await;
        let http = self.send_client(in_flight, &nodes).await?;
        let pattern = store_pattern(target);
        anyhow::ensure!(
            pending_in_redis(&redis, pattern).await? == 0,
            "messages pending before the first push"
        );
        let mut pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        pids.push(redis.pid());
        let me = [std::process::id()];
        let (servers_before, client_before) = (cpu(&pids), cpu(&me));
        let posts = rooms * rounds;
        let started = Instant::now();
        let answers: Vec<_> = futures_util::stream::iter(0..posts)
            .map(|j| {
                let (round, room) = (j / rooms, j % rooms);
                // Client `room` is on node `room mod K`; the node posted to moves on by one each round, as a
                // load balancer in front of the cluster would spread them: 1 push in K is acked locally.
                let base = nodes[(room + 1 + round) % k].base.as_str();
                let body = push_body(&format!("{USER_ROOM_PREFIX}{room}"), json!({ "n": round }));
                let http = &http;
                async move {
                    let sent = Instant::now();
                    let answer = post(http, base, body).await;
                    (answer, sent.elapsed())
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let posted_secs = started.elapsed().as_secs_f64();
        wait_until(SETTLE_LIMIT, || probe.acks() >= posts).await;
        let acked_secs = probe
            .last_ack()
            .map_or(f64::NAN, |at| (at - started).as_secs_f64());
        // Acks are applied by the nodes after the client sent them: the end is when the store is empty.
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut pending_after = pending_in_redis(&redis, pattern).await.ok();
        while pending_after != Some(0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            pending_after = pending_in_redis(&redis, pattern).await.ok();
        }
        let applied_secs = started.elapsed().as_secs_f64();
        let acked = probe.acks();
        let per_delivery = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e3 / posts.max(1) as f64
        };
        let r = ReliableResult {
            rooms,
            k,
            rounds,
            concurrency: in_flight,
            connect_errors,
            posts,
            failed: answers
                .iter()
                .filter(|(a, _)| !matches!(a, Some((200, _))))
                .count(),
            stored: answers.iter().filter_map(|(a, _)| a.map(|a| a.1)).sum(),
            emitted: probe.send_events(),
            acked,
            pending_after,
            latency: Summary::of(answers.into_iter().map(|(_, took)| took).collect()),
            posted_secs,
            acked_secs,
            applied_secs,
            per_sec: acked as f64 / applied_secs,
            cpu_servers_ms: per_delivery(cpu(&pids), servers_before),
            cpu_client_ms: per_delivery(cpu(&me), client_before),
        };
        println!(
            "  reliable: {} pushes to {} user rooms on {} nodes, {} at once: stored {}, emitted {}, acked {}, \
             pending after {:?}; store empty after {:.2}s: {:.0} deliveries/s (POST p50 {:.2} ms)",
            r.posts,
            r.rooms,
            r.k,
            r.concurrency,
            r.stored,
            r.emitted,
            r.acked,
            r.pending_after,
            r.applied_secs,
            r.per_sec,
            r.latency.p50
        );
        Ok(r)
    }
}

/// The send tables of a report (nothing for phases that did not run).
pub fn print(r: &Report) {
    if let Some(s) = &r.send_rate {
        println!(
            "\n| POST /send, one node: room | requests | in flight | req/s | p50 | p90 | p99 | max (ms) | failed \
             | events delivered | all delivered (s) | CPU per request servers, client (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} sockets | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} of {} | {:.2} | {:.3}, {:.3} |",
            s.room_size,
            s.requests,
            s.concurrency,
            s.per_sec,
            s.latency.p50,
            s.latency.p90,
            s.latency.p99,
            s.latency.max,
            s.failed,
            s.delivered,
            s.expected,
            s.delivered_secs,
            s.cpu_servers_ms,
            s.cpu_client_ms
        );
    }
    if let Some(f) = &r.send_fanout {
        println!(
            "\n| POST /send fan-out: N | K | connect (s) | answer p50 (ms) | last client p50 | p90 | p99 | max (ms) \
             | lost | CPU/round servers, client (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} sockets | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0}, {:.0} |",
            f.n,
            f.k,
            f.connect_secs,
            f.post.p50,
            f.fanout.p50,
            f.fanout.p90,
            f.fanout.p99,
            f.fanout.max,
            f.lost_rounds,
            f.cpu_servers_ms,
            f.cpu_client_ms
        );
    }
    if let Some(d) = &r.reliable {
        println!(
            "\n| reliable: user rooms | K | pushes | in flight | stored | emitted | acked | pending after \
             | POST p50 | p99 (ms) | last ack (s) | store empty (s) | deliveries/s | CPU per delivery servers, client (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.3}, {:.3} |",
            d.rooms,
            d.k,
            d.posts,
            d.concurrency,
            d.stored,
            d.emitted,
            d.acked,
            d.pending_after
                .map_or_else(|| "unread".to_owned(), |p| p.to_string()),
            d.latency.p50,
            d.latency.p99,
            d.acked_secs,
            d.applied_secs,
            d.per_sec,
            d.cpu_servers_ms,
            d.cpu_client_ms
        );
    }
}

/// The send rows of the ours / node table; `row(name, ours, node, unit)`.
pub fn ratios(ours: &Report, node: &Report, row: &dyn Fn(String, f64, f64, &str)) {
    if let (Some(a), Some(b)) = (&ours.send_rate, &node.send_rate) {
        // A rate: node / ours, so that below 1 is better here too.
        row(
            format!(
                "POST /send time per request (1 / req/s), room of {}",
                a.room_size
            ),
            1e3 / a.per_sec,
            1e3 / b.per_sec,
            "ms",
        );
        row(
            format!("POST /send p50, room of {}", a.room_size),
            a.latency.p50,
            b.latency.p50,
            "ms",
        );
        row(
            format!("POST /send p99, room of {}", a.room_size),
            a.latency.p99,
            b.latency.p99,
            "ms",
        );
    }
    if let (Some(a), Some(b)) = (&ours.send_fanout, &node.send_fanout) {
        for (name, x, y) in [
            ("p50", a.fanout.p50, b.fanout.p50),
            ("p99", a.fanout.p99, b.fanout.p99),
        ] {
            row(
                format!("POST /send to the last of N={} K={}, {name}", a.n, a.k),
                x,
                y,
                "ms",
            );
        }
    }
    if let (Some(a), Some(b)) = (&ours.reliable, &node.reliable) {
        row(
            format!(
                "reliable delivery, time per acked delivery (1 / rate), {} user rooms K={}",
                a.rooms, a.k
            ),
            1e3 / a.per_sec,
            1e3 / b.per_sec,
            "ms",
        );
    }
}
