//! Client events as RPC (docs/rpc.md, issue 24), both targets: clients emit an event with an ack, the node POSTs
//! it, signed as Standard Webhooks says, to a backend, and acks the backend's JSON answer.
//!
//! The backend is [`Receiver`], a plain HTTP/1.1 server on loopback inside this process, the same for both targets:
//! it checks each call's signature (HMAC-SHA256 of `{id}.{timestamp}.{body}`) and answers `{"ok":true}`. Ours
//! calls it from the namespace's `rpc_url`/`rpc_events`/`rpc_secret` (a config file the bench writes); the Node
//! reference from a socket.io handler of the same event that builds the same body, signs it with `node:crypto`,
//! POSTs it with `fetch` and acks the answer (`RPC_*` in `bench/node-reference/server.mjs`).
//!
//! `--rpc-sockets` clients of `/bench-rpc` on `--nodes` nodes, each in the room `rpc`. After one warm-up call per
//! client (connections to the receiver opened), for each rate of `--rpc-rates`, calls go out for `--rpc-seconds`
//! in open loop: call `j` is due at `j / rate` s, from client `j mod N`, whether or not earlier ones were acked.
//! The round trip is from the due time until the ack arrived. Every call must be acked `{"ok":true}`; a `busy`
//! ack, another ack, no ack within the settle limit, a call the bench could not hand to its client, and a call
//! whose signature the receiver refused are each an error.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    Bench, Report, Summary, clamp_to_fd_limit,
    client::{Client, FanoutProbe, Login},
    procs::{self, Node, Target},
    send::wait_until,
};

/// The namespace, the RPC event and the room of the phase's clients.
const RPC_NS: &str = "/bench-rpc";
const EVENT: &str = "rpc:call";
const ROOM: &str = "rpc";
/// The Standard Webhooks secret both targets sign with (`whsec_` and base64 of the key's bytes).
const SECRET: &str = "whsec_YmVuY2gtcnBjLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm";
/// What the receiver answers, and so the ack of every call: `[{"ok":true}]`.
const ANSWER: &str = r#"{"ok":true}"#;
const OK_ACK: &str = r#"[{"ok":true}]"#;
/// How long acks may take after the last call went out (both targets time a call out after 5 s).
const SETTLE_LIMIT: Duration = Duration::from_secs(15);
/// Watched for late or doubled acks once every call is acked.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Debug, Default, Serialize)]
pub struct RpcRateResult {
    pub sockets: usize,
    pub k: usize,
    pub connect_errors: usize,
    /// Calls per second asked for, for `secs` seconds.
    pub rate: usize,
    pub secs: u64,
    pub sent: usize,
    /// Calls the bench could not hand to their client (its writer was behind).
    pub unsent: usize,
    /// Sent per second of sending, and acks per second from the first due time to the last ack.
    pub sent_per_sec: f64,
    pub acked_per_sec: f64,
    /// Acks `{"ok":true}`, `{"error":"busy"}`, anything else; calls never acked; acks of no call in flight.
    pub ok: usize,
    pub busy: usize,
    pub failed: usize,
    pub lost: usize,
    pub unexpected: usize,
    /// Calls the receiver got, and of them those whose signature it refused (`401`).
    pub received: usize,
    pub bad_signatures: usize,
    /// From a call's due time until its ack arrived (acks `{"ok":true}` only).
    pub latency: Summary,
    /// CPU time per call: the nodes and Redis, and this process (clients and receiver).
    pub cpu_servers_ms: f64,
    pub cpu_bench_ms: f64,
}

impl RpcRateResult {
    fn errors(&self) -> usize {
        self.connect_errors
            + self.unsent
            + self.busy
            + self.failed
            + self.lost
            + self.unexpected
            + self.bad_signatures
    }
}

/// Errors of the RPC phase in a report.
pub fn error_count(r: &Report) -> usize {
    r.rpc_rates.iter().map(RpcRateResult::errors).sum()
}

/// The calls in flight and what their acks said, fed by every client's task.
#[derive(Default)]
pub struct Calls {
    /// Due time of each call not acked yet, by its ack id.
    pending: Mutex<HashMap<u64, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    ok: AtomicUsize,
    busy: AtomicUsize,
    failed: AtomicUsize,
    unexpected: AtomicUsize,
    last: Mutex<Option<Instant>>,
}

impl Calls {
    /// Call `seq`, due at `due`, is being sent.
    fn sent(&self, seq: u64, due: Instant) {
        self.pending.lock().unwrap().insert(seq, due);
    }

    /// Call `seq` was not sent after all.
    fn unsent(&self, seq: u64) {
        self.pending.lock().unwrap().remove(&seq);
    }

    /// The ack of call `seq`, its JSON array.
    pub fn acked(&self, seq: u64, array: &str) {
        let now = Instant::now();
        let Some(due) = self.pending.lock().unwrap().remove(&seq) else {
            self.unexpected.fetch_add(1, Ordering::SeqCst);
            return;
        };
        *self.last.lock().unwrap() = Some(now);
        if array == OK_ACK {
            self.latencies.lock().unwrap().push(now.duration_since(due));
            self.ok.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let busy =
            serde_json::from_str::<serde_json::Value>(array).is_ok_and(|v| v[0]["error"] == BUSY);
        let count = if busy { &self.busy } else { &self.failed };
        if count.fetch_add(1, Ordering::SeqCst) < 3 {
            eprintln!("  rpc: call {seq} acked {array}");
        }
    }

    /// Acks of calls so far (any answer).
    fn acks(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
            + self.busy.load(Ordering::SeqCst)
            + self.failed.load(Ordering::SeqCst)
    }

    /// Forgets every count, for the next rate.
    fn reset(&self) {
        self.pending.lock().unwrap().clear();
        self.latencies.lock().unwrap().clear();
        for c in [&self.ok, &self.busy, &self.failed, &self.unexpected] {
            c.store(0, Ordering::SeqCst);
        }
        *self.last.lock().unwrap() = None;
    }
}

/// The ack a node gives over its bounds (docs/rpc.md).
const BUSY: &str = "busy";

/// What the receiver counted.
#[derive(Default)]
struct Counts {
    calls: AtomicUsize,
    bad_signatures: AtomicUsize,
}

/// The backend of both targets: `POST /rpc` on loopback, signature checked, `{"ok":true}` answered. Dropping it
/// stops it and its connections.
struct Receiver {
    url: String,
    counts: Arc<Counts>,
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
        let key = Arc::new(secret_key(SECRET)?);
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        let task = tokio::spawn(async move {
            // Aborted with the accept loop, so no connection outlives the receiver.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (key, counts) = (key.clone(), counted.clone());
                let service =
                    hyper::service::service_fn(move |req| answer(req, key.clone(), counts.clone()));
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
            url: format!("http://{addr}/rpc"),
            counts,
            task,
        })
    }
}

/// The key of a `whsec_` secret.
fn secret_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| anyhow::anyhow!("not a whsec_ secret"))?;
    Ok(STANDARD.decode(encoded)?)
}

/// Whether `signatures` (`webhook-signature`: `v1,<base64>` entries separated by spaces) holds the HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under `key`.
fn signed(key: &[u8], id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|s| mac.clone().verify_slice(&s).is_ok())
}

/// One call: `401` if its signature is wrong, else `{"ok":true}`.
async fn answer(
    req: Request<Incoming>,
    key: Arc<Vec<u8>>,
    counts: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = req.into_body().collect().await?.to_bytes();
    counts.calls.fetch_add(1, Ordering::SeqCst);
    let (status, text) = if signed(&key, &id, &timestamp, &body, &signatures) {
        (StatusCode::OK, ANSWER)
    } else {
        counts.bad_signatures.fetch_add(1, Ordering::SeqCst);
        (StatusCode::UNAUTHORIZED, r#"{"error":"bad signature"}"#)
    };
    let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// CPU time used so far by these processes, to the nanosecond (a call costs well under the 10 ms of a tick).
fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| procs::cpu_time_precise(p)).sum()
}

impl Bench {
    /// Runs the RPC phase if the flags ask for it.
    pub(crate) async fn rpc_phase(&self, target: &Target, report: &mut Report) {
        let a = &self.args;
        let rates: Vec<usize> = a.rpc_rates.iter().copied().filter(|&r| r > 0).collect();
        if rates.is_empty() || a.rpc_sockets == 0 || a.rpc_seconds == 0 {
            return;
        }
        if let Err(e) = self.rpc(target, &rates, report).await {
            report.errors.push(format!("rpc: {e:#}"));
        }
    }

    /// K nodes serving `/bench-rpc` with the receiver as its backend: ours from a config file, the Node reference
    /// from its environment.
    async fn rpc_cluster(
        &self,
        target: &Target,
        url: &str,
    ) -> anyhow::Result<(procs::Redis, Vec<Node>)> {
        let logs = self.logs(target, "rpc")?;
        let k = self.args.nodes;
        if target.name == "ours" {
            let text = format!(
                r#"# Written by the bench (bench/src/rpc.rs): the namespace whose `{EVENT}` goes to the receiver.
[[namespace]]
name = "{RPC_NS}"
auth = "claim"
rooms = ["handshake"]
rpc_url = "{url}"
rpc_events = ["{EVENT}"]
rpc_secret = "{SECRET}"
"#
            );
            let config = crate::tenancy::write_config(&logs, &text)?;
            return self.cluster_in(target, k, &logs, Some(&config)).await;
        }
        let env = [
            ("RPC_NAMESPACE", RPC_NS.to_owned()),
            ("RPC_URL", url.to_owned()),
            ("RPC_EVENTS", EVENT.to_owned()),
            ("RPC_SECRET", SECRET.to_owned()),
        ];
        self.cluster_env(target, k, &logs, None, &env).await
    }

    async fn rpc(
        &self,
        target: &Target,
        rates: &[usize],
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let a = &self.args;
        let receiver = Receiver::start().await?;
        let (redis, nodes) = self.rpc_cluster(target, &receiver.url).await?;
        let n = clamp_to_fd_limit(a.rpc_sockets);
        let probe = Arc::new(FanoutProbe::default());
        let calls = Arc::new(Calls::default());
        if probe.track_calls(calls.clone()).is_err() {
            anyhow::bail!("the probe tracks calls already");
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let logins = (0..n).map(|i| Login {
            namespace: RPC_NS.into(),
            query: vec![("id_user", format!("u{i}")), ("room", ROOM.into())],
            auth: None,
        });
        let opened = self.open(&addrs, logins, a.concurrency, &probe).await;
        let (clients, connect_errors) = (opened.clients, opened.failed);
        anyhow::ensure!(!clients.is_empty(), "none of {n} clients connected");
        // One call per client first: every node opens its connections to the receiver before the clock runs.
        let mut seq = 0u64;
        for client in &clients {
            seq += 1;
            calls.sent(seq, Instant::now());
            if !client.try_emit_with_ack(EVENT, seq, &json!({ "seq": seq })) {
                calls.unsent(seq);
            }
        }
        let warm = wait_until(SETTLE_LIMIT, || calls.acks() >= clients.len()).await;
        anyhow::ensure!(
            warm.is_some() && calls.ok.load(Ordering::SeqCst) == clients.len(),
            "warm-up: {} of {} calls acked ok",
            calls.ok.load(Ordering::SeqCst),
            clients.len()
        );
        let mut pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        pids.push(redis.pid());
        for &rate in rates {
            calls.reset();
            let r = self
                .rpc_rate(&clients, &calls, &receiver, &pids, rate, &mut seq)
                .await;
            let r = RpcRateResult {
                sockets: clients.len(),
                k: nodes.len(),
                connect_errors,
                ..r
            };
            println!(
                "  rpc: {} sockets on {} nodes, {} calls/s for {} s: sent {:.0}/s, acked {:.0}/s, p50 {:.2} ms \
                 p99 {:.2} ms max {:.2} ms ({} ok, {} busy, {} other errors, {} lost, {} unsent; receiver got {}, \
                 {} bad signatures)",
                r.sockets,
                r.k,
                r.rate,
                r.secs,
                r.sent_per_sec,
                r.acked_per_sec,
                r.latency.p50,
                r.latency.p99,
                r.latency.max,
                r.ok,
                r.busy,
                r.failed,
                r.lost,
                r.unsent,
                r.received,
                r.bad_signatures
            );
            report.rpc_rates.push(r);
        }
        Ok(())
    }

    /// Calls at `rate` for `--rpc-seconds` (ack ids after `seq`), then waits for their acks.
    async fn rpc_rate(
        &self,
        clients: &[Client],
        calls: &Calls,
        receiver: &Receiver,
        pids: &[u32],
        rate: usize,
        seq: &mut u64,
    ) -> RpcRateResult {
        let secs = self.args.rpc_seconds;
        let total = rate * secs as usize;
        let (received_before, bad_before) = (
            receiver.counts.calls.load(Ordering::SeqCst),
            receiver.counts.bad_signatures.load(Ordering::SeqCst),
        );
        let me = [std::process::id()];
        let (servers_before, bench_before) = (cpu(pids), cpu(&me));
        let start = Instant::now();
        let due = |j: usize| start + Duration::from_secs_f64(j as f64 / rate.max(1) as f64);
        let (mut j, mut sent, mut unsent) = (0, 0, 0);
        // Open loop: every call due by now goes out at each wake-up, acked or not the ones before.
        while j < total {
            tokio::time::sleep_until(due(j).into()).await;
            let now = Instant::now();
            while j < total && due(j) <= now {
                *seq += 1;
                calls.sent(*seq, due(j));
                if clients[j % clients.len()].try_emit_with_ack(
                    EVENT,
                    *seq,
                    &json!({ "seq": *seq }),
                ) {
                    sent += 1;
                } else {
                    calls.unsent(*seq);
                    unsent += 1;
                }
                j += 1;
            }
        }
        let send_secs = start.elapsed().as_secs_f64();
        wait_until(SETTLE_LIMIT, || calls.acks() >= sent).await;
        let (cpu_servers, cpu_bench) = (
            cpu(pids).saturating_sub(servers_before),
            cpu(&me).saturating_sub(bench_before),
        );
        tokio::time::sleep(QUIET).await;
        let last = calls.last.lock().unwrap().unwrap_or(start);
        let per_call = |d: Duration| d.as_secs_f64() * 1e3 / sent.max(1) as f64;
        let acks = calls.acks();
        RpcRateResult {
            rate,
            secs,
            sent,
            unsent,
            sent_per_sec: sent as f64 / send_secs,
            acked_per_sec: acks as f64 / last.duration_since(start).as_secs_f64(),
            ok: calls.ok.load(Ordering::SeqCst),
            busy: calls.busy.load(Ordering::SeqCst),
            failed: calls.failed.load(Ordering::SeqCst),
            lost: sent.saturating_sub(acks),
            unexpected: calls.unexpected.load(Ordering::SeqCst),
            received: receiver.counts.calls.load(Ordering::SeqCst) - received_before,
            bad_signatures: receiver.counts.bad_signatures.load(Ordering::SeqCst) - bad_before,
            latency: Summary::of(calls.latencies.lock().unwrap().clone()),
            cpu_servers_ms: per_call(cpu_servers),
            cpu_bench_ms: per_call(cpu_bench),
            ..Default::default()
        }
    }
}

/// The RPC table of a report (nothing if the phase did not run).
pub fn print(r: &Report) {
    if r.rpc_rates.is_empty() {
        return;
    }
    println!(
        "\n| RPC round trip: sockets | K | calls/s asked | for (s) | sent/s | acked/s | p50 | p90 | p99 | max (ms) \
         | ok | busy | other errors | lost | unsent | receiver got (bad signatures) | CPU per call servers, bench (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for x in &r.rpc_rates {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} ({}) \
             | {:.3}, {:.3} |",
            x.sockets,
            x.k,
            x.rate,
            x.secs,
            x.sent_per_sec,
            x.acked_per_sec,
            x.latency.p50,
            x.latency.p90,
            x.latency.p99,
            x.latency.max,
            x.ok,
            x.busy,
            x.failed,
            x.lost,
            x.unsent,
            x.received,
            x.bad_signatures,
            x.cpu_servers_ms,
            x.cpu_bench_ms
        );
    }
}

/// The RPC rows of the ours / node table; `row(name, ours, node, unit)`.
pub fn ratios(ours: &Report, node: &Report, row: &dyn Fn(String, f64, f64, &str)) {
    for (a, b) in ours.rpc_rates.iter().zip(&node.rpc_rates) {
        for (name, x, y) in [
            ("p50", a.latency.p50, b.latency.p50),
            ("p99", a.latency.p99, b.latency.p99),
        ] {
            row(
                format!("RPC round trip {name}, {} calls/s, K={}", a.rate, a.k),
                x,
                y,
                "ms",
            );
        }
        row(
            format!("RPC CPU per call (servers), {} calls/s, K={}", a.rate, a.k),
            a.cpu_servers_ms,
            b.cpu_servers_ms,
            "ms",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example (standard-webhooks/spec): secret, id, timestamp, body and
    /// the signature its libraries compute.
    #[test]
    fn checks_the_specifications_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(signed(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            body,
            sig
        ));
        assert!(signed(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            body,
            &format!("v1,AAAA {sig}")
        ));
        assert!(!signed(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265331",
            body,
            sig
        ));
        assert!(!signed(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            body,
            ""
        ));
    }

    #[test]
    fn sorts_acks_into_ok_busy_and_other() {
        let calls = Calls::default();
        let now = Instant::now();
        for seq in 1..=4 {
            calls.sent(seq, now);
        }
        calls.acked(1, OK_ACK);
        calls.acked(2, r#"[{"error":"busy"}]"#);
        calls.acked(3, r#"[{"error":"the backend answered 401"}]"#);
        calls.acked(1, OK_ACK);
        assert_eq!(calls.ok.load(Ordering::SeqCst), 1);
        assert_eq!(calls.busy.load(Ordering::SeqCst), 1);
        assert_eq!(calls.failed.load(Ordering::SeqCst), 1);
        assert_eq!(calls.unexpected.load(Ordering::SeqCst), 1);
        assert_eq!(calls.acks(), 3);
        assert_eq!(calls.latencies.lock().unwrap().len(), 1);
    }
}
