//! The tenancy phases:
//!
//! 1. **Handshakes by auth kind** (`claim` and `jwt` both targets, `credentials` ours only). One node serving one
//!    namespace per kind: ours from a config file the bench writes into the phase's log directory
//!    (`config.toml`, and `credentials.json` with bcrypt hashes), `/bench-claim`, `/bench-jwt` (HS256 tokens the
//!    bench signs), `/bench-credentials`, each with `rooms = ["handshake", "user"]`, so the kinds differ only in
//!    how the client is verified; the Node reference from its environment (`CLAIM_NAMESPACE`, `JWT_NAMESPACE`,
//!    `JWT_SECRET`: the same handshake, and a middleware verifying the same tokens with `jsonwebtoken`, both
//!    joining the handshake room and `user.{id}`). The kinds are measured one after another, the sockets of one
//!    closed (and gone from the node) before the next starts: M full handshakes (TCP, TLS, websocket upgrade,
//!    Engine.IO open, Socket.IO `CONNECT` to the namespace with the kind's credentials, until `40{sid}`), with
//!    bounded concurrency, after M/10 of them not counted (a warm server: Node has compiled its hot paths).
//!    Refused handshakes are errors.
//! 2. **The users query on a namespace, 3 rooms per socket** (ours only). K nodes serving `/bench-rooms`
//!    (`auth = "claim"`, `rooms = ["handshake", "user", "session"]`): N sockets, socket `i` on node `i mod K`,
//!    all in the handshake room `big` and each in its own `user.u{i}` and `session.s{i}`; then sequential
//!    `GET /big/users?namespace=/bench-rooms`, each answer checked to list every socket exactly once.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::{FanoutProbe, Login},
    procs::{self, Node, Redis, Target},
};

/// The HS256 secret of `/bench-jwt` (the config file needs at least 16 bytes).
const JWT_SECRET: &str = "bench-only-secret-0123456789abcdef";
/// Every user of the credentials file has this password.
const PASSWORD: &str = "bench-password-1";
/// The namespace of the 3-room query, and its handshake room.
const ROOMS_NS: &str = "/bench-rooms";
const BIG_ROOM: &str = "big";

#[derive(Debug, Default, Serialize)]
pub struct HandshakeResult {
    pub auth: &'static str,
    pub handshakes: usize,
    pub concurrency: usize,
    pub secs: f64,
    /// Successful handshakes per second of wall time.
    pub per_sec: f64,
    /// From the TCP connect until the namespace's `40{sid}`.
    pub latency: Summary,
    /// Handshakes that failed (refused, timed out, closed): each is an error.
    pub refused: usize,
    /// CPU time (user + system) the node used per successful handshake.
    pub server_cpu_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct NamespaceQueryResult {
    pub n: usize,
    pub k: usize,
    /// Memberships per socket in the namespace, from `GET /api/rooms?namespace=` (3 expected).
    pub rooms_per_socket: f64,
    pub connect_secs: f64,
    pub connect_errors: usize,
    pub query: Summary,
    /// Answers that did not list each socket exactly once (or failed), plus a wrong room count.
    pub wrong_answers: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Claim,
    Jwt,
    Credentials,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Jwt => "jwt",
            Self::Credentials => "credentials",
        }
    }

    fn namespace(self) -> String {
        format!("/bench-{}", self.name())
    }

    /// Client `i`'s login: user `u{i}`, in the handshake room `hs`. JWTs are signed here, before the clock
    /// starts, so the measurement is the server's verification, not the bench's signing.
    fn login(self, i: usize, exp: u64) -> anyhow::Result<Login> {
        let user = format!("u{i}");
        let mut query = vec![("room", "hs".to_owned())];
        let auth = match self {
            Self::Claim => {
                query.push(("id_user", user));
                None
            }
            Self::Jwt => {
                let token = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &json!({ "sub": user, "exp": exp }),
                    &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
                )?;
                Some(json!({ "token": token }))
            }
            Self::Credentials => Some(json!({ "username": user, "password": PASSWORD })),
        };
        Ok(Login {
            namespace: self.namespace(),
            query,
            auth,
        })
    }
}

/// Writes `config.toml` (a namespace per auth kind) and `credentials.json` (`users` users `u{i}`) into `dir`.
/// Every user gets the same bcrypt hash (one salt): the node still runs one full bcrypt check per handshake,
/// and the bench does not spend `users` x 50-80 ms hashing.
fn write_handshake_config(dir: &Path, users: usize, cost: u32) -> anyhow::Result<PathBuf> {
    let hash = bcrypt::hash(PASSWORD, cost).context("bcrypt")?;
    let creds: Vec<_> = (0..users)
        .map(|i| json!({ "username": format!("u{i}"), "password": hash }))
        .collect();
    std::fs::write(
        dir.join("credentials.json"),
        serde_json::to_vec_pretty(&creds)?,
    )?;
    let text = format!(
        r#"# Written by the bench (bench/src/tenancy.rs): one namespace per auth kind, the same rooms for each.
[[namespace]]
name = "{claim}"
auth = "claim"
rooms = ["handshake", "user"]

[[namespace]]
name = "{jwt}"
auth = "jwt"
jwt_secret = "{JWT_SECRET}"
rooms = ["handshake", "user"]

[[namespace]]
name = "{credentials}"
auth = "credentials"
credentials_file = "credentials.json"
rooms = ["handshake", "user"]
"#,
        claim = Kind::Claim.namespace(),
        jwt = Kind::Jwt.namespace(),
        credentials = Kind::Credentials.namespace(),
    );
    write_config(dir, &text)
}

/// Writes `config.toml` with the 3-room namespace into `dir`.
fn write_rooms_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = format!(
        r#"# Written by the bench (bench/src/tenancy.rs): every socket in its handshake room, user.{{id}}, session.{{id}}.
[[namespace]]
name = "{ROOMS_NS}"
auth = "claim"
rooms = ["handshake", "user", "session"]
"#
    );
    write_config(dir, &text)
}

/// Writes `text` as `config.toml` into `dir`; its absolute path.
pub(crate) fn write_config(dir: &Path, text: &str) -> anyhow::Result<PathBuf> {
    let path = std::path::absolute(dir.join("config.toml"))?;
    std::fs::write(&path, text)?;
    Ok(path)
}

impl Bench {
    /// Handshakes per second for each auth kind, on one node (the Node reference: `claim` and `jwt`).
    pub(crate) async fn handshakes(
        &self,
        target: &Target,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let a = &self.args;
        let ours = target.name == "ours";
        let kinds: Vec<(Kind, usize, usize)> = [
            (Kind::Claim, a.handshakes, a.handshake_concurrency),
            (Kind::Jwt, a.handshakes, a.handshake_concurrency),
            (
                Kind::Credentials,
                if ours { a.credential_handshakes } else { 0 },
                a.credential_concurrency,
            ),
        ]
        .into_iter()
        .filter(|(_, m, _)| *m > 0)
        .collect();
        if kinds.is_empty() {
            return Ok(());
        }
        let (_redis, nodes) = self.handshake_node(target).await?;
        let node = &nodes[0];
        let probe = Arc::new(FanoutProbe::default());
        let exp = jsonwebtoken::get_current_timestamp() + 3600;
        for (kind, m, concurrency) in kinds {
            let m = clamp_to_fd_limit(m);
            // A tenth of them first, not counted (failures neither): Node's JIT compiles the handshake's hot paths
            // and both targets' allocators grow, so the measurement is of a warm server.
            let warm = (0..m / 10)
                .map(|i| kind.login(i, exp))
                .collect::<anyhow::Result<Vec<_>>>()?;
            drop(
                self.open(&[node.addr], warm.into_iter(), concurrency, &probe)
                    .await,
            );
            self.drained(&nodes).await?;
            let logins = (0..m)
                .map(|i| kind.login(i, exp))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let cpu_before = procs::cpu_time(node.pid());
            let started = Instant::now();
            let opened = self
                .open(&[node.addr], logins.into_iter(), concurrency, &probe)
                .await;
            let secs = started.elapsed().as_secs_f64();
            let cpu = procs::cpu_time(node.pid()).saturating_sub(cpu_before);
            let ok = opened.clients.len();
            let r = HandshakeResult {
                auth: kind.name(),
                handshakes: m,
                concurrency,
                secs,
                per_sec: ok as f64 / secs,
                latency: Summary::of(opened.latencies),
                refused: opened.failed,
                server_cpu_ms: cpu.as_secs_f64() * 1e3 / ok.max(1) as f64,
            };
            println!(
                "  handshakes: auth={:<11} {m} in {:.2}s ({} in flight): {:.0}/s, p50 {:.2} ms p99 {:.2} ms, \
                 node CPU {:.2} ms each ({} refused)",
                r.auth,
                r.secs,
                r.concurrency,
                r.per_sec,
                r.latency.p50,
                r.latency.p99,
                r.server_cpu_ms,
                r.refused
            );
            report.handshakes.push(r);
            drop(opened.clients);
            self.drained(&nodes).await?;
        }
        Ok(())
    }

    /// One node serving a namespace per auth kind: ours from a config file, the Node reference (no credentials
    /// kind) from its environment.
    async fn handshake_node(&self, target: &Target) -> anyhow::Result<(Redis, Vec<Node>)> {
        let a = &self.args;
        let logs = self.logs(target, "handshakes")?;
        if target.name == "ours" {
            let config = write_handshake_config(&logs, a.credential_handshakes, a.bcrypt_cost)?;
            return self.cluster_in(target, 1, &logs, Some(&config)).await;
        }
        let env = [
            ("CLAIM_NAMESPACE", Kind::Claim.namespace()),
            ("JWT_NAMESPACE", Kind::Jwt.namespace()),
            ("JWT_SECRET", JWT_SECRET.to_owned()),
        ];
        self.cluster_env(target, 1, &logs, None, &env).await
    }

    /// The users query on a namespace where every socket is in 3 rooms, on `--nodes` nodes.
    pub(crate) async fn namespace_query(
        &self,
        target: &Target,
    ) -> anyhow::Result<NamespaceQueryResult> {
        let n = clamp_to_fd_limit(self.args.ns_size);
        let k = self.args.nodes;
        let logs = self.logs(target, "namespace-query")?;
        let config = write_rooms_config(&logs)?;
        let (_redis, nodes) = self.cluster_in(target, k, &logs, Some(&config)).await?;
        let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
        let logins = (0..n).map(|i| Login {
            namespace: ROOMS_NS.into(),
            query: vec![
                ("id_user", format!("u{i}")),
                ("session_id", format!("s{i}")),
                ("room", BIG_ROOM.into()),
            ],
            auth: None,
        });
        let probe = Arc::new(FanoutProbe::default());
        let started = Instant::now();
        let opened = self
            .open(&addrs, logins, self.args.concurrency, &probe)
            .await;
        let connect_secs = started.elapsed().as_secs_f64();
        let mut sids: Vec<&str> = opened.clients.iter().map(|c| c.sid.as_str()).collect();
        sids.sort_unstable();
        let bases: Vec<&str> = nodes.iter().map(|n| n.base.as_str()).collect();

        // The sockets really are in 3 rooms each: the namespace's room sizes add up to 3 per socket.
        let ns = form_urlencoded::byte_serialize(ROOMS_NS.as_bytes()).collect::<String>();
        let rooms: serde_json::Value = self
            .http
            .get(format!("{}/api/rooms?namespace={ns}", bases[0]))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let memberships: u64 = rooms["rooms"]
            .as_array()
            .map_or(0, |r| r.iter().filter_map(|r| r["sockets"].as_u64()).sum());
        let rooms_per_socket = memberships as f64 / sids.len().max(1) as f64;
        let mut wrong_answers = 0;
        if memberships != 3 * sids.len() as u64 {
            wrong_answers += 1;
            eprintln!(
                "  namespace query: {memberships} room memberships for {} sockets, expected 3 each",
                sids.len()
            );
        }

        let (query, wrong) = self.query_exact(&bases, &ns, &sids).await;
        wrong_answers += wrong;
        let r = NamespaceQueryResult {
            n,
            k,
            rooms_per_socket,
            connect_secs,
            connect_errors: opened.failed,
            query,
            wrong_answers,
        };
        println!(
            "  namespace query: N={n} ({:.1} rooms per socket) K={k}: connect {:.2}s ({} errors), query p50 {:.2} ms \
             p99 {:.2} ms ({} wrong)",
            r.rooms_per_socket,
            r.connect_secs,
            r.connect_errors,
            r.query.p50,
            r.query.p99,
            r.wrong_answers
        );
        Ok(r)
    }

    /// `--requests` sequential `GET /big/users?namespace=`, round-robin over the nodes (after 2 warm-up rounds),
    /// each checked to list exactly the sockets `sids` (sorted), each once. The clock stops when the whole body
    /// has arrived; checking happens after.
    async fn query_exact(&self, bases: &[&str], ns: &str, sids: &[&str]) -> (Summary, usize) {
        #[derive(serde::Deserialize)]
        struct Entry {
            id_socket: String,
        }
        let requests = self.args.requests;
        let mut samples = Vec::with_capacity(requests);
        let mut wrong = 0;
        for i in 0..(requests + 2 * bases.len()) {
            let url = format!("{}/{BIG_ROOM}/users?namespace={ns}", bases[i % bases.len()]);
            let started = Instant::now();
            let body = match self.http.get(&url).send().await {
                Ok(res) if res.status().is_success() => res.bytes().await.ok(),
                _ => None,
            };
            let took = started.elapsed();
            if i < 2 * bases.len() {
                continue;
            }
            let mut listed: Option<Vec<String>> = body
                .and_then(|b| serde_json::from_slice::<Vec<Entry>>(&b).ok())
                .map(|v| v.into_iter().map(|e| e.id_socket).collect());
            if let Some(l) = &mut listed {
                l.sort_unstable();
            }
            let exact = listed
                .as_ref()
                .is_some_and(|l| l.len() == sids.len() && l.iter().zip(sids).all(|(a, b)| a == b));
            if !exact {
                wrong += 1;
                if wrong <= 3 {
                    let got = listed.as_ref().map(|l| {
                        let mut unique = l.clone();
                        unique.dedup();
                        (l.len(), unique.len())
                    });
                    eprintln!(
                        "  {url}: expected each of {} sockets once, got (entries, distinct) {got:?}",
                        sids.len()
                    );
                }
            }
            samples.push(took);
        }
        (Summary::of(samples), wrong)
    }
}

/// Ours against Node's handshakes, kind by kind: wall time per 1,000 handshakes (the inverse of the rate, so that
/// lower is better as in every row) and node CPU per handshake.
pub fn ratios(ours: &Report, node: &Report, row: &dyn Fn(String, f64, f64, &str)) {
    for a in &ours.handshakes {
        let Some(b) = node.handshakes.iter().find(|b| b.auth == a.auth) else {
            continue;
        };
        let per_1000 = |h: &HandshakeResult| match h.per_sec > 0.0 {
            true => 1000.0 / h.per_sec,
            false => f64::NAN,
        };
        let name = format!("{} handshakes, {} in flight", a.auth, a.concurrency);
        row(
            format!("{name}: s per 1,000"),
            per_1000(a),
            per_1000(b),
            "s",
        );
        row(
            format!("{name}: node CPU per handshake"),
            a.server_cpu_ms,
            b.server_cpu_ms,
            "ms",
        );
    }
}

/// The tenancy tables of a report (nothing when the phases did not run).
pub fn print(r: &Report) {
    if !r.handshakes.is_empty() {
        println!(
            "\n| auth | handshakes | in flight | connects/s | p50 | p90 | p99 | max (ms) | node CPU per handshake (ms) \
             | refused |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for h in &r.handshakes {
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                h.auth,
                h.handshakes,
                h.concurrency,
                h.per_sec,
                h.latency.p50,
                h.latency.p90,
                h.latency.p99,
                h.latency.max,
                h.server_cpu_ms,
                h.refused
            );
        }
    }
    if let Some(q) = &r.namespace_query {
        println!(
            "\n| N (namespace, rooms per socket) | K | connect (s) | query p50 | p90 | p99 | max (ms) | wrong |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {} ({}, {:.1}) | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            q.n,
            ROOMS_NS,
            q.rooms_per_socket,
            q.k,
            q.connect_secs,
            q.query.p50,
            q.query.p90,
            q.query.p99,
            q.query.max,
            q.wrong_answers
        );
    }
}
