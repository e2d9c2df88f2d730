//! The socket.io Redis emitter protocol with real components: 3 node processes on a real Redis, the official
//! socket.io-client in rooms on every node, and the real `@socket.io/redis-emitter` (tests/js/emitter.mjs)
//! publishing as a Node backend does.

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
"#;

/// How long a test waits to be sure a socket got nothing more.
const QUIET: Duration = Duration::from_millis(400);

/// Publishes `ops` with the real emitter (key `socket.io`), in order.
async fn emitter(redis: &Redis, ops: Value) {
    let out = tokio::process::Command::new("node")
        .arg(root().join("tests/js/emitter.mjs"))
        .arg(redis.port.to_string())
        .arg("socket.io")
        .arg(ops.to_string())
        .output()
        .await
        .expect("run node tests/js/emitter.mjs");
    assert!(out.status.success(), "emitter.mjs: {out:?}");
}

/// `id`'s next `event`, which must be its only one: the cluster delivers each emitter message once per socket.
async fn once(clients: &mut Clients, id: &str, event: &str) -> Value {
    let got = clients.expect(id, event).await;
    let again = clients.within(id, &[event], QUIET).await;
    assert_eq!(again, None, "{id} got {event} twice");
    got["args"].clone()
}

/// The count of emitter messages of `kind` with `outcome` on `node`.
async fn counted(http: &Http, node: &Node, kind: &str, outcome: &str) -> f64 {
    let sample =
        format!("socket_identity_emitter_messages_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}");
    http.metric(node, &sample).await.unwrap_or(0.0)
}

/// Sockets on each node: `a` (node a, room r1), `b` (node b, r1), `c` (node c, r2), `d` (node b, `/chat`, r1).
async fn sockets(nodes: &[Node]) -> Clients {
    let mut clients = Clients::start();
    clients
        .join(Conn::to("a", &nodes[0]).user("ua", "r1"))
        .await;
    clients
        .join(Conn::to("b", &nodes[1]).user("ub", "r1"))
        .await;
    clients
        .join(Conn::to("c", &nodes[2]).user("uc", "r2"))
        .await;
    clients
        .join(Conn::to("d", &nodes[1]).ns("/chat").user("ud", "r1"))
        .await;
    clients
}

#[tokio::test]
async fn emitter_broadcasts_reach_each_matching_socket_once_across_the_cluster() {
    let (_dir, redis, nodes) =
        cluster_with_config("emitter_broadcasts_reach_each", 3, CONFIG).await;
    let mut clients = sockets(&nodes).await;

    // To a room: its sockets on two nodes, not the third's, nor the same room of another namespace.
    emitter(
        &redis,
        json!([{"op": "emit", "to": ["r1"], "event": "news", "args": [1, {"x": "y"}]}]),
    )
    .await;
    for id in ["a", "b"] {
        assert_eq!(once(&mut clients, id, "news").await, json!([1, {"x": "y"}]));
    }
    clients.expect_none("c", "news", Duration::ZERO).await;
    clients.expect_none("d", "news", Duration::ZERO).await;

    // To the namespace, except a room; then to the whole namespace.
    emitter(
        &redis,
        json!([
            {"op": "emit", "except": ["r2"], "event": "most", "args": []},
            {"op": "emit", "event": "all", "args": ["x"]},
        ]),
    )
    .await;
    for id in ["a", "b", "c"] {
        assert_eq!(once(&mut clients, id, "all").await, json!(["x"]));
    }
    for id in ["a", "b"] {
        once(&mut clients, id, "most").await;
    }
    clients.expect_none("c", "most", Duration::ZERO).await;
    clients.expect_none("d", "all", Duration::ZERO).await;

    // Binary arguments, top-level and nested, arrive as binary attachments.
    emitter(
        &redis,
        json!([{"op": "emit", "to": ["r2"], "event": "file",
            "args": [{"$binary": "AAEC/w=="}, {"file": {"$binary": "Bw=="}, "n": 2, "l": [{"$binary": "CQ=="}]}]}]),
    )
    .await;
    assert_eq!(
        once(&mut clients, "c", "file").await,
        json!([{"$binary": "AAEC/w=="}, {"file": {"$binary": "Bw=="}, "n": 2, "l": [{"$binary": "CQ=="}]}])
    );

    // Volatile: sockets that can take it at once (all of these) get it; another namespace.
    emitter(
        &redis,
        json!([
            {"op": "emit", "to": ["r1"], "volatile": true, "event": "tick", "args": [3]},
            {"op": "emit", "ns": "/chat", "to": ["r1"], "event": "chat", "args": ["hi"]},
        ]),
    )
    .await;
    for id in ["a", "b"] {
        assert_eq!(once(&mut clients, id, "tick").await, json!([3]));
    }
    assert_eq!(once(&mut clients, "d", "chat").await, json!(["hi"]));
    clients.expect_none("a", "chat", Duration::ZERO).await;

    // A namespace the config does not serve: counted on every node, nothing created or delivered.
    emitter(
        &redis,
        json!([{"op": "emit", "ns": "/nope", "event": "news", "args": []}]),
    )
    .await;
    let http = Http::new();
    for node in &nodes {
        eventually(
            Duration::from_secs(5),
            "the unknown namespace counted",
            async || {
                (counted(&http, node, "broadcast", "unknown_namespace").await == 1.0).then_some(())
            },
        )
        .await;
        // Each node delivered to its own sockets: a, b and d's node counted every served broadcast.
        assert_eq!(counted(&http, node, "broadcast", "delivered").await, 6.0);
    }
    clients.expect_none("a", "news", QUIET).await;
}

#[tokio::test]
async fn emitter_requests_join_leave_and_disconnect_sockets_on_every_node() {
    let (_dir, redis, nodes) = cluster_with_config("emitter_requests_join", 3, CONFIG).await;
    let mut clients = sockets(&nodes).await;

    // r2's socket and one of r1's (not b) join r3; an emit to r3 reaches them.
    emitter(
        &redis,
        json!([
            {"op": "join", "to": ["r1", "r2"], "except": ["r1x"], "rooms": ["r3"]},
            {"op": "leave", "to": ["r1"], "rooms": ["nothing"]},
        ]),
    )
    .await;
    let http = Http::new();
    eventually(
        Duration::from_secs(5),
        "r3 filled on every node",
        async || (http.users(&nodes[0], "r3").await.set().len() == 3).then_some(()),
    )
    .await;
    emitter(
        &redis,
        json!([{"op": "emit", "to": ["r3"], "except": ["r2"], "event": "r3", "args": []}]),
    )
    .await;
    for id in ["a", "b"] {
        once(&mut clients, id, "r3").await;
    }
    clients.expect_none("c", "r3", Duration::ZERO).await;

    // Leave r3 everywhere but r2: the emit reaches c only.
    emitter(
        &redis,
        json!([
            {"op": "leave", "except": ["r2"], "rooms": ["r3"]},
            {"op": "emit", "to": ["r3"], "event": "left", "args": []},
        ]),
    )
    .await;
    once(&mut clients, "c", "left").await;
    clients.expect_none("a", "left", Duration::ZERO).await;
    clients.expect_none("b", "left", Duration::ZERO).await;

    // Malformed messages, published by hand: counted on every node, logged, nothing breaks.
    redis.cli(&["PUBLISH", "socket.io#/#", "\u{1}garbage"]);
    redis.cli(&["PUBLISH", "socket.io-request#/#", "{\"type\": 2}"]);
    redis.cli(&["PUBLISH", "socket.io-request#/#", "{not json"]);
    for node in &nodes {
        eventually(
            Duration::from_secs(5),
            "malformed messages counted",
            async || {
                let broadcasts = counted(&http, node, "broadcast", "malformed").await;
                let requests = counted(&http, node, "request", "malformed").await;
                (broadcasts == 1.0 && requests == 2.0).then_some(())
            },
        )
        .await;
        // Logged just after it is counted: a read of the metrics may come between the two.
        eventually(
            Duration::from_secs(5),
            "the malformed message logged",
            async || {
                node.log_text()
                    .contains("malformed emitter message")
                    .then_some(())
            },
        )
        .await;
    }

    // Disconnect r1's sockets on every node: a and b, not c, nor d (another namespace).
    emitter(&redis, json!([{"op": "disconnect", "to": ["r1"]}])).await;
    for id in ["a", "b"] {
        let ev = clients.expect(id, "disconnect").await;
        assert_eq!(ev["reason"], "io server disconnect", "{ev}");
    }
    clients.expect_none("c", "disconnect", QUIET).await;
    clients.expect_none("d", "disconnect", Duration::ZERO).await;
    for node in &nodes {
        node.wait_healthy(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn an_empty_emitter_key_turns_the_protocol_off() {
    let dir = log_dir("an_empty_emitter_key_turns");
    let redis = Redis::start(&dir);
    let node = Node::start(
        &dir,
        NodeOpts {
            id: "a",
            redis: Some(redis.url()),
            prefix: "an_empty_emitter_key_turns",
            args: &["--emitter-key", ""],
            ..NodeOpts::default()
        },
    )
    .await;
    let mut clients = Clients::start();
    clients.join(Conn::to("a", &node).user("ua", "r1")).await;
    emitter(
        &redis,
        json!([{"op": "emit", "to": ["r1"], "event": "news", "args": []}]),
    )
    .await;
    clients.expect_none("a", "news", QUIET).await;
    assert_eq!(redis.cli(&["PUBSUB", "NUMPAT"]).trim(), "0");
}

/// `serverSideEmit` reaches the application's backend through the event-bus gateway's `onmessage` stream, once for
/// the whole cluster (every node gets the message; one publishes it), as an envelope of type `event` with the
/// arguments as payload and no socket or user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_emits_reach_the_gateway_stream_once() {
    let config = format!(
        r#"{CONFIG}
[gateway]
path = "/connect"
onmessage = {{ publish = "socket:general" }}
jwt_secret = "a-gateway-secret-of-32-bytes-----"
"#
    );
    let (_dir, redis, nodes) = cluster_with_config("emitter_server_side", 3, &config).await;
    emitter(
        &redis,
        json!([
            {"op": "serverSideEmit", "event": "hello", "args": [1, {"a": 2}]},
            {"op": "serverSideEmit", "ns": "/chat", "event": "bye", "args": ["x"]},
            // The same call again at once: another message, not a copy of the first.
            {"op": "serverSideEmit", "event": "hello", "args": [1, {"a": 2}]},
        ]),
    )
    .await;
    let entries = eventually(Duration::from_secs(5), "3 envelopes", async || {
        let out = redis.cli(&["XRANGE", "socket:general", "-", "+"]);
        let envelopes: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.is_object())
            .collect();
        (envelopes.len() >= 3).then_some(envelopes)
    })
    .await;
    // Every node has had the messages by now: none published a fourth.
    tokio::time::sleep(QUIET).await;
    let out = redis.cli(&["XLEN", "socket:general"]);
    assert_eq!(out.trim(), "3", "one envelope per message: {entries:?}");
    let hellos = entries.iter().filter(|e| e["type"] == "hello").count();
    assert_eq!(hellos, 2, "{entries:?}");
    let by_type = |t: &str| {
        entries
            .iter()
            .find(|e| e["type"] == t)
            .unwrap_or_else(|| panic!("no {t}: {entries:?}"))
            .clone()
    };
    let hello = by_type("hello");
    assert_eq!(hello["payload"], json!([1, {"a": 2}]), "{hello}");
    assert_eq!(hello["namespace"], "/", "{hello}");
    assert_eq!(
        (hello["socket"].as_str(), hello["username"].as_str()),
        (Some(""), Some(""))
    );
    let bye = by_type("bye");
    assert_eq!(
        (bye["namespace"].as_str(), &bye["payload"]),
        (Some("/chat"), &json!(["x"]))
    );
    let http = Http::new();
    let mut published = 0.0;
    for node in &nodes {
        published += counted(&http, node, "server_side_emit", "published").await;
    }
    assert_eq!(published, 3.0);
}

/// `/rel`: reliable user rooms `user.{id}` kept until acknowledged; `/rec`: connection state recovery.
const ONCE_CONFIG: &str = r#"
[[namespace]]
name = "/rel"
auth = "claim"
rooms = ["handshake"]
user_room_prefix = "user."
client_ttl_s = 0

[[namespace]]
name = "/rec"
auth = "claim"
rooms = ["handshake"]
recovery_window_s = 60
"#;

/// Connects `id` to `node` in room `room` of `/rel`, acknowledging server events or not (`ack`).
async fn join_rel(clients: &mut Clients, id: &str, node: &Node, room: &str, ack: bool) {
    clients
        .join(
            Conn::to(id, node)
                .ns("/rel")
                .user(id, room)
                .ack_server(json!(ack)),
        )
        .await;
}

/// How many messages of `/rel`'s `room` are pending in Redis, under the cluster's prefix `test`.
fn pending(redis: &Redis, test: &str, room: &str) -> usize {
    let queue = format!("{test}:delivery:{{/rel|{room}}}:q");
    redis.cli(&["XLEN", &queue]).trim().parse().unwrap()
}

async fn until_pending(redis: &Redis, test: &str, room: &str, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} pending in {room}"),
        async || (pending(redis, test, room) == n).then_some(()),
    )
    .await;
}

/// The sum over `nodes` of the emitter messages of `kind` with `outcome`.
async fn counted_all(http: &Http, nodes: &[Node], kind: &str, outcome: &str) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += counted(http, node, kind, outcome).await;
    }
    sum
}

/// An emit to a reliable user room goes through reliable delivery as `POST /send` does, handled by one node for
/// the cluster: live with an ack callback, removed when acknowledged, kept for the `batch` of an offline user;
/// other rooms of the same emit get it once, without callback. Two identical emits in a row are two messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_to_user_rooms_are_stored_acknowledged_and_batched() {
    let test = "emitter_user_rooms";
    let (_dir, redis, nodes) = cluster_with_config(test, 3, ONCE_CONFIG).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let http = Http::new();
    let mut clients = Clients::start();
    join_rel(&mut clients, "u1", a, "user.1", true).await;
    join_rel(&mut clients, "staff", b, "staff", true).await;
    // The handshake goes out before the socket's holder is written: emitted earlier, the message would come in
    // u1's next `batch`, not live.
    let holders = format!("{test}:delivery:{{/rel|user.1}}:holders");
    redis.until_members(&holders, 1).await;

    emitter(
        &redis,
        json!([{"op": "emit", "ns": "/rel", "to": ["user.1", "staff"], "event": "update",
            "args": ["user", {"id": 1}]}]),
    )
    .await;
    let ev = clients.expect("u1", "update").await;
    assert_eq!(
        (&ev["args"], &ev["acked"]),
        (&json!(["user", {"id": 1}]), &json!(true)),
        "a user room's message comes with an ack callback: {ev}"
    );
    let ev = clients.expect("staff", "update").await;
    assert!(ev.get("acked").is_none(), "other rooms: no callback: {ev}");
    for id in ["u1", "staff"] {
        clients.expect_none(id, "update", QUIET).await;
    }
    until_pending(&redis, test, "user.1", 0).await;

    // The same emit twice at once: two messages, each delivered and acknowledged.
    let ping = json!({"op": "emit", "ns": "/rel", "to": ["user.1"], "event": "ping", "args": [7]});
    emitter(&redis, json!([ping, ping])).await;
    for _ in 0..2 {
        let ev = clients.expect("u1", "ping").await;
        assert_eq!((&ev["args"], &ev["acked"]), (&json!([7]), &json!(true)));
    }
    clients.expect_none("u1", "ping", QUIET).await;
    until_pending(&redis, test, "user.1", 0).await;

    // Offline (held once, then let go): kept, identical ones included, and given in one batch on another node.
    join_rel(&mut clients, "u2", a, "user.2", true).await;
    clients.disconnect("u2").await;
    clients.expect("u2", "disconnect").await;
    let holders = format!("{test}:delivery:{{/rel|user.2}}:holders");
    redis.until_members(&holders, 0).await;
    let to_u2 = |event: &str, n: u64| json!({"op": "emit", "ns": "/rel", "to": ["user.2"], "event": event, "args": [n]});
    emitter(
        &redis,
        json!([to_u2("e0", 0), to_u2("e1", 1), to_u2("e1", 1)]),
    )
    .await;
    until_pending(&redis, test, "user.2", 3).await;
    join_rel(&mut clients, "u2", c, "user.2", true).await;
    let ev = clients.expect("u2", "batch").await;
    assert_eq!(
        ev["args"],
        json!([[["e0", 0], ["e1", 1], ["e1", 1]]]),
        "{ev}"
    );
    assert_eq!(ev["acked"], true, "{ev}");
    clients.expect_none("u2", "batch", QUIET).await;
    until_pending(&redis, test, "user.2", 0).await;

    // Binary cannot be stored: delivered live once, without callback, counted.
    emitter(
        &redis,
        json!([{"op": "emit", "ns": "/rel", "to": ["user.1"], "event": "file",
            "args": [{"$binary": "AAE="}]}]),
    )
    .await;
    let ev = clients.expect("u1", "file").await;
    assert_eq!(ev["args"], json!([{"$binary": "AAE="}]), "{ev}");
    assert!(ev.get("acked").is_none(), "{ev}");
    clients.expect_none("u1", "file", QUIET).await;
    assert_eq!(pending(&redis, test, "user.1"), 0);

    // One node handled each message; the other two counted it as another node's (after their take-over delay).
    let handled = [("delivered", 6.0), ("unstored", 1.0), ("other_node", 14.0)];
    eventually(
        Duration::from_secs(5),
        "each message handled once",
        async || {
            for (outcome, n) in handled {
                if counted_all(&http, &nodes, "broadcast", outcome).await != n {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// An emit to a room of a namespace with connection state recovery is recorded once in its log: every socket of
/// the room gets it once, with its offset, and a client that was cut off gets what it missed once, in order,
/// when it recovers (identical emits included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_to_a_recovering_namespace_are_replayed_once() {
    let test = "emitter_recovery";
    let (_dir, redis, nodes) = cluster_with_config(test, 3, ONCE_CONFIG).await;
    let mut clients = Clients::start();
    let proxy = Proxy::start(nodes[0].port).await;
    let conn = Conn::to("c", &nodes[0].via(&proxy))
        .ns("/rec")
        .user("uc", "R")
        .reconnect();
    let first = clients.enter(conn).await;
    assert!(first.pid.is_some(), "{first:?}");
    clients
        .join(Conn::to("d", &nodes[1]).ns("/rec").user("ud", "R"))
        .await;
    let news =
        |n: u64| json!({"op": "emit", "ns": "/rec", "to": ["R"], "event": "news", "args": [n]});

    emitter(&redis, json!([news(0)])).await;
    let mut seen = std::collections::HashMap::new();
    for id in ["c", "d"] {
        let ev = clients.expect(id, "news").await;
        assert_eq!(ev["args"][0], 0, "{ev}");
        assert!(ev["args"][1].is_string(), "an offset last: {ev}");
        seen.insert(id, ev["args"][1].clone());
    }

    proxy.refuse(true);
    proxy.cut().await;
    let ev = clients.expect("c", "disconnect").await;
    assert_eq!(ev["reason"], "transport close", "{ev}");
    proxy.point_to(nodes[2].port);
    emitter(&redis, json!([news(1), news(2), news(2)])).await;
    for n in [1, 2, 2] {
        let ev = clients.expect("d", "news").await;
        assert_eq!(ev["args"][0], n, "{ev}");
    }
    proxy.refuse(false);
    let back = clients.reconnected("c").await;
    assert!(back.recovered, "not recovered: {back:?}");
    assert_eq!(back.sid, first.sid);
    emitter(&redis, json!([news(3)])).await;
    let mut offsets = vec![seen["c"].clone()];
    for n in [1, 2, 2, 3] {
        let ev = clients.expect("c", "news").await;
        assert_eq!(ev["args"][0], n, "{ev}");
        offsets.push(ev["args"][1].clone());
    }
    let distinct: std::collections::HashSet<String> =
        offsets.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), 5, "one offset per message: {offsets:?}");
    assert_eq!(once(&mut clients, "d", "news").await[0], 3);
    clients.expect_none("c", "news", QUIET).await;
    let http = Http::new();
    eventually(
        Duration::from_secs(5),
        "each message handled once",
        async || {
            let delivered = counted_all(&http, &nodes, "broadcast", "delivered").await;
            let others = counted_all(&http, &nodes, "broadcast", "other_node").await;
            (delivered == 5.0 && others == 10.0).then_some(())
        },
    )
    .await;
}
