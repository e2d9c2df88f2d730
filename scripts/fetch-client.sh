#!/usr/bin/env bash
# Fetches the official socket.io browser client from the npm registry into deploy/static/, where the server
# serves it as /socket.io.js. Never committed: run this after a checkout (scripts/run.sh and scripts/test.sh do).
set -euo pipefail
VERSION="${SOCKET_IO_CLIENT_VERSION:-4.8.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/deploy/static/socket.io.min.js"
if [ -s "$dest" ] && grep -q "Socket.IO v$VERSION" "$dest"; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to fetch the socket.io client (apt-get install -y npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "socket.io-client@$VERSION" >/dev/null)
tar -xzf "$tmp"/socket.io-client-*.tgz -C "$tmp" package/dist/socket.io.min.js
mkdir -p "$(dirname "$dest")"
cp "$tmp/package/dist/socket.io.min.js" "$dest"
echo "fetched socket.io-client $VERSION into deploy/static/"
