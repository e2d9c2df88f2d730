//! `POST /send` with real components: 3 node processes on a real Redis, the official socket.io-client in rooms on
//! every node, and the test playing the application's backend over HTTPS.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const SECRET: &str = "send-test-secret-0123456789";
const ROOT_KEY: &str = "root-key-0123456789abcdef";
const CHAT_KEY: &str = "chat-key-0123456789abcdef";

const CONFIG: &str = r#"
[[namespace]]
name = "/"
auth = "jwt"
jwt_secret = "send-test-secret-0123456789"
rooms = ["user", "session"]
# sha256 of root-key-0123456789abcdef
api_key_hash = "sha256:7a219cb175ed50f5a86e79833e3dfbff75453c08e3164333d88cb493d17cc079"

[[namespace]]
name = "/chat"
auth = "claim"
rooms = ["handshake", "user"]
api_key = "chat-key-0123456789abcdef"

[[namespace]]
name = "/quiet"
auth = "claim"
rooms = ["handshake"]

[[namespace]]
name = "/do-*"
auth = "none"
rooms = []
"#;

fn jwt(sub: &str, sid: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "sid": sid, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn start(test: &str) -> (std::path::PathBuf, Redis, Vec<Node>) {
    cluster_with_config(test, 3, CONFIG).await
}

fn connected(ev: Value) {
    assert_eq!(ev["event"], "connect", "{ev}");
}

/// `POST {node}/send?{query}` with a body and its content type: the status and the JSON answer.
async fn post(
    http: &Http,
    node: &Node,
    query: &str,
    kind: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let res = http
        .client
        .post(node.url(&format!("/send?{query}")))
        .header("content-type", kind)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_rooms_users_and_sessions_on_every_node() {
    let (_dir, _redis, nodes) = start("send_delivery").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut io = Clients::start();
    // Seed 001's rooms in a claim namespace, on two nodes; a socket of another namespace in an equal room.
    for (id, node, user) in [("s1", a, "1"), ("s2", b, "2")] {
        let query = json!({"id_user": user, "room": "staff"});
        connected(
            io.connect(Conn::to(id, &node).ns("/chat").query(query))
                .await,
        );
    }
    let quiet = json!({"id_user": "9", "room": "staff"});
    connected(
        io.connect(Conn::to("other", &c).ns("/quiet").query(quiet))
            .await,
    );
    // Seed 002's users and sessions on `/`: alice twice (two sessions, two nodes), bob once.
    let root = |sub, sid| json!({"token": jwt(sub, sid)});
    connected(
        io.connect(Conn::to("alice1", &a).auth(root("alice", "sa1")))
            .await,
    );
    connected(
        io.connect(Conn::to("alice2", &c).auth(root("alice", "sa2")))
            .await,
    );
    connected(
        io.connect(Conn::to("bob", &b).auth(root("bob", "sb")))
            .await,
    );
    let http = Http::new();

    // JSON, seed 001's example, asked on the node that holds none of the sockets.
    let body =
        json!({"rooms": ["user.1", "staff"], "event": "update_store", "args": ["user", {"id": 1}]});
    let (status, answer) = post(
        &http,
        c,
        &format!("site=chat&apiKey={CHAT_KEY}"),
        "application/json",
        body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"namespace": "/chat", "event": "update_store",
               "rooms": [{"room": "user.1", "queued": 0}, {"room": "staff", "queued": 0}]})
    );
    for id in ["s1", "s2"] {
        let ev = io.expect(id, "update_store").await;
        assert_eq!(ev["args"], json!(["user", {"id": 1}]), "{id}");
    }
    // s1 is in both rooms and gets the event once; the equal room of /quiet gets nothing.
    io.expect_none("s1", "update_store", Duration::from_millis(300))
        .await;
    io.expect_none("other", "update_store", Duration::from_millis(10))
        .await;

    // The same as seed 001's backends send it: a form in the extended encoding (values are strings).
    let form = "rooms[]=user.1&rooms[]=staff&event=update_form&args[0]=user&args[1][id]=1";
    let query = format!("site=chat&apiKey={CHAT_KEY}");
    let kind = "application/x-www-form-urlencoded";
    let (status, answer) = post(&http, a, &query, kind, form).await;
    assert_eq!(status, 200, "{answer}");
    for id in ["s1", "s2"] {
        let ev = io.expect(id, "update_form").await;
        assert_eq!(ev["args"], json!(["user", {"id": "1"}]), "{id}");
    }
    let (status, answer) = post(&http, a, &query, kind, "rooms=staff&event=x&rooms=y").await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("\"rooms\""),
        "{answer}"
    );

    // Emit to a user (every socket of alice, on two nodes) and to a session of `/` (`site=/`), the key as a
    // bearer token checked against its hash.
    let push = |rooms: Value, event: &str| json!({"rooms": rooms, "event": event, "args": [event]});
    for (rooms, event, gets, not) in [
        (
            json!("user.alice"),
            "to-alice",
            vec!["alice1", "alice2"],
            "bob",
        ),
        (
            json!(["session.sa2"]),
            "to-session",
            vec!["alice2"],
            "alice1",
        ),
    ] {
        let res = http
            .client
            .post(b.url("/send?site=%2F"))
            .header("authorization", format!("Bearer {ROOT_KEY}"))
            .header("content-type", "application/json")
            .body(push(rooms, event).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        for id in gets {
            assert_eq!(io.expect(id, event).await["args"], json!([event]), "{id}");
        }
        io.expect_none(not, event, Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_a_json_error() {
    let (_dir, _redis, nodes) = start("send_errors").await;
    let a = &nodes[0];
    let http = Http::new();
    let ok = json!({"rooms": "staff", "event": "e"}).to_string();
    let key = format!("apiKey={CHAT_KEY}");
    let cases: Vec<(String, &str, String, u16, &str)> = vec![
        (
            key.clone(),
            "application/json",
            ok.clone(),
            400,
            "invalid site: is required",
        ),
        (
            "site=chat".into(),
            "application/json",
            ok.clone(),
            400,
            "invalid apiKey: is required",
        ),
        (
            "site=chat&apiKey=wrong".into(),
            "application/json",
            ok.clone(),
            401,
            "unknown site or wrong API key",
        ),
        (
            format!("site=nosuchsite&{key}"),
            "application/json",
            ok.clone(),
            401,
            "unknown site or wrong API key",
        ),
        (
            format!("site=quiet&{key}"),
            "application/json",
            ok.clone(),
            401,
            "unknown site or wrong API key",
        ),
        (
            format!("site=do-lab&{key}"),
            "application/json",
            ok.clone(),
            401,
            "unknown site or wrong API key",
        ),
        (
            format!("site=..%2Fetc&{key}"),
            "application/json",
            ok.clone(),
            401,
            "unknown site or wrong API key",
        ),
        (
            format!("site=chat&{key}"),
            "text/plain",
            ok.clone(),
            415,
            "the body must be application/json",
        ),
        (
            format!("site=chat&{key}"),
            "application/json",
            "{".into(),
            400,
            "invalid body: is not JSON",
        ),
        (
            format!("site=chat&{key}"),
            "application/json",
            "[]".into(),
            400,
            "invalid body: must be an object",
        ),
        (
            format!("site=chat&{key}"),
            "application/json",
            json!({"event": "e"}).to_string(),
            400,
            "invalid rooms",
        ),
        (
            format!("site=chat&{key}"),
            "application/json",
            json!({"rooms": "a/b", "event": "e"}).to_string(),
            400,
            "invalid rooms",
        ),
        (
            format!("site=chat&{key}"),
            "application/json",
            json!({"rooms": "a"}).to_string(),
            400,
            "invalid event",
        ),
        (
            format!("site=chat&{key}"),
            "application/json",
            json!({"rooms": "a", "event": "connect"}).to_string(),
            400,
            "invalid event",
        ),
        (
            format!("site=chat&{key}"),
            "application/json",
            json!({"rooms": "a", "event": "e", "args": 1}).to_string(),
            400,
            "invalid args",
        ),
    ];
    for (query, kind, body, status, says) in cases {
        let (got, answer) = post(&http, a, &query, kind, body).await;
        assert_eq!(got, status, "{query} {kind}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error: {answer}"));
        assert!(error.starts_with(says), "{query} {kind}: {error}");
    }
    // Over the body limit: `413` as soon as the limit is passed, without reading the rest. The client may still
    // be writing the rest when the node closes, and then sees the connection reset before the answer (TCP
    // discards it): either way nothing was pushed and the node serves the next request.
    let res = http
        .client
        .post(a.url(&format!("/send?site=chat&{key}")))
        .header("content-type", "application/json")
        .body("x".repeat(300 * 1024))
        .send()
        .await;
    match res {
        Ok(res) => {
            assert_eq!(res.status(), 413);
            let answer: Value = res.json().await.unwrap();
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("the body is larger than"),
                "{answer}"
            );
        }
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }
    assert_eq!(http.status(a, "/health").await, 200);
    // The right key as a bearer token works; GET is not a way to push.
    let res = http
        .client
        .post(a.url("/send?site=chat"))
        .header("authorization", format!("Bearer {CHAT_KEY}"))
        .header("content-type", "application/json; charset=utf-8")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(Http::new().status(a, "/send?site=chat").await, 405);
}

/// Pushes keep their order while the client's connection upgrades from long-polling to websocket: the packets the
/// long-polling queue still holds go out on the websocket before those written straight to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_keep_their_order_across_the_upgrade_to_websocket() {
    const PUSHES: i64 = 150;
    let (_dir, _redis, nodes) = start("send_upgrade").await;
    let a = &nodes[0];
    let mut io = Clients::start();
    let query = json!({"id_user": "1", "room": "staff"});
    connected(
        io.connect(
            Conn::to("up", a)
                .ns("/chat")
                .query(query)
                .transports(&["polling", "websocket"])
                .report_upgrade(),
        )
        .await,
    );
    // Sent at once, one after the other, while the client upgrades.
    let http = Http::new();
    for i in 0..PUSHES {
        let body = json!({"rooms": ["staff"], "event": "tick", "args": [i]});
        let (status, answer) = post(
            &http,
            a,
            &format!("site=chat&apiKey={CHAT_KEY}"),
            "application/json",
            body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let upgrade = io.expect("up", "upgrade").await;
    assert_eq!(upgrade["transport"], "websocket", "{upgrade}");
    for i in 0..PUSHES {
        let ev = io.expect("up", "tick").await;
        assert_eq!(ev["args"], json!([i]), "push {i} out of order");
    }
    io.expect_none("up", "tick", Duration::from_millis(300))
        .await;
}
