//! Verified identity on every path, with real components (node processes, a real Redis, the official
//! socket.io-client, a real HTTP auth webhook served by the test): a handshake room cannot be someone else's
//! private room, dynamic namespaces do not pile up, one connection cannot open namespaces without end, clients
//! being verified do not fill the socket cap, the handshake rate holds on every path Engine.IO serves, clients
//! cannot forge the server's events, and no log level prints a password.

use std::time::Duration;

use axum::{Json, Router, http::HeaderMap, response::IntoResponse, routing::get};
use serde_json::{Value, json};

use crate::harness::*;

const SECRET: &str = "security-test-secret-0123456789";
const KEY: &str = "security-key-0123456789abcdef";
const PASSWORD: &str = "open-sesame-Zq7v1xK9";

/// The auth webhook: grants rooms by token; `slow` answers after 1.5 s.
async fn webhook(headers: HeaderMap) -> axum::response::Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .unwrap_or("");
    match token {
        "alice-token" => Json(json!({"rooms": ["staff"], "id_user": "alice"})).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Json(json!({"rooms": ["R"], "id_user": "slowpoke"})).into_response()
        }
        _ => axum::http::StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// Serves the webhook on a free loopback port; returns the config file's text, which uses it.
async fn config(dir: &std::path::Path) -> String {
    let port = serve_loopback(Router::new().route("/auth", get(webhook))).await;
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let credentials = dir.join("credentials.json");
    std::fs::write(
        &credentials,
        json!([{"username": "lab-user", "password": hash}]).to_string(),
    )
    .unwrap();
    format!(
        r#"
[[namespace]]
name = "/"
auth = "jwt"
jwt_secret = "{SECRET}"
rooms = ["handshake", "user", "session"]
api_key = "{KEY}"
user_room_prefix = "inbox-"
client_ttl_s = 0

[[namespace]]
name = "/hooked"
auth = "webhook"
auth_url = "http://127.0.0.1:{port}/auth"
auth_scheme = "Token"
auth_timeout_ms = 5000
rooms = ["handshake", "auth"]

[[namespace]]
name = "/open-*"
auth = "none"
rooms = []
forward = true

[[namespace]]
name = "/claim"
auth = "claim"
rooms = ["handshake"]

[[namespace]]
name = "/login"
auth = "credentials"
credentials_file = "{}"
rooms = []
"#,
        credentials.display()
    )
}

/// Starts `n` nodes on a real Redis with the config above.
async fn start(test: &str, n: usize) -> (std::path::PathBuf, Redis, Vec<Node>) {
    // Not in the cluster's log directory: starting the cluster empties that.
    let text = config(&log_dir(&format!("{test}_files"))).await;
    cluster_with_config(test, n, &text).await
}

/// One node without Redis, with the config above and `args`.
async fn single(test: &str, args: &[&str]) -> Node {
    let dir = log_dir(test);
    let path = dir.join("config.toml");
    std::fs::write(&path, config(&dir).await).unwrap();
    let path = path.display().to_string();
    let mut all = vec!["--config", path.as_str()];
    all.extend_from_slice(args);
    Node::start(
        &dir,
        NodeOpts {
            id: "n",
            args: &all,
            ..NodeOpts::default()
        },
    )
    .await
}

fn token(sub: &str, sid: &str) -> String {
    hs256(
        &json!({"sub": sub, "sid": sid, "exp": unix_now() + 600}),
        SECRET,
    )
}

fn refused(ev: &Value) -> String {
    assert_eq!(ev["event"], "connect_error", "expected a refusal: {ev}");
    ev["message"].as_str().unwrap().to_owned()
}

fn connected(ev: &Value) {
    assert_eq!(ev["event"], "connect", "expected a connection: {ev}");
}

/// A verified user cannot name another identity's user, session or reliable room as its handshake room (it
/// would get their pushes and take their pending batch); its own are fine. With an auth webhook, the handshake
/// room must be one the webhook granted. The owner's pending message is still there for her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_room_cannot_be_someone_elses_private_room() {
    let test = "security_private_rooms";
    let (_dir, redis, nodes) = start(test, 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let http = Http::new();
    let alice = token("alice", "s-alice");
    let bob = token("bob", "s-bob");

    // Alice holds her reliable room once, then goes offline: a message for her waits.
    let ev = io
        .connect(Conn::to("alice", &a).auth(json!({"token": alice, "room": "inbox-alice"})))
        .await;
    connected(&ev);
    io.disconnect("alice").await;
    let holders = format!("{test}:delivery:{{/|inbox-alice}}:holders");
    redis.until_members(&holders, 0).await;
    let body = json!({"rooms": ["inbox-alice"], "event": "secret", "args": ["for alice"]});
    let (status, answer) = http.push(c, &format!("site=%2F&apiKey={KEY}"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["rooms"],
        json!([{"room": "inbox-alice", "queued": 1}])
    );

    // Bob, verified as bob, names Alice's rooms: refused, on any node.
    for (i, room) in ["inbox-alice", "user.alice", "session.s-alice"]
        .iter()
        .enumerate()
    {
        let id = format!("bob{i}");
        let ev = io
            .connect(Conn::to(&id, &b).auth(json!({"token": bob, "room": room})))
            .await;
        assert_eq!(refused(&ev), format!("room {room} is private"));
        io.expect_none(&id, "batch", Duration::from_millis(100))
            .await;
    }
    // His own rooms and public ones are fine.
    for (i, room) in ["inbox-bob", "user.bob", "session.s-bob", "Maths"]
        .iter()
        .enumerate()
    {
        let ev = io
            .connect(Conn::to(&format!("own{i}"), &b).auth(json!({"token": bob, "room": room})))
            .await;
        connected(&ev);
    }
    let refusals = http
        .metric(
            b,
            "socket_identity_handshakes_refused_total{reason=\"private_room\"}",
        )
        .await;
    assert_eq!(refusals, Some(3.0));

    // The webhook granted alice `staff`, not `board`.
    let ev = io
        .connect(
            Conn::to("w1", &a)
                .ns("/hooked")
                .auth(json!({"token": "alice-token", "room": "staff"})),
        )
        .await;
    connected(&ev);
    let ev = io
        .connect(
            Conn::to("w2", &a)
                .ns("/hooked")
                .auth(json!({"token": "alice-token", "room": "board"})),
        )
        .await;
    assert_eq!(
        refused(&ev),
        "room board was not granted by the auth service"
    );

    // Alice comes back on another node: her message is there, once.
    let ev = io
        .connect(Conn::to("alice2", &c).auth(json!({"token": alice, "room": "inbox-alice"})))
        .await;
    connected(&ev);
    let batch = io.expect("alice2", "batch").await;
    assert_eq!(batch["args"], json!([[["secret", "for alice"]]]), "{batch}");
}

/// A dynamic namespace goes when its last socket leaves (visiting many leaves no Redis subscription behind), and
/// a name no peer would accept (too long, characters outside the namespace rules) is refused as `Invalid
/// namespace` before anything is created for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_namespaces_do_not_pile_up() {
    let test = "security_dyn_namespaces";
    let (_dir, redis, nodes) = start(test, 2).await;
    let a = &nodes[0];
    let mut io = Clients::start();
    let before = redis.shard_channels();
    for i in 0..10 {
        let id = format!("v{i}");
        connected(
            &io.connect(
                Conn::to(&id, &a)
                    .ns(&format!("/open-visit{i}"))
                    .auth(json!({})),
            )
            .await,
        );
        io.disconnect(&id).await;
    }
    eventually(
        Duration::from_secs(5),
        "the visited namespaces to be gone",
        async || (redis.shard_channels() == before).then_some(()),
    )
    .await;
    // And they stay gone: nothing subscribes them again (on a Redis Cluster the node re-subscribes its shard
    // channels every second, from what its Redis client believes it is subscribed to).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        redis.shard_channels(),
        before,
        "{:?}",
        redis.shard_channel_names()
    );

    // Another socket keeps its namespace: one leaving does not take it away from the other.
    connected(
        &io.connect(Conn::to("k1", &a).ns("/open-kept").auth(json!({})))
            .await,
    );
    connected(
        &io.connect(Conn::to("k2", &a).ns("/open-kept").auth(json!({})))
            .await,
    );
    let with_one = redis.shard_channels();
    assert!(with_one > before, "{with_one} > {before}");
    io.disconnect("k1").await;
    io.expect("k1", "disconnect").await;
    io.emit("k2", "ping", json!([1]), false).await;
    assert_eq!(io.expect("k2", "ping").await["args"], json!([1]));
    assert_eq!(redis.shard_channels(), with_one);

    let long = format!("/open-{}", "x".repeat(200));
    for (i, name) in [long.as_str(), "/open-a%20b", "/open-caf%C3%A9"]
        .iter()
        .enumerate()
    {
        let ev = io
            .connect(Conn::to(&format!("bad{i}"), &a).ns(name).auth(json!({})))
            .await;
        assert_eq!(refused(&ev), "Invalid namespace", "{name}");
    }
    assert_eq!(redis.shard_channels(), with_one, "nothing was created");
}

/// One Engine.IO connection (socket.io-client multiplexing namespaces over it) may be in at most 16 namespaces at
/// once; beyond, `connect_error`, and a namespace left frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_open_namespaces_without_end() {
    let node = single("security_session_namespaces", &[]).await;
    let mut io = Clients::start();
    let ns = |i: usize| format!("/open-m{i}");
    let open = async |io: &mut Clients, id: &str, ns: String| {
        io.connect(Conn::to(id, &node).ns(&ns).shared()).await
    };
    let mut sids = std::collections::HashSet::new();
    for i in 0..16 {
        let ev = open(&mut io, &format!("m{i}"), ns(i)).await;
        connected(&ev);
        sids.insert(ev["sid"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        sids.len(),
        1,
        "one Engine.IO session: socketioxide gives its sid"
    );
    for i in 16..20 {
        let ev = open(&mut io, &format!("m{i}"), ns(i)).await;
        assert_eq!(
            refused(&ev),
            "too many namespaces on one connection (at most 16)"
        );
    }
    // A namespace left frees its place for the next one opened at once: socketioxide runs the disconnect handler
    // that gives it back in a task of its own, which the next handshake may overtake. Each of the 16 in turn.
    for i in 0..16 {
        let (left, again) = (format!("m{i}"), format!("again{i}"));
        io.disconnect(&left).await;
        io.expect(&left, "disconnect").await;
        connected(&open(&mut io, &again, ns(40 + i)).await);
    }
}

/// A client waiting for its verification (a slow auth webhook) holds no place under `MAX_SOCKETS`, only one of
/// the places of handshakes being verified, which have their own bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_being_verified_do_not_fill_the_node() {
    let node = single(
        "security_verifying",
        &["--max-sockets", "2", "--max-verifying-handshakes", "2"],
    )
    .await;
    let mut io = Clients::start();
    for id in ["slow1", "slow2", "slow3"] {
        io.open(
            Conn::to(id, &node)
                .ns("/hooked")
                .auth(json!({"token": "slow", "room": "R"})),
        )
        .await;
    }
    // The last of them to arrive (any: they connect in parallel) finds both places of handshakes being verified
    // taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (third, ev) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no slow handshake ended"
        );
        let mut found = None;
        for id in ["slow1", "slow2", "slow3"] {
            if let Some(ev) = io
                .within(id, &["connect", "connect_error"], Duration::from_millis(20))
                .await
            {
                found = Some((id, ev));
                break;
            }
        }
        if let Some(found) = found {
            break found;
        }
    };
    assert_eq!(
        refused(&ev),
        "too many handshakes being verified on this node (2): retry shortly"
    );
    // Meanwhile a client whose identity is decided at once gets a place.
    let ev = io
        .connect(Conn::to("quick", &node).ns("/claim").user("q", "R"))
        .await;
    connected(&ev);
    // One place is left under the cap for the two slow ones.
    let mut slow = ["slow1", "slow2", "slow3"]
        .into_iter()
        .filter(|id| *id != third);
    let (one, two) = (slow.next().unwrap(), slow.next().unwrap());
    let first = io.expect_any(one, &["connect", "connect_error"]).await;
    let second = io.expect_any(two, &["connect", "connect_error"]).await;
    let mut outcomes = [first["event"].clone(), second["event"].clone()];
    outcomes.sort_by_key(|v| v.to_string());
    assert_eq!(outcomes, [json!("connect"), json!("connect_error")]);
    let message = [first, second]
        .into_iter()
        .find(|e| e["event"] == "connect_error")
        .unwrap();
    assert_eq!(
        message["message"],
        "this node is full (2 sockets): try another"
    );
}

/// `HANDSHAKE_RATE` holds on `/socket.io` without the trailing slash too (engineioxide serves both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_rate_holds_without_the_trailing_slash() {
    let node = single("security_rate_path", &["--handshake-rate", "2"]).await;
    let http = Http::new();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let res = http
            .client
            .get(node.url("/socket.io?EIO=4&transport=polling"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 3, "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

/// In a forwarding namespace, events named like the server's own (`batch`, `resync`, `error`, ...) are never
/// relayed: a client cannot forge them to others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_forge_the_servers_events() {
    let node = single("security_forged_events", &[]).await;
    let mut io = Clients::start();
    for id in ["x", "y"] {
        connected(
            &io.connect(Conn::to(id, &node).ns("/open-room").auth(json!({})))
                .await,
        );
        io.expect(id, "handshake").await;
    }
    for event in ["batch", "resync", "error", "handshake", "rate_limited"] {
        io.emit("x", event, json!([[["forged", 1]]]), false).await;
    }
    io.emit("x", "chat", json!(["hello"]), false).await;
    assert_eq!(io.expect("y", "chat").await["args"], json!(["hello"]));
    for event in ["batch", "resync", "error", "handshake", "rate_limited"] {
        io.expect_none("y", event, Duration::from_millis(50)).await;
    }
}

/// Not even trace-level logs hold a password, a token or the handshake's `auth` object: neither ours nor
/// socketioxide's nor engineioxide's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_level_prints_a_secret() {
    let dir = log_dir("security_logs");
    let path = dir.join("config.toml");
    std::fs::write(&path, config(&dir).await).unwrap();
    let path = path.display().to_string();
    let node = Node::start(
        &dir,
        NodeOpts {
            id: "n",
            args: &["--config", &path],
            log: Some("trace"),
            ..NodeOpts::default()
        },
    )
    .await;
    let mut io = Clients::start();
    let jwt = token("carol", "s-carol");
    for transport in ["websocket", "polling"] {
        for (i, password) in [PASSWORD, "wrong-Hq2p0Lm4"].iter().enumerate() {
            let auth = json!({"username": "lab-user", "password": password});
            let conn = Conn::to(&format!("c{i}{transport}"), &node)
                .ns("/login")
                .auth(auth)
                .transports(&[transport]);
            io.connect(conn).await;
        }
        let conn = Conn::to(&format!("j{transport}"), &node)
            .auth(json!({"token": jwt, "room": "R"}))
            .transports(&[transport]);
        connected(&io.connect(conn).await);
    }
    let log = node.log_text();
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "trace logs on"
    );
    for secret in [PASSWORD, "wrong-Hq2p0Lm4", jwt.as_str()] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }
}
