//! The processes a bench run starts: one `redis-server` and K server nodes, all on loopback, each stopped by
//! its pid when dropped. Logs go to the run's directory.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The CPUs the servers run on, as `taskset -c` takes them, when `--split-cores` put them apart from the load
/// generator; and how many.
static SERVER_CPUS: std::sync::OnceLock<(String, usize)> = std::sync::OnceLock::new();

/// `--split-cores`: the servers (nodes and Redis) this run starts on the first half of the CPUs this process may
/// use, this process (the load generator: clients, backend, its threads) on the other half, so a target's
/// throughput is what its own CPU allows rather than what it leaves the load generator. Needs 2 CPUs or more;
/// `taskset` (util-linux).
pub fn split_cores() -> anyhow::Result<String> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(cpu_list)
        .context("no Cpus_allowed_list in /proc/self/status")?;
    if allowed.len() < 2 {
        bail!(
            "--split-cores needs 2 cores or more; this process may use {}",
            allowed.len()
        );
    }
    let (servers, client) = allowed.split_at(allowed.len() / 2);
    let list = |cpus: &[usize]| {
        cpus.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let (servers_list, client_list) = (list(servers), list(client));
    // `-a`: every thread this process has now; threads it starts later inherit the mask.
    let moved = Command::new("taskset")
        .args(["-a", "-p", "-c", &client_list])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .context("cannot run taskset (apt-get install -y util-linux)")?;
    if !moved.success() {
        bail!("taskset could not move the load generator to CPUs {client_list}: {moved}");
    }
    let _ = SERVER_CPUS.set((servers_list.clone(), servers.len()));
    Ok(format!(
        "servers on CPUs {servers_list}, load generator on {client_list}"
    ))
}

/// The CPUs of a list as the kernel writes it (`0-3,8,10-11`), in order; `None` if it is not one.
fn cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// A command for a server process: on the servers' CPUs under `--split-cores`.
fn server_command(program: &str) -> Command {
    match SERVER_CPUS.get() {
        Some((cpus, _)) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cpus, program]);
            cmd
        }
        None => Command::new(program),
    }
}

/// The cores the servers share: all of them, or their half under `--split-cores`.
fn server_cores() -> usize {
    match SERVER_CPUS.get() {
        Some((_, n)) => *n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat` (clock ticks of 10 ms).
pub fn cpu_time(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time a process has used so far, to the nanosecond: the sum of its threads' run times
/// (`/proc/<pid>/task/*/schedstat`; threads that have exited are not counted, which for our nodes' long-lived
/// runtime threads is nothing).
pub fn cpu_time_precise(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Duration::from_nanos(ns)
}

/// Stops the child on drop, by pid: SIGTERM (so it can shut down, and a profiler wrapped around it can write its
/// report), SIGKILL after 10 s, then reaps it.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        // Already reaped (killed on purpose): its pid may be another process's by now.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Redis {
    child: Owned,
    pub url: String,
}

impl Redis {
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn start(logs: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = server_command("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::fs::File::create(logs.join("redis.log"))?)
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (apt-get install -y redis-server)")?;
        let child = Owned(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        })
    }
}

/// Which server is measured and how to start one node of it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ours` or `node`.
    pub name: &'static str,
    /// Program and arguments; the node's settings come from the environment (`PORT`, `NODE_ID`, ...).
    pub command: Vec<String>,
    /// How many threads each node runs (our server reads `WORKER_THREADS`; Node has one either way).
    pub threads: Threads,
}

/// `--worker-threads` of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Each of K nodes gets cores / K threads, at least one.
    Share,
    /// `WORKER_THREADS` unset: one per core in each node.
    Cores,
    Fixed(u16),
}

impl Threads {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "share" => Ok(Self::Share),
            "cores" => Ok(Self::Cores),
            n => match n.parse::<u16>() {
                Ok(n) if n >= 1 => Ok(Self::Fixed(n)),
                _ => Err(format!(
                    "`share`, `cores` or a number of threads, not {n:?}"
                )),
            },
        }
    }

    /// `WORKER_THREADS` for each of `k` nodes on this machine, or none.
    fn for_nodes(self, k: usize) -> Option<String> {
        let cores = server_cores();
        match self {
            Self::Share => Some((cores / k.max(1)).max(1).to_string()),
            Self::Cores => None,
            Self::Fixed(n) => Some(n.to_string()),
        }
    }
}

/// A running node of a [`Target`].
pub struct Node {
    child: Owned,
    pub addr: SocketAddr,
    pub base: String,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends `signal` to the node by its pid (`KILL`: a crash, it saves nothing on the way out; `TERM`: its
    /// graceful shutdown) and reaps it, SIGKILLing it if it is still there after 10 s.
    pub async fn stop(mut self, signal: &str) -> anyhow::Result<()> {
        let status = tokio::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .await
            .context("kill")?;
        anyhow::ensure!(status.success(), "kill -{signal} {}: {status}", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.0.kill()?;
                self.child.0.wait()?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Resident memory in bytes, from `/proc/<pid>/status`.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS")?;
        Ok(kib * 1024)
    }
}

/// Starts K nodes of `target` on one Redis and waits until each is healthy. `config` is a config file
/// (`CONFIG`: namespaces and auth kinds) for our server; without one it serves `/` with `auth = "claim"`. `env`
/// adds environment variables (the Node reference's `/send` settings).
#[allow(clippy::too_many_arguments)]
pub async fn start_nodes(
    target: &Target,
    k: usize,
    redis: &Redis,
    presence: bool,
    config: Option<&Path>,
    env: &[(&str, String)],
    root: &Path,
    logs: &Path,
    http: &reqwest::Client,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::with_capacity(k);
    for i in 0..k {
        let port = free_port()?;
        let id = format!("{}-{}", target.name, i + 1);
        let log = logs.join(format!("{id}.log"));
        let mut cmd = server_command(&target.command[0]);
        cmd.args(&target.command[1..])
            .current_dir(root)
            .env("PORT", port.to_string())
            .env("BIND", "127.0.0.1")
            .env("NODE_ID", &id)
            .env("RUST_LOG", "warn")
            .env("NODE_ENV", "production")
            .env("REDIS_URL", &redis.url)
            .env("PRESENCE_EVENTS", presence.to_string())
            // The benchmark measures capacity: no handshake or query rate limit (`HANDSHAKE_RATE=0` is
            // `--handshake-rate 0`; the default, 1,000 new sessions/s per node, would answer 429 beyond it). The
            // socket cap is the default: 20,000, or what the open-files limit allows (the bench's phases stay under
            // both).
            .env("HANDSHAKE_RATE", "0")
            .env("QUERY_RATE", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?);
        if let Some(config) = config {
            cmd.env("CONFIG", config);
        }
        if let Some(threads) = target.threads.for_nodes(k) {
            // Builds from before `WORKER_THREADS` take tokio's own variable, so that they are measured alike.
            cmd.env("TOKIO_WORKER_THREADS", &threads);
            cmd.env("WORKER_THREADS", threads);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = Owned(
            cmd.spawn()
                .with_context(|| format!("cannot start {:?}", target.command))?,
        );
        let node = Node {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            base: format!("https://127.0.0.1:{port}"),
        };
        wait_healthy(&node, http, &log).await?;
        nodes.push(node);
    }
    Ok(nodes)
}

async fn wait_healthy(node: &Node, http: &reqwest::Client, log: &PathBuf) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = http.get(format!("{}/health", node.base)).send().await
            && res.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node on {} did not become healthy; log {}:\n{}",
                node.base,
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Local sockets a node reports on `/health`.
pub async fn local_sockets(node: &Node, http: &reqwest::Client) -> Option<u64> {
    let v: serde_json::Value = http
        .get(format!("{}/health", node.base))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["sockets"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_as_the_kernel_writes_them() {
        assert_eq!(cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(cpu_list("0-2,5,8-9"), Some(vec![0, 1, 2, 5, 8, 9]));
        assert_eq!(cpu_list("3"), Some(vec![3]));
        assert_eq!(cpu_list("0-x"), None);
        assert_eq!(cpu_list(""), None);
    }
}
