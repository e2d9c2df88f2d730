//! Connection state recovery (docs/recovery.md), both targets, on `/bench-send` with a window of
//! [`WINDOW_S`] (ours: `recovery_window_s`; the Node reference: `RECOVERY_WINDOW_S`, which swaps
//! `@socket.io/redis-adapter` for `@socket.io/redis-streams-adapter` and turns on socket.io's
//! `connectionStateRecovery`):
//!
//! 1. **What it costs a fan-out.** `send.rs`'s fan-out of a push (`--recovery-fanout-size` sockets on `--nodes`
//!    nodes, `--fanout-rounds` rounds), on a cluster without recovery and then on one with it. Without is our
//!    server as it ships and the Node reference with its Redis adapter (what the send phase measures too); with
//!    is every broadcast written to the namespace's Redis stream first (ours: `XADD`, then each node reads it;
//!    Node: the streams adapter's `XADD`, then the emitting node's local delivery and the other nodes' `XREAD`).
//! 2. **A killed node's sockets.** `--recovery-sockets` official socket.io-client sockets (one Node process,
//!    `bench/node-reference/recovery-clients.mjs`) reach node 1 of K through a loopback TCP proxy
//!    (`proxy.rs`), all in one room, and get one push (their first offset). The bench SIGKILLs that node by its
//!    pid, points the proxy at the survivors, pushes `--recovery-missed` events to the room through a survivor,
//!    and then has every socket reconnect at once (`socket.connect()`, what the client's own reconnection does
//!    after its back-off delay, here without the delay, so the time is the servers'). Measured from that
//!    moment: until each socket is connected again, and until it has every missed event; checked per socket:
//!    `socket.recovered`, the same id, each missed event once (none lost, none twice), in order, offsets
//!    increasing. Node's socket.io saves a session when its socket disconnects, which a killed node never does:
//!    its sockets come back as new sessions without what they missed. That is reported, not counted as an error;
//!    for ours, any socket not recovered or any event lost, doubled or out of order is. `--recovery-signal TERM`
//!    stops the node gracefully instead: the control, where the Node reference's sockets recover too.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    procs::{self, Target},
    proxy::Proxy,
    send::{SEND_NS, SendFanoutResult, post, push_body},
};

/// The recovery window of both targets, in seconds: longer than any phase.
const WINDOW_S: u64 = 120;
/// The room of the killed node's sockets.
const ROOM: &str = "lost";
/// How long the sockets may take to recover, from the reconnection until the last missed event.
const RECOVER_LIMIT: Duration = Duration::from_secs(120);
/// Once every socket is connected again, the wait ends when no missed event has arrived for this long (the
/// Node reference's sockets get none).
const QUIET: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Serialize)]
pub struct RecoveryFanoutResult {
    /// Ours without `recovery_window_s`; the Node reference with `@socket.io/redis-adapter`.
    pub off: SendFanoutResult,
    /// Ours with it; the Node reference with `@socket.io/redis-streams-adapter` and `connectionStateRecovery`.
    pub on: SendFanoutResult,
}

#[derive(Debug, Default, Serialize)]
pub struct KilledNodeResult {
    /// How their node was stopped: `KILL` or `TERM`.
    pub signal: String,
    pub sockets: usize,
    pub k: usize,
    pub missed: usize,
    /// Whether the target is expected to recover them (ours), so that `--check` counts what it did not.
    pub recovery_expected: bool,
    /// Handshakes refused before the kill.
    pub connect_errors: usize,
    /// From the SIGKILL until every client saw its connection close.
    pub disconnect_ms: f64,
    /// The pushes made while the sockets were away, posted one after another through a survivor.
    pub push_ms: f64,
    pub failed_pushes: usize,
    /// Sockets connected again, with `socket.recovered === true`, with their previous id.
    pub reconnected: usize,
    pub recovered: usize,
    pub same_id: usize,
    /// Missed events received (each counted once), of `expected` (sockets x missed); events received twice, and
    /// events after a later one or with an offset not after the one before.
    pub received: usize,
    pub expected: usize,
    pub doubled: usize,
    pub out_of_order: usize,
    /// Sockets that got every missed event.
    pub complete: usize,
    /// Per socket, from the reconnection until it was connected again, and until it had every missed event.
    pub reconnect: Summary,
    pub complete_at: Summary,
    /// From the reconnection until every socket had every missed event (`None`: some never did).
    pub all_complete_ms: Option<f64>,
    /// CPU time from the reconnection until the last socket was back or the last missed event arrived: the
    /// survivors and Redis, and the clients (this load generator with its proxy, and the clients' Node process).
    pub cpu_servers_ms: f64,
    pub cpu_client_ms: f64,
}

impl RecoveryFanoutResult {
    fn errors(&self) -> usize {
        self.off.errors() + self.on.errors()
    }
}

impl KilledNodeResult {
    fn errors(&self) -> usize {
        let reconnect = self.connect_errors
            + self.failed_pushes
            + (self.sockets - self.connect_errors).saturating_sub(self.reconnected);
        let wrong = self.doubled + self.out_of_order;
        if !self.recovery_expected {
            return reconnect + wrong;
        }
        reconnect
            + wrong
            + self.reconnected.saturating_sub(self.recovered)
            + self.recovered.saturating_sub(self.same_id)
            + self.expected.saturating_sub(self.received)
    }
}

/// Errors of the recovery phases in a report.
pub fn error_count(r: &Report) -> usize {
    r.recovery_fanout
        .as_ref()
        .map_or(0, RecoveryFanoutResult::errors)
        + r.killed_node.as_ref().map_or(0, KilledNodeResult::errors)
}

/// The counts the clients' process answers to `status`.
#[derive(Debug, Default, Deserialize)]
struct Status {
    connected: usize,
    disconnected: usize,
    warm: usize,
    received: usize,
    complete: usize,
    reconnect_failed: usize,
}

/// One socket of the clients' `report`.
#[derive(Debug, Deserialize)]
struct SocketReport {
    connected_ms: Option<f64>,
    complete_ms: Option<f64>,
    recovered: bool,
    same_sid: bool,
    received: usize,
    doubled: usize,
    disorder: usize,
}

/// The Node process holding the official clients, one JSON command and answer a line each.
struct Clients {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Clients {
    fn start(root: &Path, logs: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .arg(root.join("bench/node-reference/recovery-clients.mjs"))
            .current_dir(root)
            .env("NODE_EXTRA_CA_CERTS", root.join("certs-dev/ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(logs.join("clients.log"))?)
            // On an error path; `close` ends it by closing its input.
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node bench/node-reference/recovery-clients.mjs")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends `cmd` and returns its answer, within `limit`.
    async fn ask(&mut self, cmd: Value, limit: Duration) -> anyhow::Result<Value> {
        let op = cmd["op"].clone();
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .with_context(|| format!("the clients did not answer {op} within {limit:?}"))??
            .context("the clients' process ended")?;
        let answer: Value = serde_json::from_str(&line).context("the clients' answer")?;
        if let Some(e) = answer.get("error") {
            anyhow::bail!("the clients: {e}");
        }
        Ok(answer)
    }

    async fn status(&mut self) -> anyhow::Result<Status> {
        let v = self
            .ask(json!({"op": "status"}), Duration::from_secs(10))
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Polls `status` every 20 ms until `done` holds for it, within `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Status) -> bool,
    ) -> anyhow::Result<Status> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status().await?;
            if done(&s) {
                return Ok(s);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what}: not within {limit:?} ({s:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes its input (it disconnects its sockets and exits), and waits a little for it.
    async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Bench {
    /// Runs the recovery phases the flags ask for into `report`.
    pub(crate) async fn recovery_phases(&self, target: &Target, report: &mut Report) {
        let a = &self.args;
        if a.recovery_fanout_size > 0 {
            match self.recovery_fanout(target).await {
                Ok(r) => report.recovery_fanout = Some(r),
                Err(e) => report.errors.push(format!("recovery fan-out: {e:#}")),
            }
        }
        if a.recovery_sockets > 0 && a.recovery_missed > 0 {
            match self.killed_node(target).await {
                Ok(r) => report.killed_node = Some(r),
                Err(e) => report.errors.push(format!("killed node: {e:#}")),
            }
        }
    }

    /// Phase 1: the send phase's fan-out, without recovery and with it.
    async fn recovery_fanout(&self, target: &Target) -> anyhow::Result<RecoveryFanoutResult> {
        let n = clamp_to_fd_limit(self.args.recovery_fanout_size);
        let off = self
            .send_fanout(target, n, "recovery-fanout-off", None)
            .await?;
        let on = self
            .send_fanout(target, n, "recovery-fanout-on", Some(WINDOW_S))
            .await?;
        Ok(RecoveryFanoutResult { off, on })
    }

    /// Phase 2: the sockets of a node killed with SIGKILL come back on the survivors.
    async fn killed_node(&self, target: &Target) -> anyhow::Result<KilledNodeResult> {
        let a = &self.args;
        let (n, missed, k) = (
            clamp_to_fd_limit(a.recovery_sockets),
            a.recovery_missed,
            a.nodes,
        );
        anyhow::ensure!(
            k >= 2,
            "--nodes {k}: one node to kill and one to come back to"
        );
        let phase = "recovery-killed";
        let logs = self.logs(target, phase)?;
        let (redis, mut nodes) = self.send_cluster(target, k, phase, Some(WINDOW_S)).await?;
        let http = self.send_client(1, &nodes).await?;
        let proxy = Proxy::start(vec![nodes[0].addr]).await?;
        let mut clients = Clients::start(&self.root, &logs)?;
        let url = format!("https://{}{SEND_NS}", proxy.addr);
        let open = json!({"op": "open", "url": url, "count": n, "room": ROOM, "concurrency": a.concurrency});
        let opened = clients
            .ask(open, Duration::from_secs(60 + n as u64 / 20))
            .await?;
        let connected = opened["connected"].as_u64().unwrap_or(0) as usize;
        let connect_errors = n - connected.min(n);
        if connect_errors > 0 {
            eprintln!(
                "  {connect_errors} connection(s) failed: {}",
                opened["errors"]
            );
        }
        // A first push, through a survivor-to-be, gives every socket an offset to come back with.
        let answer = post(&http, &nodes[1].base, push_body(ROOM, json!({"n": 0}))).await;
        anyhow::ensure!(
            matches!(answer, Some((200, _))),
            "first push answered {answer:?}"
        );
        clients
            .until(Duration::from_secs(30), "the first push", |s| {
                s.warm >= connected
            })
            .await?;

        // The crash (or, with `--recovery-signal TERM`, a graceful shutdown), and the survivors behind the same
        // address.
        let victim = nodes.remove(0);
        proxy.point_to(nodes.iter().map(|n| n.addr).collect());
        let killed = Instant::now();
        victim.stop(&a.recovery_signal).await?;
        clients
            .until(
                Duration::from_secs(30),
                "every client to see its node go",
                |s| s.disconnected >= connected,
            )
            .await?;
        let disconnect_ms = killed.elapsed().as_secs_f64() * 1e3;

        // What they miss, through a survivor, one push after another (so in order).
        let pushed = Instant::now();
        let mut failed_pushes = 0;
        for i in 1..=missed {
            let answer = post(&http, &nodes[0].base, push_body(ROOM, json!({"n": i}))).await;
            if !matches!(answer, Some((200, _))) {
                failed_pushes += 1;
            }
        }
        let push_ms = pushed.elapsed().as_secs_f64() * 1e3;

        let mut servers: Vec<u32> = nodes.iter().map(procs::Node::pid).collect();
        servers.push(redis.pid());
        let client_pids = [std::process::id(), clients.pid()];
        let cpu = |pids: &[u32]| pids.iter().map(|&p| procs::cpu_time(p)).sum::<Duration>();
        let (servers_before, client_before) = (cpu(&servers), cpu(&client_pids));
        clients
            .ask(
                json!({"op": "reconnect", "missed": missed}),
                Duration::from_secs(30),
            )
            .await?;
        // Until every socket has everything, or (the Node reference) nothing more comes once all are back. The
        // CPU time is read at the last change seen (a socket back, an event received), not after the quiet wait.
        let deadline = Instant::now() + RECOVER_LIMIT;
        let (mut last, mut quiet_since) = ((usize::MAX, usize::MAX), Instant::now());
        let (mut servers_after, mut client_after) = (servers_before, client_before);
        loop {
            let s = clients.status().await?;
            let now = (s.connected + s.reconnect_failed, s.received);
            if now != last {
                (last, quiet_since) = (now, Instant::now());
                (servers_after, client_after) = (cpu(&servers), cpu(&client_pids));
            }
            let back = now.0 >= connected;
            if back && (s.complete >= connected || quiet_since.elapsed() >= QUIET) {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("  killed node: still recovering after {RECOVER_LIMIT:?}: {s:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu_servers_ms = servers_after.saturating_sub(servers_before).as_secs_f64() * 1e3;
        let cpu_client_ms = client_after.saturating_sub(client_before).as_secs_f64() * 1e3;
        let report = clients
            .ask(json!({"op": "report"}), Duration::from_secs(30))
            .await?;
        clients.close().await;
        let sockets: Vec<SocketReport> = serde_json::from_value(report["sockets"].clone())?;
        let ms = |v: Option<f64>| v.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3));
        let complete: Vec<Duration> = sockets.iter().filter_map(|s| ms(s.complete_ms)).collect();
        let all_complete_ms = (complete.len() == sockets.len() && !sockets.is_empty()).then(|| {
            sockets
                .iter()
                .filter_map(|s| s.complete_ms)
                .fold(0.0, f64::max)
        });
        let r = KilledNodeResult {
            signal: a.recovery_signal.clone(),
            sockets: n,
            k,
            missed,
            recovery_expected: target.name == "ours",
            connect_errors,
            disconnect_ms,
            push_ms,
            failed_pushes,
            reconnected: sockets.iter().filter(|s| s.connected_ms.is_some()).count(),
            recovered: sockets.iter().filter(|s| s.recovered).count(),
            same_id: sockets.iter().filter(|s| s.same_sid).count(),
            received: sockets.iter().map(|s| s.received).sum(),
            expected: sockets.len() * missed,
            doubled: sockets.iter().map(|s| s.doubled).sum(),
            out_of_order: sockets.iter().map(|s| s.disorder).sum(),
            complete: complete.len(),
            reconnect: Summary::of(sockets.iter().filter_map(|s| ms(s.connected_ms)).collect()),
            complete_at: Summary::of(complete),
            all_complete_ms,
            cpu_servers_ms,
            cpu_client_ms,
        };
        println!(
            "  killed node: {} sockets of 1 node of {k} (SIG{}), {missed} pushes missed: back {} (p99 {:.0} ms), \
             recovered {}, same id {}, missed events {} of {} ({} twice, {} out of order), every socket complete: {}",
            r.sockets,
            r.signal,
            r.reconnected,
            r.reconnect.p99,
            r.recovered,
            r.same_id,
            r.received,
            r.expected,
            r.doubled,
            r.out_of_order,
            r.all_complete_ms
                .map_or_else(|| "never".to_owned(), |ms| format!("{ms:.0} ms")),
        );
        if !r.recovery_expected && r.recovered == 0 && r.signal == "KILL" {
            println!(
                "  (expected: socket.io saves a session when its socket disconnects, which a killed node never \
                 does, so its sockets come back as new sessions without what they missed)"
            );
        }
        drop(proxy);
        Ok(r)
    }
}

/// The recovery tables of a report (nothing for phases that did not run).
pub fn print(r: &Report) {
    if let Some(f) = &r.recovery_fanout {
        let (off, on) = match r.target.as_str() {
            "ours" => ("off", "on (recovery_window_s)"),
            _ => (
                "off (redis-adapter)",
                "on (redis-streams-adapter + connectionStateRecovery)",
            ),
        };
        println!(
            "\n| recovery fan-out: N | K | recovery | connect (s) | answer p50 (ms) | last client p50 | p90 | p99 \
             | max (ms) | lost | CPU/round servers, client (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (name, x) in [(off, &f.off), (on, &f.on)] {
            println!(
                "| {} sockets | {} | {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0}, {:.0} |",
                x.n,
                x.k,
                x.connect_secs,
                x.post.p50,
                x.fanout.p50,
                x.fanout.p90,
                x.fanout.p99,
                x.fanout.max,
                x.lost_rounds,
                x.cpu_servers_ms,
                x.cpu_client_ms
            );
        }
        // Too small a time off (a tiny run's CPU in 10 ms ticks) gives no ratio.
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "-".to_owned()
            }
        };
        println!(
            "\nrecovery on / off: last client p50 {}, p99 {}, servers' CPU per round {}",
            ratio(f.on.fanout.p50, f.off.fanout.p50),
            ratio(f.on.fanout.p99, f.off.fanout.p99),
            ratio(f.on.cpu_servers_ms, f.off.cpu_servers_ms)
        );
    }
    if let Some(d) = &r.killed_node {
        println!(
            "\n| killed node: sockets | K | signal | missed | disconnected (ms) | back | recovered | same id | back p50 \
             | p99 (ms) | missed events received | twice | out of order | complete p50 | p99 (ms) | all complete (ms) \
             | CPU servers, clients (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        // No socket complete (the Node reference): no percentiles.
        let pct = |v: f64| {
            if d.complete_at.samples == 0 {
                "-".to_owned()
            } else {
                format!("{v:.0}")
            }
        };
        println!(
            "| {} | {} | SIG{} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {} of {} | {} | {} | {} | {} | {} | {:.0}, {:.0} |",
            d.sockets,
            d.k,
            d.signal,
            d.missed,
            d.disconnect_ms,
            d.reconnected,
            d.recovered,
            d.same_id,
            d.reconnect.p50,
            d.reconnect.p99,
            d.received,
            d.expected,
            d.doubled,
            d.out_of_order,
            pct(d.complete_at.p50),
            pct(d.complete_at.p99),
            d.all_complete_ms
                .map_or_else(|| "never".to_owned(), |ms| format!("{ms:.0}")),
            d.cpu_servers_ms,
            d.cpu_client_ms
        );
    }
}

/// The recovery rows of the ours / node table; `row(name, ours, node, unit)`.
pub fn ratios(ours: &Report, node: &Report, row: &dyn Fn(String, f64, f64, &str)) {
    if let (Some(a), Some(b)) = (&ours.recovery_fanout, &node.recovery_fanout) {
        for (name, x, y) in [
            ("p50", a.on.fanout.p50, b.on.fanout.p50),
            ("p99", a.on.fanout.p99, b.on.fanout.p99),
        ] {
            row(
                format!(
                    "recovery on: POST /send to the last of N={} K={}, {name}",
                    a.on.n, a.on.k
                ),
                x,
                y,
                "ms",
            );
        }
    }
    // The killed node has no ratio: the Node reference recovers none of its sockets.
}
