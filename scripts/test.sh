#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and lints, runs unit and integration tests
# (real redis-server, real node processes, socket.io-client, headless Chromium), then the cluster tests again on a
# real 3-master, 3-replica Redis Cluster.
#   scripts/test.sh                  everything (CI runs this)
#   scripts/test.sh --test gateway   any `cargo test` arguments: that part alone, on one Redis
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
if [ "$#" -eq 0 ]; then
  # The same tests with every node on a Redis Cluster (tests/common: TEST_REDIS_CLUSTER). Left out: the tests of
  # one Redis restarting or going away, which a cluster answers with a failover (tests/redis_cluster.rs).
  TEST_REDIS_CLUSTER=1 cargo test --locked \
    --test cluster --test hostile --test reliable --test send --test tenancy --test gateway --test admin \
    --test ops --test faults --test security -- \
    --skip the_cluster_recovers_after_a_redis_restart --skip a_redis_outage_of_ten_seconds \
    --skip failed_start_up_attempts_leave_no_connection_behind --skip ready_and_metrics_follow_the_cluster_and_redis \
    --skip attempts_failing_at_the_gateway_leave_no_cluster_behind
fi
