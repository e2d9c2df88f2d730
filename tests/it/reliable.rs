//! Reliable per-user delivery with real components: 3 node processes on a real Redis, the official
//! socket.io-client with real ack callbacks, and the test playing the application's backend (`POST /send`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const KEY: &str = "claim-key-0123456789abcdef";

const CONFIG: &str = r#"
[[namespace]]
name = "/claim"
auth = "claim"
rooms = ["handshake"]
api_key = "claim-key-0123456789abcdef"
user_room_prefix = "user_"
client_ttl_s = 0

[[namespace]]
name = "/brief"
auth = "claim"
rooms = ["handshake"]
api_key = "brief-key-0123456789abcdef"
user_room_prefix = "user_"
client_ttl_s = 1

[[namespace]]
name = "/who"
auth = "claim"
rooms = ["handshake", "user"]
api_key = "who-key-0123456789abcdef"
user_room_prefix = "user."
client_ttl_s = 0

[[namespace]]
name = "/ids"
auth = "claim"
rooms = ["handshake"]
api_key = "ids-key-0123456789abcdef"
user_room_prefix = "user_"
client_ttl_s = 0
max_pending = 3
message_ids = true
"#;

async fn start(test: &str) -> (std::path::PathBuf, Redis, Vec<Node>) {
    cluster_with_config(test, 3, CONFIG).await
}

/// `POST {node}/send` of `event` with `args` to `rooms`, as JSON: the status and the answer.
async fn send(
    http: &Http,
    node: &Node,
    extra: &str,
    rooms: Value,
    event: &str,
    args: Value,
) -> (u16, Value) {
    let body = json!({"rooms": rooms, "event": event, "args": args});
    http.push(node, &format!("site=claim&apiKey={KEY}{extra}"), &body)
        .await
}

/// Connects `id` to `node` in room `room` of `/claim`, waits for its `handshake` and, given `held` (Redis and the
/// key prefix), until the socket's holder of the room is written: the handshake goes out first, and a message
/// pushed in between reaches the socket in its next `batch`, not live (nothing is missed either way).
async fn join(
    io: &mut Clients,
    held: Option<(&Redis, &str)>,
    id: &str,
    node: &Node,
    room: &str,
    ack: Value,
) {
    let ev = io
        .connect(
            Conn::to(id, &node)
                .ns("/claim")
                .user(id, room)
                .ack_server(ack),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    io.expect(id, "handshake").await;
    if let Some((redis, prefix)) = held {
        let holders = format!("{prefix}:delivery:{{/claim|{room}}}:holders");
        let member = format!("{}/{}", node.id, ev["sid"].as_str().unwrap());
        redis.until_member(&holders, &member).await;
    }
}

/// Disconnects `id` and waits until the server saw it: no holder of `room` is left in Redis.
async fn leave(io: &mut Clients, redis: &Redis, prefix: &str, id: &str, room: &str) {
    io.disconnect(id).await;
    io.expect(id, "disconnect").await;
    let holders = format!("{prefix}:delivery:{{/claim|{room}}}:holders");
    redis.until_members(&holders, 0).await;
}

/// How many messages of `room` are pending in Redis.
fn pending(redis: &Redis, prefix: &str, room: &str) -> usize {
    let queue = format!("{prefix}:delivery:{{/claim|{room}}}:q");
    redis.cli(&["XLEN", &queue]).trim().parse().unwrap()
}

async fn until_pending(redis: &Redis, prefix: &str, room: &str, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} pending in {room}"),
        async || (pending(redis, prefix, room) == n).then_some(()),
    )
    .await;
}

/// A Redis client listening on `channels` (sharded), and what it hears; keep the client as long as you listen.
async fn spy(
    redis: &Redis,
    channels: &[String],
) -> (
    fred::clients::SubscriberClient,
    tokio::sync::broadcast::Receiver<fred::types::Message>,
) {
    use fred::prelude::{Builder, ClientLike, Config, EventInterface, PubsubInterface};
    let spy = Builder::from_config(Config::from_url(&redis.url()).unwrap())
        .build_subscriber_client()
        .unwrap();
    spy.init().await.unwrap();
    let heard = spy.message_rx();
    for channel in channels {
        spy.ssubscribe(channel.as_str()).await.unwrap();
    }
    (spy, heard)
}

/// (a) A live message to a user room comes with an ack callback; acknowledged, it is not delivered again. Other
/// rooms get no callback and queue nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_live_messages_are_not_redelivered() {
    let test = "reliable_live";
    let (_dir, redis, nodes) = start(test).await;
    let held = Some((&redis, test));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    join(&mut io, held, "u1", a, "user_1", json!(true)).await;
    // Not a user room: nothing to hold.
    join(&mut io, None, "staff", b, "staff", json!(true)).await;

    let (status, answer) = send(
        &http,
        c,
        "",
        json!(["user_1", "staff"]),
        "update",
        json!(["user", {"id": 1}]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["rooms"],
        json!([{"room": "user_1", "queued": 1}, {"room": "staff", "queued": 0}])
    );
    let ev = io.expect("u1", "update").await;
    assert_eq!(ev["args"], json!(["user", {"id": 1}]));
    assert_eq!(
        ev["acked"], true,
        "a user room's message comes with an ack callback: {ev}"
    );
    let ev = io.expect("staff", "update").await;
    assert!(
        ev.get("acked").is_none(),
        "other rooms get no callback: {ev}"
    );
    // The ack removed it.
    until_pending(&redis, test, "user_1", 0).await;

    // One push to several user rooms, on several nodes: each room its own queue (stored at once), each
    // message acknowledged by its own user; an offline user's stays pending.
    join(&mut io, held, "u5", b, "user_5", json!(true)).await;
    join(&mut io, held, "u6", c, "user_6", json!(true)).await;
    let (status, answer) = send(
        &http,
        a,
        "",
        json!(["user_1", "user_5", "user_6", "user_7"]),
        "many",
        json!([7]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let rooms: Vec<Value> = ["user_1", "user_5", "user_6", "user_7"]
        .map(|room| json!({"room": room, "queued": 1}))
        .into();
    assert_eq!(answer["rooms"], json!(rooms));
    for id in ["u1", "u5", "u6"] {
        let ev = io.expect(id, "many").await;
        assert_eq!(
            (&ev["args"], &ev["acked"]),
            (&json!([7]), &json!(true)),
            "{ev}"
        );
    }
    for room in ["user_1", "user_5", "user_6"] {
        until_pending(&redis, test, room, 0).await;
    }
    assert_eq!(pending(&redis, test, "user_7"), 1);

    leave(&mut io, &redis, test, "u1", "user_1").await;
    join(&mut io, held, "u1", b, "user_1", json!(true)).await;
    io.expect_none("u1", "batch", Duration::from_millis(500))
        .await;
}

/// (b) A user offline while 5 messages are sent gets one `batch` of the 5, in send order, on reconnect to another
/// node; after its ack, the next reconnect gets no batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_gets_one_batch_on_another_node() {
    let test = "reliable_batch";
    let (_dir, redis, nodes) = start(test).await;
    let held = Some((&redis, test));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    // Held once, then let go: the room's messages are kept (client_ttl_s = 0).
    join(&mut io, held, "u2", a, "user_2", json!(true)).await;
    leave(&mut io, &redis, test, "u2", "user_2").await;

    for i in 0..5 {
        let (status, answer) = send(
            &http,
            c,
            "",
            json!("user_2"),
            &format!("e{i}"),
            json!([i, {"n": i}]),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["rooms"], json!([{"room": "user_2", "queued": 1}]));
    }
    assert_eq!(pending(&redis, test, "user_2"), 5);
    let stored = http
        .metric(c, "socket_identity_delivery_stored_total")
        .await;
    assert_eq!(stored, Some(5.0));
    let dropped = http
        .metric(c, "socket_identity_delivery_dropped_total")
        .await;
    assert_eq!(dropped, Some(0.0));

    join(&mut io, held, "u2", b, "user_2", json!(true)).await;
    let ev = io.expect("u2", "batch").await;
    let expected: Vec<Value> = (0..5)
        .map(|i| json!([format!("e{i}"), i, {"n": i}]))
        .collect();
    assert_eq!(ev["args"], json!([expected]), "{ev}");
    assert_eq!(ev["acked"], true, "{ev}");
    io.expect_none("u2", "batch", Duration::from_millis(300))
        .await;
    until_pending(&redis, test, "user_2", 0).await;

    leave(&mut io, &redis, test, "u2", "user_2").await;
    join(&mut io, held, "u2", c, "user_2", json!(true)).await;
    io.expect_none("u2", "batch", Duration::from_millis(500))
        .await;
}

/// (c) A message whose live delivery was not acknowledged comes back in the batch of the next join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_message_comes_back() {
    let test = "reliable_unacked";
    let (_dir, redis, nodes) = start(test).await;
    let held = Some((&redis, test));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    join(&mut io, held, "mute", a, "user_3", json!(false)).await;
    let (status, answer) = send(&http, c, "", json!("user_3"), "update", json!(["x"])).await;
    assert_eq!(status, 200, "{answer}");
    let ev = io.expect("mute", "update").await;
    assert_eq!(ev["acked"], false, "{ev}");
    io.expect_none("mute", "batch", Duration::from_millis(300))
        .await;
    assert_eq!(pending(&redis, test, "user_3"), 1);
    leave(&mut io, &redis, test, "mute", "user_3").await;

    join(&mut io, held, "u3", b, "user_3", json!(true)).await;
    let ev = io.expect("u3", "batch").await;
    assert_eq!(ev["args"], json!([[["update", "x"]]]), "{ev}");
    until_pending(&redis, test, "user_3", 0).await;
}

/// (d) `resync=true`: acknowledging a message that is not the first pending one of its event clears the queue
/// and sends `resync` to the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_order_ack_asks_for_resync() {
    let test = "reliable_resync";
    let (_dir, redis, nodes) = start(test).await;
    let held = Some((&redis, test));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    // The first message stays pending: its one socket does not acknowledge.
    join(&mut io, held, "mute", a, "user_4", json!(false)).await;
    let (status, _) = send(
        &http,
        c,
        "&resync=true",
        json!("user_4"),
        "update",
        json!([1]),
    )
    .await;
    assert_eq!(status, 200);
    io.expect("mute", "update").await;
    // A socket on another node that acknowledges live `update`s but not its batch.
    join(&mut io, held, "live", b, "user_4", json!(["update"])).await;
    let ev = io.expect("live", "batch").await;
    assert_eq!(ev["args"], json!([[["update", 1]]]), "{ev}");
    assert_eq!(pending(&redis, test, "user_4"), 1);
    // The second `update` is acknowledged while the first is pending: out of order.
    let (status, _) = send(&http, c, "&resync=1", json!("user_4"), "update", json!([2])).await;
    assert_eq!(status, 200);
    let ev = io.expect("live", "update").await;
    assert_eq!(ev["acked"], true, "{ev}");
    for id in ["live", "mute"] {
        let ev = io.expect(id, "resync").await;
        assert_eq!(ev["args"], json!([]), "{id}: {ev}");
    }
    until_pending(&redis, test, "user_4", 0).await;
    // `resync=yes` is off (seed 001 turned any value on): the same out-of-order ack only removes its message.
    io.disconnect("live").await;
    io.expect("live", "disconnect").await;
    let (status, _) = send(
        &http,
        c,
        "&resync=yes",
        json!("user_4"),
        "update",
        json!([3]),
    )
    .await;
    assert_eq!(status, 200);
    io.expect("mute", "update").await;
    join(&mut io, held, "live2", b, "user_4", json!(["update"])).await;
    let ev = io.expect("live2", "batch").await;
    assert_eq!(ev["args"], json!([[["update", 3]]]), "{ev}");
    let (status, _) = send(
        &http,
        c,
        "&resync=yes",
        json!("user_4"),
        "update",
        json!([4]),
    )
    .await;
    assert_eq!(status, 200);
    let ev = io.expect("live2", "update").await;
    assert_eq!(ev["acked"], true, "{ev}");
    until_pending(&redis, test, "user_4", 1).await;
    io.expect_none("live2", "resync", Duration::from_millis(500))
        .await;
    assert_eq!(pending(&redis, test, "user_4"), 1, "the older one stays");
}

/// A single node without Redis keeps the messages in memory, with the same rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_keeps_messages_in_memory() {
    let dir = log_dir("reliable_memory");
    let config = dir.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let opts = NodeOpts {
        id: "solo",
        args: &args,
        ..NodeOpts::default()
    };
    let node = Node::start(&dir, opts).await;
    let mut io = Clients::start();
    let http = Http::new();
    join(&mut io, None, "u5", &node, "user_5", json!(false)).await;
    for i in 0..2 {
        let (status, answer) = send(&http, &node, "", json!("user_5"), "e", json!([i])).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["rooms"], json!([{"room": "user_5", "queued": 1}]));
        let ev = io.expect("u5", "e").await;
        assert_eq!(ev["acked"], false, "{ev}");
    }
    io.disconnect("u5").await;
    io.expect("u5", "disconnect").await;
    join(&mut io, None, "u5b", &node, "user_5", json!(true)).await;
    let ev = io.expect("u5b", "batch").await;
    assert_eq!(ev["args"], json!([[["e", 0], ["e", 1]]]), "{ev}");
    // Acknowledged: the next socket of the user gets nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    join(&mut io, None, "u5c", &node, "user_5", json!(true)).await;
    io.expect_none("u5c", "batch", Duration::from_millis(500))
        .await;
}

/// `client_ttl_s`: a held room keeps its messages however long; once its last socket left, they are dropped after
/// the TTL, and the next socket gets no batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_messages_expire_after_the_last_socket_left() {
    let test = "reliable_ttl";
    let (_dir, redis, nodes) = start(test).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let http = Http::new();
    let queue = format!("{test}:delivery:{{/brief|user_6}}:q");
    let holders = format!("{test}:delivery:{{/brief|user_6}}:holders");
    let xlen = || redis.cli(&["XLEN", &queue]).trim().to_owned();
    let ev = io
        .connect(
            Conn::to("h", &a)
                .ns("/brief")
                .user("h", "user_6")
                .ack_server(json!(false)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    io.expect("h", "handshake").await;
    // The handshake goes out before the socket's holder is written: pushed earlier, the message would come in a
    // `batch`.
    redis.until_members(&holders, 1).await;
    let res = http
        .client
        .post(b.url("/send?site=brief"))
        .bearer_auth("brief-key-0123456789abcdef")
        .header("content-type", "application/json")
        .body(json!({"rooms": "user_6", "event": "e", "args": [1]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    io.expect("h", "e").await;
    // Held (unacknowledged) for longer than the TTL: kept.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(xlen(), "1");
    io.disconnect("h").await;
    io.expect("h", "disconnect").await;
    redis.until_members(&holders, 0).await;
    eventually(
        Duration::from_secs(5),
        "the message to expire",
        async || (xlen() == "0").then_some(()),
    )
    .await;
    let ev = io
        .connect(
            Conn::to("h2", &b)
                .ns("/brief")
                .user("h", "user_6")
                .ack_server(json!(true)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    io.expect("h2", "handshake").await;
    io.expect_none("h2", "batch", Duration::from_millis(500))
        .await;
}

/// A user room joined later (`identity-change` in a namespace whose `user.{id}` rooms are user rooms) is held and
/// brings its batch; the room left is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_identity_brings_its_user_room_batch() {
    let test = "reliable_identity";
    let (_dir, redis, nodes) = start(test).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let http = Http::new();
    let res = http
        .client
        .post(b.url("/send?site=who"))
        .bearer_auth("who-key-0123456789abcdef")
        .header("content-type", "application/json")
        .body(json!({"rooms": "user.8", "event": "e", "args": [8]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ev = io
        .connect(
            Conn::to("w", &a)
                .ns("/who")
                .user("7", "lobby")
                .ack_server(json!(true)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    io.expect("w", "handshake").await;
    io.expect_none("w", "batch", Duration::from_millis(300))
        .await;
    let holders = |room: &str| {
        redis
            .cli(&["SCARD", &format!("{test}:delivery:{{/who|{room}}}:holders")])
            .trim()
            .to_owned()
    };
    assert_eq!(holders("user.7"), "1");
    // In a user room and another room named by the same push: the message once, from the user room.
    let res = http
        .client
        .post(b.url("/send?site=who"))
        .bearer_auth("who-key-0123456789abcdef")
        .header("content-type", "application/json")
        .body(json!({"rooms": ["lobby", "user.7"], "event": "both", "args": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ev = io.expect("w", "both").await;
    assert_eq!(ev["acked"], true, "{ev}");
    io.expect_none("w", "both", Duration::from_millis(300))
        .await;
    io.emit("w", "identity-change", json!([{"id_user": "8"}]), true)
        .await;
    let ack = io.expect("w", "ack").await;
    assert_eq!(ack["args"][0], json!({"ok": true, "id_user": "8"}));
    let ev = io.expect("w", "batch").await;
    assert_eq!(ev["args"], json!([[["e", 8]]]), "{ev}");
    eventually(
        Duration::from_secs(5),
        "user.7 let go, user.8 held",
        async || (holders("user.7") == "0" && holders("user.8") == "1").then_some(()),
    )
    .await;
    let queue = format!("{test}:delivery:{{/who|user.8}}:q");
    eventually(
        Duration::from_secs(5),
        "the batch acknowledged",
        async || (redis.cli(&["XLEN", &queue]).trim() == "0").then_some(()),
    )
    .await;
}

/// Concurrent pushes, each to many user rooms spread over the nodes (the nodes relay stored messages to each other
/// and each applies its own sockets' acks): every socket gets every message once, and the store is empty after
/// the acks. A user with sockets on two nodes gets each message on both; the first ack removes it, the second
/// finds it gone, and neither socket gets it again in a `batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_to_many_rooms_are_delivered_once_and_acked() {
    concurrent_pushes("reliable_many", &[]).await;
}

/// The same on nodes that run on one thread each (`--worker-threads 1`, tokio's single-threaded scheduler: what
/// several nodes on one machine should use), where a task that blocked would stall every socket of its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_threaded_nodes_deliver_concurrent_pushes_once() {
    let nodes = concurrent_pushes("reliable_one_thread", &["--worker-threads", "1"]).await;
    for node in &nodes {
        assert!(
            node.log_text().contains("running on 1 worker thread(s)"),
            "{}",
            node.log_text()
        );
    }
}

/// Returns the nodes, still running.
async fn concurrent_pushes(test: &str, args: &[&str]) -> Vec<Node> {
    let (_dir, redis, nodes) = cluster_with_config_and(test, 3, CONFIG, args).await;
    let held = Some((&redis, test));
    let mut io = Clients::start();
    let http = Http::new();
    let users: Vec<String> = (0..9).map(|i| format!("c{i}")).collect();
    for (i, id) in users.iter().enumerate() {
        join(
            &mut io,
            held,
            id,
            &nodes[i % 3],
            &format!("user_{id}"),
            json!(true),
        )
        .await;
    }
    join(&mut io, held, "m1", &nodes[0], "user_m", json!(true)).await;
    join(&mut io, held, "m2", &nodes[1], "user_m", json!(true)).await;
    let mut rooms: Vec<String> = users.iter().map(|id| format!("user_{id}")).collect();
    rooms.push("user_m".into());

    const ROUNDS: usize = 6;
    let posts = (0..ROUNDS).map(|n| {
        let (http, node, rooms) = (&http, &nodes[n % 3], json!(rooms));
        async move { send(http, node, "", rooms, "burst", json!([n])).await }
    });
    for (status, answer) in futures_util::future::join_all(posts).await {
        assert_eq!(status, 200, "{answer}");
    }
    let mut sockets: Vec<&str> = users.iter().map(String::as_str).collect();
    sockets.extend(["m1", "m2"]);
    for id in sockets {
        let mut got = Vec::new();
        for _ in 0..ROUNDS {
            let ev = io.expect(id, "burst").await;
            assert_eq!(ev["acked"], true, "{ev}");
            got.push(ev["args"][0].as_u64().unwrap());
        }
        got.sort();
        assert_eq!(got, (0..ROUNDS as u64).collect::<Vec<_>>(), "{id}");
        io.expect_none(id, "burst", Duration::from_millis(100))
            .await;
    }
    for room in &rooms {
        until_pending(&redis, test, room, 0).await;
    }
    // Nothing comes back: every message was removed once, none is left for a batch.
    join(&mut io, held, "m3", &nodes[2], "user_m", json!(true)).await;
    io.expect_none("m3", "batch", Duration::from_millis(300))
        .await;
    io.expect_none("m2", "burst", Duration::from_millis(0))
        .await;
    nodes
}

/// A stored message is published to the other nodes holding its room, each on its own channel, and to no other:
/// a node without sockets of the room neither reads nor parses it, and a room held only by the storing node, or
/// by nobody, costs no publish at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_goes_only_to_the_nodes_holding_its_room() {
    let test = "reliable_targeted";
    let (_dir, redis, nodes) = start(test).await;
    let held = Some((&redis, test));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    join(&mut io, held, "x", b, "user_x", json!(true)).await;
    join(&mut io, held, "y1", a, "user_y", json!(true)).await;
    join(&mut io, held, "y2", c, "user_y", json!(true)).await;

    // A spy on every live channel: the one every node listens to, and each node's own.
    let shared = format!("{test}:delivery#live");
    let channels = [
        shared.clone(),
        format!("{shared}#a"),
        format!("{shared}#b"),
        format!("{shared}#c"),
    ];
    let (_spy, mut heard) = spy(&redis, &channels).await;
    let mut published = async |rooms: Value, event: &str| -> Vec<String> {
        let (status, answer) = send(&http, a, "", rooms, event, json!([1])).await;
        assert_eq!(status, 200, "{answer}");
        // Published before the answer: whatever is coming is in Redis's output buffer by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        while let Ok(msg) = heard.try_recv() {
            got.push(msg.channel.to_string());
        }
        got
    };

    assert_eq!(
        published(json!(["user_x"]), "to_x").await,
        [format!("{shared}#b")]
    );
    assert_eq!(io.expect("x", "to_x").await["acked"], true);
    // Held on a (the storing node: emitted there) and on c.
    assert_eq!(
        published(json!(["user_y"]), "to_y").await,
        [format!("{shared}#c")]
    );
    for id in ["y1", "y2"] {
        assert_eq!(io.expect(id, "to_y").await["acked"], true);
    }
    // Held by nobody: stored, published nowhere.
    assert!(published(json!(["user_z"]), "to_z").await.is_empty());
    // Held on a alone.
    io.disconnect("y2").await;
    io.expect("y2", "disconnect").await;
    // c lets user_y go.
    redis
        .until_members(&format!("{test}:delivery:{{/claim|user_y}}:holders"), 1)
        .await;
    assert!(published(json!(["user_y"]), "again").await.is_empty());
    assert_eq!(io.expect("y1", "again").await["acked"], true);
    for room in ["user_x", "user_y"] {
        until_pending(&redis, test, room, 0).await;
    }
    assert_eq!(pending(&redis, test, "user_z"), 1);
}

/// A node of a version before the nodes' own live channels listens only on the channel every node hears: a stored
/// message for a room it holds goes there too, marked for it alone, and the nodes that had their copy on their own
/// channel ignore it there (no socket gets it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_before_gets_stored_messages_on_the_channel_every_node_hears() {
    let test = "reliable_older_node";
    let (_dir, redis, nodes) = start(test).await;
    let held = Some((&redis, test));
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let http = Http::new();
    join(&mut io, held, "x", b, "user_x", json!(true)).await;
    // An older node holding the room too: its holder, and a subscriber on the shared channel alone.
    let holders = format!("{test}:delivery:{{/claim|user_x}}:holders");
    redis.cli(&["SADD", &holders, "old/sock-1"]);
    let shared = format!("{test}:delivery#live");
    let (_old, mut heard) = spy(&redis, std::slice::from_ref(&shared)).await;

    let (status, answer) = send(&http, a, "", json!(["user_x"]), "to_x", json!([1])).await;
    assert_eq!(status, 200, "{answer}");
    let msg = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("the older node heard nothing")
        .unwrap();
    assert_eq!(*msg.channel, *shared);
    let live: Value = serde_json::from_slice(msg.value.as_bytes().unwrap()).unwrap();
    assert_eq!(live["to"], json!(["old"]), "{live}");
    assert_eq!(live["event"], "to_x", "{live}");
    assert_eq!(live["from"], "a", "{live}");
    // b had it on its own channel, and ignored the copy for the older node.
    assert_eq!(io.expect("x", "to_x").await["acked"], true);
    io.expect_none("x", "to_x", Duration::from_millis(300))
        .await;
    until_pending(&redis, test, "user_x", 0).await;
    let counted = http
        .metric(a, "socket_identity_delivery_live_shared_total")
        .await;
    assert_eq!(counted, Some(1.0), "a counts the copy for the older node");
}

/// With `CLUSTER_SECRET`, a stored message reaches the node holding its room signed for that node's own channel
/// (and an older node on the shared one, where the others ignore it), and an unsigned one published on either
/// channel reaches no socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_stored_messages_reach_their_node_and_forged_ones_do_not() {
    let test = "reliable_signed";
    let secret = ["--cluster-secret", "a-cluster-secret-for-tests"];
    let (_dir, redis, nodes) = cluster_with_config_and(test, 3, CONFIG, &secret).await;
    let held = Some((&redis, test));
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let http = Http::new();
    join(&mut io, held, "x", b, "user_x", json!(true)).await;
    let holders = format!("{test}:delivery:{{/claim|user_x}}:holders");
    redis.cli(&["SADD", &holders, "old/sock-1"]);

    let (status, answer) = send(&http, a, "", json!(["user_x"]), "signed", json!([1])).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(io.expect("x", "signed").await["acked"], true);
    io.expect_none("x", "signed", Duration::from_millis(300))
        .await;
    until_pending(&redis, test, "user_x", 0).await;

    let rejected = async || {
        http.metric(b, "socket_identity_cluster_messages_rejected_total")
            .await
            .unwrap_or(0.0)
    };
    let before = rejected().await;
    let forged = json!({"v": 2, "id": "0b7e1a36-4f0c-4b0e-9a53-6a3f3c1d2e10", "from": "a", "ns": "/claim",
        "room": "user_x", "event": "forged", "args": [1], "message": "1-0"});
    let mut for_b = forged.clone();
    for_b["to"] = json!(["b"]);
    let shared = format!("{test}:delivery#live");
    redis.cli(&["SPUBLISH", &format!("{shared}#b"), &forged.to_string()]);
    redis.cli(&["SPUBLISH", &shared, &for_b.to_string()]);
    io.expect_none("x", "forged", Duration::from_millis(500))
        .await;
    assert!(rejected().await >= before + 2.0, "b did not refuse both");
}

/// SIGKILL of the node holding the socket mid-stream loses nothing: what was sent meanwhile comes in the batch on
/// another node; the killed node, started again, forgets the holder its earlier life left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_message() {
    let test = "reliable_kill";
    let (dir, redis, mut nodes) = start(test).await;
    let held = Some((&redis, test));
    let mut io = Clients::start();
    let http = Http::new();
    join(&mut io, held, "k", &nodes[0], "user_9", json!(false)).await;
    let (status, _) = send(&http, &nodes[2], "", json!("user_9"), "e", json!([1])).await;
    assert_eq!(status, 200);
    io.expect("k", "e").await;
    nodes[0].signal("KILL");
    io.expect("k", "disconnect").await;
    for i in 2..4 {
        let (status, answer) = send(&http, &nodes[2], "", json!("user_9"), "e", json!([i])).await;
        assert_eq!(status, 200, "{answer}");
    }
    // The dead node's socket still holds the room (nobody said it left).
    let holders = format!("{test}:delivery:{{/claim|user_9}}:holders");
    assert_eq!(redis.cli(&["SCARD", &holders]).trim(), "1");
    join(&mut io, held, "k2", &nodes[1], "user_9", json!(true)).await;
    let ev = io.expect("k2", "batch").await;
    assert_eq!(ev["args"], json!([[["e", 1], ["e", 2], ["e", 3]]]), "{ev}");
    until_pending(&redis, test, "user_9", 0).await;
    // Node a again, same id: its earlier life's holder is forgotten before it serves.
    let config = dir.join("config.toml");
    let args = ["--config", config.to_str().unwrap()];
    let opts = NodeOpts {
        id: "a",
        redis: Some(redis.url()),
        prefix: test,
        args: &args,
        ..NodeOpts::default()
    };
    nodes[0] = Node::start(&dir, opts).await;
    assert_eq!(
        redis.cli(&["SCARD", &holders]).trim(),
        "1",
        "k2 still holds it"
    );
    let members = redis.cli(&["SMEMBERS", &holders]);
    assert!(members.trim().starts_with("b/"), "{members}");
}

/// (h) `message_ids = true`: every reliable message carries its id as its last argument, live and in `batch`
/// items, growing in send order; `max_pending = 3` keeps the newest 3 of 5 and says so in the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_and_the_room_cap_are_settings() {
    let test = "reliable_ids";
    let (_dir, redis, nodes) = start(test).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let http = Http::new();
    let send_ids = async |node: &Node, event: &str| -> Value {
        let res = http
            .client
            .post(node.url("/send?site=ids"))
            .bearer_auth("ids-key-0123456789abcdef")
            .json(&json!({"rooms": ["user_9"], "event": event, "args": ["x"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    };
    let answers = [
        send_ids(a, "e0").await,
        send_ids(a, "e1").await,
        send_ids(a, "e2").await,
        send_ids(a, "e3").await,
        send_ids(a, "e4").await,
    ];
    for (i, answer) in answers.iter().enumerate() {
        let expected = match i {
            0..3 => json!([{"room": "user_9", "queued": 1}]),
            _ => json!([{"room": "user_9", "queued": 1, "dropped": 1}]),
        };
        assert_eq!(answer["rooms"], expected, "answer {i}: {answer}");
    }
    assert_eq!(
        http.metric(a, "socket_identity_delivery_dropped_total")
            .await,
        Some(2.0)
    );
    let queue = format!("{test}:delivery:{{/ids|user_9}}:q");
    assert_eq!(redis.cli(&["XLEN", &queue]).trim(), "3");

    let auth = json!({"id_user": "i1", "room": "user_9"});
    let ev = io
        .connect(
            Conn::to("i1", &b)
                .ns("/ids")
                .query(auth)
                .ack_server(json!(true)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let batch = io.expect("i1", "batch").await;
    let items = batch["args"][0]
        .as_array()
        .expect("one batch argument")
        .clone();
    let events: Vec<&str> = items.iter().map(|i| i[0].as_str().unwrap()).collect();
    assert_eq!(events, ["e2", "e3", "e4"], "{batch}");
    let ids: Vec<(u64, u64)> = items
        .iter()
        .map(|item| {
            assert_eq!(
                item.as_array().unwrap().len(),
                3,
                "[event, arg, id]: {item}"
            );
            assert_eq!(item[1], "x");
            parse_id(&item[2])
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    until_pending_key(&redis, &queue, 0).await;

    let answer = send_ids(a, "live").await;
    assert_eq!(answer["rooms"], json!([{"room": "user_9", "queued": 1}]));
    let live = io.expect("i1", "live").await;
    assert_eq!(live["acked"], true, "{live}");
    assert_eq!(live["args"].as_array().unwrap().len(), 2, "{live}");
    assert!(parse_id(&live["args"][1]) > ids[2], "{live}");
    until_pending_key(&redis, &queue, 0).await;
}

/// A message id `<ms>-<seq>` as numbers (so they compare in send order).
fn parse_id(id: &Value) -> (u64, u64) {
    let text = id.as_str().unwrap_or_else(|| panic!("an id string: {id}"));
    let (ms, seq) = text.split_once('-').expect("<ms>-<seq>");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

async fn until_pending_key(redis: &Redis, queue: &str, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} pending in {queue}"),
        async || (redis.cli(&["XLEN", queue]).trim() == n.to_string()).then_some(()),
    )
    .await;
}
