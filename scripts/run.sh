#!/usr/bin/env bash
# Runs one node from the repository root: https://localhost:5009, development certificate, no Redis needed.
# Every flag of the binary works here too, e.g. `scripts/run.sh --redis-url redis://127.0.0.1:6379`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-client.sh
scripts/fetch-admin-ui.sh
exec cargo run --release --locked -- "$@"
