//! Reliable delivery through faults, with the real binary, a real Redis and the official socket.io-client: a node
//! killed (its holders forgotten by the survivors, its users' rooms expire), a node paused long enough to be
//! declared down (back, it holds its rooms again), a node drained, and Redis restarted with its AOF.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::harness::*;

const KEY: &str = "claim-key-0123456789abcdef";

/// `/claim`: messages expire 3 s after a room's last socket left; `/keep`: kept until acknowledged.
const CONFIG: &str = r#"
[[namespace]]
name = "/claim"
auth = "claim"
rooms = ["handshake"]
api_key = "claim-key-0123456789abcdef"
user_room_prefix = "user_"
client_ttl_s = 3

[[namespace]]
name = "/keep"
auth = "claim"
rooms = ["handshake"]
api_key = "claim-key-0123456789abcdef"
user_room_prefix = "user_"
client_ttl_s = 0
"#;

const TTL: Duration = Duration::from_secs(3);

/// Heartbeat 300 ms: a silent node is declared down after 900 ms, well inside the TTL.
const HEARTBEAT_MS: &str = "300";

/// Redis started with `redis_args` and `n` nodes (`a`, `b`, ...) reading [`CONFIG`], beating every
/// [`HEARTBEAT_MS`].
async fn start(test: &str, n: usize, redis_args: &[&str]) -> (PathBuf, Redis, Vec<Node>) {
    let dir = log_dir(test);
    let config = dir.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let redis = Redis::start_with(&dir, redis_args);
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(start_node(&dir, &redis, test, &((b'a' + i as u8) as char).to_string()).await);
    }
    (dir, redis, nodes)
}

async fn start_node(dir: &Path, redis: &Redis, test: &str, id: &str) -> Node {
    let config = dir.join("config.toml");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--heartbeat-ms",
        HEARTBEAT_MS,
    ];
    let opts = NodeOpts {
        id,
        redis: Some(redis.url()),
        prefix: test,
        args: &args,
        ..NodeOpts::default()
    };
    Node::start(dir, opts).await
}

/// The Redis keys of user room `room` of namespace `ns`.
struct Room<'a> {
    redis: &'a Redis,
    queue: String,
    holders: String,
}

impl<'a> Room<'a> {
    fn new(redis: &'a Redis, test: &str, ns: &str, room: &str) -> Self {
        Self {
            redis,
            queue: format!("{test}:delivery:{{{ns}|{room}}}:q"),
            holders: format!("{test}:delivery:{{{ns}|{room}}}:holders"),
        }
    }

    fn pending(&self) -> usize {
        self.redis
            .cli(&["XLEN", &self.queue])
            .trim()
            .parse()
            .unwrap()
    }

    /// The queue's time to live in ms: -1 kept, -2 gone.
    fn pttl(&self) -> i64 {
        self.redis
            .cli(&["PTTL", &self.queue])
            .trim()
            .parse()
            .unwrap()
    }

    /// The holders, `<node>/<socket>`.
    fn holders(&self) -> Vec<String> {
        self.redis
            .cli(&["SMEMBERS", &self.holders])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    async fn until_pending(&self, n: usize) {
        eventually(
            Duration::from_secs(5),
            &format!("{n} pending in {}", self.queue),
            async || (self.pending() == n).then_some(()),
        )
        .await;
    }
}

/// `POST {node}/send` of `event` with `args` to `room` of namespace `site`; the answer must be 200.
async fn send(http: &Http, node: &Node, site: &str, room: &str, event: &str, args: Value) {
    let body = json!({"rooms": room, "event": event, "args": args});
    let (status, answer) = http
        .push(node, &format!("site={site}&apiKey={KEY}"), &body)
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// Connects `id` as user `user` in `room` of namespace `ns` on `node`, waits for its `handshake` and for its
/// holder of `room` in Redis (keys under `prefix`); returns its socket id. `ack` says which server events with an ack callback the client acknowledges.
async fn join(
    io: &mut Clients,
    (redis, prefix): (&Redis, &str),
    id: &str,
    node: &Node,
    ns: &str,
    room: &str,
    ack: Value,
) -> String {
    let ev = io
        .connect(Conn::to(id, &node).ns(ns).user(id, room).ack_server(ack))
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    io.expect(id, "handshake").await;
    let sid = ev["sid"].as_str().unwrap().to_owned();
    // The handshake goes out before the socket's holder is written: a message pushed in between would reach it
    // in its next `batch`, not live.
    let holders = format!("{prefix}:delivery:{{{ns}|{room}}}:holders");
    let member = format!("{}/{sid}", node.id);
    redis.until_member(&holders, &member).await;
    sid
}

/// The sum of a counter over `nodes`.
async fn total(http: &Http, nodes: &[&Node], metric: &str) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += http.metric(node, metric).await.unwrap_or(0.0);
    }
    sum
}

/// A node killed with SIGKILL never says its sockets left: the survivors declare it down (no heartbeat for 3
/// intervals) and forget its holders, so its user's room starts its TTL and its messages are dropped a TTL later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_rooms_expire_a_ttl_after_it_is_declared_down() {
    let test = "faults_forget_killed";
    let (_dir, redis, nodes) = start(test, 3, &[]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    let room = Room::new(&redis, test, "/claim", "user_1");
    // Held on b, never acknowledged: the messages stay pending.
    let sid = join(
        &mut io,
        (&redis, test),
        "k",
        b,
        "/claim",
        "user_1",
        json!(false),
    )
    .await;
    assert_eq!(room.holders(), [format!("b/{sid}")]);
    for i in 0..2 {
        send(&http, a, "claim", "user_1", "e", json!([i])).await;
        io.expect("k", "e").await;
    }
    assert_eq!(room.pending(), 2);

    b.signal("KILL");
    let killed = Instant::now();
    io.expect("k", "disconnect").await;
    let forgotten = eventually(
        Duration::from_secs(10),
        "b's holder forgotten",
        async || room.holders().is_empty().then(Instant::now),
    )
    .await;
    let ttl = room.pttl();
    assert_eq!(room.pending(), 2, "forgetting keeps the messages");
    assert!(
        ttl > 0 && ttl <= TTL.as_millis() as i64,
        "the TTL clock runs: PTTL {ttl}"
    );
    assert_eq!(
        redis
            .cli(&["EXISTS", &format!("{test}:delivery:node:b")])
            .trim(),
        "0",
        "b's list of rooms is gone"
    );
    let dropped = eventually(
        Duration::from_secs(10),
        "the messages dropped",
        async || (room.pending() == 0).then(Instant::now),
    )
    .await;
    let (declared, expired) = (forgotten - killed, dropped - forgotten);
    println!("b killed: holder forgotten after {declared:?}, messages dropped {expired:?} later");
    assert!(declared < Duration::from_secs(5), "{declared:?}");
    assert!(
        expired > TTL - Duration::from_millis(500) && expired < TTL + Duration::from_secs(2),
        "{expired:?}"
    );
    // Both survivors tried; the holder was removed once.
    assert_eq!(
        total(
            &http,
            &[a, c],
            "socket_identity_delivery_holders_forgotten_total"
        )
        .await,
        1.0
    );
    assert!(
        [a, c]
            .iter()
            .any(|n| n.log_text().contains("node forgotten: 1 holders")),
        "no survivor logged it"
    );
}

/// A node paused (SIGSTOP) long enough to be declared down loses its holders like a dead one; resumed with its
/// socket still connected, it holds the room again, so messages sent meanwhile do not expire under a connected
/// user, and sends the socket the room's pending messages (those sent meanwhile went live to no node). It never judged the others while it could not hear them: their holders stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_holds_its_rooms_again_when_it_comes_back() {
    let test = "faults_forget_paused";
    let (_dir, redis, nodes) = start(test, 2, &[]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let http = Http::new();
    let room = Room::new(&redis, test, "/claim", "user_2");
    let other = Room::new(&redis, test, "/claim", "user_3");
    let sid = join(
        &mut io,
        (&redis, test),
        "p",
        b,
        "/claim",
        "user_2",
        json!(false),
    )
    .await;
    let sid_a = join(
        &mut io,
        (&redis, test),
        "q",
        a,
        "/claim",
        "user_3",
        json!(false),
    )
    .await;
    send(&http, a, "claim", "user_2", "e", json!([1])).await;
    io.expect("p", "e").await;

    b.pause();
    let paused = Instant::now();
    eventually(
        Duration::from_secs(10),
        "b's holder forgotten by a",
        async || room.holders().is_empty().then_some(()),
    )
    .await;
    // Sent while b is away: stored (the clock keeps running), delivered when b resumes.
    send(&http, a, "claim", "user_2", "e", json!([2])).await;
    assert!(room.pttl() > 0, "the TTL clock runs while b is away");
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.signal("CONT");
    let away = paused.elapsed();
    let back = Instant::now();
    eventually(
        Duration::from_secs(5),
        "b's holder written again",
        async || (room.holders() == [format!("b/{sid}")]).then_some(()),
    )
    .await;
    println!(
        "b paused {away:?}; its holder back {:?} after SIGCONT",
        back.elapsed()
    );
    // Stored while nobody held the room, so sent live to no node: it comes in the batch b sends its socket once it
    // holds the room again, after the first message (never acknowledged).
    let ev = io.expect("p", "batch").await;
    assert_eq!(ev["args"], json!([[["e", 1], ["e", 2]]]), "{ev}");

    // Past the TTL: nothing expires under the connected user.
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    assert_eq!(room.pending(), 2);
    assert_eq!(room.pttl(), -1, "held rooms do not expire");
    assert_eq!(room.holders(), [format!("b/{sid}")]);
    assert!(
        io.within("p", &["disconnect"], Duration::ZERO)
            .await
            .is_none(),
        "p was disconnected"
    );
    // b, cut off, declared nobody down: a's socket still holds its room.
    assert_eq!(other.holders(), [format!("a/{sid_a}")]);
    assert!(
        !b.log_text().contains("node declared down"),
        "b judged the others while paused"
    );
    let restored = http
        .metric(b, "socket_identity_delivery_holders_restored_total")
        .await
        .unwrap_or(0.0);
    assert!(restored >= 1.0, "{restored}");
}

/// A node drained by SIGTERM lets its users' rooms go before it leaves, even though socketioxide runs the
/// disconnect handlers in tasks nothing waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_lets_its_rooms_go() {
    let test = "faults_forget_drained";
    let (_dir, redis, mut nodes) = start(test, 2, &[]).await;
    let mut io = Clients::start();
    let room = Room::new(&redis, test, "/claim", "user_4");
    join(
        &mut io,
        (&redis, test),
        "d",
        &nodes[1],
        "/claim",
        "user_4",
        json!(false),
    )
    .await;
    assert_eq!(room.holders().len(), 1);
    let b = nodes.remove(1);
    assert!(b.terminate().await.success());
    assert!(room.holders().is_empty(), "{:?}", room.holders());
    assert_eq!(
        redis
            .cli(&["EXISTS", &format!("{test}:delivery:node:b")])
            .trim(),
        "0"
    );
}

/// Redis killed (SIGKILL), away for 2 s (every node cut off), then started again on the same port and directory
/// (AOF with `appendfsync always`): the nodes reconnect by themselves; the offline user then gets every message
/// sent before the restart in one `batch`, in order, once; a live message sent after the restart comes with its
/// ack callback and the ack removes it. A user connected all along still holds its room: whatever a node declared
/// while the others were reconnecting, the room does not expire under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_aof_loses_no_pending_message() {
    let test = "faults_redis_aof";
    let dir = log_dir(test);
    let aof = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let config = dir.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let redis = Redis::start_with(&dir, &aof);
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(start_node(&dir, &redis, test, id).await);
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    let sid_h = join(
        &mut io,
        (&redis, test),
        "h",
        c,
        "/claim",
        "user_h",
        json!(false),
    )
    .await;
    send(&http, a, "claim", "user_h", "e", json!([0])).await;
    io.expect("h", "e").await;
    // Nobody holds the room: the messages wait for the user.
    for i in 0..5 {
        send(&http, a, "keep", "user_r", &format!("e{i}"), json!([i])).await;
    }
    let channels = redis.shard_channels();

    let port = redis.port;
    drop(redis);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    let redis = Redis::start_on(&dir, port, &aof);
    let room = Room::new(&redis, test, "/keep", "user_r");
    assert_eq!(room.pending(), 5, "the AOF kept the queue");
    // Every node is whole again: its own channels (`/ready`) and the adapter's sharded ones.
    for node in &nodes {
        eventually(
            Duration::from_secs(15),
            "the node ready again",
            async || (http.status(node, "/ready").await == 200).then_some(()),
        )
        .await;
    }
    eventually(
        Duration::from_secs(15),
        "the adapter's channels subscribed again",
        async || (redis.shard_channels() >= channels).then_some(()),
    )
    .await;
    println!(
        "Redis restarted: every node whole again after {:?}",
        restarted.elapsed()
    );

    join(
        &mut io,
        (&redis, test),
        "r",
        b,
        "/keep",
        "user_r",
        json!(true),
    )
    .await;
    let ev = io.expect("r", "batch").await;
    let expected: Vec<Value> = (0..5).map(|i| json!([format!("e{i}"), i])).collect();
    assert_eq!(ev["args"], json!([expected]), "{ev}");
    assert_eq!(ev["acked"], true, "{ev}");
    room.until_pending(0).await;
    io.disconnect("r").await;
    io.expect("r", "disconnect").await;
    join(
        &mut io,
        (&redis, test),
        "r2",
        b,
        "/keep",
        "user_r",
        json!(true),
    )
    .await;
    io.expect_none("r2", "batch", Duration::from_millis(500))
        .await;

    // Live, from another node: through the adapter, with an ack callback.
    send(&http, a, "keep", "user_r", "live", json!(["after"])).await;
    let ev = io.expect("r2", "live").await;
    assert_eq!(ev["args"], json!(["after"]), "{ev}");
    assert_eq!(ev["acked"], true, "{ev}");
    room.until_pending(0).await;

    let held = Room::new(&redis, test, "/claim", "user_h");
    eventually(Duration::from_secs(5), "h's room held by c", async || {
        (held.holders() == [format!("c/{sid_h}")]).then_some(())
    })
    .await;
    let wait =
        (restarted + TTL + Duration::from_millis(500)).saturating_duration_since(Instant::now());
    tokio::time::sleep(wait).await;
    assert_eq!(held.holders(), [format!("c/{sid_h}")]);
    assert_eq!((held.pending(), held.pttl()), (1, -1));
    assert!(
        io.within("h", &["disconnect"], Duration::ZERO)
            .await
            .is_none(),
        "h was disconnected"
    );
    for node in nodes.iter_mut() {
        assert!(
            node.exit_within(Duration::ZERO).await.is_none(),
            "{} exited",
            node.id
        );
    }
}
