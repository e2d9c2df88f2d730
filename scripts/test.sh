#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and lints, runs unit and integration tests
# (real redis-server, real node processes, socket.io-client, headless Chromium), then the cluster tests again on a
# real 3-master, 3-replica Redis Cluster.
#   scripts/test.sh                    everything (CI runs this)
#   scripts/test.sh gateway:: admin::  the integration tests (tests/it, a module per file) whose names contain one
#                                      of these, on one Redis
#   scripts/test.sh --lib config::     any other `cargo test` arguments
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
if [ "$#" -gt 0 ] && [[ "$1" != -* ]]; then
  exec cargo test --locked --test it -- "$@"
fi
cargo test --locked "$@"
if [ "$#" -eq 0 ]; then
  # The same tests with every node on a Redis Cluster (tests/it/harness/redis.rs: TEST_REDIS_CLUSTER): the modules
  # named here. Filters match anywhere in a name, so `cluster::` takes `redis_cluster::` and `faults::` takes
  # `reliable_faults::`: those are skipped. Left out too: the tests of one Redis restarting or going away, which a
  # cluster answers with a failover (redis_cluster:: tests that), one that changes an ACL on one Redis, and one
  # that empties one Redis (`FLUSHALL`).
  TEST_REDIS_CLUSTER=1 cargo test --locked --test it -- \
    cluster:: hostile:: reliable:: send:: tenancy:: gateway:: admin:: ops:: faults:: security:: recovery:: emitter:: webhooks:: webhook_store:: \
    --skip redis_cluster:: --skip reliable_faults:: \
    --skip the_cluster_recovers_after_a_redis_restart --skip a_redis_outage_of_ten_seconds \
    --skip failed_start_up_attempts_leave_no_connection_behind --skip ready_and_metrics_follow_the_cluster_and_redis \
    --skip attempts_failing_at_the_gateway_leave_no_cluster_behind \
    --skip routing_goes_on_without_the_group_commands --skip sets_redis_lost_are_written_again
fi
