//! A tiny run of the benchmark (`scripts/bench.sh`), so it cannot rot: both targets, every phase (the
//! `POST /send` phases: pushes to a room, a push's fan-out, reliable delivery to user rooms with acks; with ours,
//! the tenancy phases: handshakes per auth kind from a config file, the users query on a namespace with 3
//! rooms per socket), and `--check`, which fails on any refused connection or handshake, wrong room count,
//! lost fan-out event, failed push, lost or unacknowledged push, or message left in the store. Speed is not
//! asserted here; BENCHMARKS.md has the numbers.
//! With ours, the event-bus gateway phases too (a message's round trip through Redis Streams at two rates, `send`
//! entries to 30 users), where `--check` fails on a reply or `send` frame lost or delivered twice.

mod common;

use std::process::Command;

use common::*;

#[test]
fn bench_smoke_run_is_correct() {
    let reference = root().join("bench/node-reference/node_modules/socket.io");
    assert!(
        reference.exists(),
        "bench/node-reference/node_modules is missing: scripts/setup.sh installs it"
    );
    let logs = log_dir("bench_smoke");
    let out = Command::new("timeout")
        .arg("300")
        .arg(env!("CARGO_BIN_EXE_bench"))
        .args(["--ours", env!("CARGO_BIN_EXE_socket-identity")])
        .args(["--sizes", "50", "--nodes", "2", "--requests", "10"])
        .args(["--fanout-rounds", "3", "--memory-conns", "60"])
        .args(["--scale-nodes", "1,2", "--scale-size", "20", "--presence"])
        // bcrypt at the bench's cost 10: bcrypt is optimised in dev builds too (Cargo.toml), ~0.1 s per check.
        .args(["--handshakes", "20", "--credential-handshakes", "20"])
        .args(["--ns-size", "50"])
        .args(["--send-requests", "40", "--send-room-size", "10"])
        .args(["--send-fanout-size", "30", "--reliable-rooms", "20"])
        .args(["--reliable-rounds", "2", "--send-concurrency", "4"])
        .args(["--gateway-clients", "20", "--gateway-rates", "50,200"])
        .args(["--gateway-seconds", "1", "--gateway-send-users", "30"])
        .args(["--gateway-send-rounds", "2"])
        .args(["--check", "--max-minutes", "4", "--logs"])
        .arg(&logs)
        .current_dir(root())
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
    // The send phases ran for both: every push answered and delivered, every user-room message acknowledged
    // and gone from the store.
    for row in [
        "| 10 sockets | 40 | 4 |",
        "| 30 sockets | 2 |",
        "| 20 | 2 | 40 | 4 | 40 | 40 | 40 | 0 |",
    ] {
        assert_eq!(stdout.matches(row).count(), 2, "{row:?} in:\n{stdout}");
    }
    // The tenancy phases ran for ours (only): every kind, and the 3-room namespace with each socket listed once.
    for row in [
        "| claim | 20 |",
        "| jwt | 20 |",
        "| credentials | 20 |",
        "| 50 (/bench-rooms, 3.0) | 2 |",
        // The gateway phases (ours only): every message answered once, every `send` frame delivered once.
        "| 20 | 2 | 2 | 50 | 1 |",
        "| 20 | 2 | 2 | 200 | 1 |",
        "| 30 users | 2 | 2 |",
    ] {
        assert_eq!(stdout.matches(row).count(), 1, "{row:?} in:\n{stdout}");
    }
}
