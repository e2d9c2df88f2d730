//! Node processes of the real binary, on ports of their own, and clusters of them on one Redis.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::json;

use super::{
    Clients, Conn, Http, Proxy, Redis, log_dir, pairs,
    ports::{Start, free_port, log_len, started},
    root,
};

/// A node process of the real binary.
pub struct Node {
    child: Child,
    pub id: String,
    pub port: u16,
    pub log: PathBuf,
    /// `https`, or `http` when started with `--plain-http`.
    pub scheme: &'static str,
}

/// How to start a node.
pub struct NodeOpts<'a> {
    pub id: &'a str,
    pub redis: Option<String>,
    pub prefix: &'a str,
    pub timeout_ms: u64,
    /// More flags, e.g. `["--log-format", "json"]`.
    pub args: &'a [&'a str],
    /// A given port, which stays the test's (to restart a node where it was); default: a free one, another if
    /// it turns out taken (see [`super::ports`]).
    pub port: Option<u16>,
    /// `RUST_LOG` for this node; default: `TEST_NODE_LOG`, or `info,socket_identity=debug`.
    pub log: Option<&'a str>,
}

impl Default for NodeOpts<'_> {
    fn default() -> Self {
        Self {
            id: "a",
            redis: None,
            prefix: "test",
            timeout_ms: 1000,
            args: &[],
            port: None,
            log: None,
        }
    }
}

impl Node {
    /// Starts a node and waits until it answers `/health`.
    pub async fn start(dir: &Path, opts: NodeOpts<'_>) -> Self {
        let node = Self::spawn(dir, opts).await;
        node.wait_healthy(Duration::from_secs(20)).await;
        node
    }

    /// Starts a node, returning once it listens on its port (or has exited: the test says whether it should),
    /// without waiting for it to serve.
    pub async fn spawn(dir: &Path, opts: NodeOpts<'_>) -> Self {
        let log = dir.join(format!("{}.log", opts.id));
        loop {
            let port = opts.port.unwrap_or_else(free_port);
            // A restarted node adds to its log; a start on a taken port leaves nothing in it.
            let from = log_len(&log);
            let mut child = Self::command(&opts, port, &log)
                .spawn()
                .expect("start node");
            let deadline = Instant::now() + Duration::from_secs(20);
            let start = loop {
                match started(&mut child, &[port], &log, from) {
                    Start::Pending if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    start => break start,
                }
            };
            if start == Start::PortTaken && opts.port.is_none() {
                let _ = child.wait();
                std::fs::File::options()
                    .write(true)
                    .open(&log)
                    .and_then(|f| f.set_len(from))
                    .unwrap();
                continue;
            }
            return Self {
                child,
                id: opts.id.to_owned(),
                port,
                log,
                scheme: if opts.args.contains(&"--plain-http") {
                    "http"
                } else {
                    "https"
                },
            };
        }
    }

    /// The command line of a node started with `opts` on `port`, writing to `log`.
    fn command(opts: &NodeOpts<'_>, port: u16, log: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_socket-identity"));
        cmd.current_dir(root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                opts.log.map(str::to_owned).unwrap_or_else(|| {
                    std::env::var("TEST_NODE_LOG").unwrap_or("info,socket_identity=debug".into())
                }),
            )
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--node-id",
                opts.id,
            ])
            .args(["--redis-prefix", opts.prefix])
            .args(["--request-timeout-ms", &opts.timeout_ms.to_string()])
            .args(opts.args)
            .stdout(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .stderr(std::fs::File::options().append(true).open(log).unwrap());
        if let Some(url) = &opts.redis {
            cmd.args(["--redis-url", url]);
        }
        // Tests ask the room list hundreds of times a second from one address: no QUERY_RATE unless a test sets
        // one (the limits tests do).
        if !opts.args.contains(&"--query-rate") {
            cmd.args(["--query-rate", "0"]);
        }
        // `TEST_WORKER_THREADS=1` runs every node on tokio's single-threaded scheduler (what PM2 gives instances on a
        // small machine), unless the test chose.
        if let Ok(threads) = std::env::var("TEST_WORKER_THREADS")
            && !opts.args.contains(&"--worker-threads")
        {
            cmd.args(["--worker-threads", &threads]);
        }
        // Nor a limit on failed logins: tests refuse many logins from 127.0.0.1 (the admin tests set one).
        if !opts.args.contains(&"--login-failures-per-minute") {
            cmd.args(["--login-failures-per-minute", "0"]);
        }
        cmd
    }

    pub async fn wait_healthy(&self, limit: Duration) {
        let http = Http::new();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(res) = http.client.get(self.url("/health")).send().await
                && res.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not become healthy; log:\n{}",
                self.id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status, if the process ends within `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn base(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The base URL of this node through `proxy` (already pointed at it): `Conn::to("a", &node.via(&proxy))`.
    pub fn via(&self, proxy: &Proxy) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, proxy.port())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// SIGSTOP, returning once the process is stopped (signal delivery is asynchronous: a node may otherwise
    /// still answer a request sent right after `kill`).
    pub fn pause(&self) {
        self.signal("STOP");
        let stat = format!("/proc/{}/stat", self.pid());
        let deadline = Instant::now() + Duration::from_secs(5);
        // The state is the field after the parenthesised command name: `T` when stopped.
        while !std::fs::read_to_string(&stat)
            .unwrap_or_default()
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
        {
            assert!(Instant::now() < deadline, "node {} did not stop", self.id);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} ignored SIGTERM",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A socket on each of two nodes in one room: each node lists both, and a room event of one reaches the other
/// (queries through our cluster protocol, events through the adapter).
pub async fn two_nodes_share_a_room(nodes: &[Node]) {
    let http = Http::new();
    let mut clients = Clients::start();
    let sa = clients
        .join(Conn::to("a", &nodes[0]).user("ua", "Shared"))
        .await;
    let sb = clients
        .join(Conn::to("b", &nodes[1]).user("ub", "Shared"))
        .await;
    for node in &nodes[..2] {
        let users = http.users(node, "Shared").await;
        let both = pairs(&[(&sa, "ua"), (&sb, "ub")]);
        assert_eq!(users.set(), both, "{}", node.id);
        assert_eq!(users.nodes, "2/2");
    }
    clients
        .emit("b", "identity-change", json!([{"id_user": "ub2"}]), true)
        .await;
    let ev = clients.expect("a", "identity-change").await;
    assert_eq!(ev["args"][0]["id_user"], "ub2", "{ev}");
}

/// Starts Redis and `n` cluster nodes named `a`, `b`, `c`, ... Node `b` runs on one thread (`--worker-threads 1`,
/// what PM2 gives instances on a small machine), the others on one per core, so every cluster test covers both of
/// tokio's schedulers; `TEST_WORKER_THREADS` or a test's own `--worker-threads` sets every node alike.
pub async fn cluster(test: &str, n: usize, timeout_ms: u64) -> (PathBuf, Redis, Vec<Node>) {
    cluster_with(test, n, timeout_ms, &[]).await
}

/// [`cluster`], every node started with `args` too (e.g. `["--heartbeat-ms", "300"]`).
pub async fn cluster_with(
    test: &str,
    n: usize,
    timeout_ms: u64,
    args: &[&str],
) -> (PathBuf, Redis, Vec<Node>) {
    start_cluster(log_dir(test), test, n, timeout_ms, args).await
}

/// [`cluster`], every node reading `config` (TOML) as its config file, written to `<log dir>/config.toml`.
pub async fn cluster_with_config(
    test: &str,
    n: usize,
    config: &str,
) -> (PathBuf, Redis, Vec<Node>) {
    cluster_with_config_and(test, n, config, &[]).await
}

/// [`cluster_with_config`], every node started with `args` too (e.g. `["--node-adapter-compat"]`).
pub async fn cluster_with_config_and(
    test: &str,
    n: usize,
    config: &str,
    args: &[&str],
) -> (PathBuf, Redis, Vec<Node>) {
    let dir = log_dir(test);
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let args: Vec<&str> = ["--config", path.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    start_cluster(dir, test, n, 1000, &args).await
}

async fn start_cluster(
    dir: PathBuf,
    test: &str,
    n: usize,
    timeout_ms: u64,
    args: &[&str],
) -> (PathBuf, Redis, Vec<Node>) {
    let redis = Redis::start(&dir);
    let mut nodes = Vec::new();
    let chosen =
        args.contains(&"--worker-threads") || std::env::var_os("TEST_WORKER_THREADS").is_some();
    let one_thread: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--worker-threads", "1"])
        .collect();
    for i in 0..n {
        let id = ((b'a' + i as u8) as char).to_string();
        nodes.push(
            Node::start(
                &dir,
                NodeOpts {
                    id: &id,
                    redis: Some(redis.url()),
                    prefix: test,
                    timeout_ms,
                    args: if id == "b" && !chosen {
                        &one_thread
                    } else {
                        args
                    },
                    ..NodeOpts::default()
                },
            )
            .await,
        );
    }
    (dir, redis, nodes)
}
