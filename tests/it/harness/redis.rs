//! A real `redis-server`: one, or a 3-master, 3-replica Redis Cluster, on ports of their own.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    need,
    ports::{Start, free_port, log_len, log_since, started},
};

/// A redis-server of the test (or a Redis Cluster's first), stopped on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// The other servers of a Redis Cluster ([`Redis::start_cluster`]); empty for one Redis.
    shards: Vec<Redis>,
    /// The TLS port of a server of [`Redis::start_cluster_tls`] or [`Redis::start_with_tls`].
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
        Self::launch(dir, None, Extra::default(), &[])
    }

    /// One redis-server on a free port, with more arguments (e.g. `--requirepass`, `--appendonly yes`).
    pub fn start_with(dir: &Path, args: &[&str]) -> Self {
        Self::launch(dir, None, Extra::default(), args)
    }

    /// [`Redis::start_with`], listening for TLS too on another free port ([`Redis::tls_port`]); `args` say with
    /// what certificate (`--tls-cert-file`, ...).
    pub fn start_with_tls(dir: &Path, args: &[&str]) -> Self {
        let extra = Extra {
            tls: true,
            ..Extra::default()
        };
        Self::launch(dir, None, extra, args)
    }

    /// One redis-server on `port`, which stays the test's: a restart where one was stopped, or a port a node was
    /// told about before Redis started. A port taken meanwhile fails the test (see [`super::ports`]).
    pub fn start_on(dir: &Path, port: u16, args: &[&str]) -> Self {
        Self::launch(dir, Some(port), Extra::default(), args)
    }

    /// The TLS port, if it has one.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
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
        let tls_args: Vec<String> = match tls {
            Some(certs) => {
                let at = |f: &str| certs.join(f).display().to_string();
                [
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
            None => Vec::new(),
        };
        let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        args.extend([
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            "--dir",
            dir.to_str().unwrap(),
        ]);
        // The bus port is the port + 10,000 unless given: that may be taken, or past 65,535.
        let extra = Extra {
            bus: true,
            tls: tls.is_some(),
        };
        let mut servers: Vec<Redis> = (0..6)
            .map(|_| Self::launch(&dir, None, extra, &args))
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

    /// Starts redis-server on `port` (a free one if `None`), and on the ports `extra` asks for, with more
    /// arguments; returns once it answers. Started on free ports, it is started again on others while it finds
    /// one of them taken (by another process: see [`super::ports`]).
    fn launch(dir: &Path, port: Option<u16>, extra: Extra, args: &[&str]) -> Self {
        need("redis-server", "apt-get install -y redis-server");
        for _ in 0..10 {
            let main = port.unwrap_or_else(free_port);
            let bus = extra.bus.then(free_port);
            let tls_port = extra.tls.then(free_port);
            let mut all = vec![
                "--port".to_owned(),
                main.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
            ];
            if let Some(bus) = bus {
                let conf = dir.join(format!("nodes-{main}.conf"));
                let _ = std::fs::remove_file(&conf);
                all.extend(["--cluster-port".into(), bus.to_string()]);
                all.extend(["--cluster-config-file".into(), conf.display().to_string()]);
            }
            if let Some(tls) = tls_port {
                all.extend(["--tls-port".into(), tls.to_string()]);
            }
            let log = dir.join(format!("redis-{main}.log"));
            let from = log_len(&log);
            let mut child = Command::new("redis-server")
                .args(&all)
                .args(args)
                .stdout(
                    std::fs::File::options()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap(),
                )
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start redis-server");
            let ports: Vec<u16> = [Some(main), bus, tls_port].into_iter().flatten().collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            let start = loop {
                match started(&mut child, &ports, &log, from) {
                    Start::Pending if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    start => break start,
                }
            };
            if start == Start::PortTaken && port.is_none() {
                let _ = child.wait();
                continue;
            }
            let redis = Self {
                child,
                port: main,
                shards: Vec::new(),
                tls_port,
            };
            assert!(
                start == Start::Listening,
                "redis-server did not start on {ports:?} ({start:?}):\n{}",
                log_since(&log, from)
            );
            // Listening, it may still be loading its data (`-LOADING`).
            while !redis.ping() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not start on {main}:\n{}",
                    log_since(&log, from)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            return redis;
        }
        panic!("redis-server found its ports taken 10 times");
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

    /// Waits (5 s at most) until the set `key` has `n` members: a user room's holders, which a node writes just
    /// after a socket's handshake and removes just after it leaves.
    pub async fn until_members(&self, key: &str, n: usize) {
        let what = format!("{n} members in {key}");
        super::eventually(Duration::from_secs(5), &what, async || {
            (self.cli(&["SCARD", key]).trim() == n.to_string()).then_some(())
        })
        .await;
    }

    /// Waits (5 s at most) until `member` is in the set `key`.
    pub async fn until_member(&self, key: &str, member: &str) {
        let what = format!("{member} in {key}");
        super::eventually(Duration::from_secs(5), &what, async || {
            (self.cli(&["SISMEMBER", key, member]).trim() == "1").then_some(())
        })
        .await;
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

/// The ports a redis-server listens on besides its own.
#[derive(Clone, Copy, Default)]
struct Extra {
    /// A Redis Cluster's bus (`--cluster-port`).
    bus: bool,
    /// TLS (`--tls-port`).
    tls: bool,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
