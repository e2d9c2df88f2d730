#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and lints, runs unit and integration tests
# (real redis-server, real node processes, socket.io-client, headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
