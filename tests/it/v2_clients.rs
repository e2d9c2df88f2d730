//! socket.io-client 2.x (protocol v4 over Engine.IO 3), what the apps built for socket.io 2 ship, beside 4.x
//! clients: 2 node processes on a real Redis, the real 2.x client from npm (`socket.io-client-v2` in tests/js), the
//! test playing the application's backend (`POST /send`). What 2.x cannot do is asserted here too
//! (docs/socketio-events.md, "socket.io 2.x clients").

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const ROOT_KEY: &str = "root-key-0123456789abcdef";
const REC_KEY: &str = "rec-key-0123456789abcdef";
const SECRET: &str = "v2-test-secret-0123456789";

/// `/` as seed 001's apps used it (claim, the query's room, reliable `user_` rooms); `/rec` with connection state
/// recovery; `/jwt` with signed tokens.
fn config() -> String {
    format!(
        r#"
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake"]
api_key = "{ROOT_KEY}"
user_room_prefix = "user_"
client_ttl_s = 0

[[namespace]]
name = "/rec"
auth = "claim"
rooms = ["handshake"]
api_key = "{REC_KEY}"
recovery_window_s = 60

[[namespace]]
name = "/jwt"
auth = "jwt"
jwt_secret = "{SECRET}"
rooms = ["user"]
"#
    )
}

async fn start(test: &str) -> (std::path::PathBuf, Redis, Vec<Node>) {
    cluster_with_config(test, 2, &config()).await
}

/// `POST {node}/send?site={site}` of `event` with `args` to `rooms`: the status and the answer.
async fn send(
    http: &Http,
    node: &Node,
    site: &str,
    rooms: Value,
    event: &str,
    args: Value,
) -> (u16, Value) {
    let key = if site == "%2F" { ROOT_KEY } else { REC_KEY };
    let body = json!({"rooms": rooms, "event": event, "args": args});
    http.push(node, &format!("site={site}&apiKey={key}"), &body)
        .await
}

/// How many messages of user room `room` of `/` are pending in Redis.
fn pending(redis: &Redis, prefix: &str, room: &str) -> usize {
    let queue = format!("{prefix}:delivery:{{/|{room}}}:q");
    redis.cli(&["XLEN", &queue]).trim().parse().unwrap()
}

/// Disconnects `id` and waits until the server let go of its user room `room` of `/`.
async fn leave(io: &mut Clients, redis: &Redis, prefix: &str, id: &str, room: &str) {
    io.disconnect(id).await;
    io.expect(id, "disconnect").await;
    let holders = format!("{prefix}:delivery:{{/|{room}}}:holders");
    redis.until_members(&holders, 0).await;
}

/// 2.x clients over websocket and over polling, on two nodes, with seed 001's query: both nodes list them beside
/// a 4.x client, a push reaches all three live, and an event a 2.x client sends reaches the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_x_clients_over_both_transports_are_listed_and_pushed_to_beside_four_x() {
    let (_dir, _redis, nodes) = start("v2_listed").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let ws = io.join(Conn::to("ws", a).user("1", "Shared").v2()).await;
    let poll = io
        .join(
            Conn::to("poll", b)
                .user("2", "Shared")
                .transports(&["polling"])
                .v2(),
        )
        .await;
    let four = io.join(Conn::to("four", b).user("3", "Shared")).await;
    for id in ["ws", "poll", "four"] {
        io.expect(id, "handshake").await;
    }

    let http = Http::new();
    for node in [a, b] {
        let users = http.users(node, "Shared").await;
        assert_eq!(users.status, 200, "{:?}", users.body);
        assert_eq!(users.nodes, "2/2");
        let all = pairs(&[(&ws, "1"), (&poll, "2"), (&four, "3")]);
        assert_eq!(users.set(), all, "{}", node.id);
    }

    let (status, answer) = send(
        &http,
        a,
        "%2F",
        json!("Shared"),
        "update",
        json!(["x", {"n": 1}]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    for id in ["ws", "poll", "four"] {
        let ev = io.expect(id, "update").await;
        assert_eq!(ev["args"], json!(["x", {"n": 1}]), "{id}: {ev}");
    }
    // Once each.
    io.expect_none("poll", "update", Duration::from_millis(300))
        .await;

    io.emit("poll", "identity-change", json!([{"id_user": "2b"}]), true)
        .await;
    for id in ["ws", "four"] {
        let ev = io.expect(id, "identity-change").await;
        assert_eq!(ev["args"][0]["id_user"], "2b", "{id}: {ev}");
    }
}

/// A 2.x client's reliable user room: a live message comes with an ack callback; what was sent while it was away
/// comes as one acknowledged `batch` when it connects again (to the other node), over websocket and over polling,
/// and never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_x_client_gets_its_batch_on_reconnect_once() {
    let test = "v2_batch";
    let (_dir, redis, nodes) = start(test).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let http = Http::new();
    for (id, transport) in [("w", "websocket"), ("p", "polling")] {
        let room = format!("user_{id}");
        let conn = |node: &Node| {
            Conn::to(id, node)
                .user(id, &room)
                .transports(&[transport])
                .v2()
        };
        io.join(conn(a)).await;
        io.expect(id, "handshake").await;
        // The handshake goes out before the socket's holder is written: pushed earlier, the message would come in
        // its next `batch`, not live.
        let holders = format!("{test}:delivery:{{/|{room}}}:holders");
        redis.until_members(&holders, 1).await;
        let (status, answer) = send(&http, b, "%2F", json!(room), "live", json!([0])).await;
        assert_eq!(status, 200, "{answer}");
        let ev = io.expect(id, "live").await;
        assert_eq!(
            (&ev["args"], &ev["acked"]),
            (&json!([0]), &json!(true)),
            "{ev}"
        );
        eventually(
            Duration::from_secs(5),
            "the live message acked",
            async || (pending(&redis, test, &room) == 0).then_some(()),
        )
        .await;
        leave(&mut io, &redis, test, id, &room).await;

        for i in 1..=3 {
            let (status, answer) =
                send(&http, a, "%2F", json!(room), &format!("e{i}"), json!([i])).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["rooms"], json!([{"room": room, "queued": 1}]));
        }
        assert_eq!(pending(&redis, test, &room), 3);

        io.join(conn(b)).await;
        let ev = io.expect(id, "batch").await;
        let expected: Vec<Value> = (1..=3).map(|i| json!([format!("e{i}"), i])).collect();
        assert_eq!(ev["args"], json!([expected]), "{id}: {ev}");
        assert_eq!(ev["acked"], true, "{ev}");
        eventually(Duration::from_secs(5), "the batch acked", async || {
            (pending(&redis, test, &room) == 0).then_some(())
        })
        .await;
        io.expect_none(id, "batch", Duration::from_millis(300))
            .await;

        leave(&mut io, &redis, test, id, &room).await;
        io.join(conn(a)).await;
        io.expect_none(id, "batch", Duration::from_millis(500))
            .await;
        leave(&mut io, &redis, test, id, &room).await;
    }
}

/// A 2.x client reaches a namespace other than `/` with its query (which 2.x appends to the namespace of its
/// CONNECT), and is a socket of `/` too (protocol v4 connects every client to `/`). In a namespace with connection
/// state recovery it works as any client but is never recovered: cut off, it comes back a new socket, without
/// what was sent meanwhile; a 4.x client beside it is recovered. Its events carry the offset as a last argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_x_client_in_a_recovery_namespace_works_but_is_never_recovered() {
    let (_dir, _redis, nodes) = start("v2_recovery").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let proxy = Proxy::start(a.port).await;
    let mut io = Clients::start();
    let http = Http::new();
    let via = a.via(&proxy);
    let two = io
        .enter(
            Conn::to("two", &via)
                .ns("/rec")
                .user("2", "R")
                .reconnect()
                .v2(),
        )
        .await;
    let four = io
        .enter(Conn::to("four", &via).ns("/rec").user("4", "R").reconnect())
        .await;
    assert!(two.pid.is_none() && !two.recovered, "{two:?}");
    assert!(four.pid.is_some(), "{four:?}");
    // 2.x names its socket `/rec#<id>`; the server, and so every listing, `<id>`.
    let id = two
        .sid
        .strip_prefix("/rec#")
        .expect("2.x's socket id")
        .to_owned();
    let listed = http.users_in(&b.base(), "R", "/rec").await;
    assert_eq!(listed.set(), pairs(&[(&id, "2"), (&four.sid, "4")]));
    let root = http.users_in(&b.base(), "R", "/").await;
    assert_eq!(
        root.set(),
        pairs(&[(&id, "2")]),
        "the 2.x client in `/` too"
    );

    let (status, answer) = send(&http, b, "rec", json!("R"), "news", json!([1])).await;
    assert_eq!(status, 200, "{answer}");
    // Every event of a recovery namespace carries its offset last, to 2.x clients too (which cannot use it).
    for who in ["two", "four"] {
        let ev = io.expect(who, "news").await;
        assert_eq!(ev["args"][0], 1, "{who}: {ev}");
        assert!(ev["args"][1].is_string(), "{who}: no offset: {ev}");
    }

    proxy.refuse(true);
    proxy.cut().await;
    for who in ["two", "four"] {
        io.expect(who, "disconnect").await;
    }
    let (status, answer) = send(&http, b, "rec", json!("R"), "news", json!([2])).await;
    assert_eq!(status, 200, "{answer}");
    proxy.refuse(false);
    let back = io.reconnected("two").await;
    assert!(!back.recovered && back.pid.is_none(), "{back:?}");
    assert_ne!(back.sid, two.sid);
    let four_back = io.reconnected("four").await;
    assert!(four_back.recovered, "{four_back:?}");
    assert_eq!(four_back.sid, four.sid);
    let ev = io.expect("four", "news").await;
    assert_eq!(ev["args"][0], 2, "{ev}");
    io.expect_none("two", "news", Duration::from_millis(500))
        .await;
}

/// 2.x has no `auth` object: what a 4.x client sends there does not reach the server (refused), and the token goes
/// in the query instead (`?token=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_x_client_sends_its_token_in_the_query_not_in_auth() {
    let (_dir, _redis, nodes) = start("v2_auth").await;
    let token = hs256(&json!({"sub": "alice", "exp": unix_now() + 600}), SECRET);
    let mut io = Clients::start();
    let auth = json!({"token": token});
    // The query `/` needs (its claim handshake runs for every 2.x client; a refusal there reaches every
    // namespace's socket as an `error`).
    io.open(
        Conn::to("auth", &nodes[0])
            .ns("/jwt")
            .user("alice", "R")
            .auth(auth.clone())
            .v2(),
    )
    .await;
    let ev = io.expect("auth", "connect_error").await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("UNAUTHORIZED"),
        "{ev}"
    );
    let four = io
        .connect(Conn::to("four", &nodes[0]).ns("/jwt").auth(auth))
        .await;
    assert_eq!(four["event"], "connect", "{four}");
    let query = json!({"token": token, "id_user": "alice", "room": "R"});
    io.open(Conn::to("query", &nodes[0]).ns("/jwt").query(query).v2())
        .await;
    io.expect("query", "connect").await;
}

/// On a server that does not serve `/`: a 2.x client to `/` is told `Invalid namespace` (protocol v4 connects
/// every client to `/` first), and one to another namespace is told so too but connects there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_root_namespace_two_x_is_refused_at_the_root_only() {
    let config = r#"
[[namespace]]
name = "/chat"
auth = "claim"
rooms = ["handshake"]
"#;
    let (_dir, _redis, nodes) = cluster_with_config("v2_no_root", 1, config).await;
    let mut io = Clients::start();
    for transport in ["websocket", "polling"] {
        let root = format!("root-{transport}");
        let conn = Conn::to(&root, &nodes[0])
            .user("1", "R")
            .transports(&[transport]);
        let ev = io.connect(conn.v2()).await;
        assert_eq!(
            (ev["event"].as_str(), ev["message"].as_str()),
            (Some("connect_error"), Some("Invalid namespace")),
            "{ev}"
        );
        io.expect_none(&root, "connect", Duration::from_millis(300))
            .await;

        let chat = format!("chat-{transport}");
        let conn = Conn::to(&chat, &nodes[0])
            .ns("/chat")
            .user("2", "R")
            .transports(&[transport]);
        io.open(conn.v2()).await;
        io.expect(&chat, "connect").await;
        io.expect(&chat, "handshake").await;
        let ev = io.expect(&chat, "connect_error").await;
        assert_eq!(
            ev["message"], "Invalid namespace",
            "the root's refusal: {ev}"
        );
    }
    let users = Http::new().users_in(&nodes[0].base(), "R", "/chat").await;
    assert_eq!(users.set().len(), 2, "{:?}", users.body);
}

/// Two namespaces on one Engine.IO connection (2.x's multiplexing): both connect, both get their pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_x_connection_carries_two_namespaces() {
    let (_dir, _redis, nodes) = start("v2_shared").await;
    let mut io = Clients::start();
    for (id, ns) in [("root", "/"), ("rec", "/rec")] {
        let conn = Conn::to(id, &nodes[0]).ns(ns).user(id, "M").shared().v2();
        io.join(conn).await;
    }
    let http = Http::new();
    for (id, site) in [("root", "%2F"), ("rec", "rec")] {
        let (status, answer) = send(&http, &nodes[1], site, json!("M"), "hello", json!([id])).await;
        assert_eq!(status, 200, "{answer}");
        // In `/rec` (recovery) after the arguments comes the event's offset, to 2.x as to 4.x.
        let ev = io.expect(id, "hello").await;
        let n = if id == "rec" { 2 } else { 1 };
        assert_eq!(
            (&ev["args"][0], ev["args"].as_array().map(Vec::len)),
            (&json!(id), Some(n)),
            "{ev}"
        );
    }
    io.expect_none("root", "hello", Duration::from_millis(300))
        .await;
    io.expect_none("rec", "hello", Duration::from_millis(10))
        .await;
}
