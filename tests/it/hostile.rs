//! Bad input with the real binary: hostile HTTP requests, malformed Engine.IO/Socket.IO frames on a raw
//! websocket, plain HTTP on the TLS port, a flood of bare handshakes, and forged cluster messages published on
//! Redis. Each gets a clear answer or a closed connection; the node stays up, its memory bounded, its answers
//! right.

use std::time::Duration;

use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Opens a raw websocket Engine.IO session, sends `frame` after the open packet, and says what happened within
/// 3 s: `"closed"`, or the texts the server sent back.
async fn send_raw(port: u16, query: &str, frame: Message) -> String {
    let mut ws = engine_websocket(port, query).await;
    if ws.send(frame).await.is_err() {
        return "closed while we were sending".into();
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return format!("open, got {got:?}"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return if got.is_empty() {
                    "closed".into()
                } else {
                    format!("closed after {got:?}")
                };
            }
            Ok(Some(Ok(m))) => got.push(m.to_string()),
        }
    }
}

/// What the server did with one raw HTTP/1.1 request on its own TLS connection.
struct Raw {
    /// Everything it sent back before closing the connection (or within 5 s).
    answer: String,
    /// Whether it closed the connection (end of stream or reset) within 5 s.
    closed: bool,
    /// Whether the bytes sent after that went through.
    more: std::io::Result<()>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let answer: String = self.answer.chars().take(300).collect();
        f.debug_struct("Raw")
            .field("answer", &answer)
            .field("closed", &self.closed)
            .field("more", &self.more)
            .finish()
    }
}

/// Sends `sent` (written while the answer is read, so a server that stops reading cannot block us), reads the
/// answer until the server closes the connection (at most 5 s), then tries to send `more` bytes on it.
async fn raw_request(port: u16, sent: Vec<u8>, more: usize) -> Raw {
    let (mut reader, mut writer) = tokio::io::split(tls(port).await);
    // A write may fail once the server closes: what it answered is what matters.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&sent).await;
        writer
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = vec![0; 64 * 1024];
        // Ends at the end of the stream (0) or on a reset (an error).
        while let Ok(n @ 1..) = reader.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .is_ok();
    let mut writer = tokio::time::timeout(Duration::from_secs(5), writing)
        .await
        .expect("writing the request took more than 5 s")
        .unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    let more = tokio::time::timeout(Duration::from_secs(5), async {
        for _ in 0..more.div_ceil(chunk.len()) {
            writer.write_all(&chunk).await?;
        }
        writer.flush().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    Raw {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed,
        more,
    }
}

/// Malformed Engine.IO and Socket.IO frames close their own connection and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let dir = log_dir("malformed_frames");
    let node = Node::start(&dir, NodeOpts::default()).await;
    let mut clients = Clients::start();
    let good = clients
        .join(Conn::to("good", &node).user("good", "R"))
        .await;
    let before = rss_kib(node.pid());

    let fields = "&id_user=raw&room=R";
    type Check = fn(&str) -> bool;
    let closed: Check = |o| o.starts_with("closed");
    let refused: Check = |o| o.contains(r#"44{\"message\":\"id_user is required\"}"#);
    let frames: Vec<(&str, &str, Message, Check)> = vec![
        (
            "not an engine.io packet",
            fields,
            Message::text("garbage"),
            closed,
        ),
        ("unknown engine.io type", fields, Message::text("9"), closed),
        ("empty", fields, Message::text(""), closed),
        (
            "socket.io packet of unknown type",
            fields,
            Message::text("4z"),
            closed,
        ),
        // A connect whose auth is not JSON counts as no auth: here the query has no fields either.
        (
            "truncated connect",
            "",
            Message::text("40{\"id_user\":"),
            refused,
        ),
        (
            "event before connect",
            fields,
            Message::text("42[\"identity-change\",\"x\"]"),
            closed,
        ),
        (
            "truncated event",
            fields,
            Message::text("42[\"identity-change\""),
            closed,
        ),
        (
            "binary junk",
            fields,
            Message::binary(vec![0xff, 0x00, 0x13, 0x37]),
            closed,
        ),
        (
            "70 KiB message",
            fields,
            Message::text(format!("42[\"x\",\"{}\"]", "a".repeat(70 * 1024))),
            closed,
        ),
    ];
    for (what, query, frame, check) in frames {
        let outcome = send_raw(node.port, query, frame).await;
        println!("{what}: {outcome}");
        assert!(check(&outcome), "{what}: {outcome}");
    }
    // The node and its good client carry on.
    clients
        .emit(
            "good",
            "identity-change",
            json!([{"id_user": "still-good"}]),
            true,
        )
        .await;
    assert_eq!(clients.expect("good", "ack").await["args"][0]["ok"], true);
    let users = Http::new().users(&node, "R").await;
    assert_eq!(users.set(), pairs(&[(&good, "still-good")]));
    let after = rss_kib(node.pid());
    println!("RSS {before} -> {after} KiB");
    assert!(after < before + 20 * 1024, "{before} -> {after} KiB");
}

/// Plain HTTP on the TLS port: the connection is closed, no HTTP answer, the node carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_closed() {
    let dir = log_dir("plain_http_on_tls");
    let node = Node::start(&dir, NodeOpts::default()).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    println!("plain HTTP on the TLS port: {read:?}, {got:?}");
    assert!(read.is_ok(), "the connection was left open");
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    assert_eq!(Http::new().status(&node, "/health").await, 200);
}

/// Hostile REST requests get a status and a JSON error; a burst of them leaves memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_requests_get_clear_errors() {
    let dir = log_dir("hostile_http");
    let node = Node::start(&dir, NodeOpts::default()).await;
    let http = Http::new();
    let long = "x".repeat(129);
    let huge = "y".repeat(16 * 1024);
    let cases: Vec<(String, u16)> = vec![
        (format!("/{long}/users"), 400),
        (format!("/{huge}/users"), 400),
        ("/%2e%2e%2f%2e%2e%2fetc%2fpasswd/users".into(), 400),
        ("/..%2F..%2Fetc/users".into(), 400),
        ("/a%2Fb/users".into(), 400),
        ("/%ZZ/users".into(), 400),
        ("/a%00b/users".into(), 400),
        ("/%F0%9F%98%80/users".into(), 400),
        ("/health/users".into(), 400),
        ("/Caf%C3%A9/users".into(), 200),
        ("/%E6%95%B0%E5%AD%A6/users".into(), 200),
        ("/R/users/extra".into(), 404),
    ];
    let before = rss_kib(node.pid());
    for _ in 0..20 {
        for (path, status) in &cases {
            let res = http.client.get(node.url(path)).send().await.unwrap();
            assert_eq!(res.status().as_u16(), *status, "{path}");
            let body: Value = res.json().await.unwrap();
            if *status == 200 {
                assert_eq!(body, json!([]), "{path}");
            } else {
                assert!(body["error"].is_string(), "{path}: {body}");
            }
        }
    }
    // A body where none is expected: `405` at once, before the body arrives, then the connection is closed
    // rather than read to its end, so sending the rest of the 8 MiB fails.
    let body = 8 << 20;
    let mut sent = format!(
        "POST /R/users HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\n\
         content-length: {body}\r\n\r\n"
    )
    .into_bytes();
    sent.extend(vec![b'z'; 64 * 1024]);
    let post = raw_request(node.port, sent, body - 64 * 1024).await;
    println!("8 MiB POST: {post:?}");
    assert!(
        post.answer
            .starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{post:?}"
    );
    assert!(
        post.answer
            .ends_with("\r\n\r\n{\"error\":\"method not allowed: the Allow header lists the methods of this path\"}"),
        "{post:?}"
    );
    assert!(post.closed, "the connection was left open: {post:?}");
    let refused = post
        .more
        .as_ref()
        .expect_err("the server read the whole body");
    assert!(
        matches!(
            refused.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{refused}"
    );
    // Oversized headers: beyond hyper's read buffer (~400 KiB) the request is refused with `431`, then the
    // connection is closed.
    let mut sent = b"GET /R/users HTTP/1.1\r\nhost: localhost\r\nx-junk: ".to_vec();
    sent.extend(vec![b'j'; 1024 * 1024]);
    sent.extend_from_slice(b"\r\n\r\n");
    let header = raw_request(node.port, sent, 0).await;
    println!("1 MiB header: {header:?}");
    assert!(
        header
            .answer
            .starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{header:?}"
    );
    assert!(
        header.answer.contains("\r\nconnection: close\r\n")
            && header.answer.contains("\r\ncontent-length: 0\r\n")
            && header.answer.ends_with("\r\n\r\n"),
        "{header:?}"
    );
    assert!(header.closed, "the connection was left open: {header:?}");
    let after = rss_kib(node.pid());
    println!(
        "RSS {before} -> {after} KiB after {} hostile requests",
        cases.len() * 20 + 2
    );
    assert!(after < before + 20 * 1024, "{before} -> {after} KiB");
    assert_eq!(http.status(&node, "/health").await, 200);
}

/// A flood of Engine.IO handshakes that never join (3,000, with the rate limit off): memory stays bounded, and
/// the sessions are closed after the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bare_handshakes_is_bounded() {
    let dir = log_dir("handshake_flood");
    let node = Node::start(
        &dir,
        NodeOpts {
            args: &["--handshake-rate", "0"],
            ..NodeOpts::default()
        },
    )
    .await;
    let http = Http::new();
    let before = rss_kib(node.pid());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url) = (
            http.client.clone(),
            node.url("/socket.io/?EIO=4&transport=polling"),
        );
        tasks.spawn(async move {
            for _ in 0..375 {
                let res = client.get(&url).send().await.unwrap();
                assert_eq!(res.status(), 200);
                let text = res.text().await.unwrap();
                assert!(text.starts_with("0{"), "{text}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let peak = rss_kib(node.pid());
    println!("3000 bare Engine.IO sessions: RSS {before} -> {peak} KiB");
    assert!(peak < before + 64 * 1024, "{before} -> {peak} KiB");
    // A bare session is closed after the connect timeout (10 s).
    let open: String = http
        .client
        .get(node.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let poll = node.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    eventually(
        Duration::from_secs(15),
        "the bare session to be closed",
        async || {
            let res = http.client.get(&poll).send().await.ok()?;
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            // Polling answers pings ("2") while the session lives; then the server closes it.
            (status != 200 || text.contains('1')).then_some(())
        },
    )
    .await;
    assert_eq!(http.status(&node, "/health").await, 200);
}

/// Any Redis client, as an attacker has one: a publisher and a subscriber of its own.
async fn attacker(redis: &Redis) -> (fred::clients::Client, fred::clients::SubscriberClient) {
    let config = fred::prelude::Config::from_url(&redis.url()).unwrap();
    let publisher = fred::prelude::Builder::from_config(config.clone())
        .build()
        .unwrap();
    publisher.init().await.unwrap();
    let spy = fred::prelude::Builder::from_config(config)
        .build_subscriber_client()
        .unwrap();
    spy.init().await.unwrap();
    (publisher, spy)
}

/// Garbage, wrong versions, replies to requests never sent, and replies from a node that is not a member (even
/// with the id of a real request, read off Redis) change no answer and crash nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cluster_messages_change_no_answer() {
    // The harness names the channel prefix after the test.
    let prefix = "forged_cluster_messages";
    let (_dir, redis, nodes) = cluster_with(prefix, 2, 1000, &[]).await;
    let mut clients = Clients::start();
    let sa = clients.join(Conn::to("a", &nodes[0]).user("ua", "R")).await;
    let sb = clients.join(Conn::to("b", &nodes[1]).user("ub", "R")).await;
    let exact = pairs(&[(&sa, "ua"), (&sb, "ub")]);

    let (publisher, spy) = attacker(&redis).await;
    // The attacker reads each real request and answers it as a node that does not exist.
    let mut requests = spy.message_rx();
    spy.ssubscribe(format!("{prefix}:users#req")).await.unwrap();
    let forger = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut forged = 0;
            while let Ok(msg) = requests.recv().await {
                // Our own junk passes here too: only real requests are answered.
                let Some(Ok(req)) = msg.value.as_bytes().map(serde_json::from_slice::<Value>)
                else {
                    continue;
                };
                let (Some(id), Some(from)) = (req["id"].as_str(), req["from"].as_str()) else {
                    continue;
                };
                let reply = json!({"v": 1, "id": id, "node": "evil",
                    "members": [{"id_socket": "EvilEvilEvilEvilEvil", "id_user": "mallory"}]});
                let channel = format!("{prefix}:users#reply#{from}");
                if publisher
                    .spublish::<i64, _, _>(channel, reply.to_string())
                    .await
                    .is_ok()
                {
                    forged += 1;
                }
            }
            forged
        })
    };
    let junk: Vec<(String, String)> = [
        ("users#req", "garbage".to_owned()),
        (
            "users#req",
            r#"{"v":2,"id":"0b7e1a36-4f0c-4b0e-9a53-6a3f3c1d2e10","from":"x","room":"R"}"#.into(),
        ),
        (
            "users#req",
            r#"{"v":1,"id":"0b7e1a36-4f0c-4b0e-9a53-6a3f3c1d2e10","from":"x","room":"../R"}"#
                .into(),
        ),
        (
            "users#reply#a",
            r#"{"v":1,"id":"0b7e1a36-4f0c-4b0e-9a53-6a3f3c1d2e10","node":"b","members":[]}"#.into(),
        ),
        ("users#reply#a", r#"{"v":1,"id":"0b7e1a36-4f0c"#.into()),
        ("users#reply#b", "[".repeat(100_000)),
        ("nodes", r#"{"v":1,"node":"bad node"}"#.into()),
        ("nodes", "\u{0}\u{1}".into()),
    ]
    .iter()
    .map(|(c, m)| (format!("{prefix}:{c}"), m.clone()))
    .collect();
    let http = Http::new();
    for round in 0..30 {
        for (channel, message) in &junk {
            let _: i64 = publisher.spublish(channel, message.clone()).await.unwrap();
        }
        let node = &nodes[round % 2];
        let users = http.users(node, "R").await;
        assert_eq!(users.status, 200);
        assert_eq!(users.set(), exact, "round {round} on {}", node.id);
        assert_eq!(users.nodes, "2/2");
    }
    forger.abort();
    let rejected = http
        .metric(&nodes[0], "socket_identity_cluster_messages_rejected_total")
        .await
        .unwrap();
    println!("node a rejected {rejected} forged or malformed cluster messages");
    assert!(rejected >= 30.0, "{rejected}");
    for node in &nodes {
        assert_eq!(http.status(node, "/health").await, 200);
    }
}

const SECRET: &str = "a-cluster-secret-for-tests";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// With `CLUSTER_SECRET`, a forged `leaving` heartbeat for a live node (bare, in an envelope with a made-up
/// signature, or a genuine heartbeat of that node turned into a `leaving` one) hides nothing: every answer still
/// counts b and lists its socket. Refusals are counted, and logged at most once a minute per kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cluster_messages_cannot_be_forged() {
    let prefix = "signed_cluster_messages";
    let (_dir, redis, nodes) = cluster_with(
        prefix,
        2,
        1000,
        &["--cluster-secret", SECRET, "--heartbeat-ms", "1000"],
    )
    .await;
    let mut clients = Clients::start();
    let sa = clients.join(Conn::to("a", &nodes[0]).user("ua", "R")).await;
    let sb = clients.join(Conn::to("b", &nodes[1]).user("ub", "R")).await;
    let exact = pairs(&[(&sa, "ua"), (&sb, "ub")]);

    let (publisher, spy) = attacker(&redis).await;
    let nodes_channel = format!("{prefix}:nodes");
    let mut heard = spy.message_rx();
    spy.ssubscribe(nodes_channel.clone()).await.unwrap();
    // A genuine signed heartbeat of b, read off Redis.
    let genuine = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let msg = heard.recv().await.unwrap();
            let text = msg.value.as_string().unwrap();
            if text.contains(r#""msg":{"v":2,"node":"b"}"#) {
                return text;
            }
        }
    })
    .await
    .expect("no heartbeat from b within 5 s");
    println!("b's heartbeat: {genuine}");
    let tampered = genuine.replace(r#""node":"b"}"#, r#""node":"b","leaving":true}"#);
    assert_ne!(tampered, genuine);

    let http = Http::new();
    for round in 0..20 {
        let made_up = json!({"ts": now_ms(), "sig": "0".repeat(64),
            "msg": {"v": 2, "node": "b", "leaving": true}});
        for forged in [
            r#"{"v":2,"node":"b","leaving":true}"#.to_owned(),
            made_up.to_string(),
            tampered.clone(),
        ] {
            let _: i64 = publisher.spublish(&nodes_channel, forged).await.unwrap();
        }
        let node = &nodes[round % 2];
        let users = http.users(node, "R").await;
        assert_eq!(
            (users.set(), users.nodes.as_str(), users.partial.as_str()),
            (exact.clone(), "2/2", "false"),
            "round {round} on {}",
            node.id
        );
    }
    let rejected = http
        .metric(&nodes[0], "socket_identity_cluster_messages_rejected_total")
        .await
        .unwrap();
    println!("node a refused {rejected} forged cluster messages");
    assert!(rejected >= 60.0, "{rejected}");
    let log = nodes[0].log_text();
    let logged = log.matches("cluster message refused").count();
    assert!(
        (1..=3).contains(&logged),
        "{logged} refusals logged:\n{log}"
    );
    for node in &nodes {
        assert!(!node.log_text().contains(SECRET), "the secret was logged");
    }
}

/// Nodes with the same `CLUSTER_SECRET` form a cluster; a node with another secret, or none, is not counted
/// by them, nor counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_the_same_secret_form_a_cluster() {
    let prefix = "same_secret_cluster";
    let (dir, redis, nodes) = cluster_with(prefix, 2, 500, &["--cluster-secret", SECRET]).await;
    let other = Node::start(
        &dir,
        NodeOpts {
            id: "c",
            redis: Some(redis.url()),
            prefix,
            timeout_ms: 500,
            args: &["--cluster-secret", "another-secret-of-this-cluster"],
            ..NodeOpts::default()
        },
    )
    .await;
    let unsigned = Node::start(
        &dir,
        NodeOpts {
            id: "d",
            redis: Some(redis.url()),
            prefix,
            timeout_ms: 500,
            ..NodeOpts::default()
        },
    )
    .await;
    let mut clients = Clients::start();
    let sa = clients.join(Conn::to("a", &nodes[0]).user("ua", "R")).await;
    let sb = clients.join(Conn::to("b", &nodes[1]).user("ub", "R")).await;
    let sc = clients.join(Conn::to("c", &other).user("uc", "R")).await;
    let sd = clients.join(Conn::to("d", &unsigned).user("ud", "R")).await;
    // Give heartbeats time to be heard (and refused).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let http = Http::new();
    for node in &nodes {
        let users = http.users(node, "R").await;
        assert_eq!(
            (users.set(), users.nodes.as_str(), users.partial.as_str()),
            (pairs(&[(&sa, "ua"), (&sb, "ub")]), "2/2", "false"),
            "{}",
            node.id
        );
    }
    for (node, own) in [
        (&other, (sc.as_str(), "uc")),
        (&unsigned, (sd.as_str(), "ud")),
    ] {
        let users = http.users(node, "R").await;
        assert_eq!(
            (users.set(), users.nodes.as_str()),
            (pairs(&[own]), "1/1"),
            "{}",
            node.id
        );
    }
    let rejected = http
        .metric(&nodes[0], "socket_identity_cluster_messages_rejected_total")
        .await
        .unwrap();
    assert!(rejected > 0.0, "{rejected}");
    let log = nodes[0].log_text();
    assert!(
        log.contains("bad signature") && log.contains("unsigned cluster message"),
        "{log}"
    );
}
