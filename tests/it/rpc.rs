//! Client events as RPC (docs/rpc.md): a real backend (tests/js/webhook-receiver.mjs, a child process of each test)
//! verifies every call with the official `standardwebhooks` package and answers as the test tells it; the
//! official socket.io-client sends the events and reads the acks.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// The secret both sides share (16 bytes after `whsec_`, base64).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another one: the receiver refuses what it signs.
const OTHER_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// One node whose `/` and `/jwt` namespaces send `order:*` and `profile:save` to `receiver`, signed with `secret`.
async fn node(test: &str, receiver: &Receiver, secret: &str, timeout_ms: u64) -> (Redis, Node) {
    node_with(test, receiver, secret, timeout_ms, &[]).await
}

/// [`node`], started with `args` too.
async fn node_with(
    test: &str,
    receiver: &Receiver,
    secret: &str,
    timeout_ms: u64,
    args: &[&str],
) -> (Redis, Node) {
    let config = format!(
        r#"
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake", "user"]
rpc_url = "{url}"
rpc_events = ["order:*", "profile:save"]
rpc_secret = "{secret}"
rpc_timeout_ms = {timeout_ms}
forward = true
"#,
        url = receiver.url("/rpc"),
    );
    let (_dir, redis, mut nodes) = cluster_with_config_and(test, 1, &config, args).await;
    (redis, nodes.remove(0))
}

/// Client `id`'s next ack (its arguments).
async fn ack(clients: &mut Clients, id: &str) -> Value {
    clients.expect(id, "ack").await["args"].clone()
}

/// `calls` to the backend as the receiver recorded them, once there are `n`.
async fn recorded(receiver: &Receiver, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(5), "the calls recorded", async || {
        let all = receiver.requests().await;
        (all.len() >= n).then_some(all)
    })
    .await
}

#[tokio::test]
async fn the_backends_answer_is_the_ack_and_the_call_is_signed_with_the_socket_in_it() {
    let receiver = Receiver::start(SECRET).await;
    let (_redis, node) = node("rpc_answer", &receiver, SECRET, 5000).await;
    receiver
        .answer(json!({"body": {"order": 7, "ok": true}, "times": 1}))
        .await;
    let mut clients = Clients::start();
    let sid = clients
        .join(Conn::to("a", &node.base()).user("alice", "Maths"))
        .await;
    clients
        .emit("a", "order:create", json!([{"item": "pen"}, 2, "x"]), true)
        .await;
    assert_eq!(
        ack(&mut clients, "a").await,
        json!([{"order": 7, "ok": true}])
    );

    let calls = recorded(&receiver, 1).await;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call["verified"], true, "{call}");
    assert_eq!(call["path"], "/rpc");
    assert_eq!(call["method"], "POST");
    assert!(
        call["headers"]["webhook-id"]
            .as_str()
            .unwrap()
            .starts_with("msg_")
    );
    let body = &call["body"];
    assert_eq!(body["event"], "order:create");
    assert_eq!(body["args"], json!([{"item": "pen"}, 2, "x"]));
    assert_eq!(body["namespace"], "/");
    assert_eq!(body["id_socket"], sid);
    assert_eq!(body["id_user"], "alice");
    assert_eq!(
        body["verified"], false,
        "a claimed identity is not verified"
    );
    let mut rooms: Vec<String> = serde_json::from_value(body["rooms"].clone()).unwrap();
    rooms.sort();
    assert_eq!(rooms, ["Maths", "user.alice"]);

    // Without an ack the event is still sent (fire and forget), with another webhook-id; the default answer `{}`
    // of a second call is acked as it is.
    clients
        .emit("a", "profile:save", json!([{"name": "A"}]), false)
        .await;
    let calls = recorded(&receiver, 2).await;
    assert_eq!(calls[1]["body"]["event"], "profile:save");
    assert_ne!(
        calls[0]["headers"]["webhook-id"],
        calls[1]["headers"]["webhook-id"]
    );
    clients.emit("a", "order:list", json!([]), true).await;
    assert_eq!(ack(&mut clients, "a").await, json!([{}]));

    let http = Http::new();
    let ok = "socket_identity_rpc_calls_total{outcome=\"ok\"}";
    assert_eq!(http.metric(&node, ok).await, Some(3.0));
}

#[tokio::test]
async fn events_not_listed_are_not_sent_and_rpc_events_are_not_forwarded() {
    let receiver = Receiver::start(SECRET).await;
    let (_redis, node) = node("rpc_not_listed", &receiver, SECRET, 5000).await;
    let mut clients = Clients::start();
    clients
        .join(Conn::to("a", &node.base()).user("alice", "r"))
        .await;
    clients
        .join(Conn::to("b", &node.base()).user("bob", "r"))
        .await;
    // `chat` is forwarded (forward = true), not sent; `profile:other` is neither listed nor a prefix's.
    clients.emit("a", "chat", json!(["hi"]), false).await;
    clients.emit("a", "profile:other", json!([1]), false).await;
    clients.expect("b", "chat").await;
    clients.emit("a", "order:create", json!([1]), true).await;
    ack(&mut clients, "a").await;
    let calls = receiver.requests().await;
    let events: Vec<&Value> = calls.iter().map(|c| &c["body"]["event"]).collect();
    assert_eq!(events, [&json!("order:create")]);
    // The RPC event reached the backend only: not the other sockets of the forwarding namespace.
    clients
        .expect_none("b", "order:create", Duration::from_millis(300))
        .await;
    assert!(
        clients
            .within("b", &["profile:other"], Duration::ZERO)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_backend_and_the_client_is_told() {
    let receiver = Receiver::start(SECRET).await;
    let (_redis, node) = node("rpc_wrong_secret", &receiver, OTHER_SECRET, 5000).await;
    let mut clients = Clients::start();
    clients
        .join(Conn::to("a", &node.base()).user("alice", "r"))
        .await;
    clients.emit("a", "order:create", json!([1]), true).await;
    assert_eq!(
        ack(&mut clients, "a").await,
        json!([{"error": "the backend answered 401"}])
    );
    let calls = recorded(&receiver, 1).await;
    assert_eq!(calls[0]["verified"], false);
    let http = Http::new();
    let status = "socket_identity_rpc_calls_total{outcome=\"status\"}";
    assert_eq!(http.metric(&node, status).await, Some(1.0));
}

#[tokio::test]
async fn errors_and_timeouts_are_error_acks_without_the_backends_words() {
    let receiver = Receiver::start(SECRET).await;
    let (_redis, node) = node("rpc_errors", &receiver, SECRET, 300).await;
    let mut clients = Clients::start();
    clients
        .join(Conn::to("a", &node.base()).user("alice", "r"))
        .await;

    receiver
        .answer(json!({"status": 500, "body": {"trace": "secret internals"}, "times": 1}))
        .await;
    clients.emit("a", "order:create", json!([1]), true).await;
    assert_eq!(
        ack(&mut clients, "a").await,
        json!([{"error": "the backend answered 500"}])
    );

    receiver.answer(json!({"delay_ms": 3000, "times": 1})).await;
    let sent = Instant::now();
    clients.emit("a", "order:create", json!([2]), true).await;
    assert_eq!(
        ack(&mut clients, "a").await,
        json!([{"error": "the backend did not answer within 300 ms"}])
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2000),
        "the timeout ack came after {took:?}"
    );
    let http = Http::new();
    let timeout = "socket_identity_rpc_calls_total{outcome=\"timeout\"}";
    assert_eq!(http.metric(&node, timeout).await, Some(1.0));

    // Binary arguments are refused, not sent.
    clients
        .emit("a", "order:create", json!([{"$binary": "AAEC"}]), true)
        .await;
    let refused = ack(&mut clients, "a").await;
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("binary arguments"),
        "{refused}"
    );
    assert_eq!(receiver.requests().await.len(), 2);
}

#[tokio::test]
async fn a_socket_has_at_most_eight_calls_in_flight_the_rest_are_busy() {
    let receiver = Receiver::start(SECRET).await;
    let (_redis, node) = node("rpc_busy", &receiver, SECRET, 5000).await;
    receiver
        .answer(json!({"delay_ms": 1500, "body": "done"}))
        .await;
    let mut clients = Clients::start();
    clients
        .join(Conn::to("a", &node.base()).user("alice", "r"))
        .await;
    for i in 0..12 {
        clients.emit("a", "order:create", json!([i]), true).await;
    }
    let mut acks = Vec::new();
    for _ in 0..12 {
        acks.push(ack(&mut clients, "a").await);
    }
    let busy = acks
        .iter()
        .filter(|a| **a == json!([{"error": "busy"}]))
        .count();
    let done = acks.iter().filter(|a| **a == json!(["done"])).count();
    assert_eq!((busy, done), (4, 8), "{acks:?}");
    assert_eq!(receiver.requests().await.len(), 8);
    let http = Http::new();
    let sample = "socket_identity_rpc_calls_total{outcome=\"busy\"}";
    assert_eq!(http.metric(&node, sample).await, Some(4.0));
    // Places come back: a later call goes through.
    receiver.answer(json!({"body": "later"})).await;
    clients
        .emit("a", "order:create", json!(["again"]), true)
        .await;
    let later = ack(&mut clients, "a").await;
    assert!(
        later == json!(["later"]) || later == json!(["done"]),
        "{later}"
    );
}

/// `RPC_MAX_IN_FLIGHT` bounds the node's calls, all sockets together: 3 sockets with 3 calls each (under their
/// own bound of 8) against a node bound of 5 get 5 answers and 4 `busy`, and the backend sees 5 calls.
#[tokio::test]
async fn a_node_has_at_most_rpc_max_in_flight_calls_the_rest_are_busy() {
    let receiver = Receiver::start(SECRET).await;
    let (_redis, node) = node_with(
        "rpc_node_busy",
        &receiver,
        SECRET,
        5000,
        &["--rpc-max-in-flight", "5"],
    )
    .await;
    receiver
        .answer(json!({"delay_ms": 1500, "body": "done"}))
        .await;
    let mut clients = Clients::start();
    let ids = ["a", "b", "c"];
    for id in ids {
        clients.join(Conn::to(id, &node.base()).user(id, "r")).await;
    }
    for i in 0..3 {
        for id in ids {
            clients.emit(id, "order:create", json!([i]), true).await;
        }
    }
    let mut acks = Vec::new();
    for id in ids {
        for _ in 0..3 {
            acks.push(ack(&mut clients, id).await);
        }
    }
    let busy = acks
        .iter()
        .filter(|a| **a == json!([{"error": "busy"}]))
        .count();
    let done = acks.iter().filter(|a| **a == json!(["done"])).count();
    assert_eq!((busy, done), (4, 5), "{acks:?}");
    assert_eq!(receiver.requests().await.len(), 5);
    let http = Http::new();
    let sample = "socket_identity_rpc_calls_total{outcome=\"busy\"}";
    assert_eq!(http.metric(&node, sample).await, Some(4.0));
}

#[tokio::test]
async fn the_answers_actions_join_leave_and_disconnect_and_bad_ones_are_refused_whole() {
    let receiver = Receiver::start(SECRET).await;
    let (_redis, node) = node("rpc_actions", &receiver, SECRET, 5000).await;
    let mut clients = Clients::start();
    let sid = clients
        .join(Conn::to("a", &node.base()).user("alice", "lobby"))
        .await;
    let rooms_of_last_call = async |receiver: &Receiver| {
        let calls = receiver.requests().await;
        let mut rooms: Vec<String> =
            serde_json::from_value(calls.last().unwrap()["body"]["rooms"].clone()).unwrap();
        rooms.sort();
        rooms
    };

    receiver
        .answer(json!({"times": 1, "body": {"ack": {"moved": true}, "actions": {"join": ["vip", "Café"], "leave": ["lobby"]}}}))
        .await;
    clients.emit("a", "order:move", json!([]), true).await;
    assert_eq!(ack(&mut clients, "a").await, json!([{"moved": true}]));
    clients.emit("a", "order:look", json!([]), true).await;
    ack(&mut clients, "a").await;
    assert_eq!(
        rooms_of_last_call(&receiver).await,
        ["Café", "user.alice", "vip"]
    );
    let http = Http::new();
    let vip = http.users(&node, "vip").await;
    assert_eq!(vip.set(), [(sid.clone(), "alice".to_owned())].into());

    // An invalid room, or another user's private room: the whole answer is refused, nothing applied.
    for bad in [
        json!({"join": ["a/b"]}),
        json!({"join": ["ok-room", "user.bob"]}),
        json!({"leave": ["user.alice"]}),
        json!({"join": ["session.s1"], "disconnect": true}),
    ] {
        receiver
            .answer(json!({"times": 1, "body": {"ack": "no", "actions": bad}}))
            .await;
        clients.emit("a", "order:move", json!([]), true).await;
        assert_eq!(
            ack(&mut clients, "a").await,
            json!([{"error": "the backend asked for invalid actions"}]),
            "{bad}"
        );
    }
    clients.emit("a", "order:look", json!([]), true).await;
    ack(&mut clients, "a").await;
    assert_eq!(
        rooms_of_last_call(&receiver).await,
        ["Café", "user.alice", "vip"]
    );
    let sample = "socket_identity_rpc_calls_total{outcome=\"bad_actions\"}";
    assert_eq!(http.metric(&node, sample).await, Some(4.0));

    // A plain answer with other keys is only an ack.
    receiver
        .answer(json!({"times": 1, "body": {"ack": 1, "actions": {"disconnect": true}, "x": 2}}))
        .await;
    clients.emit("a", "order:x", json!([]), true).await;
    assert_eq!(
        ack(&mut clients, "a").await,
        json!([{"ack": 1, "actions": {"disconnect": true}, "x": 2}])
    );

    // Disconnect: the ack first, then the disconnection.
    receiver
        .answer(json!({"times": 1, "body": {"ack": "bye", "actions": {"disconnect": true}}}))
        .await;
    clients.emit("a", "order:leave", json!([]), true).await;
    assert_eq!(ack(&mut clients, "a").await, json!(["bye"]));
    let gone = clients.expect("a", "disconnect").await;
    assert_eq!(gone["reason"], "io server disconnect", "{gone}");
}
