//! Connection state recovery (socket.io 4.6's protocol) with real components: a real Redis, two node processes,
//! and the official socket.io-client reconnecting by itself through a TCP proxy the test cuts, holds shut and
//! points at another node.
//!
//! A client cut off within its namespace's `recovery_window_s` comes back (to its node, another one, or a
//! survivor of its node's SIGKILL) as the same socket, in the same rooms, and gets every broadcast it missed,
//! once, in order, before live ones; each broadcast carries its offset as its last argument. Past the window,
//! after a deliberate disconnect or a kick, or naming another identity, a reconnection is a new session that gets
//! nothing of the old one's.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use crate::harness::*;

const API_KEY: &str = "recovery-key-0123456789abcdef";
const SECRET: &str = "recovery-test-secret-0123456789";
const ADMIN_PASSWORD: &str = "recovery admin password";

/// The window of `/short`, in seconds; the others' is a minute, far longer than any test.
const SHORT_WINDOW_S: u64 = 2;

/// `/live` and `/short` (claim, handshake room, pushes), `/verified` (JWT, `user.{id}` rooms, pushes), `/relay`
/// (forwarding), the admin UI for its kick.
fn config() -> String {
    let admin_hash = bcrypt::hash(ADMIN_PASSWORD, 4).unwrap();
    format!(
        r#"
[[namespace]]
name = "/live"
auth = "claim"
rooms = ["handshake"]
api_key = "{API_KEY}"
recovery_window_s = 60

[[namespace]]
name = "/short"
auth = "claim"
rooms = ["handshake"]
api_key = "{API_KEY}"
recovery_window_s = {SHORT_WINDOW_S}

[[namespace]]
name = "/verified"
auth = "jwt"
jwt_secret = "{SECRET}"
rooms = ["user"]
api_key = "{API_KEY}"
recovery_window_s = 60

[[namespace]]
name = "/relay"
auth = "claim"
rooms = ["handshake"]
forward = true
recovery_window_s = 60

[admin]
enabled = true
username = "admin"
password_hash = "{admin_hash}"
"#
    )
}

/// Redis and nodes `a` and `b`, serving [`config`].
async fn start(test: &str) -> (std::path::PathBuf, Redis, Vec<Node>) {
    cluster_with_config(test, 2, &config()).await
}

/// `POST /send` of `news` with argument `n` to `room` of `ns`, through `node` (no ack: a recorded broadcast).
async fn send(http: &Http, node: &Node, ns: &str, room: &str, n: u64) {
    let site = ns.trim_start_matches('/');
    let body = json!({"rooms": [room], "event": "news", "args": [n]});
    let (status, answer) = http
        .push(node, &format!("site={site}&apiKey={API_KEY}"), &body)
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// An offset, `<ms>-<seq>`, as a pair that orders as the log does.
fn offset(v: &Value) -> (u64, u64) {
    let parsed = v.as_str().and_then(|s| {
        let (ms, seq) = s.split_once('-')?;
        Some((ms.parse().ok()?, seq.parse().ok()?))
    });
    parsed.unwrap_or_else(|| panic!("not an offset: {v}"))
}

/// The last argument of event `ev`, which must be an offset, and the arguments before it.
fn split_offset(ev: &Value) -> (&[Value], (u64, u64)) {
    let args = ev["args"].as_array().unwrap_or_else(|| panic!("{ev}"));
    let (last, rest) = args
        .split_last()
        .unwrap_or_else(|| panic!("no arguments: {ev}"));
    (rest, offset(last))
}

/// Client `id`'s next `news` events, which must carry `expected`'s numbers in that order, each with an offset
/// after the one before (and after `after`); returns the last offset.
async fn news(io: &mut Clients, id: &str, expected: &[u64], after: (u64, u64)) -> (u64, u64) {
    let mut last = after;
    for n in expected {
        let ev = io.expect(id, "news").await;
        let (args, at) = split_offset(&ev);
        assert_eq!(args, [json!(n)], "{id} expected news {n}: {ev}");
        assert!(at > last, "{id}: offset {at:?} not after {last:?}: {ev}");
        last = at;
    }
    last
}

/// Asserts that client `id` gets no more `news` (a replayed event twice, or one it should not have).
async fn no_more_news(io: &mut Clients, id: &str) {
    io.expect_none(id, "news", Duration::from_millis(500)).await;
}

/// Cuts `id`'s connection and keeps it away: the proxy refuses new connections until told otherwise.
async fn away(proxy: &Proxy, io: &mut Clients, id: &str) {
    proxy.refuse(true);
    proxy.cut().await;
    let ev = io.expect(id, "disconnect").await;
    assert_eq!(ev["reason"], "transport close", "{ev}");
}

/// Asserts that the `connect_error`s client `id` got were all the proxy's refusals, none the server's.
async fn only_proxy_refusals(io: &mut Clients, id: &str) {
    while let Some(ev) = io.within(id, &["connect_error"], Duration::ZERO).await {
        assert_eq!(
            ev["message"], PROXY_REFUSED,
            "the server refused {id}: {ev}"
        );
    }
}

/// Where `GET /{room}/users?namespace={ns}`, asked of `node`, lists socket `sid`: the node of each entry for it
/// (one entry: listed once).
async fn listed_on(http: &Http, node: &Node, ns: &str, room: &str, sid: &str) -> Vec<String> {
    let users = http.users_in(&node.base(), room, ns).await;
    assert_eq!(users.status, 200, "{:?}", users.body);
    let entries = users.body.as_array().unwrap();
    entries
        .iter()
        .filter(|u| u["id_socket"] == sid)
        .map(|u| u["node"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Waits until no node lists `sid` in `room` any more: the server has seen its socket go (bounded).
async fn gone(http: &Http, node: &Node, ns: &str, room: &str, sid: &str) {
    eventually(
        Duration::from_secs(5),
        "the server to see the socket go",
        async || {
            listed_on(http, node, ns, room, sid)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// A token of `/verified` for `sub`.
fn token(sub: &str) -> String {
    hs256(&json!({"sub": sub, "exp": unix_now() + 600}), SECRET)
}

/// Client `c` through a new proxy to `node`, in room R of `ns`, reconnecting by itself, its first push (news 0)
/// received: the proxy, its first `connect`, and that push's offset.
async fn watched(
    http: &Http,
    io: &mut Clients,
    node: &Node,
    ns: &str,
) -> (Proxy, Connected, (u64, u64)) {
    let proxy = Proxy::start(node.port).await;
    let conn = Conn::to("c", &node.via(&proxy))
        .ns(ns)
        .user("uc", "R")
        .reconnect();
    let first = io.enter(conn).await;
    assert!(first.pid.is_some(), "no pid with recovery on: {first:?}");
    assert!(!first.recovered, "{first:?}");
    send(http, node, ns, "R", 0).await;
    let seen = news(io, "c", &[0], (0, 0)).await;
    (proxy, first, seen)
}

/// How client `c` loses its connection, and where it comes back.
enum Loss {
    /// Cut, back to its node.
    Cut,
    /// Cut, back through the other node.
    CutAndMoved,
    /// Its node SIGKILLed (it saves nothing on the way out), back through the survivor.
    NodeKilled,
}

/// Cut off and back to the same node: the same socket, the 3 pushes it missed once and in order before a live
/// one, each with a later offset, and listed once in its room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_on_its_node_gets_what_it_missed() {
    missed_pushes_come_back("recovery_same_node", Loss::Cut).await;
}

/// Cut off from node a, back through node b: b restores the socket from Redis, with the pushes sent through b
/// while it was away, and both nodes list it once, on b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_on_another_node_gets_what_it_missed() {
    missed_pushes_come_back("recovery_other_node", Loss::CutAndMoved).await;
}

/// The node holding the socket is SIGKILLed: the client comes back on the survivor, recovered, with the pushes
/// sent through the survivor meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_node_recovers_on_the_survivor() {
    missed_pushes_come_back("recovery_killed_node", Loss::NodeKilled).await;
}

/// Client `c` of node a loses its connection (`loss`); while it is away, pushes 1 to 3 go to its room through
/// the node it comes back to. Back, it has its socket again and gets them once, in order, each with a later
/// offset, before a live push 4; every node lists it once, on the node it came back to.
async fn missed_pushes_come_back(test: &str, loss: Loss) {
    let (_dir, _redis, mut nodes) = start(test).await;
    let http = Http::new();
    let mut io = Clients::start();
    let (proxy, first, seen) = watched(&http, &mut io, &nodes[0], "/live").await;
    if let Loss::NodeKilled = loss {
        proxy.refuse(true);
        let a = nodes.remove(0);
        a.signal("KILL");
        drop(a);
        let ev = io.expect("c", "disconnect").await;
        assert_eq!(ev["reason"], "transport close", "{ev}");
    } else {
        away(&proxy, &mut io, "c").await;
    }
    let node = match loss {
        Loss::Cut => &nodes[0],
        Loss::CutAndMoved | Loss::NodeKilled => &nodes[nodes.len() - 1],
    };
    proxy.point_to(node.port);
    for n in 1..=3 {
        send(&http, node, "/live", "R", n).await;
    }
    proxy.refuse(false);
    let back = io.reconnected("c").await;
    assert!(back.recovered, "not recovered: {back:?}");
    assert_eq!(back.sid, first.sid);
    send(&http, node, "/live", "R", 4).await;
    news(&mut io, "c", &[1, 2, 3, 4], seen).await;
    no_more_news(&mut io, "c").await;
    only_proxy_refusals(&mut io, "c").await;
    for asked in &nodes {
        assert_eq!(
            listed_on(&http, asked, "/live", "R", &back.sid).await,
            [node.id.as_str()],
            "asked {}",
            asked.id
        );
    }
}

/// Away longer than the window: the reconnection is a new socket (no `connect_error`), in its room again, and
/// nothing sent meanwhile comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_away_past_the_window_starts_afresh() {
    let (_dir, _redis, nodes) = start("recovery_past_window").await;
    let a = &nodes[0];
    let http = Http::new();
    let mut io = Clients::start();
    let (proxy, first, _) = watched(&http, &mut io, a, "/short").await;

    away(&proxy, &mut io, "c").await;
    for n in 1..=3 {
        send(&http, a, "/short", "R", n).await;
    }
    tokio::time::sleep(Duration::from_secs(SHORT_WINDOW_S * 2)).await;
    proxy.refuse(false);
    let back = io.reconnected("c").await;
    assert!(!back.recovered, "recovered past the window: {back:?}");
    assert_ne!(back.sid, first.sid);
    assert_ne!(back.pid, first.pid);
    send(&http, a, "/short", "R", 4).await;
    news(&mut io, "c", &[4], (0, 0)).await;
    no_more_news(&mut io, "c").await;
    only_proxy_refusals(&mut io, "c").await;
    assert_eq!(listed_on(&http, a, "/short", "R", &back.sid).await, ["a"]);
    assert!(
        listed_on(&http, a, "/short", "R", &first.sid)
            .await
            .is_empty()
    );
}

/// How a session is ended on purpose.
#[derive(Clone, Copy)]
enum End {
    /// The client's own `socket.disconnect()`.
    ByClient,
    /// The server's: the admin UI's `_disconnect`, sent on the other node.
    ByAdmin,
}

/// A client's own `disconnect()` ends its session: presenting its pid and offset again gets a new socket and
/// nothing sent since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliberate_disconnect_ends_the_session() {
    an_ended_session_is_not_resumed("recovery_deliberate", End::ByClient).await;
}

/// A socket the server disconnects (an admin's kick) is not resumed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_socket_is_not_resumed() {
    an_ended_session_is_not_resumed("recovery_kicked", End::ByAdmin).await;
}

/// Against a control: a cut session is resumed by a new client object that presents its pid and offset (all the
/// server ever sees of a reconnection); once that socket is ended on purpose (`end`), presenting them again gets
/// a new socket and nothing sent since.
async fn an_ended_session_is_not_resumed(test: &str, end: End) {
    let (_dir, redis, nodes) = start(test).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let http = Http::new();
    let proxy = Proxy::start(a.port).await;
    let mut io = Clients::start();
    let first = io
        .enter(Conn::to("c1", &a.via(&proxy)).ns("/live").user("uc", "R"))
        .await;
    let pid = first.pid.clone().expect("a pid with recovery on");
    send(&http, a, "/live", "R", 0).await;
    let o0 = news(&mut io, "c1", &[0], (0, 0)).await;

    // Control: cut (not on purpose), then resumed by a new client object.
    proxy.cut().await;
    io.expect("c1", "disconnect").await;
    gone(&http, a, "/live", "R", &first.sid).await;
    send(&http, a, "/live", "R", 1).await;
    let resume = json!({"pid": pid, "offset": format!("{}-{}", o0.0, o0.1)});
    let c2 = io
        .enter(Conn::to("c2", a).ns("/live").user("uc", "R").auth(resume))
        .await;
    assert_eq!(c2.sid, first.sid, "a cut session was not resumed");
    assert_eq!(c2.pid.as_deref(), Some(pid.as_str()));
    let o1 = news(&mut io, "c2", &[1], o0).await;
    let session = format!("{test}:recovery:{{/live}}:s:{pid}");
    assert_eq!(
        redis.cli(&["EXISTS", &session]).trim(),
        "1",
        "{session}: the live session"
    );

    let reason = match end {
        End::ByClient => {
            io.disconnect("c2").await;
            "io client disconnect"
        }
        End::ByAdmin => {
            let login = json!({"username": "admin", "password": ADMIN_PASSWORD});
            io.enter(Conn::to("admin", b).ns("/admin").auth(login))
                .await;
            let kick = json!(["/live", false, first.sid]);
            io.emit("admin", "_disconnect", kick, false).await;
            "io server disconnect"
        }
    };
    let ev = io.expect("c2", "disconnect").await;
    assert_eq!(ev["reason"], reason, "{ev}");
    gone(&http, a, "/live", "R", &first.sid).await;
    // The disconnect handler removes the session after the socket left its rooms (a Redis call of its own): a
    // client presenting the pid before that would still resume, so wait for it.
    eventually(
        Duration::from_secs(5),
        "the ended session removed from Redis",
        async || (redis.cli(&["EXISTS", &session]).trim() == "0").then_some(()),
    )
    .await;
    for n in 2..=3 {
        send(&http, a, "/live", "R", n).await;
    }
    let again = json!({"pid": pid, "offset": format!("{}-{}", o1.0, o1.1)});
    let c3 = io
        .enter(Conn::to("c3", a).ns("/live").user("uc", "R").auth(again))
        .await;
    assert_ne!(c3.sid, first.sid, "resumed after it was ended on purpose");
    assert_ne!(c3.pid.as_deref(), Some(pid.as_str()));
    send(&http, a, "/live", "R", 4).await;
    news(&mut io, "c3", &[4], (0, 0)).await;
    no_more_news(&mut io, "c3").await;
    assert_eq!(listed_on(&http, a, "/live", "R", &c3.sid).await, ["a"]);
}

/// Mallory presents alice's pid and an early offset with her own token: she gets a socket of her own, in her own
/// room, and none of alice's events; alice, back, still recovers hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_pid_gets_nothing_of_its_owner() {
    let (_dir, _redis, nodes) = start("recovery_stolen_pid").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let http = Http::new();
    let proxy = Proxy::start(a.port).await;
    let mut io = Clients::start();
    let alice = io
        .enter(
            Conn::to("alice", &a.via(&proxy))
                .ns("/verified")
                .auth(json!({"token": token("alice")}))
                .reconnect(),
        )
        .await;
    let pid = alice.pid.clone().expect("a pid with recovery on");
    send(&http, a, "/verified", "user.alice", 0).await;
    let o0 = news(&mut io, "alice", &[0], (0, 0)).await;

    away(&proxy, &mut io, "alice").await;
    for n in 1..=2 {
        send(&http, a, "/verified", "user.alice", n).await;
    }
    let stolen =
        json!({"token": token("mallory"), "pid": pid, "offset": format!("{}-{}", o0.0, o0.1)});
    let mallory = io
        .enter(Conn::to("mallory", b).ns("/verified").auth(stolen))
        .await;
    assert_ne!(mallory.sid, alice.sid, "mallory got alice's socket");
    assert_ne!(mallory.pid.as_deref(), Some(pid.as_str()));
    send(&http, a, "/verified", "user.alice", 3).await;
    no_more_news(&mut io, "mallory").await;
    assert!(
        listed_on(&http, a, "/verified", "user.alice", &mallory.sid)
            .await
            .is_empty(),
        "mallory is in alice's room"
    );
    assert_eq!(
        listed_on(&http, a, "/verified", "user.mallory", &mallory.sid).await,
        ["b"]
    );

    proxy.refuse(false);
    let back = io.reconnected("alice").await;
    assert!(back.recovered, "alice lost her session: {back:?}");
    assert_eq!(back.sid, alice.sid);
    news(&mut io, "alice", &[1, 2, 3], o0).await;
    no_more_news(&mut io, "alice").await;
    no_more_news(&mut io, "mallory").await;
}

/// Forwarded client events with binary arguments (a Buffer, and one nested in an object) missed while away come
/// back byte for byte, in order, each with its offset last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_binary_arguments_come_back_intact() {
    let (_dir, _redis, nodes) = start("recovery_binary").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let proxy = Proxy::start(a.port).await;
    let mut io = Clients::start();
    let conn = Conn::to("r", &a.via(&proxy))
        .ns("/relay")
        .user("ur", "R")
        .reconnect();
    let first = io.enter(conn).await;
    io.join(Conn::to("s", b).ns("/relay").user("us", "R")).await;
    io.emit("s", "file", json!([{"n": 0}]), false).await;
    let ev = io.expect("r", "file").await;
    let (args, o0) = split_offset(&ev);
    assert_eq!(args, [json!({"n": 0})]);

    away(&proxy, &mut io, "r").await;
    let bytes: Vec<u8> = (0..=255).collect();
    let blob = json!({"$binary": STANDARD.encode(&bytes)});
    let nested = json!({"$binary": STANDARD.encode(b"\x00nested\xff")});
    let sent = [json!([blob, {"n": 1}]), json!([{"file": nested, "n": 2}])];
    for args in &sent {
        io.emit("s", "file", args.clone(), false).await;
    }
    // The sender gets its own forwarded events: the server has taken them, in the namespace's order (two events
    // of one client are handled concurrently, so that order may not be the order they were sent in).
    io.expect("s", "file").await;
    let mut logged = Vec::new();
    for _ in &sent {
        let ev = io.expect("s", "file").await;
        logged.push(Value::Array(split_offset(&ev).0.to_vec()));
    }
    assert!(
        sent.iter().all(|args| logged.contains(args)) && logged.len() == sent.len(),
        "{logged:?}"
    );

    proxy.refuse(false);
    let back = io.reconnected("r").await;
    assert!(back.recovered, "not recovered: {back:?}");
    assert_eq!(back.sid, first.sid);
    let mut last = o0;
    for args in &logged {
        let ev = io.expect("r", "file").await;
        let (got, at) = split_offset(&ev);
        assert_eq!(got, args.as_array().unwrap().as_slice(), "{ev}");
        assert!(at > last, "offset {at:?} not after {last:?}");
        last = at;
    }
    io.expect_none("r", "file", Duration::from_millis(500))
        .await;
}

/// A presence event of the room missed while away (another socket joining it, on the other node) is replayed
/// too, once, with its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_presence_event_is_replayed() {
    let (_dir, _redis, nodes) = start("recovery_presence").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let http = Http::new();
    let mut io = Clients::start();
    let (proxy, first, seen) = watched(&http, &mut io, a, "/live").await;

    away(&proxy, &mut io, "c").await;
    let d = io.join(Conn::to("d", b).ns("/live").user("ud", "R")).await;
    proxy.refuse(false);
    let back = io.reconnected("c").await;
    assert!(back.recovered, "not recovered: {back:?}");
    assert_eq!(back.sid, first.sid);
    let ev = io.expect("c", "socket-connected").await;
    let (args, at) = split_offset(&ev);
    assert_eq!(args, [json!({"id_socket": d, "id_user": "ud"})]);
    assert!(at > seen, "offset {at:?} not after {seen:?}");
    io.expect_none("c", "socket-connected", Duration::from_millis(500))
        .await;
}

/// A single node without Redis recovers from memory, and `/metrics` counts the recoveries: one attempted and
/// successful with 3 events replayed, then one given a fresh session because its window had passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_recovers_from_memory_and_counts_it() {
    let dir = log_dir("recovery_single_node");
    let path = dir.join("config.toml");
    std::fs::write(&path, config()).unwrap();
    let args = ["--config", path.to_str().unwrap()];
    let opts = NodeOpts {
        id: "solo",
        args: &args,
        ..NodeOpts::default()
    };
    let node = Node::start(&dir, opts).await;
    let http = Http::new();
    let mut io = Clients::start();
    let (proxy, first, seen) = watched(&http, &mut io, &node, "/live").await;
    away(&proxy, &mut io, "c").await;
    for n in 1..=3 {
        send(&http, &node, "/live", "R", n).await;
    }
    proxy.refuse(false);
    let back = io.reconnected("c").await;
    assert!(back.recovered, "not recovered: {back:?}");
    assert_eq!(back.sid, first.sid);
    let metric = async |sample: &str| http.metric(&node, sample).await;
    // The client has its CONNECT answer before the node has replayed what it missed and given its rooms back
    // (counted as succeeded then): a push sent before that is missed live and replayed, so push 4 waits for it.
    eventually(
        Duration::from_secs(10),
        "the recovery to finish",
        async || {
            (metric("socket_identity_recovery_succeeded_total").await == Some(1.0)).then_some(())
        },
    )
    .await;
    send(&http, &node, "/live", "R", 4).await;
    news(&mut io, "c", &[1, 2, 3, 4], seen).await;
    no_more_news(&mut io, "c").await;
    assert_eq!(
        metric("socket_identity_recovery_attempts_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric("socket_identity_recovery_succeeded_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric("socket_identity_recovery_replayed_total").await,
        Some(3.0)
    );

    // Past the window of /short: a fresh session, counted as failed for that reason.
    let short = Proxy::start(node.port).await;
    let conn = Conn::to("s", &node.via(&short))
        .ns("/short")
        .user("us", "R")
        .reconnect();
    let before = io.enter(conn).await;
    away(&short, &mut io, "s").await;
    tokio::time::sleep(Duration::from_secs(SHORT_WINDOW_S + 2)).await;
    short.refuse(false);
    let after = io.reconnected("s").await;
    assert!(!after.recovered, "{after:?}");
    assert_ne!(after.sid, before.sid);
    assert_eq!(
        metric("socket_identity_recovery_attempts_total").await,
        Some(2.0)
    );
    assert_eq!(
        metric("socket_identity_recovery_failed_total{reason=\"unknown_session\"}").await,
        Some(1.0)
    );
}

/// A client back before the server noticed its old connection was dead (no TCP close: a network cut) finds its
/// previous socket still connected on that node: it takes it over. The old socket is closed with the session
/// kept, the new one has its id and what it missed, and can recover again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_before_its_old_socket_left_takes_it_over() {
    takes_over("recovery_takeover", false).await;
}

/// The same, back through another node: the node that held the socket is asked to close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_elsewhere_before_its_old_socket_left_takes_it_over() {
    takes_over("recovery_takeover_elsewhere", true).await;
}

/// Client `old` of node a is still connected when the same client (its pid, offset o0) connects again, to a or
/// (`elsewhere`) to b.
async fn takes_over(test: &str, elsewhere: bool) {
    let (_dir, _redis, nodes) = start(test).await;
    let a = &nodes[0];
    let there = &nodes[usize::from(elsewhere)];
    let http = Http::new();
    let mut io = Clients::start();
    let old = io
        .enter(Conn::to("old", a).ns("/live").user("uc", "R"))
        .await;
    let pid = old.pid.clone().expect("a pid with recovery on");
    send(&http, a, "/live", "R", 0).await;
    let o0 = news(&mut io, "old", &[0], (0, 0)).await;
    send(&http, a, "/live", "R", 1).await;
    news(&mut io, "old", &[1], o0).await;

    // The same client, on a new connection, says it got news 0 only: the old socket is still there.
    let proxy = Proxy::start(there.port).await;
    let resume = json!({"pid": pid, "offset": format!("{}-{}", o0.0, o0.1)});
    let conn = Conn::to("new", &there.via(&proxy))
        .ns("/live")
        .user("uc", "R")
        .auth(resume)
        .reconnect();
    let new = io.enter(conn).await;
    assert_eq!(new.sid, old.sid, "not taken over");
    assert_eq!(new.pid.as_deref(), Some(pid.as_str()));
    let ev = io.expect("old", "disconnect").await;
    assert_eq!(ev["reason"], "io server disconnect", "{ev}");
    let o1 = news(&mut io, "new", &[1], o0).await;
    let place = [there.id.as_str()];
    for asked in &nodes {
        eventually(
            Duration::from_secs(5),
            "the socket listed once",
            async || (listed_on(&http, asked, "/live", "R", &new.sid).await == place).then_some(()),
        )
        .await;
    }

    // The old socket's leaving kept the session: the new one recovers from a cut as any other. (Its `auth` option
    // names offset o0, which socket.io-client sends over its own last offset: it is given news 1 again, then 2.)
    away(&proxy, &mut io, "new").await;
    send(&http, there, "/live", "R", 2).await;
    proxy.refuse(false);
    let back = io.reconnected("new").await;
    assert!(back.recovered, "not recovered: {back:?}");
    assert_eq!(back.sid, old.sid);
    let again = news(&mut io, "new", &[1, 2], o0).await;
    assert!(again > o1);
    no_more_news(&mut io, "new").await;
}
