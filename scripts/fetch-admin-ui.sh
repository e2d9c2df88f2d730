#!/usr/bin/env bash
# Fetches the official socket.io admin UI (its static build, `ui/dist` of the npm package @socket.io/admin-ui)
# from the npm registry into deploy/static/admin/, where the server serves it at /admin/ when [admin] is enabled.
# Never committed: run this after a checkout (scripts/setup.sh does).
set -euo pipefail
VERSION="${ADMIN_UI_VERSION:-0.5.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/deploy/static/admin"
if [ -s "$dest/index.html" ] && [ "$(cat "$dest/.version" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to fetch the admin UI (apt-get install -y npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@socket.io/admin-ui@$VERSION" >/dev/null)
tar -xzf "$tmp"/socket.io-admin-ui-*.tgz -C "$tmp" package/ui/dist
rm -rf "$dest"
mkdir -p "$dest"
cp -r "$tmp/package/ui/dist/." "$dest/"
echo "$VERSION" > "$dest/.version"
echo "fetched @socket.io/admin-ui $VERSION into deploy/static/admin/"
