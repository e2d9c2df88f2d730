//! A Node cluster migrating node by node (docs/emitter.md, "Mixed clusters during a migration"): one real Node
//! socket.io 4 server with `@socket.io/redis-adapter` (key `socket.io`, tests/js/node-server.mjs) and two of our
//! nodes on one Redis, the official socket.io-client on all three. A broadcast from either side reaches every
//! matching socket of both once; without `NODE_ADAPTER_COMPAT` ours stay on our side.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const CONFIG: &str = r#"
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake"]

[[namespace]]
name = "/chat"
auth = "claim"
rooms = ["handshake"]
api_key = "chat-key-0123456789abcdef"

[[namespace]]
name = "/fwd"
auth = "claim"
rooms = ["handshake"]
forward = true

[[namespace]]
name = "/live"
auth = "claim"
rooms = ["handshake"]
recovery_window_s = 60
"#;

const CHAT_KEY: &str = "chat-key-0123456789abcdef";

/// How long a test waits to be sure a socket got nothing more.
const QUIET: Duration = Duration::from_millis(400);

/// The Node server, a child process of this test only (see [`JsServer`]).
struct NodeServer {
    base: String,
    _server: JsServer,
}

impl NodeServer {
    /// Starts it on `redis` with the adapter's default key, serving `namespaces`; returns once it listens and its
    /// adapter is subscribed.
    async fn start(redis: &Redis, namespaces: &[&str]) -> Self {
        let args = [
            redis.port.to_string(),
            "socket.io".to_owned(),
            json!(namespaces).to_string(),
        ];
        let server = JsServer::start("node-server.mjs", &args, "@socket.io/redis-adapter").await;
        Self {
            base: server.base.clone(),
            _server: server,
        }
    }

    /// Broadcasts through Node's adapter: `io.of(ns).to(to).emit(event, ...args)`.
    async fn emit(&self, op: Value) {
        let res = reqwest::Client::new()
            .post(format!("{}/emit", self.base))
            .body(op.to_string())
            .send()
            .await
            .expect("POST /emit to the Node server");
        assert_eq!(res.status(), 200, "{op}");
    }
}

/// `id`'s next `event`, which must be its only one.
async fn once(clients: &mut Clients, id: &str, event: &str) -> Value {
    let got = clients.expect(id, event).await;
    let again = clients.within(id, &[event], QUIET).await;
    assert_eq!(again, None, "{id} got {event} twice");
    got["args"].clone()
}

async fn published(http: &Http, node: &Node) -> f64 {
    let sample = "socket_identity_node_adapter_broadcasts_total{outcome=\"published\"}";
    http.metric(node, sample).await.unwrap_or(0.0)
}

/// Sockets of `/chat` on each server: `a` (our node a, room r1), `b` (our node b, r1), `b2` (node b, r2), `n`
/// (Node, r1), `n2` (Node, r2); and of `/fwd`: `fa` (node a) and `fn` (Node).
async fn sockets(nodes: &[Node], node: &NodeServer) -> Clients {
    let mut clients = Clients::start();
    let chat = |id: &str, base: &str, room: &str| {
        Conn::to(id, base).ns("/chat").user(&format!("u{id}"), room)
    };
    let (a, b) = (nodes[0].base(), nodes[1].base());
    for (id, base, room) in [
        ("a", &a, "r1"),
        ("b", &b, "r1"),
        ("b2", &b, "r2"),
        ("n", &node.base, "r1"),
        ("n2", &node.base, "r2"),
    ] {
        clients.join(chat(id, base, room)).await;
    }
    clients
        .join(Conn::to("fa", &a).ns("/fwd").user("ufa", "f"))
        .await;
    clients
        .join(Conn::to("fn", &node.base).ns("/fwd").user("ufn", "f"))
        .await;
    clients
}

/// POST /send to `/chat`'s room r1 on `node`.
async fn send(http: &Http, node: &Node, event: &str) {
    let body = json!({"rooms": ["r1"], "event": event, "args": ["ours", {"n": 1}]});
    let (status, answer) = http
        .push(node, &format!("site=chat&apiKey={CHAT_KEY}"), &body)
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn broadcasts_cross_both_ways_once_between_a_node_server_and_ours() {
    let (_dir, redis, nodes) = cluster_with_config_and(
        "node_migration_both_ways",
        2,
        CONFIG,
        &["--node-adapter-compat"],
    )
    .await;
    let node = NodeServer::start(&redis, &["/chat", "/fwd", "/live"]).await;
    let mut clients = sockets(&nodes, &node).await;
    for (id, base) in [
        ("la", nodes[0].base()),
        ("lb", nodes[1].base()),
        ("ln", node.base.clone()),
    ] {
        let conn = Conn::to(id, &base)
            .ns("/live")
            .user(&format!("u{id}"), "r1");
        clients.join(conn).await;
    }
    let http = Http::new();

    // From Node: to r1 of /chat, binary nested too, reaches r1 on all three servers once, not r2.
    let args = json!([1, {"$binary": "AAEC/w=="}, {"file": {"$binary": "Bw=="}}]);
    node.emit(json!({"ns": "/chat", "to": ["r1"], "event": "from-node", "args": args}))
        .await;
    for id in ["a", "b", "n"] {
        assert_eq!(once(&mut clients, id, "from-node").await, args, "{id}");
    }
    for id in ["b2", "n2"] {
        clients.expect_none(id, "from-node", Duration::ZERO).await;
    }

    // From ours: POST /send on node a reaches r1 on all three servers once, Node's socket included. (Each node
    // published the presence events of its sockets already.)
    let before = [
        published(&http, &nodes[0]).await,
        published(&http, &nodes[1]).await,
    ];
    send(&http, &nodes[0], "from-us").await;
    for id in ["a", "b", "n"] {
        assert_eq!(
            once(&mut clients, id, "from-us").await,
            json!(["ours", {"n": 1}]),
            "{id}"
        );
    }
    for id in ["b2", "n2"] {
        clients.expect_none(id, "from-us", Duration::ZERO).await;
    }
    // Published once, by the node it started on (the other delivered it through our adapter).
    eventually(
        Duration::from_secs(5),
        "node a's publish counted",
        async || (published(&http, &nodes[0]).await == before[0] + 1.0).then_some(()),
    )
    .await;
    assert_eq!(published(&http, &nodes[1]).await, before[1]);

    // A client event forwarded to its namespace by our node, binary included, and except a room from Node.
    let args = json!([{"$binary": "CQ=="}, "x"]);
    clients.emit("fa", "fwd-event", args.clone(), false).await;
    for id in ["fa", "fn"] {
        assert_eq!(once(&mut clients, id, "fwd-event").await, args, "{id}");
    }
    // From Node to a namespace with recovery: one of our nodes pushes it for the cluster (recorded, so every node
    // delivers it from the log), and does not publish it again: Node's socket has it from Redis already.
    node.emit(json!({"ns": "/live", "to": ["r1"], "event": "recorded", "args": [7]}))
        .await;
    for id in ["la", "lb"] {
        let args = once(&mut clients, id, "recorded").await;
        assert_eq!(args[0], 7, "{id}: {args}");
        assert!(args[1].is_string(), "{id}: no offset in {args}");
    }
    assert_eq!(once(&mut clients, "ln", "recorded").await, json!([7]));

    node.emit(json!({"ns": "/chat", "except": ["r1"], "event": "not-r1", "args": []}))
        .await;
    for id in ["b2", "n2"] {
        once(&mut clients, id, "not-r1").await;
    }
    for id in ["a", "b", "n"] {
        clients.expect_none(id, "not-r1", Duration::ZERO).await;
    }
}

#[tokio::test]
async fn without_compat_our_broadcasts_stay_on_our_side() {
    let (_dir, redis, nodes) =
        cluster_with_config_and("node_migration_control", 2, CONFIG, &[]).await;
    let node = NodeServer::start(&redis, &["/chat", "/fwd"]).await;
    let mut clients = sockets(&nodes, &node).await;
    let http = Http::new();

    send(&http, &nodes[0], "from-us").await;
    for id in ["a", "b"] {
        once(&mut clients, id, "from-us").await;
    }
    // Node's broadcasts still reach ours (every node reads the emitter protocol). Redis delivers a subscriber's
    // messages in the order they were published: had ours been published, Node's socket would have had it first.
    node.emit(json!({"ns": "/chat", "to": ["r1"], "event": "from-node", "args": []}))
        .await;
    for id in ["a", "b", "n"] {
        once(&mut clients, id, "from-node").await;
    }
    clients.expect_none("n", "from-us", Duration::ZERO).await;
    assert_eq!(published(&http, &nodes[0]).await, 0.0);
}

/// Without Redis (a single node) or without an emitter key, there is no Node server to reach: refused at start-up,
/// saying why.
#[tokio::test]
async fn compat_without_redis_or_emitter_key_is_a_start_up_error() {
    let dir = log_dir("node_migration_start_up");
    let redis = Redis::start(&dir);
    let url = redis.url();
    for (id, redis, args, named) in [
        ("single", None, &["--node-adapter-compat"][..], "REDIS_URL"),
        (
            "nokey",
            Some(url),
            &["--node-adapter-compat", "--emitter-key", ""][..],
            "EMITTER_KEY",
        ),
    ] {
        let mut node = Node::spawn(
            &dir,
            NodeOpts {
                id,
                redis,
                args,
                ..NodeOpts::default()
            },
        )
        .await;
        let status = node.exit_within(Duration::from_secs(10)).await;
        let log = node.log_text();
        assert!(
            matches!(status, Some(s) if !s.success()),
            "{id}: {status:?}\n{log}"
        );
        assert!(
            log.contains("NODE_ADAPTER_COMPAT") && log.contains(named),
            "{id}: a clear message naming {named}:\n{log}"
        );
    }
}
