//! The admin UI phases, ours only (`[admin]` in the config file; README, "Admin UI"):
//!
//! 1. **Overhead with no admin UI connected.** Two K-node clusters, each on its own Redis: one without a config
//!    file (as Method 1 and 2), one whose config file serves `/` the same way (`auth = "claim"`,
//!    `rooms = ["handshake"]`) and enables `[admin]` in development mode; nobody logs in. For each N, Method 1
//!    and 2 (connect, room query, fan-out) run on one cluster, then on the other, in passes that alternate which
//!    goes first, and each cluster's samples are pooled: the difference is what the admin UI costs while
//!    nobody looks (counting every event, `server_stats` every 2 s), and drift of the machine cancels out.
//! 2. **`all_sockets`.** N clients on K nodes with `[admin]` (bcrypt cost 4, so the login is cheap), then R
//!    admin connections one after another, the r-th to node r mod K: Engine.IO open, then the `CONNECT` to
//!    `/admin` with `{username, password}`; timed from sending it until the `40/admin,{sid}` (the login) and
//!    until the `all_sockets` event has fully arrived. The event must list exactly the socket ids the N clients
//!    were given in their `CONNECT` answers; a refused login or any other list is an error.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::SinkExt;
use serde::Serialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::{self, ConnectError, FanoutProbe, Login},
    procs::{self, Node, Redis, Target},
    tenancy::write_config,
};

/// The admin UI's login the bench writes into `[admin]`.
const USERNAME: &str = "bench-admin";
const PASSWORD: &str = "bench-admin-password";
/// The lowest cost bcrypt allows: the phase measures `all_sockets`, not the password check.
const BCRYPT_COST: u32 = 4;
const NAMESPACE: &str = "/admin";
/// Longest the bench waits for one admin connection's `all_sockets`.
const ADMIN_LIMIT: Duration = Duration::from_secs(30);

/// Method 1 and 2 on one of the two clusters, every pass pooled.
#[derive(Debug, Default, Serialize)]
pub struct Side {
    /// Mean over the passes.
    pub connect_secs: f64,
    pub connect_errors: usize,
    pub query: Summary,
    pub wrong_answers: usize,
    pub fanout: Summary,
    pub lost_rounds: usize,
    /// Mean over the passes: CPU time per fan-out round of the nodes and Redis.
    pub fanout_cpu_servers_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct OverheadResult {
    pub n: usize,
    pub k: usize,
    pub passes: usize,
    /// Without a config file.
    pub plain: Side,
    /// `[admin] enabled = true`, no admin UI connected.
    pub admin: Side,
}

impl OverheadResult {
    fn errors(&self) -> usize {
        [&self.plain, &self.admin]
            .iter()
            .map(|s| s.connect_errors + s.wrong_answers + s.lost_rounds)
            .sum()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct AllSocketsResult {
    pub n: usize,
    pub k: usize,
    pub connect_secs: f64,
    pub connect_errors: usize,
    /// Admin connections made.
    pub rounds: usize,
    /// From sending the `CONNECT` to `/admin` until its `40` (the password check).
    pub login: Summary,
    /// From sending the `CONNECT` until the `all_sockets` event has fully arrived.
    pub all_sockets: Summary,
    /// The largest `all_sockets` websocket message, in bytes.
    pub payload_bytes: usize,
    /// Logins refused, or admin connections that failed or timed out.
    pub refused: usize,
    /// `all_sockets` events that did not list exactly the N sockets.
    pub wrong: usize,
    /// CPU time of the nodes and Redis per admin connection (mean).
    pub cpu_servers_ms: f64,
}

impl AllSocketsResult {
    fn errors(&self) -> usize {
        self.connect_errors + self.refused + self.wrong
    }
}

/// The admin phases' errors in a report.
pub fn error_count(r: &Report) -> usize {
    r.admin_overhead
        .iter()
        .map(OverheadResult::errors)
        .sum::<usize>()
        + r.all_sockets.as_ref().map_or(0, AllSocketsResult::errors)
}

/// Writes `config.toml` into `dir`: `/` as without a config file, and `[admin]` enabled in development mode.
fn write_admin_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let hash = bcrypt::hash(PASSWORD, BCRYPT_COST).context("bcrypt")?;
    let text = format!(
        r#"# Written by the bench (bench/src/admin.rs): `/` as without a config file, and the admin UI.
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake"]

[admin]
enabled = true
username = "{USERNAME}"
password_hash = "{hash}"
mode = "development"
namespace = "{NAMESPACE}"
"#
    );
    write_config(dir, &text)
}

/// One admin connection, as measured.
struct AdminSample {
    login: Duration,
    all_sockets: Duration,
    bytes: usize,
    /// The socket ids `all_sockets` listed, sorted.
    ids: Vec<String>,
}

/// An admin UI's first moments: the `CONNECT` to `/admin` with `password`, until `all_sockets` has arrived.
async fn admin_connection(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    password: &str,
) -> Result<AdminSample, ConnectError> {
    let login = Login {
        namespace: NAMESPACE.into(),
        query: vec![],
        auth: Some(json!({ "username": USERNAME, "password": password })),
    };
    let mut ws = client::open(tls, addr, &login.query).await?;
    let started = Instant::now();
    client::join(&mut ws, &login).await?;
    let login_took = started.elapsed();
    loop {
        let text = client::next_text(&mut ws).await?;
        if text == "2" {
            ws.send(Message::text("3")).await?;
            continue;
        }
        // `session`, `config` and `server_stats` come too; only `all_sockets` stops the clock.
        let Some((_, array)) = client::event_packet(NAMESPACE, &text) else {
            continue;
        };
        if !array.starts_with("[\"all_sockets\"") {
            continue;
        }
        let all_sockets = started.elapsed();
        let _ = ws.close(None).await;
        return Ok(AdminSample {
            login: login_took,
            all_sockets,
            bytes: text.len(),
            ids: listed_ids(array).ok_or_else(|| ConnectError::Protocol("all_sockets".into()))?,
        });
    }
}

/// The socket ids of an `all_sockets` event's array (`["all_sockets", [{"id": ..}, ..]]`), sorted.
fn listed_ids(array: &str) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Listed {
        id: String,
    }
    let (_, sockets): (String, Vec<Listed>) = serde_json::from_str(array).ok()?;
    let mut ids: Vec<String> = sockets.into_iter().map(|s| s.id).collect();
    ids.sort_unstable();
    Some(ids)
}

impl Bench {
    /// The admin phases, each skipped when its flag is 0 or empty.
    pub(crate) async fn admin_phases(&self, target: &Target, report: &mut Report) {
        let sizes: Vec<usize> = self
            .args
            .admin_overhead
            .iter()
            .copied()
            .filter(|&n| n > 0)
            .collect();
        if !sizes.is_empty()
            && let Err(e) = self.admin_overhead(target, &sizes, report).await
        {
            report.errors.push(format!("admin overhead: {e:#}"));
        }
        if self.args.admin_sockets > 0 {
            match self.all_sockets(target).await {
                Ok(r) => report.all_sockets = Some(r),
                Err(e) => report.errors.push(format!("admin all_sockets: {e:#}")),
            }
        }
    }

    /// Method 1 and 2 without and with `[admin]`, in alternating passes (see the module docs).
    async fn admin_overhead(
        &self,
        target: &Target,
        sizes: &[usize],
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let k = self.args.nodes;
        let logs = self.logs(target, "admin-overhead")?;
        let (plain_logs, admin_logs) = (logs.join("plain"), logs.join("admin"));
        std::fs::create_dir_all(&plain_logs)?;
        std::fs::create_dir_all(&admin_logs)?;
        let config = write_admin_config(&admin_logs)?;
        // Bound one by one, so that each cluster's nodes stop before its Redis (a tuple would drop Redis first
        // and leave the nodes 10 s trying to leave it).
        let (plain_redis, plain_nodes) = self.cluster_in(target, k, &plain_logs, None).await?;
        let (admin_redis, admin_nodes) = self
            .cluster_in(target, k, &admin_logs, Some(&config))
            .await?;
        let clusters = [(&plain_redis, &plain_nodes), (&admin_redis, &admin_nodes)];
        let passes = self.args.admin_passes.max(1);
        for &n in sizes {
            let mut runs: [Vec<crate::RoomRun>; 2] = Default::default();
            for pass in 0..passes {
                let order = match pass % 2 {
                    0 => [0, 1],
                    _ => [1, 0],
                };
                for side in order {
                    let (redis, nodes) = clusters[side];
                    println!(
                        "  admin overhead, pass {}: {}",
                        pass + 1,
                        ["without [admin]", "with [admin]"][side]
                    );
                    runs[side].push(self.room(redis, nodes, n).await?);
                }
            }
            let [p, a] = runs;
            let r = OverheadResult {
                n,
                k,
                passes,
                plain: pooled(p),
                admin: pooled(a),
            };
            println!(
                "  admin overhead N={n} K={k}: query p50 {:+.1}%, fan-out p50 {:+.1}% (with [admin] against without)",
                change(r.plain.query.p50, r.admin.query.p50),
                change(r.plain.fanout.p50, r.admin.fanout.p50),
            );
            report.admin_overhead.push(r);
        }
        Ok(())
    }

    /// `--admin-rounds` admin connections, one after another, to a K-node cluster holding N sockets.
    async fn all_sockets(&self, target: &Target) -> anyhow::Result<AllSocketsResult> {
        let n = clamp_to_fd_limit(self.args.admin_sockets);
        let k = self.args.nodes;
        let logs = self.logs(target, "admin-sockets")?;
        let config = write_admin_config(&logs)?;
        let (redis, nodes) = self.cluster_in(target, k, &logs, Some(&config)).await?;
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let probe = std::sync::Arc::new(FanoutProbe::default());
        let started = Instant::now();
        let logins = (0..n).map(|i| Login::claim(&format!("u{i}"), "admin-bench"));
        let opened = self
            .open(&addrs, logins, self.args.concurrency, &probe)
            .await;
        let connect_secs = started.elapsed().as_secs_f64();
        let mut sids: Vec<String> = opened.clients.iter().map(|c| c.sid.clone()).collect();
        sids.sort_unstable();
        // The `40` comes before the connect handler ran: let every node have its sockets in place.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let password = match self.args.admin_wrong_password {
            true => "not-the-password",
            false => PASSWORD,
        };
        let rounds = self.args.admin_rounds;
        let mut r = AllSocketsResult {
            n,
            k,
            connect_secs,
            connect_errors: opened.failed,
            rounds,
            ..Default::default()
        };
        let (mut logins, mut lists) = (Vec::new(), Vec::new());
        let mut cpu = Duration::ZERO;
        for round in 0..rounds {
            let before = servers_cpu(&redis, &nodes);
            let addr = addrs[round % addrs.len()];
            let sample =
                tokio::time::timeout(ADMIN_LIMIT, admin_connection(&self.tls, addr, password))
                    .await
                    .unwrap_or(Err(ConnectError::Timeout));
            cpu += servers_cpu(&redis, &nodes).saturating_sub(before);
            match sample {
                Ok(s) => {
                    if s.ids != sids {
                        r.wrong += 1;
                        eprintln!(
                            "  all_sockets on {addr}: {} sockets listed, {} expected (or other ids)",
                            s.ids.len(),
                            sids.len()
                        );
                    }
                    r.payload_bytes = r.payload_bytes.max(s.bytes);
                    logins.push(s.login);
                    lists.push(s.all_sockets);
                }
                Err(e) => {
                    r.refused += 1;
                    eprintln!("  admin connection to {addr}: {e}");
                }
            }
            // The admin leaves; the next one is a new connection.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        r.login = Summary::of(logins);
        r.all_sockets = Summary::of(lists);
        r.cpu_servers_ms = cpu.as_secs_f64() * 1e3 / rounds.max(1) as f64;
        println!(
            "  all_sockets: N={n} K={k}: login p50 {:.2} ms, all_sockets p50 {:.1} ms p99 {:.1} ms, {} bytes \
             ({} wrong, {} refused)",
            r.login.p50, r.all_sockets.p50, r.all_sockets.p99, r.payload_bytes, r.wrong, r.refused
        );
        Ok(r)
    }
}

/// CPU time of the nodes and Redis so far.
fn servers_cpu(redis: &Redis, nodes: &[Node]) -> Duration {
    nodes
        .iter()
        .map(Node::pid)
        .chain([redis.pid()])
        .map(procs::cpu_time)
        .sum()
}

/// One cluster's passes as one: samples pooled, counts added, means of the rest.
fn pooled(runs: Vec<crate::RoomRun>) -> Side {
    let passes = runs.len().max(1) as f64;
    let mut side = Side::default();
    let (mut query, mut fanout) = (Vec::new(), Vec::new());
    for run in runs {
        let r = run.result;
        side.connect_secs += r.connect_secs / passes;
        side.connect_errors += r.connect_errors;
        side.wrong_answers += r.wrong_answers;
        side.lost_rounds += r.fanout_lost_rounds;
        side.fanout_cpu_servers_ms += r.fanout_cpu_servers_ms / passes;
        query.extend(run.query);
        fanout.extend(run.fanout);
    }
    side.query = Summary::of(query);
    side.fanout = Summary::of(fanout);
    side
}

/// `after` against `before`, in percent.
fn change(before: f64, after: f64) -> f64 {
    match before > 0.0 {
        true => (after / before - 1.0) * 100.0,
        false => f64::NAN,
    }
}

/// The admin tables of a report (nothing when the phases did not run).
pub fn print(r: &Report) {
    if !r.admin_overhead.is_empty() {
        println!(
            "\n| N | K | passes | [admin] | connect (s) | query p50 | p90 | p99 | max (ms) | wrong | fan-out p50 | p99 \
             | max (ms) | lost | fan-out CPU/round servers (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for o in &r.admin_overhead {
        for (name, s) in [("without", &o.plain), ("with", &o.admin)] {
            println!(
                "| {} | {} | {} | {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} \
                 | {:.0} |",
                o.n,
                o.k,
                o.passes,
                s.connect_secs,
                s.query.p50,
                s.query.p90,
                s.query.p99,
                s.query.max,
                s.wrong_answers,
                s.fanout.p50,
                s.fanout.p99,
                s.fanout.max,
                s.lost_rounds,
                s.fanout_cpu_servers_ms
            );
        }
    }
    if !r.admin_overhead.is_empty() {
        println!(
            "\n| with [admin] against without | connect | query p50 | query p99 | fan-out p50 | fan-out p99 \
             | fan-out CPU/round servers |"
        );
        println!("|---|---|---|---|---|---|---|");
        for o in &r.admin_overhead {
            let (p, a) = (&o.plain, &o.admin);
            println!(
                "| N={} K={} | {:+.1}% | {:+.1}% | {:+.1}% | {:+.1}% | {:+.1}% | {:+.1}% |",
                o.n,
                o.k,
                change(p.connect_secs, a.connect_secs),
                change(p.query.p50, a.query.p50),
                change(p.query.p99, a.query.p99),
                change(p.fanout.p50, a.fanout.p50),
                change(p.fanout.p99, a.fanout.p99),
                change(p.fanout_cpu_servers_ms, a.fanout_cpu_servers_ms)
            );
        }
    }
    if let Some(s) = &r.all_sockets {
        println!(
            "\n| all_sockets: sockets | K | admin connections | login p50 | p99 (ms) | all_sockets p50 | p90 | p99 \
             | max (ms) | payload (bytes) | wrong | refused | CPU per admin connection servers (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.0} |",
            s.n,
            s.k,
            s.rounds,
            s.login.p50,
            s.login.p99,
            s.all_sockets.p50,
            s.all_sockets.p90,
            s.all_sockets.p99,
            s.all_sockets.max,
            s.payload_bytes,
            s.wrong,
            s.refused,
            s.cpu_servers_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_sockets_ids_are_read_sorted() {
        let array =
            r#"["all_sockets",[{"id":"b","nsp":"/","rooms":["r"]},{"id":"a","handshake":{}}]]"#;
        assert_eq!(listed_ids(array), Some(vec!["a".into(), "b".into()]));
        assert_eq!(listed_ids(r#"["all_sockets",{}]"#), None);
    }

    #[test]
    fn a_wrong_list_or_a_refused_login_is_an_error() {
        let mut report = Report {
            all_sockets: Some(AllSocketsResult::default()),
            ..Default::default()
        };
        assert_eq!(error_count(&report), 0);
        report.all_sockets.as_mut().unwrap().wrong = 1;
        assert_eq!(error_count(&report), 1);
        report.all_sockets.as_mut().unwrap().refused = 2;
        assert_eq!(report.error_count(), 3);
    }

    #[test]
    fn changes_are_in_percent() {
        assert!((change(10.0, 10.5) - 5.0).abs() < 1e-9);
        assert!(change(0.0, 1.0).is_nan());
    }
}
