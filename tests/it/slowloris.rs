//! Slow clients with the real binary: connections that never start TLS, never send a request, or never finish
//! their request head are closed after `HEADER_READ_TIMEOUT_MS`; at most `MAX_PENDING_CONNECTIONS` of them are
//! held at once (the oldest is closed to make room), so a flood of them neither piles up file descriptors nor
//! keeps real clients out. Loopback only; every wait is bounded.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::*;

const TIMEOUT_MS: u64 = 1500;
const TIMEOUT: Duration = Duration::from_millis(TIMEOUT_MS);
const CAP: usize = 16;
/// Scheduling delays on a loaded two-core machine, debug build.
const SLACK: Duration = Duration::from_millis(1500);
/// How long a slow connection waits for the server to close it before the test gives up on it.
const GIVE_UP: Duration = Duration::from_secs(8);

async fn node(test: &str) -> Node {
    let dir = log_dir(test);
    Node::start(
        &dir,
        NodeOpts {
            id: "n",
            args: &[
                "--header-read-timeout-ms",
                &TIMEOUT_MS.to_string(),
                "--max-pending-connections",
                &CAP.to_string(),
            ],
            ..NodeOpts::default()
        },
    )
    .await
}

#[derive(Clone, Copy, Debug)]
enum Slow {
    /// TCP only: never starts TLS.
    Silent,
    /// TLS done, then nothing.
    Quiet,
    /// TLS done, then half a request head.
    Partial,
}

const KINDS: [Slow; 3] = [Slow::Silent, Slow::Quiet, Slow::Partial];

/// Opens one slow connection and holds it until the server closes it (or [`GIVE_UP`]): how long it was open,
/// from the TCP connect.
async fn slow_connection(port: u16, kind: Slow) -> Duration {
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let held = async move {
        let mut buf = [0u8; 1024];
        let mut tls = match kind {
            Slow::Silent => {
                let mut tcp = tcp;
                // Nothing comes: this ends when the server closes the connection.
                while let Ok(1..) = tcp.read(&mut buf).await {}
                return;
            }
            Slow::Quiet | Slow::Partial => {
                match tls_connector()
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                {
                    Ok(tls) => tls,
                    // Closed during the handshake.
                    Err(_) => return,
                }
            }
        };
        if let Slow::Partial = kind {
            let _ = tls
                .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
                .await;
            let _ = tls.flush().await;
        }
        while let Ok(1..) = tls.read(&mut buf).await {}
    };
    let _ = tokio::time::timeout(GIVE_UP, held).await;
    start.elapsed()
}

fn open_fds(node: &Node) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", node.pid()))
        .unwrap()
        .count()
}

/// Fewer slow connections than the cap: each is closed by the header timeout, not before, not long after. A
/// keep-alive connection that stalls in its second request head is closed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_are_closed_after_the_header_timeout() {
    let node = node("slow_connections_timeout").await;
    let mut held = tokio::task::JoinSet::new();
    for i in 0..(CAP / 2) {
        let kind = KINDS[i % KINDS.len()];
        let port = node.port;
        held.spawn(async move { (kind, slow_connection(port, kind).await) });
    }

    // One full request, then half of a second one on the same connection.
    let mut conn = tls(node.port).await;
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let start = Instant::now();
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: loc")
        .await
        .unwrap();
    conn.flush().await.unwrap();
    let _ = tokio::time::timeout(GIVE_UP, async {
        while let Ok(1..) = conn.read(&mut buf).await {}
    })
    .await;
    let second = start.elapsed();
    println!("keep-alive connection stalled in its second head: closed after {second:?}");
    assert!(
        second <= TIMEOUT + SLACK,
        "a stalled second request head held its connection {second:?}"
    );

    while let Some(r) = held.join_next().await {
        let (kind, open) = r.unwrap();
        println!("{kind:?}: closed after {open:?}");
        assert!(
            open <= TIMEOUT + SLACK,
            "{kind:?} connection held {open:?} (timeout {TIMEOUT:?})"
        );
        // Below the cap nothing is closed to make room: only the timeout closes them.
        assert!(
            open >= TIMEOUT - Duration::from_millis(100),
            "{kind:?} connection closed after {open:?}, before the timeout"
        );
    }
    assert_eq!(Http::new().status(&node, "/health").await, 200);
}

/// Slow connections keep coming, three times the cap at once then 25 a second: the node holds at most the cap of
/// them (the oldest are closed to make room), real clients still connect by websocket and long-polling, `/health`
/// answers, and every slow connection is closed within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_slow_connections_leaves_room_for_real_clients() {
    let node = node("slow_connections_flood").await;
    let mut clients = Clients::start();
    let http = Http::new();
    let before = open_fds(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, port) = (stop.clone(), node.port);
        tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            let mut opened = 0;
            while !stop.load(Ordering::Relaxed) {
                let kind = KINDS[opened % KINDS.len()];
                held.spawn(slow_connection(port, kind));
                opened += 1;
                if opened > 3 * CAP {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
            let mut open = Vec::new();
            while let Some(r) = held.join_next().await {
                open.push(r.unwrap());
            }
            open
        })
    };
    // Let the burst land, then watch the node's descriptors while real clients come.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let (most, stop, pid) = (most.clone(), stop.clone(), node.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .count();
                most.fetch_max(fds, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let ws = clients.join(Conn::to("ws", &node).user("ws", "R")).await;
    let polling = clients
        .join(
            Conn::to("poll", &node)
                .user("poll", "R")
                .transports(&["polling"]),
        )
        .await;
    assert_eq!(http.status(&node, "/health").await, 200);
    let users = http.users(&node, "R").await;
    assert_eq!(users.set(), pairs(&[(&ws, "ws"), (&polling, "poll")]));
    // The flood goes on for longer than the timeout.
    tokio::time::sleep(TIMEOUT + Duration::from_millis(500)).await;
    assert_eq!(http.status(&node, "/health").await, 200);
    stop.store(true, Ordering::Relaxed);
    watch.await.unwrap();

    let open = flood.await.unwrap();
    let longest = open.iter().max().unwrap();
    let most = most.load(Ordering::Relaxed);
    println!(
        "{} slow connections, the longest held {longest:?}; node descriptors {before} before, at most {most} \
         during the flood (cap {CAP})",
        open.len()
    );
    assert!(open.len() > 3 * CAP, "{}", open.len());
    assert!(
        *longest <= TIMEOUT + SLACK,
        "a slow connection was held {longest:?} (timeout {TIMEOUT:?})"
    );
    // The cap, and a few for the real clients and the connections being accepted or closed right then.
    assert!(
        most <= before + CAP + 8,
        "{most} descriptors during the flood, {before} before (cap {CAP})"
    );
    // The real clients were never cut off, the long-polling one included (its polls last longer than the header
    // timeout, which only applies to request heads).
    for (id, new) in [("ws", "ws2"), ("poll", "poll2")] {
        clients
            .emit(id, "identity-change", serde_json::json!([new]), true)
            .await;
        assert_eq!(
            clients.expect(id, "ack").await["args"][0]["ok"],
            true,
            "{id}"
        );
    }
    let users = http.users(&node, "R").await;
    assert_eq!(users.set(), pairs(&[(&ws, "ws2"), (&polling, "poll2")]));
    // Both ways of closing were used, and counted.
    let closed = |reason: &str| {
        format!("socket_identity_pending_connections_closed_total{{reason=\"{reason}\"}}")
    };
    let evicted = http.metric(&node, &closed("evicted")).await.unwrap_or(0.0);
    let timed_out = http.metric(&node, &closed("timeout")).await.unwrap_or(0.0);
    println!("closed by the node: {evicted} to make room, {timed_out} at the timeout");
    assert!(evicted >= (2 * CAP) as f64, "{evicted}");
    assert!(timed_out >= 1.0, "{timed_out}");
}
