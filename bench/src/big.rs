//! The many-connections phase (`--big-conns`, off by default): K nodes each holding `--big-conns` idle TLS
//! websockets, `--big-room` of them (spread evenly over the nodes) in one room, whose users query and fan-out are
//! measured with everything else connected, and the resident memory per connection of every node.
//!
//! One process cannot hold more sockets than its open-files limit (20,000 here, hard), so the clients are held by
//! **holder processes**, one per node: this binary started again with the hidden `--hold` flag. A holder opens its
//! node's connections, says `ready <opened> <failed> <secs>` on its stdout, then answers its stdin line by line:
//! `arm <round>` is answered `armed <round>`, and once every room member it holds has that fan-out round's event,
//! `done <round> <unix µs of the last arrival>` (`lost <round> <arrived>` after 15 s). End of input (or `quit`)
//! closes its connections and ends it; the parent also stops it by pid when dropped. The parent holds one client
//! itself, a room member on node 0 (so node 0's holder opens one fewer): it emits each fan-out round and asks the
//! users queries.

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::{Client, FanoutProbe, Login},
    procs::{self, Node, Target},
};

/// The room whose users query and fan-out are measured.
const ROOM: &str = "big";
/// How long a holder may take to open its connections.
const READY_LIMIT: Duration = Duration::from_secs(600);
/// How long a fan-out round may take until every holder has it.
const ROUND_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Serialize)]
pub struct BigResult {
    pub k: usize,
    /// Connections each node was to hold, and those opened in all (the parent's one included).
    pub per_node: usize,
    pub conns: usize,
    pub connect_errors: usize,
    /// From starting the holders until the last one was ready.
    pub connect_secs: f64,
    pub room: usize,
    pub query: Summary,
    /// Answers that did not list exactly `room` distinct sockets, or failed.
    pub wrong_answers: usize,
    pub fanout: Summary,
    pub fanout_lost_rounds: usize,
    /// Each node's resident memory before and 2 s after its connections were open.
    pub rss_before: Vec<u64>,
    pub rss_after: Vec<u64>,
    pub bytes_per_conn: f64,
    /// The holders' resident memory (the client side), per connection.
    pub holder_bytes_per_conn: f64,
    /// CPU time per fan-out round: the nodes and Redis, and the holders.
    pub fanout_cpu_servers_ms: f64,
    pub fanout_cpu_holders_ms: f64,
}

impl BigResult {
    fn errors(&self) -> usize {
        self.connect_errors + self.wrong_answers + self.fanout_lost_rounds
    }
}

pub fn error_count(r: &Report) -> usize {
    r.big.as_ref().map_or(0, BigResult::errors)
}

/// What one holder process is asked to hold.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Connections in all, of which the first `members` are in [`ROOM`].
    conns: usize,
    members: usize,
    /// Client `i` of this holder is user `u{first + i}`.
    first: usize,
}

/// Room members per node: `room` spread evenly over `k` nodes, the first ones taking the remainder.
fn members_per_node(room: usize, k: usize) -> Vec<usize> {
    (0..k)
        .map(|j| room / k + usize::from(j < room % k))
        .collect()
}

/// A running holder process, stopped by pid when dropped (`kill_on_drop`).
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
    members: usize,
}

impl Holder {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("holder input closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// The holder's next line, split on spaces.
    async fn line(&mut self, limit: Duration) -> anyhow::Result<Vec<String>> {
        let line = tokio::time::timeout(limit, self.out.next_line())
            .await
            .context("holder did not answer in time")??
            .context("holder exited")?;
        Ok(line.split_whitespace().map(String::from).collect())
    }

    /// Closes its input (it closes its connections and exits), then waits for it, at most 30 s.
    async fn stop(mut self) {
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Bench {
    /// Runs the phase if the flags ask for it.
    pub(crate) async fn big_phase(&self, target: &Target, report: &mut Report) {
        if self.args.big_conns == 0 {
            return;
        }
        match self.big(target).await {
            Ok(r) => report.big = Some(r),
            Err(e) => report.errors.push(format!("big: {e:#}")),
        }
    }

    async fn big(&self, target: &Target) -> anyhow::Result<BigResult> {
        let a = &self.args;
        let k = a.nodes.max(1);
        let per_node = clamp_to_fd_limit(a.big_conns);
        let members = members_per_node(a.big_room, k);
        anyhow::ensure!(
            members.iter().all(|&m| (1..=per_node).contains(&m)),
            "--big-room {} does not fit {k} nodes of {per_node} connections with at least one member each",
            a.big_room
        );
        let logs = self.logs(target, "big")?;
        let (redis, nodes) = self.cluster_in(target, k, &logs, None).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = nodes.iter().map(Node::rss).collect::<Result<Vec<_>, _>>()?;

        // The parent's client: a room member on node 0, the fan-out's emitter.
        let probe = Arc::new(FanoutProbe::default());
        let me = Client::connect(
            &self.tls,
            nodes[0].addr,
            &Login::claim("big-emitter", ROOM),
            probe,
            Duration::from_secs(20),
        )
        .await
        .context("the parent's client")?;
        let started = Instant::now();
        let mut holders = Vec::with_capacity(k);
        for (j, node) in nodes.iter().enumerate() {
            let share = Share {
                conns: per_node - usize::from(j == 0),
                members: members[j] - usize::from(j == 0),
                first: j * per_node,
            };
            holders.push(self.start_holder(node.addr, share, &logs, j)?);
        }
        let (mut opened, mut connect_errors) = (1, 0);
        for (j, h) in holders.iter_mut().enumerate() {
            let ready = h.line(READY_LIMIT).await?;
            match ready.as_slice() {
                [word, ok, failed, _] if word == "ready" => {
                    opened += ok.parse::<usize>()?;
                    connect_errors += failed.parse::<usize>()?;
                }
                other => bail!("holder {j} said {other:?}"),
            }
        }
        let connect_secs = started.elapsed().as_secs_f64();
        println!(
            "  big: {opened} connections on {k} nodes in {connect_secs:.1} s ({connect_errors} errors)"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = nodes.iter().map(Node::rss).collect::<Result<Vec<_>, _>>()?;
        let holder_rss: u64 = holders.iter().map(|h| rss_of(h.pid())).sum();

        let bases: Vec<&str> = nodes.iter().map(|n| n.base.as_str()).collect();
        let (query, wrong_answers) = self.big_query(&bases, a.big_room, a.big_requests).await;

        let mut server_pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        server_pids.push(redis.pid());
        let holder_pids: Vec<u32> = holders.iter().map(Holder::pid).collect();
        let cpu = |pids: &[u32]| pids.iter().map(|&p| procs::cpu_time(p)).sum::<Duration>();
        let (servers_before, holders_before) = (cpu(&server_pids), cpu(&holder_pids));
        let mut samples = Vec::new();
        let mut lost = 0;
        for round in 1..=a.big_rounds as u64 {
            match self.big_round(&me, &mut holders, round).await? {
                Some(took) => samples.push(took),
                None => lost += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rounds = a.big_rounds.max(1) as f64;
        let per_round = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e3 / rounds
        };
        let fanout_cpu_servers_ms = per_round(cpu(&server_pids), servers_before);
        let fanout_cpu_holders_ms = per_round(cpu(&holder_pids), holders_before);
        for h in holders {
            h.stop().await;
        }
        drop(me);

        let grown: u64 = rss_after
            .iter()
            .zip(&rss_before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        let r = BigResult {
            k,
            per_node,
            conns: opened,
            connect_errors,
            connect_secs,
            room: a.big_room,
            query,
            wrong_answers,
            fanout: Summary::of(samples),
            fanout_lost_rounds: lost,
            rss_before,
            rss_after,
            bytes_per_conn: grown as f64 / opened.max(1) as f64,
            holder_bytes_per_conn: holder_rss as f64 / opened.max(1) as f64,
            fanout_cpu_servers_ms,
            fanout_cpu_holders_ms,
        };
        println!(
            "  big: query of {} p50 {:.2} ms p99 {:.2} ms ({} wrong); fan-out p50 {:.2} ms p99 {:.2} ms ({} lost); \
             {:.1} KiB per connection",
            r.room,
            r.query.p50,
            r.query.p99,
            r.wrong_answers,
            r.fanout.p50,
            r.fanout.p99,
            r.fanout_lost_rounds,
            r.bytes_per_conn / 1024.0
        );
        Ok(r)
    }

    /// Starts holder `j`: this binary again, with `--hold`.
    fn start_holder(
        &self,
        addr: SocketAddr,
        share: Share,
        logs: &std::path::Path,
        j: usize,
    ) -> anyhow::Result<Holder> {
        let exe = std::env::current_exe()?;
        let log = std::fs::File::create(logs.join(format!("holder-{j}.log")))?;
        let mut child = tokio::process::Command::new(exe)
            .args(["--hold", &addr.to_string()])
            .args(["--hold-conns", &share.conns.to_string()])
            .args(["--hold-members", &share.members.to_string()])
            .args(["--hold-first", &share.first.to_string()])
            .args(["--concurrency", &self.args.concurrency.to_string()])
            .args(["--max-minutes", &self.args.max_minutes.to_string()])
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a holder process")?;
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().context("holder stdout")?).lines();
        Ok(Holder {
            child,
            stdin,
            out,
            members: share.members,
        })
    }

    /// `requests` sequential `GET /{ROOM}/users` round-robin over the nodes (after one warm-up round), each
    /// checked to list exactly `expected` distinct sockets.
    async fn big_query(
        &self,
        bases: &[&str],
        expected: usize,
        requests: usize,
    ) -> (Summary, usize) {
        let mut samples = Vec::with_capacity(requests);
        let mut wrong = 0;
        for i in 0..(requests + bases.len()) {
            let url = format!("{}/{ROOM}/users", bases[i % bases.len()]);
            let started = Instant::now();
            let body = match self.http.get(&url).send().await {
                Ok(res) if res.status().is_success() => res.bytes().await.ok(),
                _ => None,
            };
            let took = started.elapsed();
            if i < bases.len() {
                continue;
            }
            let distinct = body
                .and_then(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b).ok())
                .map(|entries| {
                    let ids: HashSet<&str> = entries
                        .iter()
                        .filter_map(|e| e["id_socket"].as_str())
                        .collect();
                    (entries.len(), ids.len())
                });
            if distinct != Some((expected, expected)) {
                wrong += 1;
                if wrong <= 3 {
                    eprintln!("  {url}: expected {expected} distinct entries, got {distinct:?}");
                }
            }
            samples.push(took);
        }
        (Summary::of(samples), wrong)
    }

    /// One fan-out round: every holder armed, the parent's client emits, until the last member has it.
    async fn big_round(
        &self,
        me: &Client,
        holders: &mut [Holder],
        round: u64,
    ) -> anyhow::Result<Option<Duration>> {
        for h in holders.iter_mut() {
            h.send(&format!("arm {round}")).await?;
        }
        for h in holders.iter_mut() {
            let armed = h.line(ROUND_LIMIT).await?;
            anyhow::ensure!(
                armed == ["armed".to_string(), round.to_string()],
                "holder said {armed:?}"
            );
        }
        let started = SystemTime::now();
        me.emit_fanout(round).await;
        let mut last = 0;
        let mut lost = false;
        for (j, h) in holders.iter_mut().enumerate() {
            let said = h.line(ROUND_LIMIT + Duration::from_secs(5)).await?;
            match said.as_slice() {
                [word, r, at] if word == "done" && *r == round.to_string() => {
                    last = last.max(at.parse::<u64>()?);
                }
                [word, _, arrived] if word == "lost" => {
                    lost = true;
                    eprintln!(
                        "  big fan-out round {round}: holder {j} had {arrived} of {} within {ROUND_LIMIT:?}",
                        h.members
                    );
                }
                other => bail!("holder {j} said {other:?}"),
            }
        }
        if lost {
            return Ok(None);
        }
        Ok(Some(Duration::from_micros(
            last.saturating_sub(unix_micros(started)),
        )))
    }

    /// Holder mode (`--hold <addr>`): opens the connections, then answers the parent (see the module docs).
    pub(crate) async fn hold(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let a = &self.args;
        let probe = Arc::new(FanoutProbe::default());
        let started = Instant::now();
        let members =
            (0..a.hold_members).map(|i| Login::claim(&format!("u{}", a.hold_first + i), ROOM));
        let room_members = self.open(&[addr], members, a.concurrency, &probe).await;
        let idle = (a.hold_members..a.hold_conns).map(|i| {
            let n = a.hold_first + i;
            Login::claim(&format!("u{n}"), &format!("idle-{}", n / 10))
        });
        let others = self.open(&[addr], idle, a.concurrency, &probe).await;
        let held = room_members.clients.len() + others.clients.len();
        println!(
            "ready {held} {} {:.3}",
            room_members.failed + others.failed,
            started.elapsed().as_secs_f64()
        );
        // Read on a thread of its own: stdin is a blocking pipe (and tokio's `io-std` is not built in).
        let (tx, mut input) = tokio::sync::mpsc::channel::<String>(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = input.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["arm", round] => {
                    let round: u64 = round.parse()?;
                    probe.arm(round, room_members.clients.len());
                    println!("armed {round}");
                    if room_members.clients.is_empty() {
                        println!("done {round} 0");
                        continue;
                    }
                    match probe.wait(ROUND_LIMIT).await {
                        Some(at) => {
                            let when = SystemTime::now() - at.elapsed();
                            println!("done {round} {}", unix_micros(when));
                        }
                        None => println!("lost {round} {}", probe.arrived()),
                    }
                }
                ["quit"] => break,
                other => bail!("holder: unknown command {other:?}"),
            }
        }
        drop(others);
        drop(room_members);
        Ok(())
    }
}

/// Resident memory of a process in bytes (0 if it cannot be read).
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

pub fn print(r: &Report) {
    let Some(b) = &r.big else { return };
    println!(
        "\n| connections: nodes x each | room | connect (s) | errors | query p50 | p90 | p99 | max (ms) | wrong \
         | fan-out p50 | p99 | max (ms) | lost | fan-out CPU/round servers, holders (ms) | RSS per node before -> after (MiB) \
         | KiB per connection (nodes) | holders |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let rss: Vec<String> = b
        .rss_before
        .iter()
        .zip(&b.rss_after)
        .map(|(x, y)| {
            format!(
                "{:.0} -> {:.0}",
                *x as f64 / 1048576.0,
                *y as f64 / 1048576.0
            )
        })
        .collect();
    println!(
        "| {} x {} = {} | {} | {:.1} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} | {:.0}, {:.0} \
         | {} | {:.1} | {:.1} |",
        b.k,
        b.per_node,
        b.conns,
        b.room,
        b.connect_secs,
        b.connect_errors,
        b.query.p50,
        b.query.p90,
        b.query.p99,
        b.query.max,
        b.wrong_answers,
        b.fanout.p50,
        b.fanout.p99,
        b.fanout.max,
        b.fanout_lost_rounds,
        b.fanout_cpu_servers_ms,
        b.fanout_cpu_holders_ms,
        rss.join("; "),
        b.bytes_per_conn / 1024.0,
        b.holder_bytes_per_conn / 1024.0
    );
}
