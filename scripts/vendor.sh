#!/usr/bin/env bash
# Rebuilds vendor/socketioxide: the exact crate vendor/socketioxide.source names, from crates.io (or cargo's own
# download cache), checked against its SHA-256, with vendor/patches/socketioxide/*.patch applied in order.
# Cargo.toml's [patch.crates-io] builds the server against that copy.
#   scripts/vendor.sh           rebuild vendor/socketioxide
#   scripts/vendor.sh --check   rebuild into a temporary directory and fail if vendor/socketioxide differs
# To move to a new socketioxide version: change `version` and `sha256` in vendor/socketioxide.source (the sha256 is
# the `checksum` of the version's entry in a Cargo.lock without the patch), run this script, fix the patches that
# no longer apply, run `cargo update -p socketioxide` and the tests (tests/it/vendor.rs checks that the versions agree).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=/dev/null
. <(grep -E '^(name|version|sha256)=' "$root/vendor/socketioxide.source")
crate="$name-$version.crate"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate" 2>/dev/null | head -n 1 || true)
if [ -n "$cached" ]; then
  cp "$cached" "$work/$crate"
else
  curl -fsSL --retry 3 -o "$work/$crate" "https://static.crates.io/crates/$name/$crate"
fi
echo "$sha256  $work/$crate" | sha256sum -c --quiet - || { echo "$crate: checksum mismatch" >&2; exit 1; }
tar -xzf "$work/$crate" -C "$work"
src="$work/$name-$version"
rm -f "$src/.cargo_vcs_info.json" "$src/.cargo-ok"
for p in "$root"/vendor/patches/"$name"/*.patch; do
  patch --quiet --directory="$src" --strip=1 --no-backup-if-mismatch <"$p" ||
    { echo "$(basename "$p") does not apply to $name $version" >&2; exit 1; }
done

target="$root/vendor/$name"
if [ "${1:-}" = "--check" ]; then
  diff -r "$src" "$target" >/dev/null ||
    { echo "vendor/$name is not $name $version with its patches: run scripts/vendor.sh" >&2; exit 1; }
  echo "vendor/$name is $name $version with $(ls "$root"/vendor/patches/"$name"/*.patch | wc -l) patch(es)"
else
  rm -rf "$target"
  mv "$src" "$target"
  echo "vendor/$name: $name $version with its patches"
fi
