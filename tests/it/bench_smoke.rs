//! A tiny run of the benchmark (`scripts/bench.sh`), so it cannot rot: both targets, every phase (the
//! `POST /send` phases: pushes to a room, a push's fan-out, reliable delivery to user rooms with acks; handshakes
//! per auth kind, `claim` and `jwt` for both (ours from a config file, the Node reference's JWT middleware with
//! `jsonwebtoken`); with ours, `credentials` handshakes and the users query on a namespace with 3 rooms per socket; the admin UI phases: query and fan-out without and with `[admin]`, an admin login's
//! `all_sockets`), and `--check`, which fails on any refused connection or handshake, wrong room count,
//! lost fan-out event, failed push, lost or unacknowledged push, message left in the store, refused admin
//! login or `all_sockets` that does not list exactly the clients' sockets (a second, tiny run logs the admin in
//! with a wrong password and must fail). Speed is not asserted here; BENCHMARKS.md has the numbers.
//! With ours, the event-bus gateway phases too (a message's round trip through Redis Streams at two rates, `send`
//! entries to 30 users; again with `--gateway-send-direct`, the entries added straight to the inboxes), where
//! `--check` fails on a reply or `send` frame lost or delivered twice, and the Redis
//! cost per operation on 1 and 2 nodes (a wrong answer, a lost event or ack, a message left in the store fail).
//! Both run the many-connections phase small (a holder process per node, 20 connections each, a room of 20), and
//! the connection state recovery phases: a push's fan-out without and with recovery, and the sockets of a killed
//! node (the official client) coming back on the survivor, where `--check` fails on a socket of ours not recovered
//! or a missed event lost, doubled or out of order (the Node reference recovers none: reported, not an error).
//! Both run the socket.io Redis emitter phases small: messages published to Redis as `@socket.io/redis-emitter`
//! does, to a room on 2 nodes one per round and then a window at a time, where `--check` fails on a message lost
//! or received twice by any socket.
//! Both run the RPC phase small (client events POSTed, signed, to the bench's receiver and acked with its answer),
//! where `--check` fails on a call not acked `{"ok":true}` (busy, an error, no ack) or a signature the receiver
//! refused.
//! Ours runs the lifecycle webhook phase small (sockets churning through rooms on 2 nodes, each batch_ms of 50 and
//! 0), where `--check` fails on an event lost, one of no socket, a room event out of order, or an event the nodes
//! gave up, dropped or did not record.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::harness::*;

/// The load generator, `bench/`'s own package: cargo names only this package's binaries to its tests, and builds
/// it next to ours. `cargo test` builds it (the `bench` package's tests need it too); alone, this test needs
/// `cargo build --bin bench` first.
fn bench() -> PathBuf {
    let ours = Path::new(env!("CARGO_BIN_EXE_socket-identity"));
    let bench = ours.with_file_name(format!("bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bench.exists(),
        "{} is missing: cargo build --bin bench",
        bench.display()
    );
    bench
}

/// The bench against this build's binary, from the repository's root, killed after `seconds` at the latest.
fn bench_command(seconds: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg(seconds)
        .arg(bench())
        .args(["--ours", env!("CARGO_BIN_EXE_socket-identity")])
        .current_dir(root());
    cmd
}

#[test]
fn bench_smoke_run_is_correct() {
    // The reference, its streams adapter, the recovery phase's official client and the JWT middleware's library.
    for package in [
        "socket.io",
        "@socket.io/redis-streams-adapter",
        "socket.io-client",
        "jsonwebtoken",
    ] {
        let path = root()
            .join("bench/node-reference/node_modules")
            .join(package);
        assert!(
            path.exists(),
            "{} is missing: scripts/setup.sh installs it",
            path.display()
        );
    }
    let logs = log_dir("bench_smoke");
    let out = bench_command("300")
        .args(["--sizes", "50", "--nodes", "2", "--requests", "10"])
        .args(["--fanout-rounds", "3", "--memory-conns", "60"])
        .args(["--scale-nodes", "1,2", "--scale-size", "20", "--presence"])
        // bcrypt at the bench's cost 10: bcrypt is optimised in dev builds too (Cargo.toml), ~0.1 s per check.
        .args(["--handshakes", "20", "--credential-handshakes", "20"])
        .args(["--ns-size", "50"])
        .args(["--send-requests", "40", "--send-room-size", "10"])
        .args(["--send-fanout-size", "30", "--reliable-rooms", "20"])
        .args(["--reliable-rounds", "2", "--send-concurrency", "4"])
        .args(["--reliable-in-flight", "6"])
        .args(["--admin-overhead", "30", "--admin-passes", "2"])
        .args(["--admin-sockets", "45", "--admin-rounds", "2"])
        .args(["--gateway-clients", "20", "--gateway-rates", "50,200"])
        .args(["--gateway-seconds", "1", "--gateway-send-users", "30"])
        .args(["--gateway-send-rounds", "2"])
        // The many-connections phase, tiny: a holder process per node (2), 20 connections each, a room of 20.
        .args(["--big-conns", "20", "--big-room", "20"])
        .args(["--big-requests", "4", "--big-rounds", "2"])
        // Connection state recovery, tiny: a fan-out to 24 sockets without and with it; 12 sockets of a killed
        // node missing 5 pushes.
        .args(["--recovery-fanout-size", "24", "--recovery-sockets", "12"])
        .args(["--recovery-missed", "5"])
        // The Redis emitter, tiny: one message per round to 24 sockets on 2 nodes; a room of 10 for 1 s, 8
        // messages unfinished at most.
        .args(["--emitter-fanout-size", "24", "--emitter-rate-room", "10"])
        .args(["--emitter-rate-seconds", "1", "--emitter-window", "8"])
        // Client events as RPC, tiny: 10 sockets on 2 nodes calling the receiver 50 times a second for 1 s.
        .args([
            "--rpc-rates",
            "50",
            "--rpc-seconds",
            "1",
            "--rpc-sockets",
            "10",
        ])
        // Lifecycle webhooks (ours), tiny: 40 sockets a second for 2 s, each for 0.2 s, over 80 rooms on 2 nodes.
        .args(["--webhook-churn", "40", "--webhook-rooms", "80"])
        .args(["--webhook-seconds", "2", "--webhook-lifetime-ms", "200"])
        .args(["--webhook-batch-ms", "50,0"])
        // The Redis cost per operation (ours), tiny: K = 1 and 2, a room of 10.
        .args(["--cost-nodes", "1,2", "--cost-sizes", "10"])
        .args(["--cost-requests", "10", "--cost-rounds", "3"])
        .args(["--cost-idle-secs", "1"])
        .args(["--check", "--max-minutes", "4", "--logs"])
        .arg(&logs)
        .output()
        .expect("run the bench binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(logs.join("bench.out"), stdout.as_bytes()).unwrap();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "bench --check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Both targets measured every phase, and the comparison was printed.
    for section in ["### ours", "### node", "### ours / node"] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches("| 50 | 2 |").count(), 2, "{stdout}");
    assert_eq!(
        stdout.matches("60 idle TLS websocket connections").count(),
        2
    );
    // The many-connections phase ran for both: 2 holders, every query listing the 20 sockets, every round complete.
    let big = "| 2 x 20 = 40 | 20 |";
    assert_eq!(stdout.matches(big).count(), 2, "{stdout}");
    // The send phases ran for both: every push answered and delivered, every user-room message acknowledged
    // and gone from the store.
    for row in [
        "| 10 sockets | 40 | 4 |",
        "| 30 sockets | 2 |",
        // 6 reliable pushes in flight (`--reliable-in-flight`), not `--send-concurrency`'s 4.
        "| 20 | 2 | 40 | 6 | 40 | 40 | 40 | 0 |",
    ] {
        assert_eq!(stdout.matches(row).count(), 2, "{row:?} in:\n{stdout}");
    }
    // The recovery phases ran for both: every fan-out round complete with and without recovery; ours recovered
    // every socket of the killed node with the 5 pushes it missed, once each and in order, the Node reference none.
    for row in [
        "| 24 sockets | 2 | off | ",
        "| 24 sockets | 2 | on (recovery_window_s) | ",
        "| 24 sockets | 2 | off (redis-adapter) | ",
        "| 24 sockets | 2 | on (redis-streams-adapter + connectionStateRecovery) | ",
        "| 60 of 60 | 0 | 0 |",
        "| 0 of 60 | 0 | 0 |",
    ] {
        assert_eq!(stdout.matches(row).count(), 1, "{row:?} in:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("| 12 | 2 | SIGKILL | 5 |").count(),
        2,
        "{stdout}"
    );
    // The emitter phases ran for both: the message reached one subscriber per node, no round was lost, and every
    // socket had each of the 3 rounds' messages once; in the rate phase every message published was complete (its
    // counts vary with the speed: `--check` compares them).
    let fanout: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 24 sockets | 2 | 3 | "))
        .map(|l| l.split(" | ").collect())
        .collect();
    assert_eq!(fanout.len(), 2, "{stdout}");
    for cells in &fanout {
        assert_eq!(cells[4], "2", "subscribers in {cells:?}");
        assert_eq!(cells[10..14], ["0", "72 of 72", "0", "0"], "{cells:?}");
    }
    assert_eq!(
        stdout.matches("| 10 sockets | 2 | 8 | ").count(),
        2,
        "{stdout}"
    );
    // The RPC phase ran for both: 50 calls sent, each acked `{"ok":true}`, none busy, failed, lost or unsent, and
    // the receiver got each call once with a good signature.
    let rpc: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 10 | 2 | 50 | 1 | "))
        .map(|l| l.split(" | ").collect())
        .collect();
    assert_eq!(rpc.len(), 2, "{stdout}");
    for cells in &rpc {
        assert_eq!(
            cells[10..16],
            ["50", "0", "0", "0", "0", "50 (0)"],
            "{cells:?}"
        );
    }
    // The webhook phase ran for ours (only), once per batch_ms: 80 sockets connected, their 320 events (4 each)
    // received once each, none out of order or unexpected, and the nodes counted 320 delivered and nothing given up,
    // dropped or unrecorded.
    let webhook: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 40 | 2 | 0.2 | 80 | 2 | "))
        .map(|l| l.split(" | ").collect())
        .collect();
    assert_eq!(webhook.len(), 2, "{stdout}");
    for (cells, batch_ms) in webhook.iter().zip(["50", "0"]) {
        assert_eq!(cells[5], batch_ms, "{cells:?}");
        assert_eq!(cells[6], "80 (0)", "{cells:?}");
        assert_eq!(cells[8..12], ["320", "320", "0", "0, 0"], "{cells:?}");
        assert!(
            cells[20].starts_with("320, ") && cells[20].ends_with(", 0, 0, 0"),
            "{cells:?}"
        );
    }
    // The handshake phase ran for both, `claim` and `jwt` (the Node reference's JWTs verified by `jsonwebtoken`),
    // none refused (`--check`), and their comparison was printed.
    for row in ["| claim | 20 |", "| jwt | 20 |"] {
        assert_eq!(stdout.matches(row).count(), 2, "{row:?} in:\n{stdout}");
    }
    for row in [
        "| claim handshakes, 32 in flight: s per 1,000 |",
        "| jwt handshakes, 32 in flight: node CPU per handshake |",
    ] {
        assert_eq!(stdout.matches(row).count(), 1, "{row:?} in:\n{stdout}");
    }
    // The tenancy phases ran for ours (only): credentials, and the 3-room namespace with each socket listed once.
    for row in [
        "| credentials | 20 |",
        "| 50 (/bench-rooms, 3.0) | 2 |",
        // The admin phases, ours only: both clusters, and 2 admin logins each listing the 45 sockets.
        "| 30 | 2 | 2 | without |",
        "| 30 | 2 | 2 | with |",
        "| N=30 K=2 |",
        "| 45 | 2 | 2 |",
        // The gateway phases (ours only): every message answered once, every `send` frame delivered once.
        "| 20 | 2 | 2 | 50 | 1 |",
        "| 20 | 2 | 2 | 200 | 1 |",
        "| 30 users | 2 | 2 |",
        // The cost phase (ours only): every kind of operation on K = 1 and 2.
        "| 1 | 10 | query | 10 |",
        "| 2 | 10 | send user (ack) | 3 |",
    ] {
        assert_eq!(stdout.matches(row).count(), 1, "{row:?} in:\n{stdout}");
    }
}

/// Turns off every phase on by default but the query and fan-out (`--sizes`), the admin phases and the cost phase,
/// which each test below sets itself.
const OTHER_PHASES_OFF: &[&str] = &[
    "--scale-nodes",
    "--memory-conns",
    "0",
    "--handshakes",
    "0",
    "--credential-handshakes",
    "0",
    "--ns-size",
    "0",
    "--send-requests",
    "0",
    "--send-fanout-size",
    "0",
    "--reliable-rooms",
    "0",
    "--gateway-clients",
    "0",
    "--gateway-send-users",
    "0",
    "--recovery-fanout-size",
    "0",
    "--recovery-sockets",
    "0",
    "--emitter-fanout-size",
    "0",
    "--emitter-rate-room",
    "0",
    "--rpc-rates",
    "0",
    "--webhook-churn",
    "0",
];

/// `--split-cores` runs the servers on the first half of the cores and the load generator on the other half: the
/// query and fan-out phase, tiny, for ours, is correct so; on a one-core machine the flag is refused by name.
#[test]
fn bench_split_cores_runs_the_servers_apart() {
    let logs = log_dir("bench_smoke_split_cores");
    let out = bench_command("120")
        .args(["--only", "ours", "--split-cores", "--sizes", "20"])
        .args(["--nodes", "2", "--requests", "5", "--fanout-rounds", "2"])
        .args(OTHER_PHASES_OFF)
        .args(["--admin-overhead", "--admin-sockets", "0", "--cost-nodes"])
        .args(["--check", "--max-minutes", "1", "--logs"])
        .arg(&logs)
        .output()
        .expect("run the bench binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Refused only where this process may use one CPU, and then by name.
    if !out.status.success() {
        assert!(
            stderr.contains("--split-cores needs 2 cores"),
            "{stdout}\n{stderr}"
        );
        return;
    }
    // "split cores: servers on CPUs 0, load generator on 1" on 2 CPUs: two halves, neither empty, none shared.
    let (servers, client) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("split cores: servers on CPUs "))
        .and_then(|l| l.split_once(", load generator on "))
        .unwrap_or_else(|| panic!("no split in:\n{stdout}"));
    let (servers, client): (Vec<&str>, Vec<&str>) =
        (servers.split(',').collect(), client.split(',').collect());
    assert!(
        servers.len() <= client.len() && !servers.is_empty(),
        "{stdout}"
    );
    assert!(servers.iter().all(|c| !client.contains(c)), "{stdout}");
    assert_eq!(stdout.matches("| 20 | 2 |").count(), 1, "{stdout}");
}

/// `--check` fails when the admin login is refused: the bench cannot report `all_sockets` it never got.
#[test]
fn bench_check_fails_on_a_refused_admin_login() {
    let logs = log_dir("bench_smoke_admin_refused");
    let out = bench_command("120")
        .args(["--only", "ours", "--sizes"])
        // The gateway and recovery phases are on by default: off, so that the refused login is the run's one error.
        .args(OTHER_PHASES_OFF)
        .args(["--nodes", "2", "--admin-overhead", "--admin-sockets", "10"])
        .args(["--admin-rounds", "1", "--admin-wrong-password"])
        .args(["--check", "--max-minutes", "2", "--logs"])
        .arg(&logs)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the bench binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bench --check must fail:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("connect_error: invalid credentials") && stderr.contains("1 error(s)"),
        "{stderr}"
    );
}

/// `--gateway-send-direct` (a `send` round with routing free: entries added straight to the inboxes) reaches every
/// user once per round, as `--check` requires.
#[test]
fn bench_gateway_send_direct_reaches_every_user_once() {
    let logs = log_dir("bench_smoke_gateway_direct");
    let mut other_phases_off = Vec::new();
    let mut flags = OTHER_PHASES_OFF.iter();
    while let Some(&flag) = flags.next() {
        match flag {
            // Set below; the value after it goes too.
            "--gateway-send-users" => drop(flags.next()),
            _ => other_phases_off.push(flag),
        }
    }
    let out = bench_command("120")
        .args(["--only", "ours", "--sizes", "--nodes", "2"])
        .args(other_phases_off)
        .args(["--admin-overhead", "--admin-sockets", "0", "--cost-nodes"])
        .args(["--gateway-send-users", "30", "--gateway-send-rounds", "2"])
        .args(["--gateway-send-direct", "--check", "--max-minutes", "1"])
        .arg("--logs")
        .arg(&logs)
        .output()
        .expect("run the bench binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("gateway send (straight to the inboxes): 30 users on 2 nodes, 2 rounds"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(0 lost rounds, 0 missing, 0 twice;"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("| 30 users | 2 | 2 |").count(),
        1,
        "{stdout}"
    );
}
