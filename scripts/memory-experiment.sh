#!/usr/bin/env bash
# The local experiment behind BENCHMARKS.md "Where the memory goes": memory per idle TLS websocket of this
# checkout (HEAD) as it is, and with the upstream change that section proposes, applied to a copy of the crate's
# source through a temporary [patch.crates-io] in a copy of the checkout (nothing in this tree changes):
#   rustls   bench/upstream/rustls-0.23.46-idle-read-buffer.patch (an idle connection keeps no read buffer)
# (engineioxide's two changes, measured here before, ship: vendor/patches/engineioxide.)
# Each binary gets the bench's memory phase alone (one node, N idle TLS websockets, RSS before and after).
#   scripts/memory-experiment.sh [connections]     default 5000; at most ~19,500 under a 20,000 open-files limit
# Work files in $MEMORY_EXPERIMENT_DIR (default /tmp/socket-identity-memory); ~15 minutes on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-5000}"
work="${MEMORY_EXPERIMENT_DIR:-/tmp/socket-identity-memory}"
repo="$PWD"
scripts/setup.sh >/dev/null
cargo build --release --locked --bin socket-identity --bin bench
release="${CARGO_TARGET_DIR:-target}/release"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
mkdir -p "$work"
cp "$release/socket-identity" "$work/socket-identity-head"

# Where cargo unpacked a dependency's source (the exact version Cargo.lock pins).
crate_dir() {
  cargo metadata --format-version 1 --locked |
    python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]==sys.argv[1]))' "$1"
}
patched() { # name, patches...: a patched copy of the crate in $work, printed
  local name="$1" dir="$work/crates/$1"
  shift
  rm -rf "$dir" && mkdir -p "$work/crates" && cp -r "$(crate_dir "$name")" "$dir"
  for p in "$@"; do patch -s -d "$dir" -p1 <"$repo/$p"; done
  echo "$dir"
}
rustls=$(patched rustls bench/upstream/rustls-0.23.46-idle-read-buffer.patch)

build() { # variant, [patch.crates-io] lines
  local variant="$1" src="$work/src"
  shift
  rm -rf "$src" && mkdir -p "$src" && git archive HEAD | tar -x -C "$src"
  # Cargo.toml has a [patch.crates-io] table already (vendor/): the lines go into it.
  python3 - "$src/Cargo.toml" "$@" <<'PY'
import sys
path, lines = sys.argv[1], sys.argv[2:]
text = open(path).read()
assert text.count("[patch.crates-io]\n") == 1, "Cargo.toml: one [patch.crates-io] table expected"
open(path, "w").write(text.replace("[patch.crates-io]\n", "[patch.crates-io]\n" + "".join(l + "\n" for l in lines)))
PY
  (cd "$src" && CARGO_TARGET_DIR="$work/target" cargo build --release --bin socket-identity)
  cp "$work/target/release/socket-identity" "$work/socket-identity-$variant"
}
build rustls "rustls = { path = \"$rustls\" }"

# The memory phase alone: every other phase off.
memory_only=(--only ours --sizes --scale-nodes --handshakes 0 --credential-handshakes 0 --ns-size 0
  --send-requests 0 --send-fanout-size 0 --reliable-rooms 0 --admin-overhead --admin-sockets 0 --gateway-clients 0
  --gateway-send-users 0 --recovery-fanout-size 0 --recovery-sockets 0 --emitter-fanout-size 0
  --emitter-rate-room 0 --rpc-sockets 0 --webhook-churn 0)
for variant in head rustls; do
  result=$("$release/bench" "${memory_only[@]}" --ours "$work/socket-identity-$variant" --memory-conns "$conns" |
    grep 'KiB per connection' | tail -1)
  printf '%-13s %s\n' "$variant" "$result"
done
