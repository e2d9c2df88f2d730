//! Faults of a Redis Cluster under a running cluster of nodes: a master killed (its replica takes over), and
//! slots moved to another master while queries and pushes go on (`ASK` while a slot migrates, `MOVED` after).
//!
//! The rest of the suite runs on a Redis Cluster too (`TEST_REDIS_CLUSTER=1`, see `scripts/test.sh`); these two
//! need one whatever that variable says.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::harness::*;

const KEY: &str = "claim-key-0123456789abcdef";

/// `/` as without a config file, and `/claim` with reliable delivery to user rooms.
const CONFIG: &str = r#"
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake"]

[[namespace]]
name = "/claim"
auth = "claim"
rooms = ["handshake"]
api_key = "claim-key-0123456789abcdef"
user_room_prefix = "user_"
client_ttl_s = 0
"#;

/// Three nodes on a fresh Redis Cluster (`REQUEST_TIMEOUT_MS` = `timeout_ms`), each with one socket of user
/// `u<node>` in room `R`.
async fn setup(
    test: &str,
    timeout_ms: u64,
) -> (
    std::path::PathBuf,
    Redis,
    Vec<Node>,
    Clients,
    BTreeSet<(String, String)>,
) {
    let dir = log_dir(test);
    let redis = Redis::start_cluster(&dir);
    let config = dir.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let opts = NodeOpts {
            id,
            redis: Some(redis.url()),
            prefix: test,
            timeout_ms,
            args: &args,
            ..NodeOpts::default()
        };
        nodes.push(Node::start(&dir, opts).await);
    }
    let mut clients = Clients::start();
    let mut exact = BTreeSet::new();
    for node in &nodes {
        let user = format!("u{}", node.id);
        let sid = clients
            .join(Conn::to(&node.id, node).user(&user, "R"))
            .await;
        exact.insert((sid, user));
    }
    let http = Http::new();
    eventually(
        Duration::from_secs(10),
        "every node to see the room",
        async || {
            for node in &nodes {
                if http.users(node, "R").await.set() != exact {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    (dir, redis, nodes, clients, exact)
}

/// What a stream of room queries saw.
#[derive(Default, Debug)]
struct Seen {
    exact: usize,
    /// Answers marked partial or failed (a clear 503 or `partial`), never a wrong list presented as whole.
    marked: usize,
    /// A complete (200, not partial) answer whose list is wrong: must never happen.
    wrong: usize,
    /// The last time an answer was not exact.
    last_miss: Option<Instant>,
}

/// Queries room `R` on the nodes in turn until `stop`, classifying every answer.
fn query_loop(
    nodes: &[Node],
    exact: BTreeSet<(String, String)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    let bases: Vec<String> = nodes.iter().map(Node::base).collect();
    tokio::spawn(async move {
        let http = Http::new();
        let mut seen = Seen::default();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let users = http.users_at(&bases[i % bases.len()], "R").await;
            i += 1;
            let complete = users.status == 200 && users.partial == "false";
            if complete && users.set() == exact {
                seen.exact += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            seen.last_miss = Some(Instant::now());
            if complete {
                eprintln!("wrong complete answer: {}", users.body);
                seen.wrong += 1;
            } else {
                seen.marked += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

/// After the fault every node answers exactly and relays room events across nodes, without a restart.
async fn still_whole(nodes: &[Node], clients: &mut Clients, exact: &BTreeSet<(String, String)>) {
    let http = Http::new();
    for node in nodes {
        let users = http.users(node, "R").await;
        assert_eq!(
            (users.status, users.set(), users.nodes.as_str()),
            (200, exact.clone(), "3/3"),
            "on {}",
            node.id
        );
    }
    // A room event crosses nodes (the socketioxide-redis adapter's sharded channels came back too).
    clients
        .emit("c", "identity-change", json!([{"id_user": "uc2"}]), true)
        .await;
    clients.expect("c", "ack").await;
    let ev = clients.expect("a", "identity-change").await;
    assert_eq!(ev["args"][0]["id_user"], "uc2");
    let ev = clients.expect("b", "identity-change").await;
    assert_eq!(ev["args"][0]["id_user"], "uc2");
    for node in nodes {
        assert_eq!(http.status(node, "/ready").await, 200, "{} ready", node.id);
    }
}

/// The master that holds the request channel, and an offline user's pending messages, is SIGKILLed while queries
/// run non-stop: its replica takes over (the cluster's node timeout is 1 s: ~2-3 s), the nodes re-subscribe there
/// by themselves, and with `REQUEST_TIMEOUT_MS` longer than the failover no answer is lost: the queries asked
/// meanwhile wait and answer exactly (with the default 1 s they would answer marked, 503 or partial, never
/// wrong). The user then gets its messages, replicated before the kill, in one batch. No node restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_no_answer_and_restarts_no_node() {
    let test = "redis_cluster_failover";
    let (_dir, mut redis, nodes, mut clients, exact) = setup(test, 8000).await;
    let pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let queries = query_loop(&nodes, exact.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victim = redis.master_of(&format!("{test}:users#req"));
    // A user room whose queue lives on the same master, with two messages for its offline user.
    let queue = |room: &str| format!("{test}:delivery:{{/claim|{room}}}:q");
    let room = (0..500)
        .map(|i| format!("user_{i}"))
        .find(|room| redis.master_of(&queue(room)) == victim)
        .expect("a user room on the victim's slots");
    let http = Http::new();
    send_to(&http, &nodes[0], &room, "e0").await;
    send_to(&http, &nodes[1], &room, "e1").await;
    // Replication is asynchronous: what the master took in its last moment may be lost with it (README).
    let replicas: u32 = cli(victim, &["WAIT", "1", "2000"]).trim().parse().unwrap();
    assert_eq!(replicas, 1, "the queue reached the replica");
    let killed = Instant::now();
    redis.kill_server(victim);
    // The replica is promoted once the others agree the master failed.
    redis.wait_cluster_ok(Duration::from_secs(30));
    let promoted = killed.elapsed();
    assert_ne!(redis.master_of(&format!("{test}:users#req")), victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = queries.await.unwrap();
    let recovered = seen.last_miss.map(|t| t.saturating_duration_since(killed));
    println!(
        "failover: replica promoted after {promoted:?}; queries {seen:?}; last miss {recovered:?} after the kill"
    );
    assert_eq!((seen.wrong, seen.marked), (0, 0), "{seen:?}: {recovered:?}");
    assert!(seen.exact > 20, "{seen:?}");
    still_whole(&nodes, &mut clients, &exact).await;
    let q = json!({"id_user": "u", "room": room});
    let ev = clients
        .connect(
            Conn::to("u", &nodes[2])
                .ns("/claim")
                .query(q)
                .ack_server(json!(true)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let batch = clients.expect("u", "batch").await;
    assert_eq!(batch["args"], json!([[["e0", 0], ["e1", 1]]]), "{batch}");
    eventually(
        Duration::from_secs(5),
        "the batch's ack to empty the queue",
        async || (redis.cli(&["XLEN", &queue(&room)]).trim() == "0").then_some(()),
    )
    .await;
    assert_eq!(nodes.iter().map(Node::pid).collect::<Vec<_>>(), pids);
}

/// The request channel's slot and a user room's slot move to another master while queries run and pushes wait
/// for an offline user. Queries recover within about a second of the move (Redis drops the moved channel's
/// subscriptions; the nodes subscribe again every second) and are marked, never wrong, meanwhile. The user
/// room's queue is pushed to before its slot migrates, while it migrates (its key already moved: `ASK`) and after
/// (`MOVED`); the user gets the three in one batch from the new shard, in order, and its ack removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_slots_between_masters_loses_no_message() {
    let test = "redis_cluster_reshard";
    let (_dir, redis, nodes, mut clients, exact) = setup(test, 1000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let queries = query_loop(&nodes, exact.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let channel = format!("{test}:users#req");
    let moved_at = Instant::now();
    let slot = Migration::begin(&redis, &channel);
    slot.move_keys();
    slot.finish(&redis);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = queries.await.unwrap();
    let recovered = seen
        .last_miss
        .map(|t| t.saturating_duration_since(moved_at));
    println!("request channel moved: queries {seen:?}; last miss {recovered:?} after the move");
    assert_eq!(seen.wrong, 0, "{seen:?}");
    if let Some(t) = recovered {
        assert!(t < Duration::from_secs(3), "{seen:?}");
    }
    still_whole(&nodes, &mut clients, &exact).await;

    // Reliable delivery across a moving slot.
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let http = Http::new();
    let queue = format!("{test}:delivery:{{/claim|user_9}}:q");
    let ev = clients
        .connect(
            Conn::to("u9", &a)
                .ns("/claim")
                .user("u9", "user_9")
                .ack_server(json!(true)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    clients.disconnect("u9").await;
    clients.expect("u9", "disconnect").await;
    let holders = format!("{test}:delivery:{{/claim|user_9}}:holders");
    redis.until_members(&holders, 0).await;
    send(&http, c, "e0").await;
    let slot = Migration::begin(&redis, &queue);
    slot.move_keys();
    let count = |port| cli(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot.slot]);
    assert_eq!(
        (count(slot.src).trim(), count(slot.dst).trim()),
        ("0", "1"),
        "the queue moved"
    );
    // Pushed while the slot migrates: the old shard answers ASK, the new one TRYAGAIN (a script's keys are not all
    // there yet), so the push is either stored or refused with a clear 503, never half-done: after a 503 the
    // backend sends it again once the move is done.
    let during = try_send(&http, a, "e1").await;
    println!("a push while its slot migrates: {during:?}");
    slot.finish(&redis);
    if during.0 != 200 {
        assert_eq!(during.0, 503, "{during:?}");
        assert!(
            during.1["error"]
                .as_str()
                .unwrap()
                .starts_with("the message could not be stored"),
            "{during:?}"
        );
        send(&http, a, "e1").await;
    }
    send(&http, b, "e2").await;
    assert_eq!(redis.cli(&["XLEN", &queue]).trim(), "3");
    let ev = clients
        .connect(
            Conn::to("u9", &b)
                .ns("/claim")
                .user("u9", "user_9")
                .ack_server(json!(true)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let batch = clients.expect("u9", "batch").await;
    assert_eq!(
        batch["args"],
        json!([[["e0", 0], ["e1", 1], ["e2", 2]]]),
        "{batch}"
    );
    eventually(
        Duration::from_secs(5),
        "the batch's ack to empty the queue",
        async || (redis.cli(&["XLEN", &queue]).trim() == "0").then_some(()),
    )
    .await;
}

/// Pushes event `e<n>` with argument `n` to user room `user_9` of `/claim` through `node`; it must be stored.
async fn send(http: &Http, node: &Node, event: &str) {
    send_to(http, node, "user_9", event).await;
}

async fn send_to(http: &Http, node: &Node, room: &str, event: &str) {
    let (status, body) = try_send_to(http, node, room, event).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rooms"],
        json!([{"room": room, "queued": 1}]),
        "{body}"
    );
}

async fn try_send(http: &Http, node: &Node, event: &str) -> (u16, Value) {
    try_send_to(http, node, "user_9", event).await
}

async fn try_send_to(http: &Http, node: &Node, room: &str, event: &str) -> (u16, Value) {
    let n: u64 = event[1..].parse().unwrap();
    let body = json!({"rooms": room, "event": event, "args": [n]});
    http.push(node, &format!("site=claim&apiKey={KEY}"), &body)
        .await
}

/// One slot moving from its master to another, the way `redis-cli --cluster reshard` moves it, step by step.
struct Migration {
    slot: String,
    src: u16,
    dst: u16,
    dst_id: String,
}

impl Migration {
    /// `key`'s slot: IMPORTING on another master, MIGRATING on its own. From here the old master answers `ASK`
    /// for the slot's keys it no longer has.
    fn begin(redis: &Redis, key: &str) -> Self {
        let src = redis.master_of(key);
        let dst = redis
            .servers()
            .into_iter()
            .find(|&p| p != src && role(p) == "master")
            .expect("another master");
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        let (src_id, dst_id) = (id(src), id(dst));
        let slot = cli(src, &["CLUSTER", "KEYSLOT", key]).trim().to_owned();
        cli(dst, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
        cli(src, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
        Self {
            slot,
            src,
            dst,
            dst_id,
        }
    }

    /// `MIGRATE`s every key of the slot to the new master.
    fn move_keys(&self) {
        loop {
            let keys = cli(self.src, &["CLUSTER", "GETKEYSINSLOT", &self.slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                return;
            }
            let port = self.dst.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(&keys);
            cli(self.src, &args);
        }
    }

    /// The new owner announced to every master: the old one answers `MOVED` from now on.
    fn finish(&self, redis: &Redis) {
        for port in redis.servers() {
            if role(port) == "master" {
                cli(
                    port,
                    &["CLUSTER", "SETSLOT", &self.slot, "NODE", &self.dst_id],
                );
            }
        }
    }
}

fn role(port: u16) -> String {
    let info = cli(port, &["ROLE"]);
    info.lines().next().unwrap_or_default().to_owned()
}

/// One `redis-cli` command against one server (no redirections followed).
fn cli(port: u16, args: &[&str]) -> String {
    let text = cli_at(port, args).unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"));
    assert!(!text.starts_with("ERR"), "redis-cli {args:?}: {text}");
    text
}

/// `rediss-cluster://` with a private CA: a Redis Cluster whose clients, cluster bus and replication all speak
/// TLS; two nodes list each other's sockets and relay room events over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls() {
    let test = "redis_cluster_tls";
    let dir = log_dir(test);
    let (redis, ca) = Redis::start_cluster_tls(&dir);
    let url = redis.url();
    assert!(url.starts_with("rediss-cluster://localhost:"), "{url}");
    let ca = ca.display().to_string();
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let opts = NodeOpts {
            id,
            redis: Some(url.clone()),
            prefix: test,
            args: &["--redis-ca", &ca],
            ..NodeOpts::default()
        };
        nodes.push(Node::start(&dir, opts).await);
    }
    two_nodes_share_a_room(&nodes).await;
}
