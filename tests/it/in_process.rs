//! The fast tier: nodes started in-process through the library API (`socket_identity::run`).

use std::time::Duration;

use socket_identity::{Config, run};
use tokio::sync::oneshot;

use crate::harness::*;

struct InProcess {
    base: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), socket_identity::StartError>>,
}

async fn start(redis: &Redis, id: &str, prefix: &str) -> InProcess {
    let mut config = Config::for_tests();
    config.redis_url = Some(redis.url());
    config.redis_prefix = prefix.into();
    config.node_id = Some(id.into());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(config, listener, async {
        let _ = stopped.await;
    }));
    let http = Http::new();
    eventually(Duration::from_secs(10), "the node to serve", async || {
        http.client.get(format!("{base}/health")).send().await.ok()
    })
    .await;
    InProcess { base, stop, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_in_one_process_form_a_cluster_and_stop_cleanly() {
    let dir = log_dir("in_process");
    let redis = Redis::start(&dir);
    let a = start(&redis, "a", "in-process").await;
    let b = start(&redis, "b", "in-process").await;
    let http = Http::new();

    // Each knows the other from its first heartbeat, which may still be on its way on a busy machine.
    for node in [&a, &b] {
        let users = eventually(Duration::from_secs(5), "both nodes known", async || {
            let users = http.users_at(&node.base, "Maths").await;
            (users.nodes == "2/2").then_some(users)
        })
        .await;
        assert_eq!((users.status, users.partial.as_str()), (200, "false"));
        assert_eq!(users.body, serde_json::json!([]));
    }

    // A node on another prefix is another cluster: neither sees the other.
    let other = start(&redis, "c", "another-cluster").await;
    assert_eq!(http.users_at(&other.base, "Maths").await.nodes, "1/1");
    assert_eq!(http.users_at(&a.base, "Maths").await.nodes, "2/2");

    // The shutdown future stops each node, which returns Ok, and the others notice.
    for node in [b, other] {
        node.stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), node.task)
            .await
            .expect("run() returned after shutdown");
        assert!(result.unwrap().is_ok());
    }
    let users = http.users_at(&a.base, "Maths").await;
    assert_eq!(
        (users.nodes.as_str(), users.partial.as_str()),
        ("1/1", "false")
    );
    a.stop.send(()).unwrap();
    assert!(a.task.await.unwrap().is_ok());
}

/// While Redis is not up, the node retries; the shutdown future still stops it, promptly and cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_wait_for_redis() {
    let mut config = Config::for_tests();
    config.redis_url = Some(format!("redis://127.0.0.1:{}", free_port()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        run(
            config,
            listener,
            tokio::time::sleep(Duration::from_millis(1500)),
        ),
    )
    .await
    .expect("run() returned after shutdown");
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

/// Runs a node with `change` applied to the test config, expecting it to refuse to start.
async fn start_error(change: impl FnOnce(&mut Config)) -> String {
    let mut config = Config::for_tests();
    change(&mut config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    run(config, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn start_up_errors_are_clear() {
    let dir = log_dir("start_up_errors_are_clear");
    let redis = Redis::start_with(&dir, &["--requirepass", "right"]);
    let port = redis.port;
    let err =
        start_error(|c| c.redis_url = Some(format!("redis://:hunter2@127.0.0.1:{port}"))).await;
    assert_eq!(
        err.split(": ").next().unwrap(),
        format!("cannot connect to Redis at redis://:***@127.0.0.1:{port}")
    );
    assert!(
        err.contains("WRONGPASS") && !err.contains("hunter2"),
        "{err}"
    );

    let err = start_error(|c| c.redis_url = Some("localhost:6379".into())).await;
    assert_eq!(
        err,
        "invalid REDIS_URL localhost:6379: the URL must start with redis://, rediss:// (TLS), redis-cluster:// or \
         rediss-cluster:// (a Redis Cluster)"
    );

    let err = start_error(|c| {
        c.redis_url = Some("redis://localhost".into());
        c.redis_ca = Some("certs-dev/ca.pem".into());
    })
    .await;
    assert!(
        err.contains("REDIS_CA is set but the URL is not rediss://"),
        "{err}"
    );

    let err = start_error(|c| c.tls_key = "certs-dev/missing.pem".into()).await;
    assert!(
        err.starts_with("cannot read TLS key certs-dev/missing.pem"),
        "{err}"
    );

    // More sockets than the open-files limit can hold (no system allows a billion open files per process).
    let err = start_error(|c| c.max_sockets = Some(1_000_000_000)).await;
    assert!(
        err.starts_with(
            "invalid setting: MAX_SOCKETS=1000000000 is above what the open-files limit allows:"
        ),
        "{err}"
    );

    let err = start_error(|c| c.tls_cert = "Cargo.toml".into()).await;
    assert!(err.contains("no certificate in the file"), "{err}");

    let err = start_error(|c| c.node_id = Some("a b".into())).await;
    assert_eq!(
        err,
        "invalid NODE_ID: node id contains a character that is not allowed"
    );
}
