//! `scripts/bench.sh` passes its arguments to the load generator and names its flags in its header: every flag it
//! names is one `bench --help` lists, so the script's usage cannot drift from the binary.
//!
//! Being an integration test of this package, it also has cargo build `target/<profile>/bench` during `cargo test`,
//! where the server's smoke run of the benchmark (`tests/bench_smoke.rs`) finds it.

use std::{collections::BTreeSet, path::Path, process::Command};

/// The `--flag` words of `text`.
fn flags(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.len() > 2 && word.starts_with("--"))
        .collect()
}

#[test]
fn every_flag_scripts_bench_names_is_one_bench_takes() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--help")
        .output()
        .expect("run bench --help");
    assert!(out.status.success(), "bench --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench.sh");
    let script = std::fs::read_to_string(&script).unwrap();
    // Its header comment, and the line that runs the bench (not the cargo command that builds it).
    let usage: String = script
        .lines()
        .filter(|line| line.starts_with('#') || line.contains("/bench\""))
        .collect::<Vec<_>>()
        .join("\n");
    let named = flags(&usage);
    assert!(named.contains("--only"), "no flags found in:\n{usage}");
    let listed = flags(&help);
    let missing: Vec<_> = named.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "bench --help lacks {missing:?}:\n{help}"
    );
}
