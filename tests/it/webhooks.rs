//! Lifecycle webhooks across real nodes and Redis, received by a real backend (`tests/js/webhook-receiver.mjs`)
//! that verifies every request with the official `standardwebhooks` package.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Clients, Conn, Receiver, cluster_with_config, eventually};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Waits until `n` distinct events have come (see [`summary`]).
async fn until(receiver: &Receiver, n: usize, what: &str) {
    eventually(Duration::from_secs(10), what, async || {
        (summary(&received(receiver).await).len() >= n).then_some(())
    })
    .await;
}

/// Every event received so far with its `webhook-id`, batches flattened, in arrival order.
async fn received(receiver: &Receiver) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    for r in receiver.requests().await {
        assert_eq!(r["verified"], true, "every request verifies: {r}");
        let id = r["headers"]["webhook-id"].as_str().unwrap().to_owned();
        match &r["body"] {
            Value::Array(batch) => all.extend(batch.iter().map(|e| (id.clone(), e.clone()))),
            one => all.push((id, one.clone())),
        }
    }
    all
}

fn config(url: &str, extra: &str) -> String {
    format!(
        r#"
[[namespace]]
name = "/chat"
auth = "claim"
rooms = ["handshake"]

[[namespace]]
name = "/quiet"
auth = "claim"
rooms = ["handshake"]

[[webhook]]
url = "{url}/hooks"
secret = "{SECRET}"
namespaces = ["/chat"]
retry_s = 60
{extra}
"#
    )
}

/// `(type, room, id_user)` of each event, duplicates (same `webhook-id`, as a receiver would) dropped.
fn summary(events: &[(String, Value)]) -> Vec<(String, String, String)> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|(id, e)| seen.insert((id.clone(), e.to_string())))
        .map(|(_, e)| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["data"]["room"].as_str().unwrap_or_default().to_owned(),
                e["data"]["id_user"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn ev(t: &str, room: &str, user: &str) -> (String, String, String) {
    (t.into(), room.into(), user.into())
}

/// Three nodes, a room filled from all of them and emptied: each transition reported once for the cluster, in
/// order, signed; a namespace no webhook wants reports nothing.
#[tokio::test]
async fn rooms_and_members_are_reported_once_per_cluster_in_order() {
    let receiver = Receiver::start(SECRET).await;
    let (_dir, _redis, nodes) =
        cluster_with_config("webhooks_once", 3, &config(receiver.base(), "")).await;
    let mut clients = Clients::start();
    // Each node counts its sockets off their path: a step that makes an event is reported before the next one
    // on another node starts, so the expected order is the only possible one.
    for (id, node, user, reported) in [("c1", 0, "42", 2), ("c2", 1, "42", 2), ("c3", 2, "7", 3)] {
        clients
            .join(Conn::to(id, &nodes[node]).ns("/chat").user(user, "Maths"))
            .await;
        until(&receiver, reported, "the joins").await;
    }
    clients
        .join(Conn::to("q", &nodes[0]).ns("/quiet").user("9", "Maths"))
        .await;
    for (id, reported) in [("c1", 3), ("c2", 4), ("c3", 6), ("q", 6)] {
        clients.disconnect(id).await;
        until(&receiver, reported, "the leaves").await;
    }
    // Anything sent twice (by two nodes) would come now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = received(&receiver).await;
    let got = summary(&events);
    assert_eq!(
        got,
        [
            ev("room.occupied", "Maths", ""),
            ev("member.added", "Maths", "42"),
            ev("member.added", "Maths", "7"),
            ev("member.removed", "Maths", "42"),
            ev("member.removed", "Maths", "7"),
            ev("room.vacated", "Maths", ""),
        ],
        "{events:#?}"
    );
    let (_, added) = &events[1];
    assert_eq!(added["data"]["namespace"], "/chat");
    assert_eq!(
        added["data"]["verified"], false,
        "claimed identities are not verified"
    );
    assert!(added["timestamp"].as_str().unwrap().ends_with('Z'));
}

/// A receiver answering `500` for a while, then down for 10 s: every event still arrives, in order; the
/// `webhook-id` of a retried event does not change.
#[tokio::test]
async fn failures_are_retried_and_nothing_is_lost() {
    let receiver = Receiver::start(SECRET).await;
    receiver.answer(json!({"status": 500, "times": 3})).await;
    let (_dir, _redis, nodes) =
        cluster_with_config("webhooks_retry", 2, &config(receiver.base(), "")).await;
    let mut clients = Clients::start();
    clients
        .join(Conn::to("c1", &nodes[0]).ns("/chat").user("1", "A"))
        .await;
    let events = eventually(
        Duration::from_secs(15),
        "the joins after 500s",
        async || {
            let events = received(&receiver).await;
            (summary(&events).len() >= 2).then_some(events)
        },
    )
    .await;
    let requests = receiver.requests().await;
    assert!(requests.len() >= 4, "three 500s then a 2xx: {requests:#?}");
    assert_eq!(
        requests[0]["headers"]["webhook-id"], requests[3]["headers"]["webhook-id"],
        "a retry keeps its webhook-id"
    );
    assert_eq!(
        summary(&events),
        [ev("room.occupied", "A", ""), ev("member.added", "A", "1")]
    );
    // Down for 10 s: its requests time out (a rule delaying every answer past the timeout).
    receiver
        .answer(json!({"delay_ms": 10_000, "times": 1000}))
        .await;
    let down = tokio::time::Instant::now();
    clients.disconnect("c1").await;
    clients
        .join(Conn::to("c2", &nodes[1]).ns("/chat").user("2", "B"))
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    receiver.reset().await;
    let events = eventually(
        Duration::from_secs(40),
        "the events of the outage",
        async || {
            let events = received(&receiver).await;
            (summary(&events).len() >= 4).then_some(events)
        },
    )
    .await;
    assert!(down.elapsed() >= Duration::from_secs(10));
    assert_eq!(
        summary(&events),
        [
            ev("member.removed", "A", "1"),
            ev("room.vacated", "A", ""),
            ev("room.occupied", "B", ""),
            ev("member.added", "B", "2"),
        ]
    );
}

/// With `batch_ms`, events come as JSON arrays gathering what happened within it, signed as one; socket events
/// when asked for, each socket's in its own place: connected before its rooms, disconnected after.
#[tokio::test]
async fn batches_are_arrays_in_order_with_socket_events() {
    let receiver = Receiver::start(SECRET).await;
    let extra = r#"batch_ms = 300
events = ["room.occupied", "room.vacated", "member.added", "member.removed", "socket.connected", "socket.disconnected"]"#;
    let (_dir, _redis, nodes) =
        cluster_with_config("webhooks_batch", 2, &config(receiver.base(), extra)).await;
    let mut clients = Clients::start();
    let s1 = clients
        .join(Conn::to("c1", &nodes[0]).ns("/chat").user("1", "A"))
        .await;
    let s2 = clients
        .join(Conn::to("c2", &nodes[1]).ns("/chat").user("2", "A"))
        .await;
    until(&receiver, 5, "the joins").await;
    clients.disconnect("c1").await;
    clients.disconnect("c2").await;
    until(&receiver, 10, "the leaves").await;
    let requests = receiver.requests().await;
    assert!(
        requests.iter().all(|r| r["body"].is_array()),
        "every request is an array: {requests:#?}"
    );
    assert!(
        requests.len() < 10,
        "events gathered into fewer requests: {requests:#?}"
    );
    let events = received(&receiver).await;
    let got = summary(&events);
    let at = |e: &(String, String, String)| got.iter().position(|g| g == e).unwrap();
    let mut sorted = got.clone();
    sorted.sort();
    let mut want = vec![
        ev("socket.connected", "", "1"),
        ev("socket.connected", "", "2"),
        ev("room.occupied", "A", ""),
        ev("member.added", "A", "1"),
        ev("member.added", "A", "2"),
        ev("member.removed", "A", "1"),
        ev("member.removed", "A", "2"),
        ev("room.vacated", "A", ""),
        ev("socket.disconnected", "", "1"),
        ev("socket.disconnected", "", "2"),
    ];
    want.sort();
    assert_eq!(sorted, want, "each once: {events:#?}");
    for user in ["1", "2"] {
        let order = [
            at(&ev("socket.connected", "", user)),
            at(&ev("member.added", "A", user)),
            at(&ev("member.removed", "A", user)),
            at(&ev("socket.disconnected", "", user)),
        ];
        assert!(order.is_sorted(), "user {user} in order: {got:?}");
    }
    let (occupied, vacated) = (
        at(&ev("room.occupied", "A", "")),
        at(&ev("room.vacated", "A", "")),
    );
    for user in ["1", "2"] {
        assert!(occupied < at(&ev("member.added", "A", user)), "{got:?}");
        assert!(vacated > at(&ev("member.removed", "A", user)), "{got:?}");
    }
    // Socket events name the socket.
    let sockets: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|(_, e)| e["type"] == "socket.connected")
        .map(|(_, e)| e["data"]["id_socket"].as_str().unwrap())
        .collect();
    assert_eq!(sockets, [s1.as_str(), s2.as_str()].into_iter().collect());
}

/// A node signing with another secret than the receiver's is refused by it (its check fails): the signature is
/// what the receiver verifies.
#[tokio::test]
async fn a_wrong_secret_is_rejected_by_the_receiver() {
    let receiver = Receiver::start("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    let (_dir, _redis, nodes) =
        cluster_with_config("webhooks_secret", 1, &config(receiver.base(), "")).await;
    let mut clients = Clients::start();
    clients
        .join(Conn::to("c1", &nodes[0]).ns("/chat").user("1", "A"))
        .await;
    let requests = eventually(Duration::from_secs(10), "a request", async || {
        let r = receiver.requests().await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(requests[0]["verified"], false, "{:#?}", requests[0]);
    assert!(requests[0]["error"].is_string());
}

/// A room whose last socket is on a node that is SIGKILLed (it never says its sockets left): once the survivors
/// declare it down (no heartbeat for 3 intervals of 300 ms), its member's `member.removed` and the room's
/// `room.vacated` come, once each, after the room's earlier events, in order, and nothing is reported twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_last_socket_vacates_its_room_once() {
    let receiver = Receiver::start(SECRET).await;
    let (_dir, _redis, nodes) = crate::harness::cluster_with_config_and(
        "webhooks_killed",
        3,
        &config(receiver.base(), ""),
        &["--heartbeat-ms", "300"],
    )
    .await;
    let mut clients = Clients::start();
    // The counts follow the sockets off their path: each step reported before the next starts.
    for (id, node, user, reported) in [("c1", 0, "1", 2), ("c2", 1, "2", 3), ("c3", 2, "3", 4)] {
        clients
            .join(Conn::to(id, &nodes[node]).ns("/chat").user(user, "R"))
            .await;
        until(&receiver, reported, "the joins").await;
    }
    clients.disconnect("c1").await;
    until(&receiver, 5, "c1's leave").await;
    clients.disconnect("c2").await;
    let before = [
        ev("room.occupied", "R", ""),
        ev("member.added", "R", "1"),
        ev("member.added", "R", "2"),
        ev("member.added", "R", "3"),
        ev("member.removed", "R", "1"),
        ev("member.removed", "R", "2"),
    ];
    until(&receiver, before.len(), "the events before the kill").await;
    assert_eq!(summary(&received(&receiver).await), before);

    nodes[2].signal("KILL");
    let killed = std::time::SystemTime::now();
    // Taken over within a lease (5 s) should c have been the sender.
    let events = eventually(Duration::from_secs(20), "room.vacated", async || {
        let events = received(&receiver).await;
        summary(&events)
            .contains(&ev("room.vacated", "R", ""))
            .then_some(events)
    })
    .await;
    let vacated = events
        .iter()
        .map(|(_, e)| e)
        .find(|e| e["type"] == "room.vacated")
        .unwrap();
    let at = humantime::parse_rfc3339(vacated["timestamp"].as_str().unwrap()).unwrap();
    assert!(
        at >= killed + Duration::from_millis(600),
        "counted once c was declared down, not before: {vacated}"
    );
    assert!(
        nodes[..2].iter().any(|n| n
            .log_text()
            .contains("webhooks: a node's sockets taken from the counts")),
        "no survivor reaped c"
    );
    // Both survivors reap; a second vacated (or anything else twice) would come now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = received(&receiver).await;
    let mut all = before.to_vec();
    all.extend([ev("member.removed", "R", "3"), ev("room.vacated", "R", "")]);
    assert_eq!(summary(&events), all, "{events:#?}");
}

/// Members' presence (`presence = true`, no webhook needed): a room's sockets hear of a user's first socket in it
/// and of their last one leaving, counted over the cluster: a second tab on another node, or the first of two
/// leaving, says nothing. A namespace without it says nothing at all.
#[tokio::test]
async fn members_presence_is_told_to_the_room_once_per_cluster() {
    let config = r#"
[[namespace]]
name = "/class"
auth = "claim"
rooms = ["handshake"]
presence = true

[[namespace]]
name = "/plain"
auth = "claim"
rooms = ["handshake"]
"#;
    let (_dir, _redis, nodes) = cluster_with_config("webhooks_presence", 2, config).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut clients = Clients::start();
    let member = |user: &str| json!([{"room": "Maths", "id_user": user}]);

    clients
        .join(Conn::to("watcher", b).ns("/class").user("t", "Maths"))
        .await;
    assert_eq!(
        clients.expect("watcher", "member-added").await["args"],
        member("t")
    );
    clients
        .join(Conn::to("a1", a).ns("/class").user("alice", "Maths"))
        .await;
    assert_eq!(
        clients.expect("watcher", "member-added").await["args"],
        member("alice")
    );
    assert_eq!(
        clients.expect("a1", "member-added").await["args"],
        member("alice")
    );
    // Her second socket, on the other node: already a member.
    clients
        .join(Conn::to("a2", b).ns("/class").user("alice", "Maths"))
        .await;
    clients
        .expect_none("watcher", "member-added", Duration::from_millis(800))
        .await;
    // Her first socket leaves: she is still there.
    clients.disconnect("a1").await;
    clients
        .expect_none("watcher", "member-removed", Duration::from_millis(800))
        .await;
    clients.disconnect("a2").await;
    assert_eq!(
        clients.expect("watcher", "member-removed").await["args"],
        member("alice")
    );
    // Without `presence`, nothing.
    clients
        .join(Conn::to("p1", a).ns("/plain").user("x", "Maths"))
        .await;
    clients
        .join(Conn::to("p2", b).ns("/plain").user("y", "Maths"))
        .await;
    clients
        .expect_none("p1", "member-added", Duration::from_millis(800))
        .await;
    // Each change told once: nothing doubled meanwhile.
    clients
        .expect_none("watcher", "member-added", Duration::from_millis(10))
        .await;
    clients
        .expect_none("watcher", "member-removed", Duration::from_millis(10))
        .await;
}

/// A node paused (SIGSTOP) long enough to be declared down: a survivor reaps it, so its socket's room is vacated
/// and the socket disconnected for the backend (`socket.disconnected` with its user); resumed with the socket still
/// connected, it counts the socket again (`socket.connected`, `room.occupied`, `member.added`), so that the
/// socket's later leave vacates the room again instead of counting nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_counts_its_sockets_again_when_it_comes_back() {
    let receiver = Receiver::start(SECRET).await;
    let events = r#"events = ["room.occupied", "room.vacated", "member.added", "member.removed", "socket.connected", "socket.disconnected"]"#;
    let (_dir, _redis, nodes) = crate::harness::cluster_with_config_and(
        "webhooks_paused",
        2,
        &config(receiver.base(), events),
        &["--heartbeat-ms", "300"],
    )
    .await;
    let mut clients = Clients::start();
    let sid = clients
        .join(Conn::to("c1", &nodes[1]).ns("/chat").user("1", "R"))
        .await;
    until(&receiver, 3, "the connect").await;

    nodes[1].pause();
    let reaped = [
        ev("member.removed", "R", "1"),
        ev("room.vacated", "R", ""),
        ev("socket.disconnected", "", "1"),
    ];
    // Taken over within a lease (5 s) should b have been the sender.
    eventually(Duration::from_secs(20), "b reaped", async || {
        (summary(&received(&receiver).await).len() >= 6).then_some(())
    })
    .await;
    let events = received(&receiver).await;
    let got = summary(&events);
    assert_eq!(got[3..], reaped, "{events:#?}");
    let (_, gone) = events
        .iter()
        .find(|(_, e)| e["type"] == "socket.disconnected")
        .unwrap();
    assert_eq!(gone["data"]["id_socket"], sid.as_str(), "{gone}");
    assert_eq!(gone["data"]["verified"], false, "{gone}");

    nodes[1].signal("CONT");
    eventually(
        Duration::from_secs(20),
        "b's socket counted again",
        async || (summary(&received(&receiver).await).len() >= 9).then_some(()),
    )
    .await;
    clients.disconnect("c1").await;
    eventually(Duration::from_secs(20), "c1's leave", async || {
        (summary(&received(&receiver).await).len() >= 12).then_some(())
    })
    .await;
    // Anything counted twice (both restores, both nodes' dispatchers) would come now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = received(&receiver).await;
    let connected = [
        ev("socket.connected", "", "1"),
        ev("room.occupied", "R", ""),
        ev("member.added", "R", "1"),
    ];
    let mut all = connected.to_vec();
    all.extend(reaped.clone());
    all.extend(connected);
    all.extend(reaped);
    assert_eq!(summary(&events), all, "{events:#?}");
    assert!(
        nodes[1]
            .log_text()
            .contains("webhook counts: this node's sockets counted again"),
        "b did not log it"
    );
}

/// Clients that leave the moment they have their CONNECT answer, all at once: the node may not have set their
/// disconnect handler yet (socketioxide then never calls it), yet every room they occupied is vacated and every
/// member removed, once.
#[tokio::test]
async fn sockets_leaving_as_they_connect_are_counted_out() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    const N: usize = 80;
    let receiver = Receiver::start(SECRET).await;
    let (_dir, _redis, nodes) =
        cluster_with_config("webhooks_hasty", 1, &config(receiver.base(), "")).await;
    let port = nodes[0].port;
    let mut hasty = tokio::task::JoinSet::new();
    for i in 0..N {
        hasty.spawn(async move {
            let mut ws =
                crate::harness::engine_websocket(port, &format!("&id_user=u{i}&room=R{i}")).await;
            ws.send(Message::text("40/chat,")).await.unwrap();
            // Half of them leave before their CONNECT answer comes, half as it comes: gone without a word.
            if i % 2 == 0 {
                return;
            }
            loop {
                let m = ws.next().await.unwrap().unwrap();
                if m.to_text().unwrap_or_default().starts_with("40/chat,") {
                    break;
                }
            }
        });
    }
    while let Some(done) = hasty.join_next().await {
        done.unwrap();
    }
    // A room's events: none (its socket left before it was in), or all four in order.
    let whole = |got: &[(String, String, String)], i: usize| {
        let (room, user) = (format!("R{i}"), format!("u{i}"));
        let of_room: Vec<_> = got.iter().filter(|(_, r, _)| *r == room).cloned().collect();
        let all = [
            ev("room.occupied", &room, ""),
            ev("member.added", &room, &user),
            ev("member.removed", &room, &user),
            ev("room.vacated", &room, ""),
        ];
        (of_room.is_empty() || of_room == all, of_room)
    };
    // Their connects and leaves are counted within milliseconds: none is still on its way after this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eventually(
        Duration::from_secs(15),
        "every occupied room vacated",
        async || {
            let got = summary(&received(&receiver).await);
            (0..N).all(|i| whole(&got, i).0).then_some(())
        },
    )
    .await;
    // Anything sent twice would come now.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = summary(&received(&receiver).await);
    for i in 0..N {
        let (ok, of_room) = whole(&got, i);
        assert!(ok, "room R{i}: {of_room:?}");
    }
    // Those that waited for their answer were in.
    let occupied = got.iter().filter(|(t, ..)| t == "room.occupied").count();
    assert!(occupied >= N / 2, "{occupied} rooms occupied");
}
