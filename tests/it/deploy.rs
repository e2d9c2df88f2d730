//! The deployment recipes with the real tools: PM2 (from npm) runs `deploy/ecosystem.config.js`, and
//! `systemd-analyze verify` checks the systemd template unit.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_socket-identity");

/// A PM2 daemon of our own (its own `PM2_HOME`), killed on drop with everything it started.
struct Pm2 {
    home: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Pm2 {
    fn new(dir: &Path, env: Vec<(&'static str, String)>) -> Self {
        let pm2 = root().join("tests/js/node_modules/.bin/pm2");
        assert!(
            pm2.exists(),
            "PM2 is not installed: run `npm ci --prefix tests/js` (scripts/test.sh does)"
        );
        Self {
            home: dir.join("pm2-home"),
            env,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(root().join("tests/js/node_modules/.bin/pm2"))
            .args(args)
            .current_dir(root())
            .env("PM2_HOME", &self.home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run pm2");
        assert!(
            out.status.success(),
            "pm2 {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `(name, pid, status)` of every process PM2 manages.
    fn list(&self) -> Vec<(String, u32, String)> {
        let out = self.run(["jlist"].as_slice());
        let apps: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pm2 jlist is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        apps.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_owned(),
                    a["pid"].as_u64().unwrap() as u32,
                    a["pm2_env"]["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = Command::new(root().join("tests/js/node_modules/.bin/pm2"))
            .arg("kill")
            .env("PM2_HOME", &self.home)
            .output();
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// PM2 starts four instances sharing one port (SO_REUSEPORT), they form one cluster, a room spread over them is
/// listed whole by whichever instance answers, long-polling is refused, and `pm2 stop` stops them gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pm2_runs_four_instances_on_one_port() {
    need("node", "apt-get install -y nodejs");
    let dir = log_dir("pm2_runs_four_instances_on_one_port");
    let redis = Redis::start(&dir);
    let port = free_port();
    let base = format!("https://localhost:{port}");
    let pm2 = Pm2::new(
        &dir,
        vec![
            ("SOCKET_IDENTITY_BIN", BIN.to_owned()),
            ("REDIS_URL", redis.url()),
            ("REDIS_PREFIX", format!("pm2-{port}")),
            ("PORT", port.to_string()),
            ("BIND", "127.0.0.1".into()),
            ("NODE_ID_PREFIX", "pm2".into()),
            ("RUST_LOG", "info".into()),
        ],
    );
    pm2.run(&["start", "deploy/ecosystem.config.js"]);

    let names: BTreeSet<String> = (1..=4).map(|i| format!("socket-identity-{i}")).collect();
    let listed = pm2.list();
    assert_eq!(
        listed.iter().map(|a| a.0.clone()).collect::<BTreeSet<_>>(),
        names
    );

    // A fresh TCP connection per request, so the kernel spreads them over the instances.
    let ca = std::fs::read(root().join("certs-dev/ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ready = |http: reqwest::Client, base: String| async move {
        let res = http.get(format!("{base}/ready")).send().await.ok()?;
        let body: Value = res.json().await.ok()?;
        (body["ready"] == true && body["cluster_nodes"] == 4).then_some(body)
    };
    eventually(Duration::from_secs(20), "4 ready instances", async || {
        ready(http.clone(), base.clone()).await
    })
    .await;
    let listed = pm2.list();
    assert!(
        listed
            .iter()
            .all(|(_, pid, status)| status == "online" && alive(*pid)),
        "{listed:?}"
    );
    // The 4 instances share the host's cores rather than each running a thread per core.
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = format!("WORKER_THREADS={}", (cores / 4).max(1));
    for (name, pid, _) in &listed {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            environ.split(|b| *b == 0).any(|v| v == threads.as_bytes()),
            "{name} should run with {threads}"
        );
    }

    let mut clients = Clients::start();
    let mut expected = BTreeSet::new();
    for i in 0..12 {
        let (id, user) = (format!("c{i}"), format!("user{i}"));
        let sid = clients.join(Conn::to(&id, &base).user(&user, "Ops")).await;
        expected.insert((sid, user));
    }
    // Instances share a port without sticky sessions, so long-polling is refused rather than broken.
    clients
        .open(
            Conn::to("poll", &base)
                .user("p", "Ops")
                .transports(&["polling"]),
        )
        .await;
    let ev = clients
        .expect_any("poll", &["connect", "connect_error"])
        .await;
    assert_eq!(ev["event"], "connect_error", "{ev}");

    // Whichever instance answers, the room is whole.
    let (mut answering, mut holding) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..20 {
        let health: Value = http
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answering.insert(health["node"].as_str().unwrap().to_owned());
        let res = http.get(format!("{base}/Ops/users")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-cluster-nodes"], "4/4");
        let body: Value = res.json().await.unwrap();
        let got: BTreeSet<(String, String)> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                holding.insert(u["node"].as_str().unwrap().to_owned());
                (
                    u["id_socket"].as_str().unwrap().to_owned(),
                    u["id_user"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(got, expected);
    }
    println!("instances answering: {answering:?}; instances holding sockets: {holding:?}");
    assert!(
        answering.len() >= 2 && holding.len() >= 2,
        "the kernel should spread 32 connections over 4 instances: {answering:?} {holding:?}"
    );
    assert!(holding.iter().all(|n| n.starts_with("pm2-")), "{holding:?}");

    // A graceful stop: each client sees its transport close (so socket.io-client reconnects on its own, to another
    // instance; "io server disconnect" would stop it from reconnecting), and the processes exit.
    let pids: Vec<u32> = pm2.list().iter().map(|a| a.1).collect();
    pm2.run(&["stop", "deploy/ecosystem.config.js"]);
    for i in 0..12 {
        let ev = clients.expect(&format!("c{i}"), "disconnect").await;
        assert_eq!(ev["reason"], "transport close", "{ev}");
    }
    eventually(Duration::from_secs(20), "instances to exit", async || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    assert!(pm2.list().iter().all(|a| a.2 == "stopped"));
    // Each instance ran its graceful shutdown to the end (PM2 would SIGKILL it after kill_timeout).
    for i in 1..=4 {
        let out =
            std::fs::read_to_string(pm2.home.join(format!("logs/socket-identity-{i}-out.log")))
                .unwrap_or_default();
        assert!(
            out.contains("INFO socket_identity::app: stopped"),
            "instance {i}:\n{out}"
        );
    }
    pm2.run(&["delete", "deploy/ecosystem.config.js"]);
}

/// `systemd-analyze verify` accepts the template unit, instantiated as it would be installed.
#[test]
fn systemd_analyze_accepts_the_unit() {
    need(
        "systemd-analyze",
        "apt-get install -y systemd (it provides systemd-analyze)",
    );
    let dir = log_dir("systemd_analyze_accepts_the_unit");
    let unit = std::fs::read_to_string(root().join("deploy/systemd/socket-identity@.service"))
        .expect("deploy/systemd/socket-identity@.service");
    // The unit names the installed binary; point it at the one just built so `verify` can check it exists.
    assert!(unit.contains("ExecStart=/usr/local/bin/socket-identity"));
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/socket-identity",
        &format!("ExecStart={BIN}"),
    );
    std::fs::write(dir.join("socket-identity@.service"), unit).unwrap();
    let instance = dir.join("socket-identity@1.service");
    let _ = std::fs::remove_file(&instance);
    std::os::unix::fs::symlink("socket-identity@.service", &instance).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("systemd-analyze verify: {:?} {stderr}", out.status);
    assert!(out.status.success(), "{stderr}");
    // Warnings about our unit are failures too (systemd's own units on this machine are not ours to judge).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("socket-identity"))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
}

/// nginx, stopped on drop by SIGTERM to its master (SIGKILL would leave its workers behind), by pid.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sample nginx config (ports and certificate paths adapted) in front of two plain-HTTP instances: `nginx -t`
/// accepts it, long-polling sessions survive through it (sticky), websockets upgrade through it, and the room
/// is listed whole through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sample_proxies_sticky_sessions_and_websockets() {
    need("nginx", "apt-get install -y nginx-light");
    let (dir, _redis, nodes) = cluster_with(
        "nginx_sample_proxies_sticky_sessions_and_websockets",
        2,
        1000,
        &["--plain-http"],
    )
    .await;
    let port = free_port();
    let sample = std::fs::read_to_string(root().join("deploy/nginx/socket-identity.conf")).unwrap();
    let upstreams: String = nodes
        .iter()
        .map(|n| {
            format!(
                "    server 127.0.0.1:{} max_fails=1 fail_timeout=5s;\n",
                n.port
            )
        })
        .collect();
    let mut site = String::new();
    for line in sample.lines() {
        if line.trim_start().starts_with("server 127.0.0.1:51") {
            if line.contains(":5101") {
                site.push_str(&upstreams);
            }
        } else if line.contains("listen [::]:5009") {
        } else {
            site.push_str(line);
            site.push('\n');
        }
    }
    let certs = root().join("certs-dev");
    let site = site
        .replace("listen 5009 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
        .replace(
            "/etc/socket-identity/cert.pem",
            &certs.join("cert.pem").display().to_string(),
        )
        .replace(
            "/etc/socket-identity/key.pem",
            &certs.join("key.pem").display().to_string(),
        );
    assert!(site.contains(&format!("127.0.0.1:{port} ssl")));
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/tmp-body;\n\
               proxy_temp_path {d}/tmp-proxy;\n  fastcgi_temp_path {d}/tmp-fcgi;\n\
               uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n  include {d}/site.conf;\n}}\n"
        ),
    )
    .unwrap();
    let conf = dir.join("nginx.conf");
    let check = Command::new("nginx")
        .args(["-t", "-p"])
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .spawn()
            .unwrap(),
    );
    let base = format!("https://127.0.0.1:{port}");
    let http = Http::new();
    eventually(
        Duration::from_secs(10),
        "nginx to proxy /health",
        async || {
            let res = http
                .client
                .get(format!("{base}/health"))
                .send()
                .await
                .ok()?;
            (res.status() == 200).then_some(())
        },
    )
    .await;

    let mut clients = Clients::start();
    let mut expected = BTreeSet::new();
    for (id, transports) in [
        ("p1", &["polling"][..]),
        ("p2", &["polling"]),
        ("w", &["websocket"]),
        ("u", &["polling", "websocket"]),
    ] {
        let sid = clients
            .join(
                Conn::to(id, &base)
                    .user(id, "Proxied")
                    .transports(transports),
            )
            .await;
        expected.insert((sid, id.to_owned()));
    }
    // A socket straight on instance b, so the room spans both whichever instance nginx picked.
    let direct = clients
        .join(Conn::to("d", &nodes[1]).user("d", "Proxied"))
        .await;
    expected.insert((direct, "d".to_owned()));
    // Long-polling sessions keep working through the proxy: an event reaches them after several polls.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clients
        .emit(
            "d",
            "identity-change",
            serde_json::json!([{"id_user": "d2"}]),
            true,
        )
        .await;
    for id in ["p1", "p2", "w", "u"] {
        let ev = clients.expect(id, "identity-change").await;
        assert_eq!(ev["args"][0]["id_user"], "d2", "{ev}");
    }
    expected.retain(|(_, u)| u != "d");
    let d = expected.len();
    let users = http.users_at(&base, "Proxied").await;
    assert_eq!(users.status, 200);
    assert_eq!(users.nodes, "2/2");
    let got = users.set();
    assert_eq!(got.len(), d + 1, "{got:?}");
    assert!(expected.is_subset(&got), "{got:?}");
    assert!(got.iter().any(|(_, u)| u == "d2"), "{got:?}");
}

/// `scripts/dev-cluster.sh` on its own state directory and ports; `stop` on drop, should the test fail.
struct DevCluster {
    state: PathBuf,
    redis_port: u16,
    first: u16,
}

impl DevCluster {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(root().join("scripts/dev-cluster.sh"))
            .args(args)
            .current_dir(root())
            .env("DEV_DIR", &self.state)
            .env("DEV_REDIS_PORT", self.redis_port.to_string())
            .env("DEV_PORT", self.first.to_string())
            .env("DEV_BIN", BIN)
            .env("BIND", "127.0.0.1")
            .output()
            .unwrap()
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}

/// `scripts/dev-cluster.sh` starts Redis and the nodes, `status` shows them ready as one cluster, and `stop`
/// stops everything it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_script_starts_reports_and_stops() {
    need("curl", "apt-get install -y curl");
    let dir = log_dir("dev_cluster_script_starts_reports_and_stops");
    let state = dir.join("dev");
    std::fs::create_dir_all(&state).unwrap();
    let first = free_ports(2);
    let redis_port = free_port();
    let dev = DevCluster {
        state: state.clone(),
        redis_port,
        first,
    };
    let script = |args: &[&str]| {
        let out = dev.run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "dev-cluster.sh {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let started = script(&["start", "2"]);
    assert!(
        started.contains(&format!("node2: https://localhost:{}", first + 1)),
        "{started}"
    );
    let status = eventually(Duration::from_secs(20), "both nodes ready", async || {
        let s = script(&["status"]);
        (s.matches(r#""ready":true"#).count() == 2
            && s.matches(r#""cluster_nodes":2"#).count() == 2)
            .then_some(s)
    })
    .await;
    println!("{status}");
    assert!(
        status.contains(&format!("redis: up on {redis_port}")),
        "{status}"
    );
    let pids: Vec<u32> = ["node1", "node2", "redis"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(state.join(format!("{f}.pid"))).unwrap();
            text.trim().parse().unwrap()
        })
        .collect();

    assert!(script(&["stop"]).contains("stopped"));
    eventually(Duration::from_secs(10), "everything to exit", async || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    let status = script(&["status"]);
    assert!(status.contains("redis: down"), "{status}");
    // The 2 nodes share the cores.
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = format!("running on {} worker thread(s)", (cores / 2).max(1));
    for node in ["node1", "node2"] {
        let log = std::fs::read_to_string(state.join(format!("{node}.log"))).unwrap();
        assert!(
            log.contains("socket_identity::app: stopped") && log.contains(&threads),
            "{node}:\n{log}"
        );
    }
}

/// Redis as `admin`, the test's own user (the sample turns the default user off).
fn acl_cli(port: u16, args: &[&str]) -> String {
    let mut all = vec![
        "--user",
        "admin",
        "--pass",
        "admin-pass",
        "--no-auth-warning",
    ];
    all.extend_from_slice(args);
    cli_at(port, &all).unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"))
}

/// `deploy/redis-acl.example` on a real Redis: two nodes, each as its own user limited to the cluster's keys and
/// channels, work as a cluster (a room shared across nodes, `POST /send` with reliable delivery, the admin UI's
/// sessions, the gateway's streams) and Redis refused them nothing (`ACL LOG` is empty); outside those limits a
/// node's user can do nothing: not `FLUSHALL`, not another key, not another channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_work_as_a_cluster_under_the_sample_redis_acl() {
    let dir = log_dir("deploy_redis_acl");
    let sample = std::fs::read_to_string(root().join("deploy/redis-acl.example")).unwrap();
    let acl = sample
        .replace(">CHANGE-ME-A", ">pass-a")
        .replace(">CHANGE-ME-B", ">pass-b")
        + "user admin on >admin-pass ~* &* +@all\n";
    std::fs::write(dir.join("users.acl"), acl).unwrap();
    let acl_path = dir.join("users.acl").display().to_string();
    let redis = Redis::start_with(&dir, &["--aclfile", &acl_path]);
    let port = redis.port;
    let hash = bcrypt::hash("admin-password", 4).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake"]
api_key = "acl-key-0123456789abcdef"
user_room_prefix = "user_"

[[namespace]]
name = "/live"
auth = "claim"
rooms = ["handshake"]
api_key = "acl-key-0123456789abcdef"
recovery_window_s = 60

[admin]
enabled = true
username = "admin"
password_hash = "{hash}"

[gateway]
path = "/connect"
onconnect = {{ publish = "socket:connection" }}
send = {{ subscribe = "socket:send" }}
broadcast = {{ subscribe = "socket:broadcast" }}
jwt_secret = "a-gateway-secret-of-32-bytes-----"
stream_prefix = "socket-identity:gw:"
"#
        ),
    )
    .unwrap();
    // With NODE_ADAPTER_COMPAT: every broadcast is also PUBLISHed for Node servers, under the same ACL.
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--node-adapter-compat",
    ];
    let mut nodes = Vec::new();
    for (id, password) in [("a", "pass-a"), ("b", "pass-b")] {
        let node = Node::start(
            &dir,
            NodeOpts {
                id,
                redis: Some(format!("redis://node-{id}:{password}@127.0.0.1:{port}")),
                prefix: "socket-identity",
                args: &args,
                ..NodeOpts::default()
            },
        )
        .await;
        nodes.push(node);
    }
    let http = Http::new();
    for node in &nodes {
        assert_eq!(http.status(node, "/ready").await, 200, "{}", node.id);
    }
    two_nodes_share_a_room(&nodes).await;

    // POST /send to a room and to a user room (stored, then delivered as a batch on another node).
    let mut io = Clients::start();
    io.join(Conn::to("s", &nodes[1]).user("us", "Shared")).await;
    let body = serde_json::json!({"rooms": ["Shared", "user_u1"], "event": "news", "args": [1]});
    let (status, answer) = http
        .push(&nodes[0], "site=/&apiKey=acl-key-0123456789abcdef", &body)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rooms"][1]["queued"], 1, "{answer}");
    assert_eq!(io.expect("s", "news").await["args"], serde_json::json!([1]));
    let ev = io
        .connect(
            Conn::to("u1", &nodes[1])
                .user("u1", "user_u1")
                .ack_server(Value::Bool(true)),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let batch = io.expect("u1", "batch").await;
    assert_eq!(
        batch["args"][0],
        serde_json::json!([["news", 1]]),
        "{batch}"
    );

    // The admin UI: a login on a, its session resumed on b.
    let login = serde_json::json!({"username": "admin", "password": "admin-password"});
    let ev = io
        .connect(Conn::to("admin", &nodes[0]).ns("/admin").auth(login))
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let session = io.expect("admin", "session").await["args"][0].clone();
    let ev = io
        .connect(
            Conn::to("admin2", &nodes[1])
                .ns("/admin")
                .auth(serde_json::json!({"sessionId": session})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");

    // Connection state recovery: a push recorded in the namespace's log, the session saved, then taken over by the
    // same client (its pid and offset) on the other node.
    let first = io
        .enter(Conn::to("r1", &nodes[1]).ns("/live").user("ur", "R"))
        .await;
    let body = serde_json::json!({"rooms": ["R"], "event": "news", "args": [2]});
    let (status, answer) = http
        .push(
            &nodes[0],
            "site=live&apiKey=acl-key-0123456789abcdef",
            &body,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let news = io.expect("r1", "news").await;
    let offset = news["args"][1].clone();
    let resume = serde_json::json!({"pid": first.pid, "offset": offset});
    let again = io
        .enter(
            Conn::to("r2", &nodes[0])
                .ns("/live")
                .user("ur", "R")
                .auth(resume),
        )
        .await;
    assert_eq!(again.sid, first.sid, "not recovered under the ACL");
    assert_eq!(
        io.expect("r1", "disconnect").await["reason"],
        "io server disconnect"
    );

    // The broadcasts above were published for Node servers too, none refused.
    let sample = |outcome: &str| {
        format!("socket_identity_node_adapter_broadcasts_total{{outcome=\"{outcome}\"}}")
    };
    assert!(
        http.metric(&nodes[0], &sample("published"))
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        http.metric(&nodes[0], &sample("failed"))
            .await
            .unwrap_or(0.0),
        0.0
    );

    // Nothing the nodes did was refused.
    println!("{}", acl_cli(port, &["INFO", "commandstats"]));
    let log = acl_cli(port, &["ACL", "LOG"]);
    assert!(log.trim().is_empty(), "ACL denials:\n{log}");

    // A node's user outside its limits.
    let as_a = |args: &[&str]| {
        let mut all = vec!["--user", "node-a", "--pass", "pass-a", "--no-auth-warning"];
        all.extend_from_slice(args);
        // redis-cli exits with an error status on an error reply: its output is in the error.
        cli_at(port, &all).unwrap_or_else(|e| e)
    };
    acl_cli(port, &["SET", "other-app:secret", "x"]);
    for args in [
        &["FLUSHALL"][..],
        &["GET", "other-app:secret"],
        &["SET", "other-app:secret", "y"],
        &["KEYS", "*"],
        &["PUBLISH", "other-app:events", "x"],
        &["CONFIG", "GET", "requirepass"],
        &["ACL", "LIST"],
    ] {
        let out = as_a(args);
        assert!(out.contains("NOPERM"), "{args:?}: {out}");
    }
    assert_eq!(acl_cli(port, &["GET", "other-app:secret"]).trim(), "x");
    assert!(as_a(&["PING"]).contains("PONG"));
}
