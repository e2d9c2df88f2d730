#!/usr/bin/env bash
# A local development cluster: Redis on 127.0.0.1:6390 and N nodes (default 4) on ports 5009, 5010, ...
#   scripts/dev-cluster.sh start [N]   build (release), start Redis and the nodes
#   scripts/dev-cluster.sh status      show what runs, and each node's /health
#   scripts/dev-cluster.sh stop        stop the nodes (SIGTERM) and Redis
# State and logs live in target/dev-cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/dev-cluster
redis_port=${DEV_REDIS_PORT:-6390}
mkdir -p "$dir"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "${1:-}" in
start)
  n=${2:-4}
  scripts/fetch-client.sh
  cargo build --release --locked
  if ! alive "$dir/redis.pid"; then
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize yes --pidfile "$PWD/$dir/redis.pid" --logfile "$PWD/$dir/redis.log"
    sleep 0.3
  fi
  for i in $(seq 1 "$n"); do
    port=$((5008 + i))
    alive "$dir/node$i.pid" && continue
    NODE_ID="node$i" PORT="$port" REDIS_URL="redis://127.0.0.1:$redis_port" \
      nohup target/release/socket-identity >"$dir/node$i.log" 2>&1 &
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
      port=$(grep -o 'listening on https\?://[^ ]*' "$dir/$name.log" | head -1 | sed 's/.*://')
      echo "$name: up (pid $(cat "$f")) $(curl -s --cacert certs-dev/ca.pem "https://localhost:$port/health")"
    else
      echo "$name: down"
    fi
  done
  ;;
stop)
  for f in "$dir"/node*.pid; do
    [ -e "$f" ] || continue
    alive "$f" && kill -TERM "$(cat "$f")"
    rm -f "$f"
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
