//! `bench`: the load generator behind `scripts/bench.sh` (method and results in BENCHMARKS.md).
//!
//! For each target (our server, and the Node reference in `bench/node-reference/`) it starts its own
//! `redis-server` and K nodes on loopback, opens N Socket.IO clients over TLS websockets spread across the nodes,
//! and measures:
//! 1. `GET /{room}/users` latency (sequential requests, keep-alive HTTPS) and that every answer has exactly N entries;
//! 2. connection set-up time, and resident memory per idle connection on one node;
//! 3. fan-out: one `identity-change` relayed to the N-1 others of the room, until the last one has it;
//! 4. how the query scales with the number of nodes;
//! 5. (`send.rs`) `POST /send`: pushes per second to a room on one node, the time until the last socket of a
//!    large room on K nodes has a push, and reliable delivery (store, emit, ack) to user rooms per second;
//! 6. (`tenancy.rs`) handshakes per second by auth kind (`claim`, `jwt`; ours also `credentials`) on one node,
//!    and (ours only) the users query on a namespace where every socket is in 3 rooms, on K nodes;
//! 7. (ours only, `admin.rs`) the admin UI: 1 and 3 without and with `[admin]` (no admin UI connected), and
//!    the time until an admin UI that logs in has `all_sockets` with every socket of the cluster.
//! 8. (ours only, `gateway.rs`) the event-bus gateway: a message's round trip through Redis Streams and a backend
//!    played by the bench, at fixed rates; and `send` entries to many users.
//! 9. (`recovery.rs`) connection state recovery: what it costs the fan-out of a push, and the sockets of a
//!    node killed with SIGKILL coming back on the survivors with what they missed (the official client).
//! 10. (`emitter.rs`) the socket.io Redis emitter: one message published as `@socket.io/redis-emitter` does, until
//!     the last socket of a large room on K nodes has it, and messages per second into a room, none lost.
//! 11. (`rpc.rs`) client events as RPC: an event's round trip through a signed POST to a local receiver and back
//!     as its ack, at fixed rates (the Node reference: the same receiver called from a socket.io handler).
//! 12. (ours only, `webhook.rs`) lifecycle webhooks: sockets churning through many rooms on K nodes, the room and
//!     member events a receiver in this process gets, their lag, each exactly once.
//!
//! Everything is bounded: counts come from the flags, every wait has a limit, and the whole run has a deadline.
//! `--check` turns any error (refused connection, wrong count, lost event) into a non-zero exit: the test suite
//! runs a tiny `--check` run so the benchmark cannot rot.

mod admin;
mod big;
mod client;
mod cost;
mod emitter;
mod gateway;
mod procs;
mod proxy;
mod recovery;
mod rpc;
mod send;
mod tenancy;
mod webhook;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use serde::Serialize;

use crate::{
    admin::{AllSocketsResult, OverheadResult},
    big::BigResult,
    client::{Client, FanoutProbe, Login},
    cost::CostResult,
    emitter::{EmitterFanoutResult, EmitterRateResult},
    gateway::{GatewayRateResult, GatewaySendResult},
    procs::{Node, Redis, Target},
    recovery::{KilledNodeResult, RecoveryFanoutResult},
    rpc::RpcRateResult,
    send::{ReliableResult, SendFanoutResult, SendRateResult},
    tenancy::{HandshakeResult, NamespaceQueryResult},
    webhook::WebhookChurnResult,
};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Load generator: our server against the Node reference"
)]
struct Args {
    /// Our server's binary (and arguments, split on spaces).
    #[arg(
        long,
        env = "BENCH_OURS",
        default_value = "target/release/socket-identity"
    )]
    ours: String,
    /// The command that starts one node of the Node reference (split on spaces).
    #[arg(long, default_value = "node bench/node-reference/server.mjs")]
    reference: String,
    /// Threads of each of our nodes (`WORKER_THREADS`): `share` gives each of K nodes cores / K (at least 1), as
    /// `deploy/ecosystem.config.js` does and as Node's one thread per process amounts to; `cores` leaves it unset
    /// (one per core in every node); or a number.
    #[arg(long, default_value = "share", value_parser = procs::Threads::parse)]
    worker_threads: procs::Threads,
    /// Run the servers (nodes and Redis) on the first half of the cores and the load generator on the other
    /// half, so that each target's throughput is bounded by its own CPU, not by what it leaves the load generator
    /// (BENCHMARKS.md, "Servers on their own cores"). Off: every process shares every core.
    #[arg(long)]
    split_cores: bool,
    /// Which targets to measure: ours, node, or both.
    #[arg(long, default_value = "both")]
    only: String,
    /// Room sizes N for the query and fan-out measurements.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "100,1000,10000")]
    sizes: Vec<usize>,
    /// Nodes K for the query and fan-out measurements.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// `GET /{room}/users` requests per room size (after a short warm-up).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Fan-out rounds per room size.
    #[arg(long, default_value_t = 30)]
    fanout_rounds: usize,
    /// Print each fan-out round's time to the last client and the servers' CPU it took (to tell a first
    /// round's warm-up from the steady cost).
    #[arg(long)]
    fanout_per_round: bool,
    /// Idle connections opened on one node for the memory measurement (clamped to the open-files limit); 0
    /// skips it.
    #[arg(long, default_value_t = 20_000)]
    memory_conns: usize,
    /// Sockets per room in the memory measurement. With `--presence`, one room of all of them is a burst
    /// (`socket-connected` to the room at each join, N²/2 deliveries): the RSS measured after it says whether the
    /// buffers it grew came back.
    #[arg(long, default_value_t = 10)]
    memory_room: usize,
    /// Node counts for the scaling measurement (room of `--scale-size`); `--scale-nodes` alone skips it.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,2,4,8")]
    scale_nodes: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    scale_size: usize,
    /// Start the nodes with join/leave events on (`PRESENCE_EVENTS=true`): filling a room of N then costs N²/2
    /// deliveries, which at N = 10,000 dominates everything else.
    #[arg(long)]
    presence: bool,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Handshakes per second: handshakes measured for `auth = "claim"` and for `auth = "jwt"`, each on one node
    /// (both targets: the Node reference verifies the JWTs with `jsonwebtoken`; 0 skips both).
    #[arg(long, default_value_t = 2000)]
    handshakes: usize,
    /// Handshakes measured for `auth = "credentials"` (bcrypt, `--bcrypt-cost`), ours only; 0 skips them.
    #[arg(long, default_value_t = 200)]
    credential_handshakes: usize,
    /// Handshakes in flight at once for `claim` and `jwt`.
    #[arg(long, default_value_t = 32)]
    handshake_concurrency: usize,
    /// Handshakes in flight at once for `credentials`. The node checks passwords on all cores but one and
    /// refuses a handshake that waited too long for its turn ("server busy", `QUEUE_WAIT` in
    /// `src/realtime/auth/credentials.rs`), so this stays small.
    #[arg(long, default_value_t = 8)]
    credential_concurrency: usize,
    /// bcrypt cost of the credentials file the bench writes.
    #[arg(long, default_value_t = 10)]
    bcrypt_cost: u32,
    /// Ours only: sockets in the namespace whose users query is measured, each in 3 rooms (its handshake room,
    /// `user.{id}`, `session.{id}`), spread over `--nodes` nodes; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    ns_size: usize,
    /// `POST /send` requests per second: pushes posted to a room of `--send-room-size` sockets on one node; 0
    /// skips it.
    #[arg(long, default_value_t = 5000)]
    send_requests: usize,
    /// Sockets in the room those pushes go to (`staff`, not a user room).
    #[arg(long, default_value_t = 100)]
    send_room_size: usize,
    /// `POST /send` requests in flight at once (keep-alive HTTPS connections), for `--send-requests` and
    /// `--reliable-rooms`.
    #[arg(long, default_value_t = 16)]
    send_concurrency: usize,
    /// Sockets of the room, on `--nodes` nodes, that one push per round (`--fanout-rounds`) must reach: the
    /// time until the last one has it; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    send_fanout_size: usize,
    /// Connection state recovery, its cost: sockets of a room on `--nodes` nodes that one `POST /send` per round
    /// (`--fanout-rounds`) must reach, measured on a cluster without recovery and on one with it (ours:
    /// `recovery_window_s`; the Node reference: `@socket.io/redis-adapter`, then
    /// `@socket.io/redis-streams-adapter` with `connectionStateRecovery`); 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    recovery_fanout_size: usize,
    /// Connection state recovery of a killed node: official socket.io-client sockets (one Node process) on one
    /// node of `--nodes` through a loopback proxy; the bench SIGKILLs that node, pushes `--recovery-missed`
    /// events to their room, and they reconnect to the survivors at once; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    recovery_sockets: usize,
    /// Events pushed while those sockets are away, each to come back once, in order; 0 skips the phase.
    #[arg(long, default_value_t = 100)]
    recovery_missed: usize,
    /// The signal that stops their node: KILL (a crash) or TERM (a graceful shutdown: the control, where the
    /// Node reference saves its sockets' sessions).
    #[arg(long, default_value = "KILL", value_parser = ["KILL", "TERM"])]
    recovery_signal: String,
    /// The socket.io Redis emitter, its fan-out: sockets of a room on `--nodes` nodes that one message per round
    /// (`--fanout-rounds`), published to Redis as `@socket.io/redis-emitter` does, must reach, each exactly once;
    /// 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    emitter_fanout_size: usize,
    /// The emitter's rate: sockets of a room on `--nodes` nodes that emitter messages go to as fast as they keep
    /// up (`--emitter-window`), for `--emitter-rate-seconds`, each to arrive exactly once; 0 skips it.
    #[arg(long, default_value_t = 100)]
    emitter_rate_room: usize,
    #[arg(long, default_value_t = 10)]
    emitter_rate_seconds: u64,
    /// Emitter messages unfinished at once (published, not yet at every socket of the room) in that phase.
    #[arg(long, default_value_t = 64)]
    emitter_window: usize,
    /// Reliable delivery: sockets, each alone in its user room `user_{i}`, on `--nodes` nodes, that get
    /// `--reliable-rounds` pushes each and acknowledge them; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    reliable_rooms: usize,
    /// Pushes per user room.
    #[arg(long, default_value_t = 5)]
    reliable_rounds: usize,
    /// Reliable pushes in flight at once (default: `--send-concurrency`). With 16, our nodes leave part of the
    /// cores idle (each push waits on two Redis round trips); more measures what the servers can take.
    #[arg(long)]
    reliable_in_flight: Option<usize>,
    /// Ours only: room sizes N for which the room query and fan-out (as for `--sizes`) are measured on two
    /// K-node clusters, without and with `[admin]` (no admin UI connected); empty or 0 skips it.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000,10000")]
    admin_overhead: Vec<usize>,
    /// Passes per size of `--admin-overhead`, alternating which cluster goes first; their samples are pooled.
    #[arg(long, default_value_t = 4)]
    admin_passes: usize,
    /// Ours only: sockets on `--nodes` nodes with `[admin]`, which an admin UI's `all_sockets` must list; 0
    /// skips it.
    #[arg(long, default_value_t = 10_000)]
    admin_sockets: usize,
    /// Admin UI connections (each logs in and waits for `all_sockets`), one after another.
    #[arg(long, default_value_t = 10)]
    admin_rounds: usize,
    /// Log the admin UI in with a wrong password: every login is refused, which `--check` must report (the
    /// smoke test checks that it does).
    #[arg(long, hide = true)]
    admin_wrong_password: bool,
    /// Gateway round trip (ours only): plain WebSocket clients of `/bench-gw` on `--nodes` nodes sending
    /// messages that the bench's backend answers through Redis Streams; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    gateway_clients: usize,
    /// Aggregate messages per second of the round trip, one measurement each (none skips it).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000,10000")]
    gateway_rates: Vec<usize>,
    /// Seconds of sending at each rate.
    #[arg(long, default_value_t = 10)]
    gateway_seconds: u64,
    /// Backend consumers (one consumer group, a connection each) answering the round trip's messages.
    #[arg(long, default_value_t = 2)]
    gateway_consumers: usize,
    /// Gateway `send` (ours only): clients, each its own user, on `--nodes` nodes, that each round's `send`
    /// entries (one per user) must reach; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    gateway_send_users: usize,
    #[arg(long, default_value_t = 5)]
    gateway_send_rounds: usize,
    /// Adds each `send` round's entries straight to the inbox of the node that holds the user (read from the
    /// nodes' sets of held users), as a router that cost nothing would: what any routed `send` costs at least.
    #[arg(long)]
    gateway_send_direct: bool,
    /// Many connections: idle TLS websockets each of `--nodes` nodes holds, opened by one holder process per
    /// node (this binary again, `--hold`), for the users query and fan-out of `--big-room` sockets among them and
    /// memory per connection; 0 skips it (the default).
    #[arg(long, default_value_t = 0)]
    big_conns: usize,
    /// Sockets of the room queried and fanned out to in that phase, spread evenly over the nodes.
    #[arg(long, default_value_t = 20_000)]
    big_room: usize,
    /// `GET /{room}/users` requests of that phase (after one warm-up round over the nodes).
    #[arg(long, default_value_t = 20)]
    big_requests: usize,
    /// Fan-out rounds of that phase.
    #[arg(long, default_value_t = 10)]
    big_rounds: usize,
    /// Holder mode (internal, for `--big-conns`): hold connections to the node at this address and answer the
    /// parent on stdin/stdout.
    #[arg(long, hide = true)]
    hold: Option<SocketAddr>,
    #[arg(long, hide = true, default_value_t = 0)]
    hold_conns: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    hold_members: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    hold_first: usize,
    /// Ours only: the Redis cost of one users query, one fan-out and one `POST /send` (to a room, and to a user
    /// room with its ack), read from Redis's own counters, on a fresh Redis and K nodes for each K listed; empty
    /// skips it (the default).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    cost_nodes: Vec<usize>,
    /// Sockets of the room in that phase (one measurement per size and K).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000")]
    cost_sizes: Vec<usize>,
    /// Users queries per measurement of that phase.
    #[arg(long, default_value_t = 200)]
    cost_requests: usize,
    /// Fan-outs, pushes to the room and pushes to a user room per measurement of that phase.
    #[arg(long, default_value_t = 50)]
    cost_rounds: usize,
    /// Seconds of idle cluster measured first (heartbeats), subtracted from every measurement.
    #[arg(long, default_value_t = 10)]
    cost_idle_secs: u64,
    /// Client events as RPC: calls per second (aggregate, open loop) from `--rpc-sockets` clients on `--nodes`
    /// nodes, each posted by the node to a receiver in this process and acked with its answer; one measurement per
    /// rate (empty or 0 skips it).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000,5000")]
    rpc_rates: Vec<usize>,
    /// Seconds of calling at each rate.
    #[arg(long, default_value_t = 10)]
    rpc_seconds: u64,
    /// Sockets the calls are spread over (call `j` from socket `j mod N`).
    #[arg(long, default_value_t = 100)]
    rpc_sockets: usize,
    /// Lifecycle webhooks (ours only): sockets per second that connect to `/bench-wh` on `--nodes` nodes, each as
    /// its own user into one of `--webhook-rooms` rooms, and leave `--webhook-lifetime-ms` after, while the
    /// cluster POSTs the rooms' and members' events to a receiver in this process; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    webhook_churn: usize,
    /// Rooms the sockets go to in turn (socket `j` into `r{j mod rooms}`); a room is used again only after its
    /// previous socket left, so each socket makes 4 events.
    #[arg(long, default_value_t = 10_000)]
    webhook_rooms: usize,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10)]
    webhook_seconds: u64,
    /// How long each socket stays, from its due time.
    #[arg(long, default_value_t = 5000)]
    webhook_lifetime_ms: u64,
    /// The webhook's `batch_ms`: one measurement, on a fresh cluster, for each (empty skips the phase).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "50,0")]
    webhook_batch_ms: Vec<u64>,
    /// Exit non-zero on any error (refused or lost connection, wrong count, lost event).
    #[arg(long)]
    check: bool,
    /// Write every result as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Logs of the started processes.
    #[arg(long, default_value = "target/bench")]
    logs: PathBuf,
    /// The whole run stops after this many minutes, whatever is left.
    #[arg(long, default_value_t = 40)]
    max_minutes: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    samples: usize,
}

impl Summary {
    fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e3
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            samples: samples.len(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct RoomResult {
    n: usize,
    k: usize,
    connect_secs: f64,
    connect_errors: usize,
    query: Summary,
    /// Answers whose length was not N, or that failed.
    wrong_answers: usize,
    fanout: Summary,
    fanout_lost_rounds: usize,
    /// CPU time per fan-out round: the nodes and Redis together, and this load generator (which has to read
    /// and decrypt every delivery on the same two cores).
    fanout_cpu_servers_ms: f64,
    fanout_cpu_client_ms: f64,
}

#[derive(Debug, Default, Serialize)]
struct MemoryResult {
    conns: usize,
    connect_secs: f64,
    connect_errors: usize,
    rss_before: u64,
    rss_after: u64,
    bytes_per_conn: f64,
}

#[derive(Debug, Default, Serialize)]
struct ScaleResult {
    k: usize,
    n: usize,
    query: Summary,
    wrong_answers: usize,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    target: String,
    rooms: Vec<RoomResult>,
    memory: Option<MemoryResult>,
    scale: Vec<ScaleResult>,
    handshakes: Vec<HandshakeResult>,
    namespace_query: Option<NamespaceQueryResult>,
    send_rate: Option<SendRateResult>,
    send_fanout: Option<SendFanoutResult>,
    reliable: Option<ReliableResult>,
    recovery_fanout: Option<RecoveryFanoutResult>,
    killed_node: Option<KilledNodeResult>,
    emitter_fanout: Option<EmitterFanoutResult>,
    emitter_rate: Option<EmitterRateResult>,
    rpc_rates: Vec<RpcRateResult>,
    webhook_churn: Vec<WebhookChurnResult>,
    admin_overhead: Vec<OverheadResult>,
    all_sockets: Option<AllSocketsResult>,
    gateway_rates: Vec<GatewayRateResult>,
    gateway_send: Option<GatewaySendResult>,
    big: Option<BigResult>,
    cost: Vec<CostResult>,
    errors: Vec<String>,
}

impl Report {
    fn error_count(&self) -> usize {
        self.errors.len()
            + self
                .rooms
                .iter()
                .map(|r| r.connect_errors + r.wrong_answers + r.fanout_lost_rounds)
                .sum::<usize>()
            + self.memory.as_ref().map_or(0, |m| m.connect_errors)
            + self.scale.iter().map(|s| s.wrong_answers).sum::<usize>()
            + self.handshakes.iter().map(|h| h.refused).sum::<usize>()
            + self
                .namespace_query
                .as_ref()
                .map_or(0, |q| q.connect_errors + q.wrong_answers)
            + send::error_count(self)
            + recovery::error_count(self)
            + emitter::error_count(self)
            + rpc::error_count(self)
            + webhook::error_count(self)
            + admin::error_count(self)
            + gateway::error_count(self)
            + big::error_count(self)
            + cost::error_count(self)
    }
}

/// Clients opened by [`Bench::open`], with how long each successful handshake took.
struct Opened {
    clients: Vec<Client>,
    latencies: Vec<Duration>,
    failed: usize,
}

/// A [`RoomResult`] with its raw latencies, so that runs can be pooled.
struct RoomRun {
    result: RoomResult,
    query: Vec<Duration>,
    fanout: Vec<Duration>,
}

/// What every measurement needs.
struct Bench {
    args: Args,
    root: PathBuf,
    tls: tokio_rustls::TlsConnector,
    http: reqwest::Client,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = std::env::current_dir()?;
    let ca = root.join("certs-dev/ca.pem");
    let tls =
        client::tls_connector(&ca).context("certs-dev/ca.pem (run from the repository root)")?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build()?;
    let mut targets = Vec::new();
    if matches!(args.only.as_str(), "both" | "ours") {
        targets.push(Target {
            name: "ours",
            command: args.ours.split_whitespace().map(String::from).collect(),
            threads: args.worker_threads,
        });
    }
    if matches!(args.only.as_str(), "both" | "node") {
        targets.push(Target {
            name: "node",
            command: args
                .reference
                .split_whitespace()
                .map(String::from)
                .collect(),
            threads: procs::Threads::Cores,
        });
    }
    anyhow::ensure!(!targets.is_empty(), "--only must be ours, node or both");
    std::fs::create_dir_all(&args.logs)?;
    let limit = Duration::from_secs(args.max_minutes * 60);
    let hold = args.hold;
    let check = args.check;
    let json = args.json.clone();
    let bench = Bench {
        args,
        root,
        tls,
        http,
    };
    if let Some(addr) = hold {
        return tokio::time::timeout(limit, bench.hold(addr))
            .await
            .context("holder: deadline")?;
    }
    print_machine(bench.args.worker_threads);
    if bench.args.split_cores {
        println!("split cores: {}", procs::split_cores()?);
    }

    let mut reports = Vec::new();
    let run = async {
        for target in &targets {
            let report = bench.measure(target).await;
            print_report(&report);
            reports.push(report);
        }
    };
    if tokio::time::timeout(limit, run).await.is_err() {
        eprintln!("bench: the run hit its {limit:?} deadline; results are incomplete");
        std::process::exit(3);
    }
    if reports.len() == 2 {
        print_ratios(&reports[0], &reports[1]);
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
        println!("\nraw results: {}", path.display());
    }
    let errors: usize = reports.iter().map(Report::error_count).sum();
    if check && errors > 0 {
        anyhow::bail!("{errors} error(s) during the run (see above)");
    }
    Ok(())
}

impl Bench {
    async fn measure(&self, target: &Target) -> Report {
        let mut report = Report {
            target: target.name.into(),
            ..Default::default()
        };
        println!("\n== {} ({})", target.name, target.command.join(" "));
        if let Err(e) = self.rooms(target, &mut report).await {
            report.errors.push(format!("rooms: {e:#}"));
        }
        if self.args.memory_conns > 0 {
            match self.memory(target).await {
                Ok(m) => report.memory = Some(m),
                Err(e) => report.errors.push(format!("memory: {e:#}")),
            }
        }
        for &k in &self.args.scale_nodes {
            match self.scale(target, k).await {
                Ok(s) => report.scale.push(s),
                Err(e) => report.errors.push(format!("scale k={k}: {e:#}")),
            }
        }
        self.send_phases(target, &mut report).await;
        self.recovery_phases(target, &mut report).await;
        self.emitter_phases(target, &mut report).await;
        self.rpc_phase(target, &mut report).await;
        self.big_phase(target, &mut report).await;
        if let Err(e) = self.handshakes(target, &mut report).await {
            report.errors.push(format!("handshakes: {e:#}"));
        }
        // The Node reference has no namespace of 3 rooms per socket and no admin UI: these phases are ours only.
        if target.name == "ours" {
            if self.args.ns_size > 0 {
                match self.namespace_query(target).await {
                    Ok(q) => report.namespace_query = Some(q),
                    Err(e) => report.errors.push(format!("namespace query: {e:#}")),
                }
            }
            self.admin_phases(target, &mut report).await;
            // The Node reference has no lifecycle webhooks.
            self.webhook_phase(target, &mut report).await;
            // The Node reference has no event-bus gateway.
            self.gateway_phases(target, &mut report).await;
            self.cost_phase(target, &mut report).await;
        }
        for e in &report.errors {
            eprintln!("{}: error: {e}", target.name);
        }
        report
    }

    fn logs(&self, target: &Target, phase: &str) -> anyhow::Result<PathBuf> {
        let dir = self.args.logs.join(target.name).join(phase);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    async fn cluster(
        &self,
        target: &Target,
        k: usize,
        phase: &str,
    ) -> anyhow::Result<(Redis, Vec<Node>)> {
        let logs = self.logs(target, phase)?;
        self.cluster_in(target, k, &logs, None).await
    }

    /// K nodes (with `config`, a config file) on their own Redis, logging into `logs`.
    async fn cluster_in(
        &self,
        target: &Target,
        k: usize,
        logs: &std::path::Path,
        config: Option<&std::path::Path>,
    ) -> anyhow::Result<(Redis, Vec<Node>)> {
        self.cluster_env(target, k, logs, config, &[]).await
    }

    /// [`Self::cluster_in`], with environment variables `env` added to each node's.
    async fn cluster_env(
        &self,
        target: &Target,
        k: usize,
        logs: &std::path::Path,
        config: Option<&std::path::Path>,
        env: &[(&str, String)],
    ) -> anyhow::Result<(Redis, Vec<Node>)> {
        let redis = Redis::start(logs)?;
        let nodes = procs::start_nodes(
            target,
            k,
            &redis,
            self.args.presence,
            config,
            env,
            &self.root,
            logs,
            &self.http,
        )
        .await?;
        Ok((redis, nodes))
    }

    /// Query latency and fan-out for each room size, on one K-node cluster.
    async fn rooms(&self, target: &Target, report: &mut Report) -> anyhow::Result<()> {
        let (redis, nodes) = self.cluster(target, self.args.nodes, "rooms").await?;
        for &n in &self.args.sizes {
            let run = self.room(&redis, &nodes, n).await?;
            report.rooms.push(run.result);
        }
        Ok(())
    }

    /// One room of `n` clients on running nodes, Method 1 and 2: connect, query, fan-out, with the samples;
    /// the clients are gone from the nodes when it returns.
    async fn room(&self, redis: &Redis, nodes: &[Node], n: usize) -> anyhow::Result<RoomRun> {
        let k = nodes.len();
        let mut server_pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
        server_pids.push(redis.pid());
        let room = format!("bench-{n}");
        let probe = Arc::new(FanoutProbe::default());
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let started = Instant::now();
        let (clients, connect_errors) = self.connect(&addrs, n, |_| room.clone(), &probe).await;
        let connect_secs = started.elapsed().as_secs_f64();
        let bases: Vec<&str> = nodes.iter().map(|n| n.base.as_str()).collect();
        let (query, wrong_answers) = self
            .query_samples(&bases, &room, clients.len(), self.args.requests)
            .await;
        let cpu = |pids: &[u32]| pids.iter().map(|&p| procs::cpu_time(p)).sum::<Duration>();
        let me = [std::process::id()];
        let (servers_before, client_before) = (cpu(&server_pids), cpu(&me));
        let (fanout, fanout_lost_rounds) = self.fanout(&clients, &probe, &server_pids).await;
        let rounds = self.args.fanout_rounds.max(1) as f64;
        let per_round = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e3 / rounds
        };
        let fanout_cpu_servers_ms = per_round(cpu(&server_pids), servers_before);
        let fanout_cpu_client_ms = per_round(cpu(&me), client_before);
        let r = RoomResult {
            n,
            k,
            connect_secs,
            connect_errors,
            query: Summary::of(query.clone()),
            wrong_answers,
            fanout: Summary::of(fanout.clone()),
            fanout_lost_rounds,
            fanout_cpu_servers_ms,
            fanout_cpu_client_ms,
        };
        println!(
            "  N={n:>6} K={k}: connect {:.2}s ({} errors), query p50 {:.2} ms p99 {:.2} ms ({} wrong), \
             fan-out p50 {:.2} ms p99 {:.2} ms ({} lost; CPU per round: servers {:.0} ms, client {:.0} ms)",
            r.connect_secs,
            r.connect_errors,
            r.query.p50,
            r.query.p99,
            r.wrong_answers,
            r.fanout.p50,
            r.fanout.p99,
            r.fanout_lost_rounds,
            r.fanout_cpu_servers_ms,
            r.fanout_cpu_client_ms
        );
        drop(clients);
        self.drained(nodes).await?;
        Ok(RoomRun {
            result: r,
            query,
            fanout,
        })
    }

    /// Opens `n` clients, client `i` on node `i % K`, as user `u{i}` in the room `rooms(i)` names.
    async fn connect(
        &self,
        addrs: &[SocketAddr],
        n: usize,
        rooms: impl Fn(usize) -> String,
        probe: &Arc<FanoutProbe>,
    ) -> (Vec<Client>, usize) {
        let logins = (0..n).map(|i| Login::claim(&format!("u{i}"), &rooms(i)));
        let opened = self.open(addrs, logins, self.args.concurrency, probe).await;
        (opened.clients, opened.failed)
    }

    /// Opens a client for each login, login `i` on node `i % K`, `concurrency` handshakes in flight. Failures
    /// are counted (and printed, grouped by message), never fatal.
    async fn open(
        &self,
        addrs: &[SocketAddr],
        logins: impl Iterator<Item = Login>,
        concurrency: usize,
        probe: &Arc<FanoutProbe>,
    ) -> Opened {
        let results: Vec<_> = futures_util::stream::iter(logins.enumerate())
            .map(|(i, login)| {
                let probe = probe.clone();
                let addr = addrs[i % addrs.len()];
                async move {
                    let started = Instant::now();
                    let client =
                        Client::connect(&self.tls, addr, &login, probe, Duration::from_secs(20))
                            .await;
                    (client, started.elapsed())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut opened = Opened {
            clients: Vec::with_capacity(results.len()),
            latencies: Vec::with_capacity(results.len()),
            failed: 0,
        };
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for (r, took) in results {
            match r {
                Ok(c) => {
                    opened.clients.push(c);
                    opened.latencies.push(took);
                }
                Err(e) => {
                    opened.failed += 1;
                    *errors.entry(e.to_string()).or_default() += 1;
                }
            }
        }
        for (e, count) in &errors {
            eprintln!("  {count} connection(s) failed: {e}");
        }
        opened
    }

    /// [`Self::query_samples`], summed up.
    async fn query(
        &self,
        bases: &[&str],
        room: &str,
        expected: usize,
        requests: usize,
    ) -> (Summary, usize) {
        let (samples, wrong) = self.query_samples(bases, room, expected, requests).await;
        (Summary::of(samples), wrong)
    }

    /// `requests` sequential `GET /{room}/users`, round-robin over the nodes, each checked to hold `expected`
    /// entries: the latencies and the wrong answers. The clock stops when the whole body has arrived; counting
    /// happens after.
    async fn query_samples(
        &self,
        bases: &[&str],
        room: &str,
        expected: usize,
        requests: usize,
    ) -> (Vec<Duration>, usize) {
        let mut samples = Vec::with_capacity(requests);
        let mut wrong = 0;
        for i in 0..(requests + 2 * bases.len()) {
            let url = format!("{}/{room}/users", bases[i % bases.len()]);
            let started = Instant::now();
            let body = match self.http.get(&url).send().await {
                Ok(res) if res.status().is_success() => res.bytes().await.ok(),
                _ => None,
            };
            let took = started.elapsed();
            let count = body
                .and_then(|b| serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&b).ok())
                .map(|v| v.len());
            // The first two rounds over the nodes warm up connections and caches.
            if i < 2 * bases.len() {
                continue;
            }
            if count != Some(expected) {
                wrong += 1;
                if wrong <= 3 {
                    eprintln!("  {url}: expected {expected} entries, got {count:?}");
                }
            }
            samples.push(took);
        }
        (samples, wrong)
    }

    /// Client 0 sends `identity-change`; the round ends when the other N-1 have it relayed.
    async fn fanout(
        &self,
        clients: &[Client],
        probe: &FanoutProbe,
        server_pids: &[u32],
    ) -> (Vec<Duration>, usize) {
        let servers_cpu = || {
            server_pids
                .iter()
                .map(|&p| procs::cpu_time_precise(p))
                .sum::<Duration>()
        };
        let Some(emitter) = clients.first() else {
            return (Vec::new(), 0);
        };
        let mut samples = Vec::new();
        let mut lost = 0;
        for round in 1..=self.args.fanout_rounds as u64 {
            probe.arm(round, clients.len() - 1);
            let cpu_before = self.args.fanout_per_round.then(servers_cpu);
            let mut took = None;
            let started = Instant::now();
            emitter.emit_fanout(round).await;
            match probe.wait(Duration::from_secs(10)).await {
                Some(last) => {
                    took = Some(last.duration_since(started));
                    samples.push(last.duration_since(started));
                }
                None => {
                    lost += 1;
                    eprintln!(
                        "  fan-out round {round}: {} of {} got it within 10 s",
                        probe.arrived(),
                        clients.len() - 1
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(before) = cpu_before {
                // Read after the pause: what the round left to do (acks, buffers freed) is counted too.
                let cpu = servers_cpu().saturating_sub(before);
                let took = took.map_or(f64::NAN, |d: Duration| d.as_secs_f64() * 1e3);
                println!(
                    "    fan-out round {round}: last client {took:.1} ms, servers' CPU {:.1} ms",
                    cpu.as_secs_f64() * 1e3
                );
            }
        }
        (samples, lost)
    }

    /// Waits until every node reports no local socket, so the next measurement starts clean.
    async fn drained(&self, nodes: &[Node]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in nodes {
            while procs::local_sockets(node, &self.http).await != Some(0) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "sockets of {} never went away",
                    node.base
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Idle connections on one node: set-up time and resident memory per connection.
    async fn memory(&self, target: &Target) -> anyhow::Result<MemoryResult> {
        let (_redis, nodes) = self.cluster(target, 1, "memory").await?;
        let node = &nodes[0];
        let conns = clamp_to_fd_limit(self.args.memory_conns);
        // Let start-up allocations settle before the baseline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = node.rss()?;
        let probe = Arc::new(FanoutProbe::default());
        let started = Instant::now();
        // Rooms of 10 by default: idle means idle, not a room-wide `socket-connected` storm at every join.
        let room = self.args.memory_room.max(1);
        let (clients, connect_errors) = self
            .connect(
                &[node.addr],
                conns,
                |i| format!("idle-{}", i / room),
                &probe,
            )
            .await;
        let connect_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = node.rss()?;
        let held = clients.len().max(1);
        let m = MemoryResult {
            conns,
            connect_secs,
            connect_errors,
            rss_before,
            rss_after,
            bytes_per_conn: rss_after.saturating_sub(rss_before) as f64 / held as f64,
        };
        println!(
            "  memory: {} connections on one node in {:.2}s ({:.0}/s, {} errors), RSS {:.1} -> {:.1} MiB, \
             {:.1} KiB per connection",
            m.conns,
            m.connect_secs,
            held as f64 / m.connect_secs,
            m.connect_errors,
            m.rss_before as f64 / 1048576.0,
            m.rss_after as f64 / 1048576.0,
            m.bytes_per_conn / 1024.0
        );
        if room > 10 {
            // A burst: whether what it grew came back once the sockets are idle again.
            for after in [10u64, 30, 60] {
                tokio::time::sleep_until((started + Duration::from_secs(after)).into()).await;
                let rss = node.rss()?;
                println!(
                    "  memory: {after} s after the first connect: RSS {:.1} MiB, {:.1} KiB per connection",
                    rss as f64 / 1048576.0,
                    rss.saturating_sub(rss_before) as f64 / held as f64 / 1024.0
                );
            }
        }
        drop(clients);
        Ok(m)
    }

    /// Query latency for a room of `--scale-size` sockets on `k` nodes.
    async fn scale(&self, target: &Target, k: usize) -> anyhow::Result<ScaleResult> {
        let (_redis, nodes) = self.cluster(target, k, &format!("scale-{k}")).await?;
        let n = self.args.scale_size;
        let probe = Arc::new(FanoutProbe::default());
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let (clients, errors) = self.connect(&addrs, n, |_| "scale".into(), &probe).await;
        anyhow::ensure!(errors == 0, "{errors} connections failed");
        let bases: Vec<&str> = nodes.iter().map(|n| n.base.as_str()).collect();
        let (query, wrong_answers) = self
            .query(&bases, "scale", clients.len(), self.args.requests)
            .await;
        println!(
            "  scale: K={k} N={n}: query p50 {:.2} ms p99 {:.2} ms ({wrong_answers} wrong)",
            query.p50, query.p99
        );
        Ok(ScaleResult {
            k,
            n,
            query,
            wrong_answers,
        })
    }
}

/// The open-files limit bounds connections on both ends (this process and the node); keep a margin.
fn clamp_to_fd_limit(wanted: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        });
    match soft {
        Some(limit) if wanted + 500 > limit => {
            let n = limit.saturating_sub(500);
            println!(
                "  note: the open-files limit is {limit} (ulimit -n), so {n} connections instead of {wanted}"
            );
            n
        }
        _ => wanted,
    }
}

fn print_machine(threads: procs::Threads) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // The host's TCP congestion control shapes large replies over loopback: with `bbr`, ~1% of multi-hundred-KB
    // answers wait 40-120 ms in the kernel while the client delays its ACK (BENCHMARKS.md, "Users query against
    // Node").
    let cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    println!("machine: {cores} cores, {cpu}; TCP congestion control: {cc}");
    let threads = match threads {
        procs::Threads::Share => "cores / nodes, at least 1".to_owned(),
        procs::Threads::Cores => "unset (one per core)".to_owned(),
        procs::Threads::Fixed(n) => n.to_string(),
    };
    println!("our nodes' WORKER_THREADS: {threads}");
}

fn print_report(r: &Report) {
    println!("\n### {}", r.target);
    if !r.rooms.is_empty() {
        println!(
            "\n| N | K | connect (s) | query p50 | p90 | p99 | max (ms) | wrong | fan-out p50 | p99 | max (ms) \
             | lost | fan-out CPU/round servers, client (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for x in &r.rooms {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} | {:.0}, {:.0} |",
            x.n,
            x.k,
            x.connect_secs,
            x.query.p50,
            x.query.p90,
            x.query.p99,
            x.query.max,
            x.wrong_answers,
            x.fanout.p50,
            x.fanout.p99,
            x.fanout.max,
            x.fanout_lost_rounds,
            x.fanout_cpu_servers_ms,
            x.fanout_cpu_client_ms
        );
    }
    if let Some(m) = &r.memory {
        println!(
            "\nmemory: {} idle TLS websocket connections on one node, set up in {:.2} s ({} errors); \
             RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per connection",
            m.conns,
            m.connect_secs,
            m.connect_errors,
            m.rss_before as f64 / 1048576.0,
            m.rss_after as f64 / 1048576.0,
            m.bytes_per_conn / 1024.0
        );
    }
    if !r.scale.is_empty() {
        println!(
            "\n| K (N={}) | query p50 | p90 | p99 | max (ms) | wrong |",
            r.scale[0].n
        );
        println!("|---|---|---|---|---|---|");
        for s in &r.scale {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                s.k, s.query.p50, s.query.p90, s.query.p99, s.query.max, s.wrong_answers
            );
        }
    }
    send::print(r);
    recovery::print(r);
    emitter::print(r);
    rpc::print(r);
    webhook::print(r);
    tenancy::print(r);
    admin::print(r);
    gateway::print(r);
    big::print(r);
    cost::print(r);
}

/// Ours divided by Node's: below 1 is better for every row (time and memory).
fn print_ratios(ours: &Report, node: &Report) {
    println!("\n### ours / node (lower is better)\n");
    println!("| measurement | ours | node | ratio |");
    println!("|---|---|---|---|");
    let row = |name: String, a: f64, b: f64, unit: &str| {
        let ratio = if b > 0.0 { a / b } else { f64::NAN };
        println!("| {name} | {a:.2} {unit} | {b:.2} {unit} | {ratio:.2} |");
    };
    for (a, b) in ours.rooms.iter().zip(&node.rooms) {
        row(
            format!("query p50, N={} K={}", a.n, a.k),
            a.query.p50,
            b.query.p50,
            "ms",
        );
        row(
            format!("query p99, N={} K={}", a.n, a.k),
            a.query.p99,
            b.query.p99,
            "ms",
        );
        row(
            format!("fan-out p99, N={} K={}", a.n, a.k),
            a.fanout.p99,
            b.fanout.p99,
            "ms",
        );
        row(
            format!("connect N={} K={}", a.n, a.k),
            a.connect_secs,
            b.connect_secs,
            "s",
        );
    }
    if let (Some(a), Some(b)) = (&ours.memory, &node.memory) {
        row(
            format!("memory per idle connection ({})", a.conns),
            a.bytes_per_conn / 1024.0,
            b.bytes_per_conn / 1024.0,
            "KiB",
        );
    }
    for (a, b) in ours.scale.iter().zip(&node.scale) {
        row(
            format!("query p50, N={} K={}", a.n, a.k),
            a.query.p50,
            b.query.p50,
            "ms",
        );
    }
    send::ratios(ours, node, &row);
    recovery::ratios(ours, node, &row);
    emitter::ratios(ours, node, &row);
    rpc::ratios(ours, node, &row);
    tenancy::ratios(ours, node, &row);
    if let (Some(a), Some(b)) = (&ours.big, &node.big) {
        let name = format!("{} connections, room of {}", a.conns, a.room);
        row(format!("{name}: query p50"), a.query.p50, b.query.p50, "ms");
        row(
            format!("{name}: fan-out p50"),
            a.fanout.p50,
            b.fanout.p50,
            "ms",
        );
        row(
            format!("{name}: memory per connection"),
            a.bytes_per_conn / 1024.0,
            b.bytes_per_conn / 1024.0,
            "KiB",
        );
    }
}
