#!/usr/bin/env bash
# A local development cluster: Redis on 127.0.0.1:6390 and N nodes (default 4) on ports 5009, 5010, ...
#   scripts/dev-cluster.sh start [N]   build (release), start Redis and the nodes
#   scripts/dev-cluster.sh status      show what runs, and each node's /ready
#   scripts/dev-cluster.sh stop        stop the nodes (SIGTERM, waiting for their graceful exit) and Redis
# State and logs live in target/dev-cluster/ (DEV_DIR). DEV_REDIS_PORT and DEV_PORT (the first node's) move the
# ports; DEV_BIN runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DEV_DIR:-target/dev-cluster}
redis_port=${DEV_REDIS_PORT:-6390}
first_port=${DEV_PORT:-5009}
bin=${DEV_BIN:-target/release/socket-identity}
mkdir -p "$dir"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "${1:-}" in
start)
  n=${2:-4}
  scripts/fetch-client.sh
  [ -n "${DEV_BIN:-}" ] || cargo build --release --locked
  if ! alive "$dir/redis.pid"; then
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize yes --pidfile "$(realpath "$dir")/redis.pid" --logfile "$(realpath "$dir")/redis.log"
    sleep 0.3
  fi
  # The nodes share the machine's cores, as PM2's file has them do (WORKER_THREADS in the environment wins).
  threads=${WORKER_THREADS:-$(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))}
  for i in $(seq 1 "$n"); do
    port=$((first_port + i - 1))
    alive "$dir/node$i.pid" && continue
    NODE_ID="node$i" PORT="$port" REDIS_URL="redis://127.0.0.1:$redis_port" WORKER_THREADS="$threads" \
      nohup "$bin" >"$dir/node$i.log" 2>&1 &
    echo $! >"$dir/node$i.pid"
    echo "node$i: https://localhost:$port (log $dir/node$i.log)"
  done
  ;;
status)
  alive "$dir/redis.pid" && echo "redis: up on $redis_port" || echo "redis: down"
  for f in "$dir"/node*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    if alive "$f"; then
      port=$( (grep -o 'listening on https\?://[^ ]*' "$dir/$name.log" || true) | head -1 | sed 's/.*://')
      if [ -z "$port" ]; then
        echo "$name: starting (pid $(cat "$f")), see $dir/$name.log"
      else
        echo "$name: up (pid $(cat "$f")) $(curl -s --cacert certs-dev/ca.pem "https://localhost:$port/ready")"
      fi
    else
      echo "$name: down"
    fi
  done
  ;;
stop)
  pids=()
  for f in "$dir"/node*.pid; do
    [ -e "$f" ] || continue
    if alive "$f"; then
      pids+=("$(cat "$f")")
      kill -TERM "$(cat "$f")"
    fi
    rm -f "$f"
  done
  # The graceful shutdown takes at most ~15 s; wait for it before Redis goes.
  for _ in $(seq 200); do
    left=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ "$left" -eq 0 ] && break
    sleep 0.1
  done
  alive "$dir/redis.pid" && kill -TERM "$(cat "$dir/redis.pid")"
  rm -f "$dir/redis.pid"
  echo stopped
  ;;
*)
  echo "usage: $0 start [N] | status | stop" >&2
  exit 2
  ;;
esac
