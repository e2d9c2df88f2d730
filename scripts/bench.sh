#!/usr/bin/env bash
# The benchmark (method and results in BENCHMARKS.md): our server against the Node reference
# (bench/node-reference/, socket.io v4 + @socket.io/redis-adapter), in one run, on loopback only.
#   scripts/bench.sh                 the full run (about 10 minutes on 2 cores)
#   scripts/bench.sh --only ours     any flag of the load generator: target/release/bench --help
# Starts its own redis-server and nodes, stops them by pid, and stops by itself (--max-minutes, default 40).
# Raw results: target/bench/results.json; process logs: target/bench/<target>/<phase>/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
# Each connection is a file descriptor in the load generator and in the node: ask for room for 20,000.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
echo "open files limit: $(ulimit -n); redis: $(redis-server --version | cut -d' ' -f3); node: $(node --version)"
exec target/release/bench --json target/bench/results.json "$@"
