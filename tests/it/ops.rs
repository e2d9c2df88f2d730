//! Running well: readiness and metrics that follow Redis, JSON logs, freed memory purged while idle, waiting for
//! Redis at start-up, refusing a bad Redis URL or password, Redis over TLS with a password, and a graceful restart
//! under query load.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::harness::*;

async fn ready(http: &Http, node: &Node) -> (u16, Value) {
    let res = http.client.get(node.url("/ready")).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn metric_is(http: &Http, node: &Node, sample: &str) -> f64 {
    http.metric(node, sample)
        .await
        .unwrap_or_else(|| panic!("no {sample} in /metrics of {}", node.id))
}

/// `/ready` and `/metrics` say what happens: sockets, rooms, refusals, queries, replies, and a Redis outage
/// (not ready, errors) and its end (ready again, reconnects counted on every connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_metrics_follow_the_cluster_and_redis() {
    let (dir, redis, nodes) = cluster("ready_and_metrics", 2, 1000).await;
    let [a, b] = &nodes[..] else { unreachable!() };
    let http = Http::new();

    let (status, body) = ready(&http, a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"ready": true, "node": "a", "tls": true, "redis": "up", "cluster_nodes": 2,
               "sockets": 0, "error": null})
    );

    let mut clients = Clients::start();
    let sid = clients.join(Conn::to("one", a).user("one", "Ops")).await;
    clients
        .open(Conn::to("bad", a).query(json!({"room": "Ops"})))
        .await;
    clients.expect("bad", "connect_error").await;
    let users = http.users(a, "Ops").await;
    assert_eq!(users.set(), pairs(&[(&sid, "one")]));

    let p = "socket_identity_";
    assert_eq!(
        metric_is(&http, a, &format!("{p}connected_sockets")).await,
        1.0
    );
    assert_eq!(metric_is(&http, a, &format!("{p}rooms")).await, 1.0);
    assert_eq!(
        metric_is(
            &http,
            a,
            &format!("{p}handshakes_refused_total{{reason=\"missing\"}}")
        )
        .await,
        1.0
    );
    let complete = format!("{p}cluster_requests_total{{outcome=\"complete\"}}");
    assert_eq!(metric_is(&http, a, &complete).await, 1.0);
    assert_eq!(
        metric_is(&http, a, &format!("{p}cluster_request_seconds_count")).await,
        1.0
    );
    assert_eq!(
        metric_is(&http, a, &format!("{p}cluster_nodes_answering")).await,
        2.0
    );
    assert_eq!(
        metric_is(&http, b, &format!("{p}cluster_replies_sent_total")).await,
        1.0
    );
    let connections = ["publisher", "cluster_subscriber", "adapter_subscriber"];
    for c in connections {
        let sample = format!("{p}redis_reconnects_total{{connection=\"{c}\"}}");
        assert_eq!(metric_is(&http, a, &sample).await, 0.0, "{sample}");
    }

    // Redis goes away: not ready, but alive and serving its own sockets.
    let port = redis.port;
    drop(redis);
    let down = eventually(Duration::from_secs(10), "/ready to say 503", async || {
        let (status, body) = ready(&http, a).await;
        (status == 503).then_some(body)
    })
    .await;
    println!("during the outage: {down}");
    assert_eq!(down["ready"], false);
    assert_eq!(down["redis"], "down");
    assert!(down["error"].is_string());
    assert_eq!(http.status(a, "/health").await, 200);
    let errors: f64 = {
        let mut sum = 0.0;
        for c in connections {
            let sample = format!("{p}redis_errors_total{{connection=\"{c}\"}}");
            sum += metric_is(&http, a, &sample).await;
        }
        sum
    };
    assert!(errors >= 1.0, "no Redis error counted during the outage");

    // Redis is back: ready again, and each connection counted its reconnect.
    let started = Instant::now();
    let _redis = Redis::start_on(&dir, port, &[]);
    let up = eventually(
        Duration::from_secs(15),
        "/ready to say 200 again",
        async || {
            let (status, body) = ready(&http, a).await;
            (status == 200 && body["cluster_nodes"] == 2).then_some(body)
        },
    )
    .await;
    println!(
        "ready again {:?} after Redis restarted: {up}",
        started.elapsed()
    );
    for c in connections {
        let sample = format!("{p}redis_reconnects_total{{connection=\"{c}\"}}");
        eventually(Duration::from_secs(5), &sample, async || {
            (metric_is(&http, a, &sample).await >= 1.0).then_some(())
        })
        .await;
    }
}

/// `--log-format json`: every line the process writes is one JSON object naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_naming_the_node() {
    let dir = log_dir("logs_are_json_lines_naming_the_node");
    let redis = Redis::start(&dir);
    let node = Node::start(
        &dir,
        NodeOpts {
            id: "json-node",
            redis: Some(redis.url()),
            args: &["--log-format", "json"],
            ..NodeOpts::default()
        },
    )
    .await;
    let mut clients = Clients::start();
    clients.join(Conn::to("c", &node).user("u", "Logs")).await;
    clients
        .open(Conn::to("bad", &node).query(json!({"id_user": ""})))
        .await;
    clients.expect("bad", "connect_error").await;
    let log = node.log.clone();
    assert!(node.terminate().await.success());

    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 4, "{text}");
    for line in &lines {
        assert_eq!(line["node"], "json-node", "{line}");
        assert!(
            line["level"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
    assert!(lines.iter().any(|l| l["message"] == "stopped"), "{text}");
}

/// The node frees what a burst grew back to the system without traffic: it runs jemalloc's background purging
/// thread (an idle node would otherwise keep the pages; BENCHMARKS.md, "After a burst").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_purges_freed_memory_in_the_background() {
    let dir = log_dir("an_idle_node_purges_freed_memory_in_the_background");
    let node = Node::start(&dir, NodeOpts::default()).await;
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", node.pid()))
        .unwrap()
        .map(|task| {
            let comm = task.unwrap().path().join("comm");
            std::fs::read_to_string(comm)
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    assert!(
        threads.iter().any(|t| t == "jemalloc_bg_thd"),
        "no jemalloc background thread among {threads:?}"
    );
    assert!(node.terminate().await.success());
}

/// Started before Redis, a node retries with back-off, then joins and serves as soon as Redis is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_redis_at_start_up() {
    let dir = log_dir("waits_for_redis_at_start_up");
    let port = free_port();
    let mut node = Node::spawn(
        &dir,
        NodeOpts {
            redis: Some(format!("redis://127.0.0.1:{port}")),
            ..NodeOpts::default()
        },
    )
    .await;
    eventually(Duration::from_secs(10), "a retry in the log", async || {
        node.log_text()
            .contains("Redis is not reachable yet")
            .then_some(())
    })
    .await;
    assert!(
        node.exit_within(Duration::from_secs(2)).await.is_none(),
        "{}",
        node.log_text()
    );
    let retries = node
        .log_text()
        .matches("Redis is not reachable yet")
        .count();
    println!("{retries} attempts in ~2 s before Redis started");
    assert!(
        (2..=8).contains(&retries),
        "back-off: {retries} attempts\n{}",
        node.log_text()
    );

    let started = Instant::now();
    let _redis = Redis::start_on(&dir, port, &[]);
    node.wait_healthy(Duration::from_secs(15)).await;
    println!("serving {:?} after Redis started", started.elapsed());
    let (status, body) = ready(&Http::new(), &node).await;
    assert_eq!(
        (status, body["cluster_nodes"].clone()),
        (200, json!(1)),
        "{body}"
    );
}

/// What retrying cannot fix stops the process at once, with a clear message and no password in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_bad_redis_url_or_password() {
    let dir = log_dir("refuses_a_bad_redis_url_or_password");
    let redis = Redis::start_with(&dir, &["--requirepass", "right-secret"]);
    let port = redis.port;
    let cases = [
        ("http://127.0.0.1:1", "invalid REDIS_URL http://127.0.0.1:1"),
        (
            "redis://127.0.0.1:notaport",
            "invalid REDIS_URL redis://127.0.0.1:notaport",
        ),
        (
            &format!("redis://:wrong-secret@127.0.0.1:{port}"),
            "WRONGPASS",
        ),
        (&format!("redis://127.0.0.1:{port}"), "NOAUTH"),
    ];
    for (i, (url, message)) in cases.iter().enumerate() {
        let id = format!("n{i}");
        let mut node = Node::spawn(
            &dir,
            NodeOpts {
                id: &id,
                redis: Some(url.to_string()),
                ..NodeOpts::default()
            },
        )
        .await;
        let status = node.exit_within(Duration::from_secs(10)).await;
        let log = node.log_text();
        assert!(
            matches!(status, Some(s) if !s.success()),
            "{url}: {status:?}\n{log}"
        );
        assert!(
            log.contains("cannot start") && log.contains(message),
            "{url}:\n{log}"
        );
        assert!(
            !log.contains("wrong-secret"),
            "the password was logged:\n{log}"
        );
    }
}

/// `rediss://` with a password and a private CA (`--redis-ca`): the cluster works over it, and the password
/// never reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password() {
    let dir = log_dir("redis_over_tls_with_a_password");
    let certs = root().join("certs-dev");
    let path = |f: &str| certs.join(f).display().to_string();
    let (cert, key, ca) = (path("cert.pem"), path("key.pem"), path("ca.pem"));
    let redis = Redis::start_with_tls(
        &dir,
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-secret",
        ],
    );
    let tls = redis.tls_port().unwrap();
    let url = format!("rediss://:tls-secret@localhost:{tls}");
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        nodes.push(
            Node::start(
                &dir,
                NodeOpts {
                    id,
                    redis: Some(url.clone()),
                    prefix: "tls",
                    args: &["--redis-ca", &ca],
                    ..NodeOpts::default()
                },
            )
            .await,
        );
    }
    // Queries and broadcasts (through the adapter) over the same TLS connection.
    two_nodes_share_a_room(&nodes).await;
    for node in nodes {
        let log = node.log_text();
        assert!(
            !log.contains("tls-secret"),
            "the password was logged:\n{log}"
        );
    }

    // Without the CA the certificate is refused at once, not retried for ever.
    let mut node = Node::spawn(
        &dir,
        NodeOpts {
            id: "untrusting",
            redis: Some(url.clone()),
            ..NodeOpts::default()
        },
    )
    .await;
    let status = node.exit_within(Duration::from_secs(10)).await;
    let log = node.log_text();
    assert!(
        matches!(status, Some(s) if !s.success()),
        "{status:?}\n{log}"
    );
    assert!(log.contains("InvalidCertificate"), "{log}");
}

/// One node of three is stopped (SIGTERM) and started again while the other two answer `GET /:room/users`
/// non-stop: every answer is a 200 holding the sockets of the two that stay, and the room is whole at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_node_under_load_loses_no_answer() {
    let (dir, redis, mut nodes) = cluster("restart_under_load", 3, 1000).await;
    let http = Http::new();
    let mut clients = Clients::start();
    let sa = clients
        .join(Conn::to("a", &nodes[0]).user("ua", "Load"))
        .await;
    let sb = clients
        .join(Conn::to("b", &nodes[1]).user("ub", "Load"))
        .await;
    clients
        .join(Conn::to("c", &nodes[2]).user("uc", "Load"))
        .await;
    let stay = pairs(&[(&sa, "ua"), (&sb, "ub")]);

    let bases = [nodes[0].base(), nodes[1].base()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, client) = (stop.clone(), http.client.clone());
        tokio::spawn(async move {
            let (mut answers, mut partial, mut slowest) = (0u32, 0u32, Duration::ZERO);
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for base in &bases {
                    let t = Instant::now();
                    match client.get(format!("{base}/Load/users")).send().await {
                        Ok(res) if res.status() == 200 => {
                            if res.headers()["x-cluster-partial"] == "true" {
                                partial += 1;
                            }
                            let body: Value = res.json().await.unwrap();
                            let got: BTreeSet<(String, String)> = body
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|u| {
                                    let s = |k: &str| u[k].as_str().unwrap().to_owned();
                                    (s("id_socket"), s("id_user"))
                                })
                                .collect();
                            if !stay.is_subset(&got) {
                                failures.push(format!("{base}: {got:?}"));
                            }
                        }
                        Ok(res) => failures.push(format!("{base}: status {}", res.status())),
                        Err(e) => failures.push(format!("{base}: {e}")),
                    }
                    answers += 1;
                    slowest = slowest.max(t.elapsed());
                }
            }
            (answers, partial, slowest, failures)
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = nodes.pop().unwrap();
    let port = c.port;
    let status = c.terminate().await;
    assert!(status.success(), "{status}");
    let ev = clients.expect("c", "disconnect").await;
    assert_eq!(ev["reason"], "transport close");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = Node::start(
        &dir,
        NodeOpts {
            id: "c",
            redis: Some(redis.url()),
            prefix: "restart_under_load",
            port: Some(port),
            ..NodeOpts::default()
        },
    )
    .await;
    let sc = clients.join(Conn::to("c2", &c).user("uc", "Load")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answers, partial, slowest, failures) = load.await.unwrap();
    println!("{answers} answers during the restart, {partial} partial, slowest {slowest:?}");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(answers >= 20, "too few requests ran: {answers}");
    assert!(
        slowest < Duration::from_secs(3),
        "an answer took {slowest:?}"
    );

    let whole = pairs(&[(&sa, "ua"), (&sb, "ub"), (&sc, "uc")]);
    nodes.push(c);
    for node in &nodes {
        let users = http.users(node, "Load").await;
        assert_eq!(users.set(), whole, "{}", node.id);
        assert_eq!(users.nodes, "3/3");
    }
}
