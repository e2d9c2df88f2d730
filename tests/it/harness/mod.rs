//! Shared test harness: a real `redis-server` on a free port, real node processes of the built binary, real
//! socket.io-client sockets (driven through `tests/js/driver.mjs`) and an HTTPS client that trusts the dev CA.
//!
//! Everything started here is stopped on drop, by pid. Every wait is bounded. Node logs are kept in
//! `target/test-logs/<test>/` so a failing run can be read afterwards.

#![allow(dead_code)]

use std::{
    collections::{BTreeSet, VecDeque},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{ChildStdin, Command as TokioCommand},
    sync::Notify,
};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn root() -> &'static Path {
    Path::new(ROOT)
}

/// A free loopback port (bound then released; good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory for this test's logs and artifacts.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = root().join("target/test-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn need(program: &str, hint: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: {hint} (scripts/test.sh installs it)"
    );
}

/// Waits until `f` returns `Some`, polling every 20 ms, at most `limit`.
pub async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Redis

pub struct Redis {
    child: Child,
    pub port: u16,
    /// The other servers of a Redis Cluster ([`Redis::start_cluster`]); empty for one Redis.
    shards: Vec<Redis>,
    /// The TLS port of a server of [`Redis::start_cluster_tls`].
    tls_port: Option<u16>,
}

/// Set (to anything but `0`) to run the suite's cluster tests on a Redis Cluster: [`Redis::start`] then starts
/// one (`scripts/test.sh` runs the files that matter a second time with it).
pub const REDIS_CLUSTER_ENV: &str = "TEST_REDIS_CLUSTER";

pub fn on_redis_cluster() -> bool {
    std::env::var(REDIS_CLUSTER_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

impl Redis {
    /// One redis-server on a free port, or a 3-master, 3-replica Redis Cluster when [`REDIS_CLUSTER_ENV`] is set.
    pub fn start(dir: &Path) -> Self {
        if on_redis_cluster() {
            return Self::start_cluster(dir);
        }
        Self::start_on(dir, free_port())
    }

    /// A real Redis Cluster on loopback: 6 servers (`--cluster-enabled yes`, 1 s node timeout so a failover takes
    /// about 2 s), joined by `redis-cli --cluster create --cluster-replicas 1`: 3 masters with one replica each.
    /// Returns once every slot is served and every replica is in sync. `port` is the first master's.
    pub fn start_cluster(dir: &Path) -> Self {
        Self::start_cluster_with(dir, None)
    }

    /// [`Redis::start_cluster`] speaking TLS to its clients, on its bus and for replication, with a CA and a
    /// certificate made for the test by `openssl` (the bus needs one valid for client authentication too, which
    /// `certs-dev/` is not). [`Redis::url`] is then `rediss-cluster://`; returns the CA file to trust.
    pub fn start_cluster_tls(dir: &Path) -> (Self, PathBuf) {
        let certs = dir.join("redis-tls");
        std::fs::create_dir_all(&certs).unwrap();
        need("openssl", "apt-get install -y openssl");
        let ext = certs.join("ext.cnf");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let at = |f: &str| certs.join(f).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for args in [
            [
                &["req", "-x509"][..],
                &ec,
                &["-keyout", &at("ca.key"), "-out", &at("ca.pem")],
            ]
            .concat(),
            [
                &["req"][..],
                &ec,
                &["-keyout", &at("key.pem"), "-out", &at("req.csr")],
            ]
            .concat(),
        ] {
            let out = Command::new("openssl")
                .args(&args)
                .args(["-days", "2", "-subj", "/CN=localhost"])
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
        let out = Command::new("openssl")
            .args(["x509", "-req", "-in", &at("req.csr"), "-CA", &at("ca.pem")])
            .args([
                "-CAkey",
                &at("ca.key"),
                "-CAcreateserial",
                "-out",
                &at("cert.pem"),
            ])
            .args(["-days", "2", "-extfile", &at("ext.cnf")])
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl x509: {out:?}");
        let ca = certs.join("ca.pem");
        (Self::start_cluster_with(dir, Some(&certs)), ca)
    }

    fn start_cluster_with(dir: &Path, tls: Option<&Path>) -> Self {
        let dir = dir.join("redis-cluster");
        std::fs::create_dir_all(&dir).unwrap();
        let mut servers: Vec<Redis> = (0..6)
            .map(|_| {
                let port = free_port();
                // The bus port is the port + 10,000 unless given: that may be taken, or past 65,535.
                let bus = free_port().to_string();
                let conf = dir.join(format!("nodes-{port}.conf"));
                let _ = std::fs::remove_file(&conf);
                let tls_port = tls.map(|_| free_port());
                let tls_args: Vec<String> = match (tls, tls_port) {
                    (Some(certs), Some(p)) => {
                        let at = |f: &str| certs.join(f).display().to_string();
                        [
                            "--tls-port",
                            &p.to_string(),
                            "--tls-cluster",
                            "yes",
                            "--tls-replication",
                            "yes",
                            "--tls-cert-file",
                            &at("cert.pem"),
                            "--tls-key-file",
                            &at("key.pem"),
                            "--tls-ca-cert-file",
                            &at("ca.pem"),
                            "--tls-auth-clients",
                            "no",
                        ]
                        .map(str::to_owned)
                        .to_vec()
                    }
                    _ => Vec::new(),
                };
                let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
                args.extend([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "1000",
                    "--dir",
                    dir.to_str().unwrap(),
                ]);
                let mut server = Self::start_with(&dir, port, &args);
                server.tls_port = tls_port;
                server
            })
            .collect();
        let addrs: Vec<String> = servers
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.tls_port.unwrap_or(r.port)))
            .collect();
        let ca = tls.map(|certs| certs.join("ca.pem").display().to_string());
        let out = Command::new("redis-cli")
            .args(ca.iter().flat_map(|ca| ["--tls", "--cacert", ca]))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {out:?}");
        let mut cluster = servers.remove(0);
        cluster.shards = servers;
        cluster.wait_cluster_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every server of the cluster says `cluster_state:ok` and every replica's link to its master
    /// is up.
    pub fn wait_cluster_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.servers().iter().all(|&port| {
                let info = cli_at(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                let repl = cli_at(port, &["INFO", "replication"]).unwrap_or_default();
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not settle in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of every server still running (all of one Redis, or of the cluster).
    pub fn servers(&self) -> Vec<u16> {
        std::iter::once(self.port)
            .chain(self.shards.iter().map(|r| r.port))
            .collect()
    }

    pub fn is_cluster(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The port of the master serving `key`'s hash slot (a key or a sharded channel's name).
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let nodes = self.cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
                    && (lo..=hi).contains(&slot)
                {
                    return port;
                }
            }
        }
        panic!("no master serves slot {slot} of {key}: {nodes}");
    }

    /// SIGKILLs the cluster's server on `port` (by pid) and forgets it; `port` stays the port of a live server.
    pub fn kill_server(&mut self, port: u16) {
        if self.port == port {
            // Put a live server in front, then drop the killed one from the others.
            let other = &mut self.shards[0];
            std::mem::swap(&mut self.child, &mut other.child);
            std::mem::swap(&mut self.port, &mut other.port);
        }
        let at = self.shards.iter().position(|r| r.port == port).unwrap();
        drop(self.shards.remove(at));
    }

    /// Starts redis-server on `port` (e.g. the port of one that was stopped, to simulate a restart).
    pub fn start_on(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, &[])
    }

    /// Starts redis-server on `port` with more arguments (e.g. `--requirepass`, `--tls-port`).
    pub fn start_with(dir: &Path, port: u16, args: &[&str]) -> Self {
        need("redis-server", "apt-get install -y redis-server");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(args)
            .stdout(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(dir.join("redis.log"))
                    .unwrap(),
            )
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server");
        let redis = Self {
            child,
            port,
            shards: Vec::new(),
            tls_port: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// `redis://` for one Redis, fred's `redis-cluster://host:port?node=...` for a cluster.
    pub fn url(&self) -> String {
        if !self.is_cluster() {
            return format!("redis://127.0.0.1:{}", self.port);
        }
        let others: Vec<String> = self
            .shards
            .iter()
            .map(|r| format!("node=127.0.0.1:{}", r.tls_port.unwrap_or(r.port)))
            .collect();
        match self.tls_port {
            Some(tls) => format!("rediss-cluster://localhost:{tls}?{}", others.join("&")),
            None => format!(
                "redis-cluster://127.0.0.1:{}?{}",
                self.port,
                others.join("&")
            ),
        }
    }

    /// Runs one command with `redis-cli` and returns its output (following a cluster's redirections).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        let args = if self.is_cluster() { &all[..] } else { args };
        cli_at(self.port, args).unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"))
    }

    /// Runs one command with `redis-cli -2 --json` (RESP2 replies as JSON: arrays, strings, numbers, `null`), e.g.
    /// `XRANGE`, `XREADGROUP` or `XINFO GROUPS`, and returns the reply.
    pub fn json(&self, args: &[&str]) -> Value {
        let all: Vec<&str> = ["-2", "--json"].iter().chain(args).copied().collect();
        let out = self.cli(&all);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("redis-cli {args:?}: not a JSON reply ({e}): {out}"))
    }

    /// `CLIENT LIST` without the connection asking: the clients connected now.
    /// The shard channels subscribed now (on every server of a Redis Cluster: each has its slots' channels).
    pub fn shard_channels(&self) -> usize {
        self.shard_channel_names().len()
    }

    /// [`Self::shard_channels`]' names, with the port of the server that has them, sorted (for messages).
    pub fn shard_channel_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .servers()
            .into_iter()
            .flat_map(|port| {
                let out = cli_at(port, &["PUBSUB", "SHARDCHANNELS"]).expect("redis-cli");
                out.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("{port}:{}", l.trim()))
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names
    }

    pub fn clients(&self) -> Vec<String> {
        self.cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .map(str::to_owned)
            .collect()
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        // A Redis that wants a password answers `-NOAUTH ...`: it is up all the same.
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
    }
}

/// Runs one `redis-cli` command against the server on `port`.
pub fn cli_at(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{out:?}"));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Nodes

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
    /// A given port (to restart a node where it was); default: a free one.
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
        let node = Self::spawn(dir, opts);
        node.wait_healthy(Duration::from_secs(20)).await;
        node
    }

    /// Starts a node without waiting for it.
    pub fn spawn(dir: &Path, opts: NodeOpts<'_>) -> Self {
        let port = opts.port.unwrap_or_else(free_port);
        let log = dir.join(format!("{}.log", opts.id));
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
                    .open(&log)
                    .unwrap(),
            )
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        if let Some(url) = &opts.redis {
            cmd.args(["--redis-url", url]);
        }
        // Tests ask the room list hundreds of times a second from one address: no QUERY_RATE unless a test sets
        // one (tests/limits.rs does).
        if !opts.args.contains(&"--query-rate") {
            cmd.args(["--query-rate", "0"]);
        }
        // Nor a limit on failed logins: tests refuse many logins from 127.0.0.1 (tests/admin.rs sets one).
        if !opts.args.contains(&"--login-failures-per-minute") {
            cmd.args(["--login-failures-per-minute", "0"]);
        }
        let child = cmd.spawn().expect("start node");
        Self {
            child,
            id: opts.id.to_owned(),
            port,
            log,
            scheme: if opts.args.contains(&"--plain-http") {
                "http"
            } else {
                "https"
            },
        }
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
        .join("a", &nodes[0], "ua", "Shared", "websocket")
        .await;
    let sb = clients
        .join("b", &nodes[1], "ub", "Shared", "websocket")
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

/// Starts Redis and `n` cluster nodes named `a`, `b`, `c`, ...
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
    let dir = log_dir(test);
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap().to_owned();
    start_cluster(dir, test, n, 1000, &["--config", &path]).await
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
                    args,
                    ..NodeOpts::default()
                },
            )
            .await,
        );
    }
    (dir, redis, nodes)
}

// ---------------------------------------------------------------------------------------------------------------
// HTTPS

pub struct Http {
    pub client: reqwest::Client,
}

/// A TLS client that trusts the development CA, for raw connections (no HTTP client in the way).
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(root().join("certs-dev/ca.pem")).unwrap();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A raw TLS connection to `localhost:{port}`, handshake done.
pub async fn tls(port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tls_connector()
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A `GET /{room}/users` answer.
#[derive(Debug)]
pub struct Users {
    pub status: u16,
    pub nodes: String,
    pub partial: String,
    pub body: Value,
}

impl Users {
    /// `(id_socket, id_user)` pairs, as a set.
    pub fn set(&self) -> BTreeSet<(String, String)> {
        self.body
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {}", self.body))
            .iter()
            .map(|u| {
                (
                    u["id_socket"].as_str().unwrap().to_owned(),
                    u["id_user"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

impl Http {
    pub fn new() -> Self {
        let ca = std::fs::read(root().join("certs-dev/ca.pem")).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10))
            // Nodes close a keep-alive connection idle for HEADER_READ_TIMEOUT_MS (10 s by default): a client that
            // reuses one as the node closes it gets an EOF instead of an answer. Let idle ones go well before.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self { client }
    }

    /// The status of `GET {path}` on `node`.
    pub async fn status(&self, node: &Node, path: &str) -> u16 {
        let res = self.client.get(node.url(path)).send().await.unwrap();
        res.status().as_u16()
    }

    /// `GET {node}{path}`'s body as JSON.
    pub async fn json(&self, node: &Node, path: &str) -> Value {
        let res = self.client.get(node.url(path)).send().await.unwrap();
        res.json().await.unwrap()
    }

    /// `POST {node}/send?{query}` with `body` as JSON: the status and the JSON answer (`null` if none).
    pub async fn push(&self, node: &Node, query: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(node.url(&format!("/send?{query}")))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The value of one sample of `node`'s `/metrics` (its exact name and labels), if present.
    pub async fn metric(&self, node: &Node, sample: &str) -> Option<f64> {
        let res = self.client.get(node.url("/metrics")).send().await.unwrap();
        let text = res.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics text: {text}");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    pub async fn users(&self, node: &Node, room: &str) -> Users {
        self.users_at(&node.base(), room).await
    }

    /// `GET {base}/{room}/users`.
    pub async fn users_at(&self, base: &str, room: &str) -> Users {
        self.users_in(base, room, "/").await
    }

    /// `GET {base}/{room}/users?namespace={ns}`.
    pub async fn users_in(&self, base: &str, room: &str, ns: &str) -> Users {
        let res = self
            .client
            .get(format!("{base}/{room}/users"))
            .query(&[("namespace", ns)])
            .send()
            .await
            .unwrap();
        let h = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let (nodes, partial) = (h("x-cluster-nodes"), h("x-cluster-partial"));
        let status = res.status().as_u16();
        let body = res.json().await.unwrap();
        Users {
            status,
            nodes,
            partial,
            body,
        }
    }
}

/// Serves `app` (an auth webhook, a backend) over plain HTTP on a free loopback port, for the test's life; returns
/// the port.
pub async fn serve_loopback(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A set of expected `(id_socket, id_user)` pairs.
pub fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(s, u)| (s.to_string(), u.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// socket.io-client

/// Real socket.io-client sockets in one `node` process.
pub struct Clients {
    stdin: ChildStdin,
    events: Arc<(Mutex<VecDeque<Value>>, Notify)>,
    _child: tokio::process::Child,
}

impl Clients {
    pub fn start() -> Self {
        need("node", "apt-get install -y nodejs");
        let js = root().join("tests/js");
        assert!(
            js.join("node_modules/socket.io-client").exists(),
            "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (scripts/test.sh does)"
        );
        let mut child = TokioCommand::new("node")
            .arg(js.join("driver.mjs"))
            .env("NODE_EXTRA_CA_CERTS", root().join("certs-dev/ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new((Mutex::new(VecDeque::new()), Notify::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).expect("driver prints JSON");
                sink.0.lock().unwrap().push_back(v);
                sink.1.notify_waiters();
            }
        });
        Self {
            stdin,
            events,
            _child: child,
        }
    }

    async fn send(&mut self, cmd: Value) {
        let mut line = serde_json::to_vec(&cmd).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Sends the driver any command (tests/js/driver.mjs), for options the helpers here do not take.
    pub async fn send_raw(&mut self, cmd: Value) {
        self.send(cmd).await;
    }

    /// Opens a socket (not waiting for the outcome).
    pub async fn open(
        &mut self,
        id: &str,
        node: &Node,
        query: Value,
        auth: Value,
        transports: &[&str],
    ) {
        self.open_at(id, &node.base(), query, auth, transports)
            .await;
    }

    /// Opens a socket to the server at `base` (`https://host:port`), not waiting for the outcome.
    pub async fn open_at(
        &mut self,
        id: &str,
        base: &str,
        query: Value,
        auth: Value,
        transports: &[&str],
    ) {
        self.send(
            json!({"op": "connect", "id": id, "url": base, "query": query,
            "auth": auth, "transports": transports}),
        )
        .await;
    }

    /// Connects `id` to `base` as `user` in `room` over websocket, reconnecting by itself whenever the connection
    /// drops (socket.io-client's own reconnection, 200 ms to 1 s apart); returns the first socket id.
    pub async fn join_reconnecting(
        &mut self,
        id: &str,
        base: &str,
        user: &str,
        room: &str,
    ) -> String {
        self.send(json!({"op": "connect", "id": id, "url": base,
            "query": {"id_user": user, "room": room}, "transports": ["websocket"], "reconnect": true}))
            .await;
        let ev = self.expect_any(id, &["connect", "connect_error"]).await;
        assert_eq!(ev["event"], "connect", "{id} could not connect: {ev}");
        ev["sid"].as_str().unwrap().to_owned()
    }

    /// Connects `id` to namespace `ns` of the server at `base` over websocket, with `query`, `auth` and extra
    /// HTTP `headers` on the handshake; returns the outcome: the `connect` or `connect_error` event.
    pub async fn connect_ns(
        &mut self,
        id: &str,
        base: &str,
        ns: &str,
        query: Value,
        auth: Value,
        headers: Value,
    ) -> Value {
        let url = match ns {
            "/" => base.to_owned(),
            ns => format!("{base}{ns}"),
        };
        self.send(
            json!({"op": "connect", "id": id, "url": url, "query": query, "auth": auth,
            "transports": ["websocket"], "headers": headers}),
        )
        .await;
        self.expect_any(id, &["connect", "connect_error"]).await
    }

    /// [`Self::login`] from another local address (`127.0.0.2`: the server tells it apart from `127.0.0.1`).
    pub async fn login_from(
        &mut self,
        local_address: &str,
        id: &str,
        base: &str,
        ns: &str,
        auth: Value,
    ) -> Value {
        self.send(
            json!({"op": "connect", "id": id, "url": format!("{base}{ns}"), "auth": auth,
            "transports": ["websocket"], "local_address": local_address}),
        )
        .await;
        self.expect_any(id, &["connect", "connect_error"]).await
    }

    /// [`Self::connect_ns`] with an `auth` object only (no query, no extra headers).
    pub async fn login(&mut self, id: &str, base: &str, ns: &str, auth: Value) -> Value {
        self.connect_ns(id, base, ns, Value::Null, auth, Value::Null)
            .await
    }

    /// [`Self::connect_ns`] with `query` alone, saying which server events sent with an ack callback the client
    /// acknowledges: `true` all (the driver calls the callback with `"ok"`), `false` none, or a list of names.
    pub async fn connect_acking(
        &mut self,
        id: &str,
        base: &str,
        ns: &str,
        query: Value,
        ack_server: Value,
    ) -> Value {
        self.send(
            json!({"op": "connect", "id": id, "url": format!("{base}{ns}"), "query": query,
            "transports": ["websocket"], "ack_server": ack_server}),
        )
        .await;
        self.expect_any(id, &["connect", "connect_error"]).await
    }

    /// Opens a websocket socket to `node` with extra HTTP headers on its handshake (e.g. `Origin`).
    pub async fn open_with_headers(&mut self, id: &str, node: &Node, query: Value, headers: Value) {
        self.open_with_headers_over(id, node, query, headers, &["websocket"])
            .await;
    }

    /// [`Self::open_with_headers`] over the given transports; with `polling`, every long-polling request carries
    /// the headers.
    pub async fn open_with_headers_over(
        &mut self,
        id: &str,
        node: &Node,
        query: Value,
        headers: Value,
        transports: &[&str],
    ) {
        self.send(
            json!({"op": "connect", "id": id, "url": node.base(), "query": query,
            "transports": transports, "headers": headers}),
        )
        .await;
    }

    /// Connects `id` to `node` as `user` in `room` and returns its socket id.
    pub async fn join(
        &mut self,
        id: &str,
        node: &Node,
        user: &str,
        room: &str,
        transport: &str,
    ) -> String {
        self.join_at(id, &node.base(), user, room, transport).await
    }

    /// [`Self::join`] to the server at `base`.
    pub async fn join_at(
        &mut self,
        id: &str,
        base: &str,
        user: &str,
        room: &str,
        transport: &str,
    ) -> String {
        let transports: &[&str] = match transport {
            "websocket" => &["websocket"],
            "polling" => &["polling"],
            _ => &["polling", "websocket"],
        };
        self.open_at(
            id,
            base,
            json!({"id_user": user, "room": room}),
            Value::Null,
            transports,
        )
        .await;
        let ev = self.expect_any(id, &["connect", "connect_error"]).await;
        assert_eq!(ev["event"], "connect", "{id} could not connect: {ev}");
        ev["sid"].as_str().unwrap().to_owned()
    }

    pub async fn emit(&mut self, id: &str, event: &str, args: Value, ack: bool) {
        self.send(json!({"op": "emit", "id": id, "event": event, "args": args, "ack": ack}))
            .await;
    }

    pub async fn disconnect(&mut self, id: &str) {
        self.send(json!({"op": "disconnect", "id": id})).await;
    }

    /// The next event named `event` for client `id` (earlier other events stay queued), within 10 s (generous:
    /// the suite runs many clusters at once on small CI machines).
    pub async fn expect(&mut self, id: &str, event: &str) -> Value {
        self.expect_any(id, &[event]).await
    }

    pub async fn expect_any(&mut self, id: &str, events: &[&str]) -> Value {
        match self.within(id, events, Duration::from_secs(10)).await {
            Some(v) => v,
            None => panic!(
                "{id} got no {events:?} within 10 s; queue: {:?}",
                self.events.0.lock().unwrap()
            ),
        }
    }

    /// The next of `events` for client `id`, if one arrives within `wait`.
    pub async fn within(&mut self, id: &str, events: &[&str], wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.events.1.notified();
            {
                let mut q = self.events.0.lock().unwrap();
                if let Some(pos) = q
                    .iter()
                    .position(|e| e["id"] == id && events.iter().any(|name| e["event"] == *name))
                {
                    return q.remove(pos);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    /// Asserts that no `event` for `id` arrives within `wait`.
    pub async fn expect_none(&mut self, id: &str, event: &str, wait: Duration) {
        tokio::time::sleep(wait).await;
        let q = self.events.0.lock().unwrap();
        assert!(
            !q.iter().any(|e| e["id"] == id && e["event"] == event),
            "{id} unexpectedly got {event}: {q:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Browsers and tokens

/// The Chromium to drive (`CHROMIUM`, default `/usr/bin/chromium`), checked to be there.
pub fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install -y chromium (scripts/test.sh does)"
    );
    chromium
}

/// Runs `tests/js/<script>` with `args` in Node (bounded to 60 s, `CHROMIUM` set), keeps its stderr in
/// `<dir>/<script>.stderr`, and returns what it printed on stdout as JSON. A failure shows the stderr and
/// `node_log` (the log of the node the script talked to).
pub async fn browser_script(
    dir: &Path,
    script: &str,
    args: Vec<String>,
    node_log: String,
) -> Value {
    let chromium = chromium();
    let path = root().join("tests/js").join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["60", "node"])
            .arg(path)
            .args(args)
            .env("CHROMIUM", chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(dir.join(format!("{script}.stderr")), stderr.as_bytes()).unwrap();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stderr}\nnode:\n{node_log}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Seconds since the Unix epoch, for token claims.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token of `claims`, signed with `secret`.
pub fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
