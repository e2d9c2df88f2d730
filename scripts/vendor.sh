#!/usr/bin/env bash
# Rebuilds the vendored crates: for each vendor/<crate>.source, vendor/<crate>/ is the exact crate it names, from
# crates.io (or cargo's own download cache), checked against its SHA-256, with vendor/patches/<crate>/*.patch
# applied in order. Cargo.toml's [patch.crates-io] builds the server against those copies.
#   scripts/vendor.sh [crate]           rebuild every vendor/<crate>/ (or the one named)
#   scripts/vendor.sh --check [crate]   rebuild into a temporary directory and fail if vendor/<crate>/ differs
# To move a crate to a new version: change `version` and `sha256` in vendor/<crate>.source (the sha256 is the
# `checksum` of the version's entry in a Cargo.lock without the patch), run this script, fix the patches that no
# longer apply, run `cargo update -p <crate>` and the tests (tests/it/vendor.rs checks that the versions agree).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
check=false
if [ "${1:-}" = "--check" ]; then
  check=true
  shift
fi
if [ $# -gt 0 ]; then
  crates=("$@")
else
  crates=()
  for f in "$root"/vendor/*.source; do crates+=("$(basename "$f" .source)"); done
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

vendor() { # crate: rebuild (or check) vendor/<crate>/
  local name version sha256
  [ -f "$root/vendor/$1.source" ] || { echo "vendor/$1.source: no such file" >&2; return 1; }
  name=$(sed -n 's/^name=//p' "$root/vendor/$1.source")
  version=$(sed -n 's/^version=//p' "$root/vendor/$1.source")
  sha256=$(sed -n 's/^sha256=//p' "$root/vendor/$1.source")
  [ "$name" = "$1" ] || { echo "vendor/$1.source names $name" >&2; return 1; }
  local crate="$name-$version.crate" cached
  cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate" 2>/dev/null | head -n 1 || true)
  if [ -n "$cached" ]; then
    cp "$cached" "$work/$crate"
  else
    curl -fsSL --retry 3 -o "$work/$crate" "https://static.crates.io/crates/$name/$crate"
  fi
  echo "$sha256  $work/$crate" | sha256sum -c --quiet - || { echo "$crate: checksum mismatch" >&2; return 1; }
  tar -xzf "$work/$crate" -C "$work"
  local src="$work/$name-$version" patches p
  shopt -s nullglob
  patches=("$root"/vendor/patches/"$name"/*.patch)
  shopt -u nullglob
  rm -f "$src/.cargo_vcs_info.json" "$src/.cargo-ok"
  for p in "${patches[@]}"; do
    patch --quiet --directory="$src" --strip=1 --no-backup-if-mismatch <"$p" ||
      { echo "$(basename "$p") does not apply to $name $version" >&2; return 1; }
  done

  local target="$root/vendor/$name"
  if $check; then
    diff -r "$src" "$target" >/dev/null ||
      { echo "vendor/$name is not $name $version with its patches: run scripts/vendor.sh $name" >&2; return 1; }
    echo "vendor/$name is $name $version with ${#patches[@]} patch(es)"
  else
    rm -rf "$target"
    mv "$src" "$target"
    echo "vendor/$name: $name $version with its patches"
  fi
}

for crate in "${crates[@]}"; do vendor "$crate"; done
