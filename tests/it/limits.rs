//! Limits and access control with the real binary and socket.io-client: the socket cap, the handshake rate, the
//! payload limit, the origin allow-list, and the REST bearer token.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

async fn node(test: &str, args: &[&str]) -> (std::path::PathBuf, Node) {
    let dir = log_dir(test);
    let node = Node::start(
        &dir,
        NodeOpts {
            id: "n",
            args,
            ..NodeOpts::default()
        },
    )
    .await;
    (dir, node)
}

async fn refused_total(http: &Http, node: &Node, reason: &str) -> f64 {
    let sample = format!("socket_identity_handshakes_refused_total{{reason=\"{reason}\"}}");
    http.metric(node, &sample).await.unwrap_or(0.0)
}

/// `--max-sockets 2`: a third socket is told the node is full; when one leaves, a newcomer gets its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_cap_refuses_then_frees_places() {
    let (_dir, node) = node("socket_cap", &["--max-sockets", "2"]).await;
    let http = Http::new();
    let mut clients = Clients::start();
    clients.join(Conn::to("one", &node).user("one", "R")).await;
    clients.join(Conn::to("two", &node).user("two", "R")).await;
    clients
        .open(Conn::to("three", &node).user("three", "R"))
        .await;
    let ev = clients.expect("three", "connect_error").await;
    assert_eq!(ev["message"], "this node is full (2 sockets): try another");
    assert_eq!(refused_total(&http, &node, "full").await, 1.0);

    clients.disconnect("one").await;
    let four = eventually(Duration::from_secs(5), "a free place", async || {
        clients
            .open(Conn::to("four", &node).user("four", "R"))
            .await;
        let ev = clients
            .expect_any("four", &["connect", "connect_error"])
            .await;
        (ev["event"] == "connect").then_some(ev)
    })
    .await;
    println!("a place freed: {four}");
    let users = http.users(&node, "R").await;
    let names: Vec<String> = users.set().into_iter().map(|p| p.1).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"four".to_owned()) && names.contains(&"two".to_owned()));
}

/// `--handshake-rate 5`: of a burst of 20 socket.io clients about 5 get through, the others get a
/// `connect_error` (their Engine.IO handshake was answered `429`); plain HTTP handshakes get `429` with a JSON
/// error and `Retry-After`; a second later handshakes pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_rate_limits_a_flood() {
    let (_dir, node) = node("handshake_rate", &["--handshake-rate", "5"]).await;
    let http = Http::new();
    let mut clients = Clients::start();
    for i in 0..20 {
        clients
            .open(Conn::to(&format!("c{i}"), &node).user(&format!("u{i}"), "R"))
            .await;
    }
    let (mut ok, mut refused) = (0, 0);
    for i in 0..20 {
        let ev = clients
            .expect_any(&format!("c{i}"), &["connect", "connect_error"])
            .await;
        if ev["event"] == "connect" {
            ok += 1;
        } else {
            refused += 1;
        }
    }
    let raw = http
        .client
        .get(node.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 429);
    assert_eq!(raw.headers()["retry-after"], "1");
    let body: Value = raw.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "too many new connections per second on this node: retry shortly"})
    );
    println!("a burst of 20 handshakes at 5/s: {ok} accepted, {refused} refused");
    assert!((5..=10).contains(&ok), "{ok} accepted");
    assert_eq!(
        refused_total(&http, &node, "rate").await,
        f64::from(refused + 1)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    clients
        .join(Conn::to("later", &node).user("later", "R"))
        .await;
    let users = http.users(&node, "R").await;
    assert_eq!(users.set().len(), ok + 1);
}

/// `--max-payload-bytes 1024`: a client sending more is disconnected; the node and other clients carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_payload_closes_only_its_connection() {
    let (_dir, node) = node("max_payload", &["--max-payload-bytes", "1024"]).await;
    let http = Http::new();
    let mut clients = Clients::start();
    clients.join(Conn::to("big", &node).user("big", "R")).await;
    let small = clients
        .join(Conn::to("small", &node).user("small", "R"))
        .await;
    clients
        .emit(
            "big",
            "identity-change",
            json!([{"id_user": "x".repeat(4096)}]),
            true,
        )
        .await;
    let ev = clients.expect("big", "disconnect").await;
    println!("oversized payload: {ev}");
    // The other client still works, and the room lost only the offender.
    clients
        .emit(
            "small",
            "identity-change",
            json!([{"id_user": "small2"}]),
            true,
        )
        .await;
    let ack = clients.expect("small", "ack").await;
    assert_eq!(ack["args"][0]["ok"], true, "{ack}");
    let users = http.users(&node, "R").await;
    assert_eq!(users.set(), pairs(&[(&small, "small2")]));
}

/// `--cors-origins`: handshakes from other origins are refused, the REST API answers them without CORS headers,
/// and listed origins get both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_are_refused() {
    let app = "https://app.example";
    let (_dir, node) = node(
        "cors_origins",
        &[
            "--cors-origins",
            "https://app.example,https://admin.example",
        ],
    )
    .await;
    let mut clients = Clients::start();
    let q = |u: &str| json!({"id_user": u, "room": "R"});
    clients
        .open(
            Conn::to("evil", &node)
                .query(q("evil"))
                .headers(json!({"origin": "https://evil.example"})),
        )
        .await;
    let ev = clients
        .expect_any("evil", &["connect", "connect_error"])
        .await;
    assert_eq!(
        (ev["event"].as_str(), ev["message"].as_str()),
        (Some("connect_error"), Some("origin not allowed"))
    );
    clients
        .open(
            Conn::to("app", &node)
                .query(q("app"))
                .headers(json!({"origin": app})),
        )
        .await;
    clients.expect("app", "connect").await;
    // Non-browser clients send no Origin and are not concerned.
    clients.join(Conn::to("cli", &node).user("cli", "R")).await;

    let http = Http::new();
    for (origin, allowed) in [(app, true), ("https://evil.example", false)] {
        let res = http
            .client
            .get(node.url("/R/users"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let acao = res
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(acao.as_deref(), allowed.then_some(origin), "{origin}");
    }
    let preflight = http
        .client
        .request(reqwest::Method::OPTIONS, node.url("/R/users"))
        .header("origin", app)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], app);
}

/// `--cors-origins` reaches `/socket.io/`: a browser page on a listed origin can open a long-polling session
/// (the admin UI does, with credentials), its preflight passes, and other origins get no allow header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_can_long_poll_socket_io() {
    let app = "https://app.example";
    let evil = "https://evil.example";
    let (_dir, node) = node(
        "cors_socket_io",
        &[
            "--cors-origins",
            "https://app.example,https://admin.example",
        ],
    )
    .await;
    let http = Http::new();
    let handshake = node.url("/socket.io/?EIO=4&transport=polling");
    let header = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // The Engine.IO handshake a browser sends first.
    let res = http
        .client
        .get(&handshake)
        .header("origin", app)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    assert_eq!(
        header(&res, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(res.text().await.unwrap().starts_with("0{"));

    // The preflight of a long-polling POST that carries an extra header (socket.io-client's `extraHeaders`).
    let preflight = http
        .client
        .request(reqwest::Method::OPTIONS, &handshake)
        .header("origin", app)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-client")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    assert_eq!(
        header(&preflight, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let methods = header(&preflight, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST"), "{methods}");
    let headers = header(&preflight, "access-control-allow-headers").unwrap_or_default();
    assert!(headers.contains("x-client"), "{headers}");

    // Another origin gets no allow header, on the handshake or on the preflight.
    let res = http
        .client
        .get(&handshake)
        .header("origin", evil)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    let preflight = http
        .client
        .request(reqwest::Method::OPTIONS, &handshake)
        .header("origin", evil)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&preflight, "access-control-allow-origin"), None);

    // The official client over long-polling only, every request carrying the Origin header.
    let mut clients = Clients::start();
    let q = |u: &str| json!({"id_user": u, "room": "R"});
    clients
        .open(
            Conn::to("app", &node)
                .query(q("app"))
                .headers(json!({"origin": app}))
                .transports(&["polling"]),
        )
        .await;
    let ev = clients
        .expect_any("app", &["connect", "connect_error"])
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    clients
        .open(
            Conn::to("evil", &node)
                .query(q("evil"))
                .headers(json!({"origin": evil}))
                .transports(&["polling"]),
        )
        .await;
    let ev = clients
        .expect_any("evil", &["connect", "connect_error"])
        .await;
    assert_eq!(
        (ev["event"].as_str(), ev["message"].as_str()),
        (Some("connect_error"), Some("origin not allowed"))
    );
    let users = http.users(&node, "R").await;
    let names: Vec<String> = users.set().into_iter().map(|p| p.1).collect();
    assert_eq!(names, ["app"]);
}

/// `--api-token`: the room list needs `Authorization: Bearer <token>`; the token never reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_list_can_require_a_bearer_token() {
    let (_dir, node) = node("api_token", &["--api-token", "s3cret-token"]).await;
    let http = Http::new();
    for auth in [
        None,
        Some("Bearer wrong-token!"),
        Some("Bearer s3cret-toke"),
        Some("s3cret-token"),
    ] {
        let mut req = http.client.get(node.url("/R/users"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "this API needs a bearer token: Authorization: Bearer <API_TOKEN>"})
        );
    }
    let res = http
        .client
        .get(node.url("/R/users"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Health and the page stay open.
    assert_eq!(http.status(&node, "/health").await, 200);
    assert!(!node.log_text().contains("s3cret-token"));
}

/// `--query-rate 5`: a burst of room queries from one client beyond 5 gets `429`, a JSON error and `Retry-After`
/// (`GET /api/rooms` shares the client's rate); other routes are not limited; a second later the client is
/// served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_queries_are_rate_limited_per_client() {
    let (_dir, node) = node("query_rate", &["--query-rate", "5"]).await;
    let http = Http::new();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let res = http.client.get(node.url("/R/users")).send().await.unwrap();
        let status = res.status().as_u16();
        if status == 429 {
            assert_eq!(res.headers()["retry-after"], "1");
            let body: Value = res.json().await.unwrap();
            assert_eq!(
                body,
                json!({"error": "too many queries from this address (QUERY_RATE per second): retry in 1 s"})
            );
        } else {
            assert_eq!(status, 200);
            assert_eq!(res.json::<Value>().await.unwrap(), json!([]));
        }
        statuses.push(status);
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    println!("a burst of 20 room queries at 5/s: {served} served, {statuses:?}");
    assert_eq!(&statuses[..5], [200; 5], "the first burst is served");
    assert!((5..=8).contains(&served), "{served} served");
    let rooms = http
        .client
        .get(node.url("/api/rooms"))
        .send()
        .await
        .unwrap();
    assert_eq!(rooms.status(), 429, "the same client's rate");
    assert_eq!(http.status(&node, "/health").await, 200);
    assert_eq!(
        http.metric(&node, "socket_identity_queries_refused_total")
            .await,
        Some((20 - served + 1) as f64)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let users = http.users(&node, "R").await;
    assert_eq!((users.status, users.nodes.as_str()), (200, "1/1"));
}
