//! Ports for the servers the tests start, and telling when a child process listens on its own.
//!
//! Every test of the run shares one process and runs in parallel with the others. A port found free by binding
//! port 0 and letting it go comes from the kernel's ephemeral range: another test may be handed the same one, or
//! an outgoing connection take it as its local port, before the server binds it. [`free_port`] hands each port
//! out once per run, from below that range (outgoing connections never take those), starting at a random place
//! so two runs on one machine rarely meet. A server that still finds its port taken (by another process) says
//! `Address already in use` and exits: [`started`] tells that apart, and the harness starts it again on another
//! port. A port a test was given stays its own, to restart a server on it.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    io::Read,
    net::TcpListener,
    path::Path,
    process::Child,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

/// The lowest port handed out: clear of well-known services.
const FLOOR: u32 = 10_000;

/// Where ports are handed out: `start..start + len`, from `offset` on.
struct Range {
    start: u32,
    len: u32,
    offset: u32,
}

static RANGE: OnceLock<Range> = OnceLock::new();
/// How many ports were handed out so far (the cursor, from the range's offset).
static NEXT: AtomicU32 = AtomicU32::new(0);

fn range() -> &'static Range {
    RANGE.get_or_init(|| {
        // Linux's ephemeral range, the ports outgoing connections take (usually 32768-60999).
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|p| p.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32_768, 60_999));
        // The larger side of it; if neither has room, every port (the harness's retries then matter more).
        let (start, end) = [(FLOOR, lo.max(FLOOR)), ((hi + 1).max(FLOOR), 65_536)]
            .into_iter()
            .max_by_key(|(start, end)| end - start)
            .filter(|(start, end)| end - start >= 4096)
            .unwrap_or((FLOOR, 65_536));
        let len = end - start;
        let offset = (RandomState::new().hash_one(std::process::id()) % u64::from(len)) as u32;
        Range { start, len, offset }
    })
}

/// A loopback port no other test of this run is given, free now.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// `n` consecutive loopback ports, free now and given to no other test of this run: the first.
pub fn free_ports(n: u16) -> u16 {
    let Range { start, len, offset } = *range();
    let n = u32::from(n);
    for _ in 0..len {
        let at = NEXT.fetch_add(n, Ordering::Relaxed);
        let first = start + (offset + at) % len;
        if first + n > start + len {
            continue;
        }
        if (first..first + n).all(|p| TcpListener::bind(("127.0.0.1", p as u16)).is_ok()) {
            return first as u16;
        }
    }
    panic!("no {n} free ports left in {start}..{}", start + len);
}

/// What became of a child process started on its ports.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// It listens on every one of them.
    Listening,
    /// It exited saying `Address already in use`: another process has one of its ports.
    PortTaken,
    /// It exited for another reason.
    Exited,
    /// Neither yet.
    Pending,
}

/// Where `child`, started on `ports` and writing its log to `log` from byte `from` on, is now.
pub fn started(child: &mut Child, ports: &[u16], log: &Path, from: u64) -> Start {
    if listens(child.id(), ports) {
        return Start::Listening;
    }
    match child.try_wait() {
        Ok(None) => Start::Pending,
        _ if log_since(log, from).contains("Address already in use") => Start::PortTaken,
        _ => Start::Exited,
    }
}

/// The length of `log` now (where a new run's output starts).
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// What `log` has after byte `from`.
pub fn log_since(log: &Path, from: u64) -> String {
    use std::io::Seek;
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log)
        && f.seek(std::io::SeekFrom::Start(from)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// Whether process `pid` listens on every one of `ports` (on any address): its sockets' inodes against the
/// listening sockets of `/proc/net/tcp{,6}`. A server that answers on the port may be someone else's; this one
/// is ours.
pub fn listens(pid: u32, ports: &[u16]) -> bool {
    let mut listening: HashMap<String, u16> = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let Some(port) = port.filter(|p| ports.contains(p)) {
                listening.insert(f[9].to_owned(), port);
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let mine: HashSet<u16> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            listening.get(inode).copied()
        })
        .collect();
    ports.iter().all(|p| mine.contains(p))
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        process::Command,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn ports_are_handed_out_once_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), ports.len());
        let Range { start, len, .. } = *range();
        assert!(
            ports
                .iter()
                .all(|&p| (start..start + len).contains(&u32::from(p)))
        );
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse::<u32>().unwrap())
            .fold((u32::MAX, 0), |(lo, hi), p| (lo.min(p), hi.max(p)));
        assert!(
            start + len <= lo || start > hi,
            "{start}+{len} in {lo}-{hi}"
        );
    }

    /// A redis-server whose port another process holds exits saying so, and is told apart from one that listens.
    #[test]
    fn a_server_finding_its_port_taken_is_told_apart() {
        super::super::need("redis-server", "apt-get install -y redis-server");
        let dir = super::super::log_dir("harness_port_taken");
        let held = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(listens(std::process::id(), &[port]));
        for (port, expected) in [(port, Start::PortTaken), (free_port(), Start::Listening)] {
            let log = dir.join(format!("redis-{port}.log"));
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .stdout(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let start = loop {
                match started(&mut child, &[port], &log, 0) {
                    Start::Pending if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    start => break start,
                }
            };
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(start, expected, "{}", log_since(&log, 0));
        }
    }
}
