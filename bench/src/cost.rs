//! The Redis cost of one operation (`--cost-nodes`, ours only, off by default): for each K listed, a fresh Redis
//! and K nodes serving `/bench-send` (the `POST /send` phases' config), N clients in the room `big` (client `i` on
//! node `i mod K`) and one more alone in the user room `user_cost` on the last node. Then, each read from Redis's
//! own counters (`INFO stats cpu commandstats` through `redis-cli`) before and after a run of operations of one
//! kind, one after another:
//!
//! * `query`: `GET /big/users?namespace=/bench-send`, round-robin over the nodes, each answer holding N entries;
//!   then the same with `--send-concurrency` (16) queries in flight;
//! * `fan-out`: client 0 (node 0) sends `identity-change`, relayed to the N-1 others, until the last has it;
//! * `send room`: `POST /send` to `big`, to node `round mod K`, until all N have it;
//! * `send user`: `POST /send` to `user_cost` (stored, emitted with an ack) on node 0, until the client has
//!   acknowledged it; the store must be empty at the end.
//!
//! Per operation: commands Redis processed (and which, from `commandstats`), bytes in and out of Redis
//! (`total_net_input_bytes`, `total_net_output_bytes`: pub/sub deliveries are output), Redis CPU
//! (`used_cpu_user` + `used_cpu_sys`; and of it, the time executing commands, `commandstats` `usec`) and the
//! nodes' CPU (`/proc/<pid>/task/*/schedstat`). One operation of each
//! kind goes first, uncounted (connections opened, the store's Lua scripts loaded). An idle measurement of the same cluster first
//! (`--cost-idle-secs`: the heartbeats) is subtracted pro rata, and so is what one `INFO` itself adds (two
//! back-to-back readings).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::{
    Bench, Report,
    client::{FanoutProbe, Login},
    procs::{self, Node, Redis, Target},
    send::{self, SEND_NS},
};

const ROOM: &str = "big";
const USER_ROOM: &str = "user_cost";
/// After each run of operations, before the counters are read: what is still on its way arrives.
const SETTLE: Duration = Duration::from_millis(300);

/// Redis's counters and the nodes' CPU at one moment, or a difference of two.
#[derive(Debug, Clone, Default)]
struct Reading {
    commands: f64,
    bytes_in: f64,
    bytes_out: f64,
    redis_cpu: f64,
    nodes_cpu: f64,
    /// `commandstats` calls by command (`publish`, `pubsub|shardnumsub`, `evalsha`, ...).
    calls: BTreeMap<String, f64>,
    /// `commandstats` time spent executing commands (`usec`, `INFO` itself left out), in seconds: Redis's CPU
    /// without the event loop, the socket reads and writes and the background tasks (`serverCron`).
    in_commands: f64,
}

impl Reading {
    /// `self - other*scale` field by field.
    fn minus(&self, other: &Reading, scale: f64) -> Reading {
        let mut calls = self.calls.clone();
        for (k, v) in &other.calls {
            *calls.entry(k.clone()).or_default() -= v * scale;
        }
        Reading {
            commands: self.commands - other.commands * scale,
            bytes_in: self.bytes_in - other.bytes_in * scale,
            bytes_out: self.bytes_out - other.bytes_out * scale,
            redis_cpu: self.redis_cpu - other.redis_cpu * scale,
            nodes_cpu: self.nodes_cpu - other.nodes_cpu * scale,
            calls,
            in_commands: self.in_commands - other.in_commands * scale,
        }
    }

    /// The smaller of each field (for the cost of one `INFO`: heartbeats may fall between two readings).
    fn min(&self, other: &Reading) -> Reading {
        let mut calls = self.calls.clone();
        for (k, v) in calls.iter_mut() {
            *v = v.min(other.calls.get(k).copied().unwrap_or(0.0));
        }
        Reading {
            commands: self.commands.min(other.commands),
            bytes_in: self.bytes_in.min(other.bytes_in),
            bytes_out: self.bytes_out.min(other.bytes_out),
            redis_cpu: self.redis_cpu.min(other.redis_cpu),
            nodes_cpu: self.nodes_cpu.min(other.nodes_cpu),
            calls,
            in_commands: self.in_commands.min(other.in_commands),
        }
    }
}

/// The cost of one operation of a kind (or, for `idle`, of one second).
#[derive(Debug, Default, Serialize)]
pub struct OpCost {
    pub op: String,
    pub count: usize,
    pub secs: f64,
    pub commands: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
    pub redis_cpu_us: f64,
    /// Of it, executing commands (`commandstats`).
    pub redis_in_commands_us: f64,
    /// The idle cluster's Redis CPU taken out of `redis_cpu_us` (per operation): the larger it is next to what
    /// remains, the less `redis_cpu_us` can be trusted (the idle rate itself varies by ~50% on this machine).
    pub redis_idle_us: f64,
    pub nodes_cpu_us: f64,
    pub calls: BTreeMap<String, f64>,
    /// Operations that failed (a wrong answer, a lost event, a push not answered `200`, an ack that never came).
    pub failed: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct CostResult {
    pub k: usize,
    pub n: usize,
    pub connect_errors: usize,
    pub ops: Vec<OpCost>,
    /// Messages left in the store at the end (`None`: it could not be read).
    pub pending_after: Option<u64>,
}

impl CostResult {
    fn errors(&self) -> usize {
        self.connect_errors
            + self.ops.iter().map(|o| o.failed).sum::<usize>()
            + usize::from(self.pending_after != Some(0))
    }
}

pub fn error_count(r: &Report) -> usize {
    r.cost.iter().map(CostResult::errors).sum()
}

/// Reads the counters: `INFO stats cpu commandstats` through `redis-cli`, and the nodes' CPU time.
async fn read(redis: &Redis, nodes: &[u32]) -> anyhow::Result<Reading> {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("redis-cli")
            .args(["-u", &redis.url, "INFO", "stats", "cpu", "commandstats"])
            .output(),
    )
    .await
    .context("redis-cli timed out")?
    .context("redis-cli")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = Reading {
        nodes_cpu: nodes
            .iter()
            .map(|&p| procs::cpu_time_precise(p).as_secs_f64())
            .sum(),
        ..Reading::default()
    };
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let number = || value.parse::<f64>().unwrap_or(0.0);
        match key {
            "total_commands_processed" => r.commands = number(),
            "total_net_input_bytes" => r.bytes_in = number(),
            "total_net_output_bytes" => r.bytes_out = number(),
            "used_cpu_sys" | "used_cpu_user" => r.redis_cpu += number(),
            _ => {
                if let Some(cmd) = key.strip_prefix("cmdstat_") {
                    let field = |name: &str| {
                        value
                            .split(',')
                            .find_map(|f| f.strip_prefix(name))
                            .and_then(|c| c.parse::<f64>().ok())
                            .unwrap_or(0.0)
                    };
                    r.calls.insert(cmd.to_owned(), field("calls="));
                    if cmd != "info" {
                        r.in_commands += field("usec=") / 1e6;
                    }
                }
            }
        }
    }
    anyhow::ensure!(r.commands > 0.0, "redis-cli INFO answered {text:?}");
    Ok(r)
}

/// Measures the counters around a run of operations.
struct Meter<'a> {
    redis: &'a Redis,
    pids: Vec<u32>,
    /// What one reading adds.
    overhead: Reading,
    /// The idle cluster, per second.
    idle: Reading,
}

impl Meter<'_> {
    async fn start(&self) -> anyhow::Result<(Reading, Instant)> {
        Ok((read(self.redis, &self.pids).await?, Instant::now()))
    }

    /// The cost of one of `count` operations since `start`, with the idle cluster and the readings taken out.
    async fn finish(
        &self,
        op: &str,
        count: usize,
        failed: usize,
        (before, started): (Reading, Instant),
    ) -> anyhow::Result<OpCost> {
        tokio::time::sleep(SETTLE).await;
        let secs = started.elapsed().as_secs_f64();
        let after = read(self.redis, &self.pids).await?;
        let d = after
            .minus(&before, 1.0)
            .minus(&self.overhead, 1.0)
            .minus(&self.idle, secs);
        let per = 1.0 / count.max(1) as f64;
        Ok(OpCost {
            op: op.to_owned(),
            count,
            secs,
            commands: d.commands * per,
            bytes_in: d.bytes_in * per,
            bytes_out: d.bytes_out * per,
            redis_cpu_us: d.redis_cpu * per * 1e6,
            redis_in_commands_us: d.in_commands * per * 1e6,
            redis_idle_us: self.idle.redis_cpu * secs * per * 1e6,
            nodes_cpu_us: d.nodes_cpu * per * 1e6,
            calls: d
                .calls
                .into_iter()
                .filter(|(k, _)| k != "info")
                .map(|(k, v)| (k, v * per))
                .collect(),
            failed,
        })
    }
}

impl Bench {
    /// How many entries a users query at `url` listed; `None` when it failed or did not answer a list.
    async fn users_listed(&self, url: &str) -> Option<usize> {
        match self.http.get(url).send().await {
            Ok(res) if res.status().is_success() => res
                .json::<Vec<serde::de::IgnoredAny>>()
                .await
                .ok()
                .map(|v| v.len()),
            _ => None,
        }
    }

    /// Runs the phase if the flags ask for it (ours only).
    pub(crate) async fn cost_phase(&self, target: &Target, report: &mut Report) {
        for &k in &self.args.cost_nodes {
            for &n in &self.args.cost_sizes {
                match self.cost(target, k, n).await {
                    Ok(r) => report.cost.push(r),
                    Err(e) => report.errors.push(format!("cost K={k} N={n}: {e:#}")),
                }
            }
        }
    }

    async fn cost(&self, target: &Target, k: usize, n: usize) -> anyhow::Result<CostResult> {
        anyhow::ensure!(k > 0 && n > 1, "the cost phase needs K >= 1 and N >= 2");
        let a = &self.args;
        let (redis, nodes) = self
            .send_cluster(target, k, &format!("cost-{k}-{n}"), None)
            .await?;
        let probe = Arc::new(FanoutProbe::default());
        let (clients, mut connect_errors, _) =
            self.open_send(&nodes, n, |_| ROOM.into(), &probe).await;
        let user = Login {
            namespace: SEND_NS.into(),
            query: vec![("id_user", "cost".into()), ("room", USER_ROOM.into())],
            auth: None,
        };
        let user = self
            .open(&[nodes[k - 1].addr], std::iter::once(user), 1, &probe)
            .await;
        connect_errors += user.failed;
        // Joined on every node, and the HTTPS connections open, before anything is counted.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let http = self.send_client(1, &nodes).await?;
        let bases: Vec<&str> = nodes.iter().map(|n| n.base.as_str()).collect();
        // One operation of each kind first, uncounted: connections warm, the store's scripts loaded.
        let _ = self
            .http
            .get(format!("{}/{ROOM}/users?namespace=%2Fbench-send", bases[0]))
            .send()
            .await;
        probe.arm(0, clients.len() - 1);
        clients[0].emit_fanout(0).await;
        let _ = probe.wait(Duration::from_secs(10)).await;
        let _ = send::post(&http, bases[0], send::push_body(ROOM, json!({"warm": 1}))).await;
        let acks = probe.acks();
        let _ = send::post(&http, bases[0], send::push_body(USER_ROOM, json!({}))).await;
        let _ = send::wait_until(Duration::from_secs(10), || probe.acks() > acks).await;
        tokio::time::sleep(SETTLE).await;

        let pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        let mut meter = Meter {
            redis: &redis,
            pids,
            overhead: Reading::default(),
            idle: Reading::default(),
        };
        let (r1, r2, r3) = (
            read(&redis, &meter.pids).await?,
            read(&redis, &meter.pids).await?,
            read(&redis, &meter.pids).await?,
        );
        meter.overhead = r2.minus(&r1, 1.0).min(&r3.minus(&r2, 1.0));
        let (idle_before, started) = meter.start().await?;
        tokio::time::sleep(Duration::from_secs(a.cost_idle_secs.max(1))).await;
        let secs = started.elapsed().as_secs_f64();
        let idle_after = read(&redis, &meter.pids).await?;
        let idle = idle_after
            .minus(&idle_before, 1.0)
            .minus(&meter.overhead, 1.0);
        meter.idle = Reading::default().minus(&idle, -1.0 / secs);
        let mut ops = vec![OpCost {
            op: "idle (per second)".into(),
            count: 1,
            secs,
            commands: meter.idle.commands,
            bytes_in: meter.idle.bytes_in,
            bytes_out: meter.idle.bytes_out,
            redis_cpu_us: meter.idle.redis_cpu * 1e6,
            redis_in_commands_us: meter.idle.in_commands * 1e6,
            redis_idle_us: 0.0,
            nodes_cpu_us: meter.idle.nodes_cpu * 1e6,
            calls: meter.idle.calls.clone(),
            failed: 0,
        }];

        // Users queries.
        let start = meter.start().await?;
        let mut failed = 0;
        for i in 0..a.cost_requests {
            let url = format!("{}/{ROOM}/users?namespace=%2Fbench-send", bases[i % k]);
            let count = self.users_listed(&url).await;
            if count != Some(n) {
                failed += 1;
                eprintln!("  cost: {url}: expected {n} entries, got {count:?}");
            }
        }
        ops.push(
            meter
                .finish("query", a.cost_requests, failed, start)
                .await?,
        );

        // The same queries, `--send-concurrency` at once (round-robin over the nodes): Redis then reads and
        // writes several messages per turn of its event loop, which one query at a time never lets it do.
        let at_once = a.send_concurrency.max(1);
        let start = meter.start().await?;
        let counts: Vec<Option<usize>> = futures_util::stream::iter(0..a.cost_requests)
            .map(|i| {
                let url = format!("{}/{ROOM}/users?namespace=%2Fbench-send", bases[i % k]);
                async move { self.users_listed(&url).await }
            })
            .buffer_unordered(at_once)
            .collect()
            .await;
        let failed = counts.iter().filter(|c| **c != Some(n)).count();
        if failed > 0 {
            eprintln!("  cost: {failed} of the concurrent queries did not list {n} entries");
        }
        let label = format!("query, {at_once} at once");
        ops.push(meter.finish(&label, a.cost_requests, failed, start).await?);

        // Fan-outs: identity-change from client 0 to the other N-1.
        let rounds = a.cost_rounds;
        let start = meter.start().await?;
        let mut failed = 0;
        for round in 1..=rounds as u64 {
            probe.arm(round, clients.len() - 1);
            clients[0].emit_fanout(round).await;
            if probe.wait(Duration::from_secs(10)).await.is_none() {
                failed += 1;
                eprintln!("  cost: fan-out {round}: {} arrived", probe.arrived());
            }
        }
        ops.push(meter.finish("fan-out", rounds, failed, start).await?);

        // Pushes to the room.
        let start = meter.start().await?;
        let mut failed = 0;
        for round in 1..=rounds as u64 {
            probe.arm(round, clients.len());
            let body = send::push_body(ROOM, json!({ "round": round }));
            let answer = send::post(&http, bases[round as usize % k], body).await;
            let arrived = probe.wait(Duration::from_secs(10)).await.is_some();
            if answer != Some((200, 0)) || !arrived {
                failed += 1;
                eprintln!("  cost: push {round}: answer {answer:?}, all arrived: {arrived}");
            }
        }
        ops.push(meter.finish("send room", rounds, failed, start).await?);

        // Pushes to a user room, each stored, emitted with an ack, acknowledged and removed.
        let start = meter.start().await?;
        let mut failed = 0;
        for i in 0..rounds {
            let acks = probe.acks();
            let body = send::push_body(USER_ROOM, json!({ "n": i }));
            let answer = send::post(&http, bases[0], body).await;
            let acked = send::wait_until(Duration::from_secs(10), || probe.acks() > acks)
                .await
                .is_some();
            if answer != Some((200, 1)) || !acked {
                failed += 1;
                eprintln!("  cost: user push {i}: answer {answer:?}, acked: {acked}");
            }
        }
        ops.push(
            meter
                .finish("send user (ack)", rounds, failed, start)
                .await?,
        );
        let pending_after = send::pending_in_redis(&redis, send::store_pattern(target))
            .await
            .ok();

        let r = CostResult {
            k,
            n,
            connect_errors,
            ops,
            pending_after,
        };
        for o in &r.ops {
            println!(
                "  cost K={k} N={n} {}: {:.2} commands, {:.0} B in, {:.0} B out, Redis {:.1} µs, nodes {:.0} µs",
                o.op, o.commands, o.bytes_in, o.bytes_out, o.redis_cpu_us, o.nodes_cpu_us
            );
        }
        drop(clients);
        drop(user);
        Ok(r)
    }
}

pub fn print(r: &Report) {
    if r.cost.is_empty() {
        return;
    }
    println!(
        "\n| cost: K | N | operation | count | Redis commands | of which | bytes in | bytes out | Redis CPU (µs) \
         | in commands | idle taken out | nodes CPU (µs) | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &r.cost {
        for o in &c.ops {
            let calls: Vec<String> = o
                .calls
                .iter()
                .filter(|(_, v)| v.abs() >= 0.05)
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect();
            println!(
                "| {} | {} | {} | {} | {:.2} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
                c.k,
                c.n,
                o.op,
                o.count,
                o.commands,
                calls.join(", "),
                o.bytes_in,
                o.bytes_out,
                o.redis_cpu_us,
                o.redis_in_commands_us,
                o.redis_idle_us,
                o.nodes_cpu_us,
                o.failed
            );
        }
        if c.pending_after != Some(0) {
            println!(
                "| {} | {} | store not empty at the end: {:?} | | | | | | | | | | |",
                c.k, c.n, c.pending_after
            );
        }
    }
}
