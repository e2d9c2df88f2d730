#!/usr/bin/env bash
# Installs what building and testing need, only what is missing: a C compiler (aws-lc-rs) and make (jemalloc), Redis 7+, Node.js
# and npm, Chromium, openssl, systemd-analyze, nginx, Python 3.11+ with venv; then from the npm registry the socket.io
# browser bundle, the test clients (socket.io-client 4.x and 2.x) and PM2 (tests/js), and the benchmark's Node reference; from PyPI the API fuzzer
# schemathesis (tests/it/openapi.rs), in a virtualenv under target/.
# Safe to run again. Debian/Ubuntu (apt-get); needs root or sudo only when something is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

missing=()
command -v cc >/dev/null || missing+=(build-essential)
# tikv-jemalloc-sys builds jemalloc with its configure script and make.
command -v make >/dev/null || missing+=(make)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
# tests/it/vendor.rs rebuilds vendor/socketioxide, vendor/engineioxide and vendor/tungstenite with
# scripts/vendor.sh --check (patch applies vendor/patches; curl downloads the published crates, which cargo never does for a patched-in copy).
command -v patch >/dev/null || missing+=(patch)
# Tests and the bench signal the processes they started with /usr/bin/kill (not the shell builtin).
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || missing+=(procps)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
# tests/it/deploy.rs checks the systemd unit with systemd-analyze verify.
command -v systemd-analyze >/dev/null || missing+=(systemd)
# tests/it/openapi.rs runs schemathesis from a virtualenv (Debian's python3 refuses pip installs outside one).
command -v python3 >/dev/null || missing+=(python3)
command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# tests/it/deploy.rs runs the sample nginx config (nginx-light is the small build; newer Debian has only nginx).
need_nginx=false
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_nginx=true
if [ ${#missing[@]} -gt 0 ] || $need_nginx; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  if $need_nginx; then
    if apt-cache show nginx-light >/dev/null 2>&1; then missing+=(nginx-light); else missing+=(nginx); fi
  fi
  echo "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

redis_major=$(redis-server --version | sed -E 's/.*v=([0-9]+).*/\1/')
[ "$redis_major" -ge 7 ] || { echo "Redis 7+ is needed (sharded pub/sub), found $(redis-server --version)" >&2; exit 1; }

"$root/scripts/fetch-client.sh"
"$root/scripts/fetch-admin-ui.sh"
if [ ! -d "$root/tests/js/node_modules/socket.io-client" ] || [ ! -d "$root/tests/js/node_modules/socket.io-client-v2" ] ||
  [ ! -d "$root/tests/js/node_modules/playwright-core" ] ||
  [ ! -d "$root/tests/js/node_modules/@socket.io/redis-emitter" ] ||
  [ ! -x "$root/tests/js/node_modules/.bin/pm2" ]; then
  npm ci --prefix "$root/tests/js" --no-audit --no-fund --loglevel=error
fi
# The Node reference the benchmark compares against (bench/node-reference/), with its Redis Streams adapter
# (connection state recovery), the official client its recovery phase drives and jsonwebtoken (its JWT handshakes).
if [ ! -d "$root/bench/node-reference/node_modules/socket.io" ] ||
  [ ! -d "$root/bench/node-reference/node_modules/@socket.io/redis-streams-adapter" ] ||
  [ ! -d "$root/bench/node-reference/node_modules/jsonwebtoken" ] ||
  [ ! -d "$root/bench/node-reference/node_modules/socket.io-client" ]; then
  npm ci --prefix "$root/bench/node-reference" --no-audit --no-fund --loglevel=error
fi

# The property-based API fuzzer of tests/it/openapi.rs, pinned, in its own virtualenv (target/ is not committed).
schemathesis_version=4.32.5
venv="$root/target/schemathesis"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qxF "schemathesis, version $schemathesis_version"; then
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "schemathesis $schemathesis_version needs Python 3.11+, found $(python3 --version)" >&2; exit 1; }
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "schemathesis==$schemathesis_version"
fi
