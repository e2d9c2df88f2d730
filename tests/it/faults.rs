//! Faults, with the real binary, a real Redis and real socket.io clients: a paused node, a killed node, a Redis
//! outage, a rolling restart. Each test prints its figures (run with `--nocapture`); README's reliability section
//! quotes them.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::*;

/// A node paused with SIGSTOP (alive for Redis, silent for us) costs at most the request timeout, and only until
/// it misses 3 heartbeats: then pending queries stop waiting for it and later ones do not wait at all. Resumed,
/// it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_declared_down_then_rejoins() {
    // Heartbeat 300 ms: declared down after 900 ms of silence, well inside the 5 s request timeout.
    let (_dir, _redis, nodes) =
        cluster_with("paused_node", 3, 5000, &["--heartbeat-ms", "300"]).await;
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    let http = Http::new();
    let mut clients = Clients::start();
    let sa = clients.join(Conn::to("a", a).user("ua", "Room")).await;
    let sb = clients.join(Conn::to("b", b).user("ub", "Room")).await;
    let sc = clients.join(Conn::to("c", c).user("uc", "Room")).await;
    assert_eq!(http.users(a, "Room").await.nodes, "3/3");

    b.pause();
    // The query asked right away waits for b, until b is declared down: not the 5 s timeout.
    let started = Instant::now();
    let users = http.users(a, "Room").await;
    let first = started.elapsed();
    println!(
        "query asked as b paused: {first:?}, {} {}",
        users.nodes, users.partial
    );
    assert_eq!(users.set(), pairs(&[(&sa, "ua"), (&sc, "uc")]));
    assert_eq!(
        (users.nodes.as_str(), users.partial.as_str()),
        ("2/2", "false")
    );
    assert!(
        first < Duration::from_secs(3),
        "waited {first:?} for a paused node"
    );

    // From then on it costs nothing.
    for node in [a, c] {
        let started = Instant::now();
        let users = http.users(node, "Room").await;
        let took = started.elapsed();
        assert_eq!(users.nodes, "2/2");
        assert!(
            took < Duration::from_millis(500),
            "{} took {took:?}",
            node.id
        );
    }
    let ready: Value = http.json(a, "/ready").await;
    assert_eq!(ready["cluster_nodes"], 2, "{ready}");
    assert_eq!(
        http.metric(a, "socket_identity_cluster_members").await,
        Some(2.0)
    );

    // Resumed, b beats again and is back in every answer.
    b.signal("CONT");
    let started = Instant::now();
    let whole = pairs(&[(&sa, "ua"), (&sb, "ub"), (&sc, "uc")]);
    eventually(Duration::from_secs(5), "b back in the answer", async || {
        let u = http.users(a, "Room").await;
        (u.nodes == "3/3" && u.set() == whole).then_some(())
    })
    .await;
    println!("b rejoined {:?} after SIGCONT", started.elapsed());
}

/// A node killed (SIGKILL) while the others answer non-stop: no request fails, none waits much past the timeout,
/// and the dead node is dropped at the next query (Redis saw its connections close), so its sockets never show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_never_fails_a_request() {
    let timeout_ms = 1000;
    let (_dir, _redis, mut nodes) =
        cluster_with("killed_node", 3, timeout_ms, &["--heartbeat-ms", "2000"]).await;
    let http = Http::new();
    let mut clients = Clients::start();
    let sa = clients
        .join(Conn::to("a", &nodes[0]).user("ua", "Room"))
        .await;
    let sb = clients
        .join(Conn::to("b", &nodes[1]).user("ub", "Room"))
        .await;
    let sc = clients
        .join(Conn::to("c", &nodes[2]).user("uc", "Room"))
        .await;
    let survivors = pairs(&[(&sa, "ua"), (&sc, "uc")]);

    let b = nodes.remove(1);
    let bases = [nodes[0].base(), nodes[1].base()];
    let killed = std::sync::Arc::new(std::sync::OnceLock::<Instant>::new());
    let load = {
        let (client, killed, sb) = (http.client.clone(), killed.clone(), sb.clone());
        tokio::spawn(async move {
            let mut log = Vec::new();
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                for base in &bases {
                    let t = Instant::now();
                    let res = client.get(format!("{base}/Room/users")).send().await;
                    let took = t.elapsed();
                    let after_kill = killed.get().map(|k| t.duration_since(*k));
                    let res = res.expect("request failed");
                    let status = res.status().as_u16();
                    let nodes = res.headers()["x-cluster-nodes"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let body: Value = res.json().await.unwrap();
                    let has_b = body
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|u| u["id_socket"] == *sb);
                    log.push((after_kill, status, nodes, took, has_b));
                }
            }
            log
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.signal("KILL");
    killed.set(Instant::now()).unwrap();
    drop(b);
    let log = load.await.unwrap();

    let after: Vec<_> = log.iter().filter(|l| l.0.is_some()).collect();
    let slowest = log.iter().map(|l| l.3).max().unwrap();
    let partial = after.iter().filter(|l| l.2 != "2/2").count();
    let last_ghost = after.iter().filter(|l| l.4).filter_map(|l| l.0).max();
    let exact_from = after
        .iter()
        .rev()
        .take_while(|l| l.2 == "2/2" && !l.4)
        .last()
        .and_then(|l| l.0);
    println!(
        "{} requests ({} after the kill): all 200, slowest {slowest:?}, {partial} partial after the kill, \
         b's socket last listed {last_ghost:?} after the kill, exact from {exact_from:?} after the kill",
        log.len(),
        after.len()
    );
    assert!(log.iter().all(|l| l.1 == 200));
    assert!(after.len() >= 10, "too few requests after the kill");
    assert!(
        slowest < Duration::from_millis(timeout_ms + 1000),
        "{slowest:?}"
    );
    // Only requests already in flight at the kill may still count b, and none lists b's socket later.
    assert!(
        exact_from.is_some_and(|t| t < Duration::from_millis(timeout_ms + 500)),
        "{exact_from:?}"
    );
    assert!(
        last_ghost.is_none_or(|t| t < Duration::from_millis(100)),
        "{last_ghost:?}"
    );
    for node in &nodes {
        let users = http.users(node, "Room").await;
        assert_eq!(
            (users.set(), users.nodes.as_str()),
            (survivors.clone(), "2/2")
        );
    }
}

/// Redis is stopped for 10 s and started again: nodes stay up and serve their own sockets (answers marked
/// partial, `/ready` 503), then within a bound the cluster is whole again, rooms and broadcasts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_of_ten_seconds() {
    let (dir, redis, mut nodes) =
        cluster_with("redis_outage", 2, 1000, &["--heartbeat-ms", "1000"]).await;
    let http = Http::new();
    let mut clients = Clients::start();
    let sa = clients
        .join(Conn::to("a", &nodes[0]).user("ua", "Room"))
        .await;
    let sb = clients
        .join(Conn::to("b", &nodes[1]).user("ub", "Room"))
        .await;

    let port = redis.port;
    drop(redis);
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (node, own) in [
        (&nodes[0], (sa.as_str(), "ua")),
        (&nodes[1], (sb.as_str(), "ub")),
    ] {
        let users = http.users(node, "Room").await;
        assert_eq!(users.status, 200);
        assert_eq!(users.set(), pairs(&[own]), "{}", node.id);
        assert_eq!(users.partial, "true");
        let ready = http.client.get(node.url("/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
    }
    // A client may still connect to a node during the outage.
    let sa2 = clients
        .join(Conn::to("a2", &nodes[0]).user("ua2", "Room"))
        .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;

    let _redis = Redis::start_on(&dir, port, &[]);
    let back = Instant::now();
    let whole = pairs(&[(&sa, "ua"), (&sb, "ub"), (&sa2, "ua2")]);
    for node in &nodes {
        eventually(
            Duration::from_secs(10),
            "an exact answer again",
            async || {
                let u = http.users(node, "Room").await;
                (u.nodes == "2/2" && u.set() == whole).then_some(())
            },
        )
        .await;
    }
    let exact = back.elapsed();
    // Broadcasts between nodes (the adapter's subscriptions) work again too.
    let broadcast = eventually(
        Duration::from_secs(10),
        "a broadcast across nodes",
        async || {
            clients
                .emit(
                    "b",
                    "identity-change",
                    serde_json::json!([{"id_user": "ub"}]),
                    true,
                )
                .await;
            clients.expect("b", "ack").await;
            clients
                .within("a", &["identity-change"], Duration::from_millis(300))
                .await
        },
    )
    .await;
    println!(
        "Redis down 10 s: exact answers {exact:?} after it came back, broadcasts {:?}: {broadcast}",
        back.elapsed()
    );
    assert!(exact < Duration::from_secs(5), "{exact:?}");
    for node in nodes.iter_mut() {
        assert!(
            node.exit_within(Duration::ZERO).await.is_none(),
            "{} exited",
            node.id
        );
    }
}

/// Every node is restarted in turn (SIGTERM, start again on its port) while clients stay connected through
/// socket.io-client's own reconnection and queries run: at the end every client is connected and every node
/// lists the room exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_every_client() {
    let (dir, redis, mut nodes) =
        cluster_with("rolling_restart", 3, 1000, &["--heartbeat-ms", "500"]).await;
    let http = Http::new();
    let mut clients = Clients::start();
    let mut users = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..3 {
            let id = format!("c{i}{j}");
            clients
                .join(Conn::to(&id, &node).user(&id, "Room").reconnect())
                .await;
            users.push((id, i));
        }
    }
    let started = Instant::now();
    let mut answers = 0;
    for i in 0..nodes.len() {
        let old = nodes.remove(i);
        let (id, port) = (old.id.clone(), old.port);
        assert!(old.terminate().await.success());
        let node = Node::start(
            &dir,
            NodeOpts {
                id: &id,
                redis: Some(redis.url()),
                prefix: "rolling_restart",
                port: Some(port),
                args: &["--heartbeat-ms", "500"],
                ..NodeOpts::default()
            },
        )
        .await;
        nodes.insert(i, node);
        // Its clients come back by themselves; the other nodes answer all along.
        for (id, _) in users.iter().filter(|u| u.1 == i) {
            clients.expect(id, "disconnect").await;
            clients.expect(id, "connect").await;
        }
        for node in &nodes {
            assert_eq!(http.users(node, "Room").await.status, 200);
            answers += 1;
        }
    }
    let expected: BTreeSet<String> = users.iter().map(|u| u.0.clone()).collect();
    for node in &nodes {
        let u = eventually(Duration::from_secs(5), "the whole room", async || {
            let u = http.users(node, "Room").await;
            let ids: BTreeSet<String> = u.set().into_iter().map(|p| p.1).collect();
            (u.nodes == "3/3" && ids == expected && u.set().len() == expected.len()).then_some(u)
        })
        .await;
        assert_eq!(u.partial, "false");
    }
    println!(
        "rolling restart of 3 nodes with 9 clients: {:?}, {answers} answers between restarts, all 9 back",
        started.elapsed()
    );
}

/// Start-up attempts that fail after the adapter has connected (Redis up, its writes paused, so the cluster's
/// first PUBLISH times out) are retried, and each failed attempt closes everything it opened: once Redis takes
/// writes again and the node has joined, Redis sees the node's four connections (adapter, publisher, cluster
/// subscriber, delivery store), however many attempts failed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_up_attempts_leave_no_connection_behind() {
    let dir = log_dir("start_up_retries");
    let redis = Redis::start(&dir);
    redis.cli(&["CLIENT", "PAUSE", "30000", "WRITE"]);
    let node = Node::spawn(
        &dir,
        NodeOpts {
            id: "a",
            redis: Some(redis.url()),
            prefix: "start_up_retries",
            timeout_ms: 200,
            ..NodeOpts::default()
        },
    )
    .await;
    let failed = eventually(Duration::from_secs(20), "4 failed attempts", async || {
        let n = failed_attempts(&node);
        (n >= 4).then_some(n)
    })
    .await;
    redis.cli(&["CLIENT", "UNPAUSE"]);
    node.wait_healthy(Duration::from_secs(20)).await;
    let failed = failed_attempts(&node).max(failed);
    // A connection closed by a failed attempt goes once its QUIT is through (behind the paused PUBLISH).
    // Without a leak: store, adapter, cluster (2) and the emitter protocol's subscriber.
    let clients = clients_settled_at(&redis, 5).await;
    println!(
        "{failed} failed start-up attempts, then {} connections:\n{}",
        clients.len(),
        clients.join("\n")
    );
    assert_eq!(clients.len(), 5, "{failed} failed attempts");
    let users = Http::new().users(&node, "R").await;
    assert_eq!((users.status, users.nodes.as_str()), (200, "1/1"));
}

/// A start-up whose attempts fail at their last step, the gateway, stops all each attempt opened, its cluster
/// too: once Redis lets it in, the node holds the connections of one start and one cluster, as if it had started at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_failing_at_the_gateway_leave_no_cluster_behind() {
    let dir = log_dir("gateway_start_up_retries");
    let redis = Redis::start(&dir);
    // The delivery store, the adapter and the cluster's two connections get through; the gateway's do not.
    let gate = Proxy::start(redis.port).await;
    gate.cap(Some(4));
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[gateway]\npath = \"/connect\"\nonmessage = { publish = \"socket:message\" }\n\
         send = { subscribe = \"socket:send\" }\njwt_secret = \"a-test-secret-that-is-long-enough-0123456789\"\n\n\
         [[namespace]]\nname = \"/\"\nauth = \"claim\"\ngateway = true\n",
    )
    .unwrap();
    let node = Node::spawn(
        &dir,
        NodeOpts {
            id: "a",
            redis: Some(format!("redis://127.0.0.1:{}", gate.port())),
            prefix: "gateway_retries",
            timeout_ms: 200,
            args: &["--config", config.to_str().unwrap()],
            ..NodeOpts::default()
        },
    )
    .await;
    let failed = eventually(Duration::from_secs(20), "3 failed attempts", async || {
        let n = failed_attempts(&node);
        (n >= 3).then_some(n)
    })
    .await;
    gate.cap(None);
    node.wait_healthy(Duration::from_secs(20)).await;
    // Without a leak: store, adapter, cluster (2), gateway (a publisher and 3 readers) and the emitter protocol's
    // subscriber.
    let clients = clients_settled_at(&redis, 9).await;
    println!(
        "{failed}+ failed start-up attempts, then {} connections:\n{}",
        clients.len(),
        clients.join("\n")
    );
    assert_eq!(clients.len(), 9, "{failed}+ failed attempts");
    // One cluster: one subscriber on the node's reply channel, whose heartbeats answer for it.
    let reply = "gateway_retries:users#reply#a";
    let subscribers = redis.cli(&["PUBSUB", "SHARDNUMSUB", reply]);
    assert_eq!(subscribers.lines().nth(1), Some("1"), "{subscribers}");
    let users = Http::new().users(&node, "R").await;
    assert_eq!((users.status, users.nodes.as_str()), (200, "1/1"));
}

/// The start-up attempts `node` has logged as failed (and to be retried).
fn failed_attempts(node: &Node) -> usize {
    node.log_text()
        .matches("Redis is not reachable yet")
        .count()
}

/// Redis's `CLIENT LIST` lines once at most `n` are left, or after 5 s: a closed connection goes once its QUIT is
/// through.
async fn clients_settled_at(redis: &Redis, n: usize) -> Vec<String> {
    let settled = Instant::now() + Duration::from_secs(5);
    loop {
        let clients = redis.clients();
        if clients.len() <= n || Instant::now() > settled {
            return clients;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
