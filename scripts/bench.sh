#!/usr/bin/env bash
# The benchmark (method and results in BENCHMARKS.md): our server against the Node reference
# (bench/node-reference/, socket.io v4 + @socket.io/redis-adapter), in one run, on loopback only, including
# POST /send (pushes per second to a room, a push's fan-out to 10,000 sockets, reliable delivery with acks to
# 1,000 user rooms) and connection state recovery (that fan-out without and with recovery, the Node reference's
# with @socket.io/redis-streams-adapter; 1,000 official clients of a SIGKILLed node recovering on the survivors)
# and the socket.io Redis emitter (one message published as @socket.io/redis-emitter does, until the last of 10,000
# sockets on 4 nodes has it; messages per second into a room of 100, none lost); handshakes per second for
# claim and jwt (the Node reference's JWT middleware with jsonwebtoken);
# and, for ours only, credentials (bcrypt) handshakes per second, the users query on a
# namespace with 3 rooms per socket, and the admin UI (query and fan-out without and with [admin], nobody logged
# in; an admin login's all_sockets of 10,000 sockets).
#   scripts/bench.sh                 the full run (about 15 minutes on 2 cores, the tenancy phases ~30 s of it,
#                                    the admin phases ~2 minutes: --admin-overhead, --admin-sockets, 0 skips;
#                                    the recovery phases ~2 minutes: --recovery-fanout-size, --recovery-sockets;
#                                    the emitter phases ~75 s: --emitter-fanout-size, --emitter-rate-room;
#                                    the lifecycle webhook phase, ours, ~90 s: --webhook-churn)
#   scripts/bench.sh --only ours     any flag of the load generator: target/release/bench --help
#   scripts/bench.sh --only ours --sizes --scale-nodes --memory-conns 0 --send-requests 0 --send-fanout-size 0 \
#     --reliable-rooms 0 --admin-overhead --admin-sockets 0 --gateway-clients 0 --gateway-send-users 0 \
#     --recovery-fanout-size 0 --recovery-sockets 0 --emitter-fanout-size 0 --emitter-rate-room 0
#                                    the tenancy phases alone
#   scripts/bench.sh --sizes --scale-nodes --memory-conns 0 --handshakes 0 --credential-handshakes 0 --ns-size 0 \
#     --admin-overhead --admin-sockets 0 --gateway-clients 0 --gateway-send-users 0 --recovery-fanout-size 0 \
#     --recovery-sockets 0 --emitter-fanout-size 0 --emitter-rate-room 0
#                                    the POST /send phases alone (--send-requests, --send-fanout-size,
#                                    --reliable-rooms: 0 skips each)
#   scripts/bench.sh --only ours --sizes --scale-nodes --memory-conns 0 --handshakes 0 --credential-handshakes 0 \
#     --ns-size 0 --send-requests 0 --send-fanout-size 0 --reliable-rooms 0 --admin-overhead --admin-sockets 0 \
#     --recovery-fanout-size 0 --recovery-sockets 0 --emitter-fanout-size 0 --emitter-rate-room 0
#                                    the event-bus gateway phases alone (ours only: --gateway-clients,
#                                    --gateway-rates, --gateway-send-users; 0 or empty skips each;
#                                    --gateway-send-direct: `send` entries straight to the inboxes, routing free)
#   scripts/bench.sh --sizes --scale-nodes --memory-conns 0 --handshakes 0 --credential-handshakes 0 --ns-size 0 \
#     --send-requests 0 --send-fanout-size 0 --reliable-rooms 0 --admin-overhead --admin-sockets 0 \
#     --gateway-clients 0 --gateway-send-users 0 --emitter-fanout-size 0 \
#     --emitter-rate-room 0
#                                    the connection state recovery phases alone (--recovery-fanout-size: the
#                                    fan-out off and on; --recovery-sockets, --recovery-missed: the killed
#                                    node; 0 skips each; --recovery-signal TERM: a graceful shutdown instead)
#   scripts/bench.sh --sizes --scale-nodes --memory-conns 0 --handshakes 0 --credential-handshakes 0 --ns-size 0 \
#     --send-requests 0 --send-fanout-size 0 --reliable-rooms 0 --admin-overhead --admin-sockets 0 \
#     --gateway-clients 0 --gateway-send-users 0 --recovery-fanout-size 0 --recovery-sockets 0
#                                    the Redis emitter phases alone (--emitter-fanout-size with --fanout-rounds;
#                                    --emitter-rate-room, --emitter-rate-seconds, --emitter-window; 0 skips each)
#   scripts/bench.sh --split-cores --reliable-in-flight 128
#                                    the servers (Redis, nodes) on half of the cores and the load generator on the
#                                    other half (taskset), reliable delivery with 128 pushes in flight: what the
#                                    servers can take, not what they leave the load generator
#   BENCHMARKS.md gives each of its sections' exact command.
# Off by default (BENCHMARKS.md, "Many connections" and "How it scales", give the exact commands):
#   --big-conns 19500 --big-room 20000   4 nodes x 19,500 idle TLS websockets (one holder process per node, each
#                                    under the open-files limit), the users query and fan-out of a room of 20,000
#                                    among them, memory per connection; both targets, about 4 minutes
#   --only ours --cost-nodes 1,2,4,8 the Redis commands, bytes and CPU of one users query, fan-out and POST /send
#                                    on a fresh Redis and K nodes for each K, from Redis's own counters
# Starts its own redis-server and nodes, stops them by pid, and stops by itself (--max-minutes, default 40).
# Honours CARGO_TARGET_DIR (binaries in $CARGO_TARGET_DIR/release instead of target/release).
# Raw results: target/bench/results.json; process logs and config files: target/bench/<target>/<phase>/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
release="${CARGO_TARGET_DIR:-target}/release"
# Each connection is a file descriptor in the load generator and in the node: ask for room for 20,000.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
echo "open files limit: $(ulimit -n); redis: $(redis-server --version | cut -d' ' -f3); node: $(node --version)"
# Our binary for the bench's --ours (a --ours flag given here wins).
export BENCH_OURS="$release/socket-identity"
exec "$release/bench" --json target/bench/results.json "$@"
