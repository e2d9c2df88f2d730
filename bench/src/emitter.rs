//! The socket.io Redis emitter (docs/emitter.md), both targets, on `/bench-send` (`send.rs`'s cluster): the bench
//! plays a backend using `@socket.io/redis-emitter`, publishing its exact bytes (msgpack
//! `[uid, {type: 2, data: [event, ...args], nsp}, {rooms, flags, except}]` on `socket.io#{nsp}#{room}#`) straight
//! to the phase's Redis; our nodes take them with their emitter subscriber, the Node reference's with
//! `@socket.io/redis-adapter` (key `socket.io`, classic pub/sub), which reads that protocol natively.
//!
//! 1. **Fan-out of one message.** `--emitter-fanout-size` sockets in the room `big` on `--nodes` nodes; each of
//!    `--fanout-rounds` rounds publishes one message, from before the `PUBLISH` until the last socket has it.
//!    Then, after the rounds (and a quiet moment for late doubles), every socket must have had every message
//!    exactly once.
//! 2. **Messages per second.** `--emitter-rate-room` sockets in the room `staff` on `--nodes` nodes; for
//!    `--emitter-rate-seconds` the bench publishes as fast as the sockets keep up: at most `--emitter-window`
//!    messages unfinished (published, not yet at every socket of the room), the next published as soon as one
//!    completes, its `PUBLISH` pipelined behind those not yet answered. The rate is complete messages per
//!    second; the latency is from the `PUBLISH` until the last socket had it. Every socket must have every
//!    message exactly once.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use fred::{
    clients::Client as Redis,
    interfaces::{ClientLike, PubsubInterface},
    types::config::Config,
};
use serde::Serialize;

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::{Client, FanoutProbe, SEND_EVENT, Tally},
    procs::{self, Node, Target},
    send::{SEND_NS, wait_until},
};

/// The emitter's default key, which both targets subscribe with.
const KEY: &str = "socket.io";
/// `@socket.io/redis-emitter`'s uid (the constant `UID` of its `dist/index.js`): no node of either target
/// publishes with it, so none takes these messages for its own.
const UID: &str = "emitter";
/// The rooms of phases 1 and 2.
const BIG: &str = "big";
const STAFF: &str = "staff";
/// How long a message may take to reach every socket before it counts as lost.
const ROUND_LIMIT: Duration = Duration::from_secs(10);
/// After the last message is complete, how long a double has to show up.
const QUIET: Duration = Duration::from_millis(300);

/// One broadcast of `@socket.io/redis-emitter`, field for field in its order (msgpack maps keep it):
/// `emitter.of(nsp).to(room).emit(event, arg)`.
#[derive(Debug, Serialize)]
struct Broadcast<'a>(&'a str, Packet<'a>, Opts<'a>);

#[derive(Debug, Serialize)]
struct Packet<'a> {
    /// `PacketType.EVENT`.
    #[serde(rename = "type")]
    kind: u8,
    data: (&'a str, Round),
    nsp: &'a str,
}

/// The one argument of every message: `{"round": n}`, what the clients' probe counts (`client.rs`).
#[derive(Debug, Serialize)]
struct Round {
    round: u64,
}

#[derive(Debug, Serialize)]
struct Opts<'a> {
    rooms: [&'a str; 1],
    /// No `volatile`, no `compress`: `{}`.
    flags: Flags,
    except: [&'a str; 0],
}

#[derive(Debug, Serialize)]
struct Flags {}

/// The channel and bytes `@socket.io/redis-emitter` publishes for `emitter.of(nsp).to(room).emit(event,
/// {round})`: one room, so the room is in the channel (where the Node adapter skips a room it does not hold).
fn broadcast(nsp: &str, room: &str, event: &str, round: u64) -> anyhow::Result<(String, Vec<u8>)> {
    let message = Broadcast(
        UID,
        Packet {
            kind: 2,
            data: (event, Round { round }),
            nsp,
        },
        Opts {
            rooms: [room],
            flags: Flags {},
            except: [],
        },
    );
    let bytes = rmp_serde::to_vec_named(&message).context("msgpack")?;
    Ok((format!("{KEY}#{nsp}#{room}#"), bytes))
}

#[derive(Debug, Default, Serialize)]
pub struct EmitterFanoutResult {
    pub n: usize,
    pub k: usize,
    pub rounds: usize,
    pub connect_secs: f64,
    pub connect_errors: usize,
    /// Subscribers the first `PUBLISH` reached (Redis's answer: one per node, both targets).
    pub subscribers: i64,
    /// Until Redis answered the `PUBLISH`.
    pub publish: Summary,
    /// Until the last socket had the message.
    pub fanout: Summary,
    /// Rounds that some socket did not get within 10 s, or whose `PUBLISH` failed.
    pub lost_rounds: usize,
    /// Messages the sockets received, of `expected` (sockets x rounds); messages lost and received twice, over
    /// every socket; sockets that did not get exactly every message once.
    pub delivered: usize,
    pub expected: usize,
    pub lost: usize,
    pub doubled: usize,
    pub wrong_sockets: usize,
    /// CPU time per round: the nodes and Redis, and this load generator.
    pub cpu_servers_ms: f64,
    pub cpu_client_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct EmitterRateResult {
    pub room: usize,
    pub k: usize,
    pub window: usize,
    pub connect_errors: usize,
    /// Messages published, and complete (at every socket of the room).
    pub published: usize,
    pub complete: usize,
    /// From the first `PUBLISH` until the last message was complete.
    pub secs: f64,
    /// Complete messages per second, and deliveries (to one socket) per second.
    pub per_sec: f64,
    pub deliveries_per_sec: f64,
    /// From the `PUBLISH` until the last socket of the room had it, per message.
    pub latency: Summary,
    /// `PUBLISH`es that failed, or reached no subscriber.
    pub failed: usize,
    /// As for the fan-out: messages received of `expected`, lost, received twice, sockets not exactly right.
    pub delivered: usize,
    pub expected: usize,
    pub lost: usize,
    pub doubled: usize,
    pub wrong_sockets: usize,
    /// CPU time per message: the nodes and Redis, and this load generator.
    pub cpu_servers_ms: f64,
    pub cpu_client_ms: f64,
}

impl EmitterFanoutResult {
    fn errors(&self) -> usize {
        self.connect_errors + self.lost_rounds + self.lost + self.doubled
    }
}

impl EmitterRateResult {
    fn errors(&self) -> usize {
        self.connect_errors
            + self.failed
            + self.lost
            + self.doubled
            + self.published.abs_diff(self.complete)
    }
}

/// Errors of the emitter phases in a report (refused connections, failed publishes, messages lost or doubled).
pub fn error_count(r: &Report) -> usize {
    r.emitter_fanout
        .as_ref()
        .map_or(0, EmitterFanoutResult::errors)
        + r.emitter_rate.as_ref().map_or(0, EmitterRateResult::errors)
}

/// What the clients got of `sent` messages each: (received, lost, doubled, sockets not exactly right).
fn exactly_once(clients: &[Client], sent: usize) -> (usize, usize, usize, usize) {
    let got: Vec<usize> = clients.iter().map(Client::received).collect();
    (
        got.iter().sum(),
        got.iter().map(|&g| sent.saturating_sub(g)).sum(),
        got.iter().map(|&g| g.saturating_sub(sent)).sum(),
        got.iter().filter(|&&g| g != sent).count(),
    )
}

/// A fred client on the phase's Redis (the emitter's publisher); commands time out rather than hang.
async fn publisher(url: &str) -> anyhow::Result<Redis> {
    let config = Config::from_url(url)?;
    let client = fred::types::Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .build()?;
    client.init().await.context("connect to redis")?;
    Ok(client)
}

/// CPU time used so far by these processes.
fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| procs::cpu_time(p)).sum()
}

impl Bench {
    /// Runs the emitter phases the flags ask for into `report`.
    pub(crate) async fn emitter_phases(&self, target: &Target, report: &mut Report) {
        let a = &self.args;
        if a.emitter_fanout_size > 0 {
            match self.emitter_fanout(target).await {
                Ok(r) => report.emitter_fanout = Some(r),
                Err(e) => report.errors.push(format!("emitter fan-out: {e:#}")),
            }
        }
        if a.emitter_rate_room > 0 && a.emitter_rate_seconds > 0 {
            match self.emitter_rate(target).await {
                Ok(r) => report.emitter_rate = Some(r),
                Err(e) => report.errors.push(format!("emitter rate: {e:#}")),
            }
        }
    }

    /// Phase 1: one emitter message per round to a room of `--emitter-fanout-size` on K nodes.
    async fn emitter_fanout(&self, target: &Target) -> anyhow::Result<EmitterFanoutResult> {
        let a = &self.args;
        let (n, k, rounds) = (
            clamp_to_fd_limit(a.emitter_fanout_size),
            a.nodes,
            a.fanout_rounds,
        );
        let (redis, nodes) = self.send_cluster(target, k, "emitter-fanout", None).await?;
        let probe = Arc::new(FanoutProbe::default());
        let (clients, connect_errors, connect_secs) =
            self.open_send(&nodes, n, |_| BIG.into(), &probe).await;
        anyhow::ensure!(!clients.is_empty(), "none of {n} clients connected");
        let emitter = publisher(&redis.url).await?;
        let mut pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        pids.push(redis.pid());
        let me = [std::process::id()];
        let (servers_before, client_before) = (cpu(&pids), cpu(&me));
        let (mut publishes, mut samples, mut lost_rounds, mut subscribers) =
            (Vec::new(), Vec::new(), 0, None);
        for round in 1..=rounds as u64 {
            let (channel, bytes) = broadcast(SEND_NS, BIG, SEND_EVENT, round)?;
            probe.arm(round, clients.len());
            let started = Instant::now();
            let answer: Result<i64, _> = emitter.publish(channel, bytes).await;
            publishes.push(started.elapsed());
            subscribers.get_or_insert(answer.as_ref().map_or(0, |&s| s));
            match (answer, probe.wait(ROUND_LIMIT).await) {
                (Ok(s), Some(last)) if s > 0 => samples.push(last.duration_since(started)),
                (answer, _) => {
                    lost_rounds += 1;
                    eprintln!(
                        "  emitter fan-out round {round}: PUBLISH {answer:?}, {} of {} got it within {ROUND_LIMIT:?}",
                        probe.arrived(),
                        clients.len()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let per_round = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e3 / rounds.max(1) as f64
        };
        let (cpu_servers_ms, cpu_client_ms) = (
            per_round(cpu(&pids), servers_before),
            per_round(cpu(&me), client_before),
        );
        // Late messages of a lost round, and doubles, before counting.
        let expected = clients.len() * rounds;
        wait_until(ROUND_LIMIT, || probe.send_events() >= expected).await;
        tokio::time::sleep(QUIET).await;
        let (delivered, lost, doubled, wrong_sockets) = exactly_once(&clients, rounds);
        let r = EmitterFanoutResult {
            n,
            k,
            rounds,
            connect_secs,
            connect_errors,
            subscribers: subscribers.unwrap_or(0),
            publish: Summary::of(publishes),
            fanout: Summary::of(samples),
            lost_rounds,
            delivered,
            expected,
            lost,
            doubled,
            wrong_sockets,
            cpu_servers_ms,
            cpu_client_ms,
        };
        println!(
            "  emitter fan-out: N={n} K={k}: connect {:.2}s ({} errors), PUBLISH to {} subscribers p50 {:.2} ms, \
             last socket p50 {:.2} ms p99 {:.2} ms ({} rounds lost); {} of {} delivered, {} lost, {} twice \
             (CPU per round: servers {:.0} ms, client {:.0} ms)",
            r.connect_secs,
            r.connect_errors,
            r.subscribers,
            r.publish.p50,
            r.fanout.p50,
            r.fanout.p99,
            r.lost_rounds,
            r.delivered,
            r.expected,
            r.lost,
            r.doubled,
            r.cpu_servers_ms,
            r.cpu_client_ms
        );
        Ok(r)
    }

    /// Phase 2: emitter messages per second to a room of `--emitter-rate-room` on K nodes, a window at a time.
    async fn emitter_rate(&self, target: &Target) -> anyhow::Result<EmitterRateResult> {
        let a = &self.args;
        let (room, k, window) = (
            clamp_to_fd_limit(a.emitter_rate_room),
            a.nodes,
            a.emitter_window.max(1),
        );
        let (redis, nodes) = self.send_cluster(target, k, "emitter-rate", None).await?;
        let probe = Arc::new(FanoutProbe::default());
        let (clients, connect_errors, _) =
            self.open_send(&nodes, room, |_| STAFF.into(), &probe).await;
        anyhow::ensure!(!clients.is_empty(), "none of {room} clients connected");
        let tally = Arc::new(Tally::new(clients.len(), window));
        if probe.track(tally.clone()).is_err() {
            anyhow::bail!("the probe has a tally already");
        }
        let emitter = publisher(&redis.url).await?;
        let mut pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        pids.push(redis.pid());
        let me = [std::process::id()];
        let (servers_before, client_before) = (cpu(&pids), cpu(&me));
        let run = Duration::from_secs(a.emitter_rate_seconds);
        let started = Instant::now();
        let (mut published, mut failed) = (0usize, 0usize);
        // Each `PUBLISH` as soon as the window has room, without waiting for the previous one's answer (fred
        // pipelines them on its connection): awaited one by one, Redis's round trip under load (~0.3-0.45 ms
        // on 2 cores) set the pace and the window never filled (2-3 messages unfinished on average).
        let mut answers = tokio::task::JoinSet::new();
        let mut tally_answer = |answer: Result<Result<i64, fred::error::Error>, _>| match answer {
            Ok(Ok(s)) if s > 0 => {}
            answer => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("  emitter rate: PUBLISH answered {answer:?}");
                }
            }
        };
        while started.elapsed() < run {
            if tally.reserve(ROUND_LIMIT).await.is_none() {
                eprintln!(
                    "  emitter rate: {window} messages unfinished for {ROUND_LIMIT:?}: stopped"
                );
                break;
            }
            let seq = published as u64 + 1;
            let (channel, bytes) = broadcast(SEND_NS, STAFF, SEND_EVENT, seq)?;
            tally.sent(seq);
            published += 1;
            let emitter = emitter.clone();
            answers.spawn(async move { emitter.publish::<i64, _, _>(channel, bytes).await });
            while let Some(answer) = answers.try_join_next() {
                tally_answer(answer);
            }
        }
        while let Some(answer) = answers.join_next().await {
            tally_answer(answer);
        }
        wait_until(ROUND_LIMIT, || tally.complete() >= published).await;
        let secs = tally
            .last()
            .map_or(f64::NAN, |at| (at - started).as_secs_f64());
        let per_message = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e3 / published.max(1) as f64
        };
        let (cpu_servers_ms, cpu_client_ms) = (
            per_message(cpu(&pids), servers_before),
            per_message(cpu(&me), client_before),
        );
        tokio::time::sleep(QUIET).await;
        let (delivered, lost, doubled, wrong_sockets) = exactly_once(&clients, published);
        let complete = tally.complete();
        let r = EmitterRateResult {
            room,
            k,
            window,
            connect_errors,
            published,
            complete,
            secs,
            per_sec: complete as f64 / secs,
            deliveries_per_sec: delivered as f64 / secs,
            latency: Summary::of(tally.latencies()),
            failed,
            delivered,
            expected: clients.len() * published,
            lost,
            doubled,
            wrong_sockets,
            cpu_servers_ms,
            cpu_client_ms,
        };
        println!(
            "  emitter rate: room of {} on {k} nodes, {window} unfinished at most: {} published, {} complete in \
             {:.2}s: {:.0} messages/s ({:.0} deliveries/s), p50 {:.2} ms p99 {:.2} ms; {} of {} delivered, \
             {} lost, {} twice",
            r.room,
            r.published,
            r.complete,
            r.secs,
            r.per_sec,
            r.deliveries_per_sec,
            r.latency.p50,
            r.latency.p99,
            r.delivered,
            r.expected,
            r.lost,
            r.doubled
        );
        Ok(r)
    }
}

/// The emitter tables of a report (nothing for phases that did not run).
pub fn print(r: &Report) {
    if let Some(f) = &r.emitter_fanout {
        println!(
            "\n| emitter fan-out: N | K | rounds | connect (s) | subscribers | PUBLISH p50 (ms) | last socket p50 \
             | p90 | p99 | max (ms) | lost rounds | delivered | lost | twice | CPU/round servers, client (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} sockets | {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} of {} | {} | {} \
             | {:.0}, {:.0} |",
            f.n,
            f.k,
            f.rounds,
            f.connect_secs,
            f.subscribers,
            f.publish.p50,
            f.fanout.p50,
            f.fanout.p90,
            f.fanout.p99,
            f.fanout.max,
            f.lost_rounds,
            f.delivered,
            f.expected,
            f.lost,
            f.doubled,
            f.cpu_servers_ms,
            f.cpu_client_ms
        );
    }
    if let Some(s) = &r.emitter_rate {
        println!(
            "\n| emitter rate: room | K | window | published | complete | time (s) | messages/s | deliveries/s \
             | p50 | p90 | p99 | max (ms) | delivered | lost | twice | CPU per message servers, client (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} sockets | {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} of {} \
             | {} | {} | {:.3}, {:.3} |",
            s.room,
            s.k,
            s.window,
            s.published,
            s.complete,
            s.secs,
            s.per_sec,
            s.deliveries_per_sec,
            s.latency.p50,
            s.latency.p90,
            s.latency.p99,
            s.latency.max,
            s.delivered,
            s.expected,
            s.lost,
            s.doubled,
            s.cpu_servers_ms,
            s.cpu_client_ms
        );
    }
}

/// The emitter rows of the ours / node table; `row(name, ours, node, unit)`.
pub fn ratios(ours: &Report, node: &Report, row: &dyn Fn(String, f64, f64, &str)) {
    if let (Some(a), Some(b)) = (&ours.emitter_fanout, &node.emitter_fanout) {
        for (name, x, y) in [
            ("p50", a.fanout.p50, b.fanout.p50),
            ("p99", a.fanout.p99, b.fanout.p99),
        ] {
            row(
                format!("emitter message to the last of N={} K={}, {name}", a.n, a.k),
                x,
                y,
                "ms",
            );
        }
    }
    if let (Some(a), Some(b)) = (&ours.emitter_rate, &node.emitter_rate) {
        // A rate: node / ours, so that below 1 is better here too.
        row(
            format!(
                "emitter time per message (1 / messages/s), room of {} K={}",
                a.room, a.k
            ),
            1e3 / a.per_sec,
            1e3 / b.per_sec,
            "ms",
        );
        row(
            format!("emitter message p99, room of {} K={}", a.room, a.k),
            a.latency.p99,
            b.latency.p99,
            "ms",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of the real `@socket.io/redis-emitter` 5.1.0 (notepack.io 3.0.1), captured with a stand-in
    /// Redis client whose `publish` printed them:
    /// `new Emitter({publish: (c, m) => console.log(c, m.toString("hex"))}).of("/bench-send").to("big")
    /// .emit("e", {round: n})` for n = 7, 300, 70000.
    #[test]
    fn a_broadcast_is_byte_for_byte_what_the_redis_emitter_publishes() {
        let head = "93a7656d697474657283a47479706502a46461746192a16581a5726f756e64";
        let tail = "a36e7370ab2f62656e63682d73656e6483a5726f6f6d7391a3626967a5666c61677380a665786365707490";
        for (round, number) in [(7, "07"), (300, "cd012c"), (70000, "ce00011170")] {
            let (channel, bytes) = broadcast("/bench-send", "big", "e", round).unwrap();
            assert_eq!(channel, "socket.io#/bench-send#big#");
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, format!("{head}{number}{tail}"), "round {round}");
        }
    }
}
