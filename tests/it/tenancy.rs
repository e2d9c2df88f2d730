//! Tenancy with real components: 3 node processes sharing a real Redis, a config file with every auth kind,
//! the official socket.io-client, and a real HTTP auth webhook served by the test.
//!
//! Each auth kind accepts and refuses; webhook rooms and user/session rooms are listed by `GET /{room}/users`
//! on any node; `__count__` counts views across nodes; forwarding crosses nodes; two tenants with equal room
//! names never see each other; a socket flooding events is cut off.

use std::{path::Path, time::Duration};

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
};
use serde_json::{Value, json};

use crate::harness::*;

const SECRET: &str = "tenancy-test-secret-0123456789";

fn now() -> i64 {
    unix_now()
}

fn jwt(claims: Value, secret: &str) -> String {
    hs256(&claims, secret)
}

/// The auth webhook of seed 001, answering by token.
async fn webhook(headers: HeaderMap) -> axum::response::Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .unwrap_or("");
    match token {
        "alice-token" => Json(json!(["user_1", "staff"])).into_response(),
        "bob-token" => {
            Json(json!({"rooms": ["user_2", "staff"], "id_user": "bob"})).into_response()
        }
        "deny" => StatusCode::UNAUTHORIZED.into_response(),
        "forbid" => StatusCode::FORBIDDEN.into_response(),
        "boom" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "junk" => "<html>not json</html>".into_response(),
        "bad-room" => Json(json!(["ok", "../etc"])).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!(["late"])).into_response()
        }
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// Serves the webhook on a free loopback port; returns its port.
async fn start_webhook() -> u16 {
    serve_loopback(Router::new().route("/socketrooms", get(webhook))).await
}

/// Writes the config file and the credentials file into `dir`.
fn write_config(dir: &Path, webhook_port: u16) -> String {
    let hash = bcrypt::hash("open-sesame", 4).unwrap();
    std::fs::write(
        dir.join("credentials.json"),
        json!([{"username": "lab-user", "password": hash}]).to_string(),
    )
    .unwrap();
    let dead = free_port();
    let config = format!(
        r#"
[[namespace]]
name = "/"
auth = "jwt"
jwt_secret = "{SECRET}"
jwt_cookie = "ID_TOKEN"
rooms = ["user", "session"]

[[namespace]]
name = "/do-*"
auth = "credentials"
credentials_file = "credentials.json"
rooms = []
forward = true
views = true

[[namespace]]
name = "/sharedsocket"
auth = "none"
rooms = []
forward = true
deprecated = "use /do-<name> with credentials"

[[namespace]]
name = "/newsite"
auth = "webhook"
auth_url = "http://127.0.0.1:{webhook_port}/socketrooms"
auth_scheme = "Token"
auth_timeout_ms = 500
rooms = ["auth", "user"]

[[namespace]]
name = "/downsite"
auth = "webhook"
auth_url = "http://127.0.0.1:{dead}/socketrooms"
rooms = ["auth"]

[[namespace]]
name = "/chat-*"
auth = "claim"
rooms = ["handshake", "user", "session"]
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

async fn tenancy_cluster(test: &str) -> (std::path::PathBuf, Redis, Vec<Node>, u16) {
    let dir = log_dir(test);
    let port = start_webhook().await;
    let config = write_config(&dir, port);
    let redis = Redis::start(&dir);
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let args = ["--config", config.as_str()];
        nodes.push(
            Node::start(
                &dir,
                NodeOpts {
                    id,
                    redis: Some(redis.url()),
                    prefix: test,
                    args: &args,
                    ..NodeOpts::default()
                },
            )
            .await,
        );
    }
    (dir, redis, nodes, port)
}

fn connected(ev: &Value) -> String {
    assert_eq!(ev["event"], "connect", "expected a connection: {ev}");
    ev["sid"].as_str().unwrap().to_owned()
}

fn refused(ev: &Value) -> String {
    assert_eq!(ev["event"], "connect_error", "expected a refusal: {ev}");
    ev["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_kind_accepts_and_refuses() {
    let (_dir, _redis, nodes, _) = tenancy_cluster("tenancy_auth").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();

    // credentials (seed 000): the right password, a wrong one, none at all.
    let good = json!({"username": "lab-user", "password": "open-sesame"});
    let lab1 = connected(
        &io.connect(Conn::to("lab1", &a).ns("/do-lab").auth(good.clone()))
            .await,
    );
    let hs = io.expect("lab1", "handshake").await;
    assert_eq!(hs["args"][0]["id_user"], "lab-user");
    assert_eq!(hs["args"][0]["namespace"], "/do-lab");
    for (id, auth) in [
        (
            "lab-wrong",
            json!({"username": "lab-user", "password": "nope"}),
        ),
        (
            "lab-unknown",
            json!({"username": "eve", "password": "open-sesame"}),
        ),
        ("lab-none", json!({})),
    ] {
        let ev = io.connect(Conn::to(id, &b).ns("/do-lab").auth(auth)).await;
        assert_eq!(refused(&ev), "UNAUTHORIZED", "{id}");
    }

    // none: no identity needed; the legacy namespace logs that it is deprecated.
    let shared = connected(&io.connect(Conn::to("shared", &b).ns("/sharedsocket")).await);
    eventually(
        Duration::from_secs(5),
        "the deprecation warning",
        async || b.log_text().contains("deprecated namespace").then_some(()),
    )
    .await;

    // jwt on `/`: from the auth object, the query, the Authorization header and the cookie.
    let alice = jwt(
        json!({"sub": "alice", "sid": "sess-1", "exp": now() + 600}),
        SECRET,
    );
    let j1 = connected(
        &io.connect(Conn::to("j1", &a).auth(json!({"token": alice})))
            .await,
    );
    let j2 = connected(
        &io.connect(Conn::to("j2", &b).query(json!({"token": alice})))
            .await,
    );
    let bob = jwt(json!({"sub": "bob", "exp": now() + 600}), SECRET);
    let j3 = connected(
        &io.connect(Conn::to("j3", &c).headers(json!({"authorization": format!("Bearer {bob}")})))
            .await,
    );
    let j4 = connected(
        &io.connect(
            Conn::to("j4", &c).headers(json!({"cookie": format!("theme=dark; ID_TOKEN={bob}")})),
        )
        .await,
    );
    for (id, token, says) in [
        (
            "expired",
            jwt(json!({"sub": "x", "exp": now() - 3600}), SECRET),
            "UNAUTHORIZED: token expired",
        ),
        (
            "forged",
            jwt(
                json!({"sub": "x", "exp": now() + 600}),
                "another-secret-0123456789",
            ),
            "UNAUTHORIZED: invalid signature",
        ),
        (
            "early",
            jwt(
                json!({"sub": "x", "exp": now() + 600, "nbf": now() + 3600}),
                SECRET,
            ),
            "UNAUTHORIZED: token not valid yet",
        ),
        (
            "garbage",
            "abc.def.ghi".to_owned(),
            "UNAUTHORIZED: malformed token",
        ),
    ] {
        let ev = io
            .connect(Conn::to(id, &a).auth(json!({"token": token})))
            .await;
        assert_eq!(refused(&ev), says, "{id}");
    }
    let ev = io.connect(Conn::to("no-token", &a)).await;
    assert_eq!(refused(&ev), "UNAUTHORIZED: no token");
    // A verified identity cannot be changed, nor the session taken from the token.
    io.emit("j1", "identity-change", json!(["mallory"]), true)
        .await;
    assert_eq!(
        io.expect("j1", "ack").await["args"][0]["error"],
        "id_user cannot be changed in this namespace"
    );
    io.emit("j1", "session_id", json!(["other-session"]), true)
        .await;
    assert_eq!(
        io.expect("j1", "ack").await["args"][0]["error"],
        "the session comes from the token in this namespace"
    );

    // webhook (seed 001): rooms from the answer, the user from an object answer.
    let w1 = connected(
        &io.connect(
            Conn::to("w1", &a)
                .ns("/newsite")
                .query(json!({"token": "alice-token"})),
        )
        .await,
    );
    let hs = io.expect("w1", "handshake").await;
    assert_eq!(hs["args"][0]["rooms"], json!(["user_1", "staff"]));
    let w2 = connected(
        &io.connect(
            Conn::to("w2", &b)
                .ns("/newsite")
                .auth(json!({"token": "bob-token"})),
        )
        .await,
    );
    let hs = io.expect("w2", "handshake").await;
    assert_eq!(
        hs["args"][0]["rooms"],
        json!(["user.bob", "user_2", "staff"])
    );
    for (id, token) in [
        ("w-deny", "deny"),
        ("w-forbid", "forbid"),
        ("w-missing", ""),
    ] {
        let ev = io
            .connect(
                Conn::to(id, &c)
                    .ns("/newsite")
                    .query(json!({"token": token})),
            )
            .await;
        assert_eq!(refused(&ev), "Authentication error", "{id}");
    }
    for (id, token, says) in [
        ("w-boom", "boom", "auth service failed: it answered 500"),
        (
            "w-junk",
            "junk",
            "auth service failed: its answer is not a list of valid room names",
        ),
        (
            "w-bad-room",
            "bad-room",
            "auth service failed: its answer is not a list of valid room names",
        ),
        (
            "w-slow",
            "slow",
            "auth service failed: no answer within 500 ms",
        ),
    ] {
        let ev = io
            .connect(
                Conn::to(id, &c)
                    .ns("/newsite")
                    .query(json!({"token": token})),
            )
            .await;
        assert_eq!(refused(&ev), says, "{id}");
    }
    let ev = io
        .connect(
            Conn::to("w-down", &c)
                .ns("/downsite")
                .query(json!({"token": "alice-token"})),
        )
        .await;
    assert_eq!(refused(&ev), "auth service failed: cannot reach it");
    let http = Http::new();
    for (reason, n) in [
        ("status", 1.0),
        ("body", 2.0),
        ("timeout", 1.0),
        ("unreachable", 1.0),
    ] {
        let sample = format!("socket_identity_auth_webhook_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(http.metric(c, &sample).await, Some(n), "{sample}");
    }

    // claim (seed 002): user and session rooms from the handshake, the session also by event.
    let c1 = connected(
        &io.connect(
            Conn::to("c1", &c)
                .ns("/chat-1")
                .query(json!({"id_user": "carol", "room": "lobby", "session_id": "s-9"})),
        )
        .await,
    );
    let c2 = connected(
        &io.connect(Conn::to("c2", &a).ns("/chat-1").user("carol", "lobby"))
            .await,
    );
    io.emit("c2", "session_id", json!(["s-10"]), true).await;
    let ack = io.expect("c2", "ack").await;
    assert_eq!(ack["args"][0], json!({"ok": true, "room": "session.s-10"}));

    // Every room, asked on any node, lists its sockets cluster-wide with verified ids, each once.
    for node in [a, b, c] {
        let base = node.base();
        let q = |room: &'static str, ns: &'static str| {
            let base = base.clone();
            let http = &http;
            async move { http.users_in(&base, room, ns).await }
        };
        let users = q("user.alice", "/").await;
        assert_eq!((users.status, users.nodes.as_str()), (200, "3/3"));
        assert_eq!(users.set(), pairs(&[(&j1, "alice"), (&j2, "alice")]));
        assert_eq!(
            q("session.sess-1", "/").await.set(),
            pairs(&[(&j1, "alice"), (&j2, "alice")])
        );
        assert_eq!(
            q("user.bob", "/").await.set(),
            pairs(&[(&j3, "bob"), (&j4, "bob")])
        );
        assert_eq!(
            q("staff", "/newsite").await.set(),
            pairs(&[(&w1, ""), (&w2, "bob")])
        );
        assert_eq!(q("user_1", "/newsite").await.set(), pairs(&[(&w1, "")]));
        assert_eq!(
            q("lobby", "/chat-1").await.set(),
            pairs(&[(&c1, "carol"), (&c2, "carol")])
        );
        assert_eq!(
            q("user.carol", "/chat-1").await.set(),
            pairs(&[(&c1, "carol"), (&c2, "carol")])
        );
        assert_eq!(
            q("session.s-9", "/chat-1").await.set(),
            pairs(&[(&c1, "carol")])
        );
        assert_eq!(
            q("session.s-10", "/chat-1").await.set(),
            pairs(&[(&c2, "carol")])
        );
        let _ = (&lab1, &shared);
    }

    // The rooms of a namespace, cluster-wide, with their counts (`users`: distinct `id_user`s; w1 has none).
    let res = http
        .client
        .get(b.url("/api/rooms"))
        .query(&[("namespace", "/newsite")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cluster-nodes"], "3/3");
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"namespace": "/newsite", "rooms": [
            {"room": "staff", "sockets": 2, "users": 1},
            {"room": "user.bob", "sockets": 1, "users": 1},
            {"room": "user_1", "sockets": 1, "users": 0},
            {"room": "user_2", "sockets": 1, "users": 1},
        ]})
    );
    // A namespace not served is a 404, a malformed one a 400, both with JSON.
    for (ns, status) in [("/nowhere", 404), ("nowhere", 400), ("/a b", 400)] {
        let res = http
            .client
            .get(a.url("/staff/users"))
            .query(&[("namespace", ns)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{ns}");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("namespace"),
            "{body}"
        );
    }
    let ev = io.connect(Conn::to("nowhere", &a).ns("/nowhere")).await;
    assert_eq!(refused(&ev), "Invalid namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_forwarding_cross_nodes_and_stay_in_their_namespace() {
    let (_dir, _redis, nodes, _) = tenancy_cluster("tenancy_views").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    let login =
        |kind: &str| json!({"username": "lab-user", "password": "open-sesame", "type": kind});

    let ctl = connected(
        &io.connect(Conn::to("ctl", &a).ns("/do-lab").auth(login("controller")))
            .await,
    );
    // A listener in another tenant: it must see nothing of /do-lab.
    connected(
        &io.connect(Conn::to("other", &b).ns("/do-other").auth(login("view")))
            .await,
    );
    io.expect("other", "__connect__").await;

    connected(
        &io.connect(Conn::to("v1", &b).ns("/do-lab").auth(login("view")))
            .await,
    );
    io.expect("ctl", "__connect__").await;
    connected(
        &io.connect(Conn::to("v2", &c).ns("/do-lab").auth(login("view")))
            .await,
    );
    io.expect("ctl", "__connect__").await;
    io.expect("v1", "__connect__").await;

    // __count__: the views of the namespace on every node, to the asker alone.
    io.emit("ctl", "__count__", json!([]), true).await;
    assert_eq!(io.expect("ctl", "ack").await["args"], json!([2]));
    assert_eq!(io.expect("ctl", "__count__").await["args"], json!([2]));

    // Forwarding: every event with all its arguments to the whole namespace, the sender included.
    io.emit("v1", "draw", json!([{"x": 1}, "blue", 3]), false)
        .await;
    for id in ["ctl", "v1", "v2"] {
        let ev = io.expect(id, "draw").await;
        assert_eq!(ev["args"], json!([{"x": 1}, "blue", 3]), "{id}");
    }

    // The server's own event names are not forwarded: a client cannot forge them for the others.
    io.emit("v1", "__disconnect__", json!([{"id": "forged"}]), false)
        .await;
    io.emit("v1", "rate_limited", json!([{"error": "forged"}]), false)
        .await;
    io.emit("v1", "after", json!([]), false).await;
    io.expect("ctl", "after").await;
    io.expect_none("ctl", "rate_limited", Duration::from_millis(10))
        .await;
    io.expect_none("ctl", "__disconnect__", Duration::from_millis(10))
        .await;

    // A view leaving is announced (with its id); the count follows.
    let v2_sid = {
        io.emit("v2", "whoami", json!([]), false).await;
        io.expect("v2", "whoami").await;
        io.disconnect("v2").await;
        let ev = io.expect("ctl", "__disconnect__").await;
        assert_eq!(io.expect("v1", "__disconnect__").await["args"], ev["args"]);
        ev["args"][0]["id"].as_str().unwrap().to_owned()
    };
    assert!(!v2_sid.is_empty());
    io.emit("ctl", "__count__", json!([]), true).await;
    assert_eq!(io.expect("ctl", "ack").await["args"], json!([1]));
    io.expect("ctl", "__count__").await;

    // A controller leaving is not announced.
    connected(
        &io.connect(Conn::to("ctl2", &c).ns("/do-lab").auth(login("controller")))
            .await,
    );
    io.disconnect("ctl2").await;
    io.expect_none("v1", "__disconnect__", Duration::from_millis(500))
        .await;

    // Nothing of /do-lab reached /do-other, and a socket of /do-other counts only its own views.
    for event in ["draw", "__disconnect__", "whoami"] {
        io.expect_none("other", event, Duration::from_millis(100))
            .await;
    }
    connected(
        &io.connect(
            Conn::to("ctl-other", &c)
                .ns("/do-other")
                .auth(login("controller")),
        )
        .await,
    );
    io.emit("ctl-other", "__count__", json!([]), true).await;
    assert_eq!(io.expect("ctl-other", "ack").await["args"], json!([1]));

    // An unknown type is refused with a clear message.
    let ev = io
        .connect(Conn::to("weird", &a).ns("/do-lab").auth(login("spectator")))
        .await;
    assert_eq!(refused(&ev), "type must be \"controller\" or \"view\"");
    let _ = ctl;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_with_equal_room_names_never_see_each_other() {
    let (_dir, _redis, nodes, _) = tenancy_cluster("tenancy_isolation").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    let claim = |user: &str| json!({"id_user": user, "room": "Maths"});

    let t1 = connected(
        &io.connect(Conn::to("t1", &a).ns("/chat-one").auth(claim("ann")))
            .await,
    );
    let t2 = connected(
        &io.connect(Conn::to("t2", &b).ns("/chat-two").auth(claim("ann")))
            .await,
    );
    let t2b = connected(
        &io.connect(Conn::to("t2b", &a).ns("/chat-two").auth(claim("ben")))
            .await,
    );
    let http = Http::new();
    for node in [a, b] {
        let one = http.users_in(&node.base(), "Maths", "/chat-one").await;
        assert_eq!(one.set(), pairs(&[(&t1, "ann")]));
        let two = http.users_in(&node.base(), "user.ann", "/chat-two").await;
        assert_eq!(two.set(), pairs(&[(&t2, "ann")]));
        let two = http.users_in(&node.base(), "Maths", "/chat-two").await;
        assert_eq!(two.set(), pairs(&[(&t2, "ann"), (&t2b, "ben")]));
        // The default namespace has no such room.
        assert_eq!(
            http.users_in(&node.base(), "Maths", "/").await.set(),
            pairs(&[])
        );
    }
    // Presence and identity changes go to the room of the socket's own namespace only.
    io.expect("t2", "socket-connected").await;
    io.emit("t2b", "identity-change", json!(["benjamin"]), true)
        .await;
    assert_eq!(io.expect("t2b", "ack").await["args"][0]["ok"], true);
    io.expect("t2", "identity-change").await;
    io.expect_none("t1", "identity-change", Duration::from_millis(300))
        .await;
    io.expect_none("t1", "socket-connected", Duration::from_millis(10))
        .await;
    // The user room followed the new id.
    let moved = http.users_in(&a.base(), "user.benjamin", "/chat-two").await;
    assert_eq!(moved.set(), pairs(&[(&t2b, "benjamin")]));
    assert_eq!(
        http.users_in(&a.base(), "user.ben", "/chat-two")
            .await
            .set(),
        pairs(&[])
    );

    let rooms = |ns: &'static str| {
        let http = &http;
        let url = a.url("/api/rooms");
        async move {
            let res = http
                .client
                .get(url)
                .query(&[("namespace", ns)])
                .send()
                .await
                .unwrap();
            res.json::<Value>().await.unwrap()["rooms"].clone()
        }
    };
    assert_eq!(
        rooms("/chat-one").await,
        json!([{"room": "Maths", "sockets": 1, "users": 1},
               {"room": "user.ann", "sockets": 1, "users": 1}])
    );
    assert_eq!(
        rooms("/chat-two").await,
        json!([{"room": "Maths", "sockets": 2, "users": 2},
               {"room": "user.ann", "sockets": 1, "users": 1},
               {"room": "user.benjamin", "sockets": 1, "users": 1}])
    );
    // Ann again, on the other node: one more socket, but the same user, counted once over the cluster.
    connected(
        &io.connect(Conn::to("t2c", &a).ns("/chat-two").auth(claim("ann")))
            .await,
    );
    assert_eq!(
        rooms("/chat-two").await,
        json!([{"room": "Maths", "sockets": 3, "users": 2},
               {"room": "user.ann", "sockets": 2, "users": 1},
               {"room": "user.benjamin", "sockets": 1, "users": 1}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_flooding_events_is_told_and_disconnected() {
    let dir = log_dir("tenancy_flood");
    let node = Node::start(
        &dir,
        NodeOpts {
            args: &["--socket-event-rate", "5"],
            ..NodeOpts::default()
        },
    )
    .await;
    let mut io = Clients::start();
    // Without a config file, fields no namespace uses are not read: they cannot get a client refused.
    let ev = io
        .connect(
            Conn::to("extra", &node)
                .query(json!({"id_user": "x", "room": "Maths", "type": "bogus"}))
                .auth(json!({"session_id": 42})),
        )
        .await;
    connected(&ev);
    io.join(Conn::to("calm", &node).user("calm", "Maths")).await;
    io.join(Conn::to("flood", &node).user("flood", "Maths"))
        .await;
    for i in 0..30 {
        io.emit("flood", "identity-change", json!([format!("f{i}")]), false)
            .await;
    }
    let told = io.expect("flood", "rate_limited").await;
    assert!(
        told["args"][0]["error"]
            .as_str()
            .unwrap()
            .contains("at most 5 per second"),
        "{told}"
    );
    let gone = io.expect("flood", "disconnect").await;
    assert_eq!(gone["reason"], "io server disconnect");
    // The other socket is untouched, and the node counts the cut-off.
    io.emit("calm", "identity-change", json!(["calm2"]), true)
        .await;
    assert_eq!(io.expect("calm", "ack").await["args"][0]["ok"], true);
    let http = Http::new();
    assert_eq!(
        http.metric(&node, "socket_identity_sockets_rate_limited_total")
            .await,
        Some(1.0)
    );
}

/// Password checks run off the async workers, at most one per core: a flood of credential handshakes (bcrypt
/// cost 10) leaves the node answering HTTP and admitting other namespaces' sockets at once, and every flooding
/// handshake gets an answer: admitted, or told the node is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_password_checks_never_starves_the_node() {
    let dir = log_dir("tenancy_bcrypt_flood");
    let hash = bcrypt::hash("open-sesame", 10).unwrap();
    std::fs::write(
        dir.join("credentials.json"),
        json!([{"username": "lab-user", "password": hash}]).to_string(),
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        r#"
[[namespace]]
name = "/do-*"
auth = "credentials"
credentials_file = "credentials.json"
rooms = []

[[namespace]]
name = "/"
"#,
    )
    .unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--handshake-rate",
        "0",
    ];
    let node = Node::start(
        &dir,
        NodeOpts {
            args: &args,
            ..NodeOpts::default()
        },
    )
    .await;
    let mut io = Clients::start();
    const FLOOD: usize = 120;
    let auth = json!({"username": "lab-user", "password": "open-sesame"});
    for i in 0..FLOOD {
        io.open(Conn::to(&format!("f{i}"), &format!("{}/do-lab", node.base())).auth(auth.clone()))
            .await;
    }
    // While the checks run: HTTP answers at once, and a socket of another namespace is admitted at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = Http::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(http.status(&node, "/health").await, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "health took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    io.join(Conn::to("calm", &node).user("calm", "Maths")).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a claim socket waited {:?}",
        started.elapsed()
    );
    // Every flooding handshake ends: admitted, or refused as busy.
    let (mut admitted, mut busy) = (0, 0);
    for i in 0..FLOOD {
        let id = format!("f{i}");
        let ev = io
            .within(&id, &["connect", "connect_error"], Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{id} got no answer"));
        match ev["event"].as_str() {
            Some("connect") => admitted += 1,
            _ => {
                assert_eq!(
                    ev["message"], "server busy checking passwords: retry shortly",
                    "{ev}"
                );
                busy += 1;
            }
        }
    }
    println!("{FLOOD} bcrypt handshakes: {admitted} admitted, {busy} told busy");
    assert!(admitted > 0);
}

/// Refused handshakes to dynamic namespaces leave nothing behind: socketioxide creates a dynamic namespace
/// (and its Redis subscriptions) before authentication, and the node removes it once its handshakes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_do_not_pile_up_dynamic_namespaces() {
    let (_dir, redis, nodes, _) = tenancy_cluster("tenancy_dyn_cleanup").await;
    let a = &nodes[0];
    let mut io = Clients::start();
    let before = redis.shard_channels();
    let wrong = json!({"username": "lab-user", "password": "wrong"});
    for i in 0..20 {
        let ev = io
            .connect(
                Conn::to(&format!("x{i}"), &a)
                    .ns(&format!("/do-probe{i}"))
                    .auth(wrong.clone()),
            )
            .await;
        assert_eq!(refused(&ev), "UNAUTHORIZED");
    }
    eventually(
        Duration::from_secs(5),
        "the refused namespaces to be gone",
        async || (redis.shard_channels() == before).then_some(()),
    )
    .await;
    // An accepted socket keeps its namespace (and its subscriptions) alive, and a refused one beside it does not
    // remove it.
    let good = json!({"username": "lab-user", "password": "open-sesame"});
    connected(
        &io.connect(Conn::to("ok", &a).ns("/do-kept").auth(good))
            .await,
    );
    let with_one = redis.shard_channel_names();
    assert!(with_one.len() > before, "{with_one:?} > {before}");
    let ev = io
        .connect(Conn::to("bad", &a).ns("/do-kept").auth(wrong))
        .await;
    refused(&ev);
    io.emit("ok", "ping", json!([1]), false).await;
    assert_eq!(
        io.expect("ok", "ping").await["args"],
        json!([1]),
        "the namespace still forwards"
    );
    assert_eq!(redis.shard_channel_names(), with_one);
}
