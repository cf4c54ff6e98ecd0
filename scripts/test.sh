#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test against the real Redis,
# RabbitMQ and MariaDB (started or installed first when missing), then a short run of
# the load-test runner so its invariant checks stay tested.
set -euo pipefail
cd "$(dirname "$0")/.."
# The cluster scripts/ensure-services.sh --cluster starts.
REDIS_CLUSTER_NODES="redis://127.0.0.1:55001,redis://127.0.0.1:55002,redis://127.0.0.1:55003"

bash scripts/ensure-services.sh --cluster

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
# Every later cargo call selects --workspace too: a narrower -p selection resolves
# features differently and recompiles part of the dependency tree.
cargo test --workspace --no-fail-fast
echo "== the script, cache and API suites again, against the local 3-master Redis Cluster"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --no-fail-fast --test scripts --test cache --test shards --test properties --test api
echo "== a sharded sale through two gateways and a worker, on the cluster"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --no-fail-fast --test faults -- sharded
echo "== a lost shard found and rebuilt by the worker, and a rebuild whose worker was killed, on the cluster"
echo "   (the fault tests of one master restarted empty, blackholed or script-flushed run in the"
echo "   cargo test pass above, each on a private 3-master cluster it starts and stops itself)"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --no-fail-fast --test worker -- one_lost_shard a_worker_killed_mid_rebuild
echo "== each master's share of a hot sku's script calls (alone on the cluster: nothing else runs on it now)"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --test shards -- --ignored --nocapture each_master_serves_a_fair_share_of_a_hot_sku
echo "== ops: alert rules (promtool; the metric names are checked by faults/tests/ops.rs)"
bash scripts/ensure-tools.sh promtool
promtool check rules ops/alerts.yml
echo "== operator dashboard in headless Chromium (playwright-core)"
bash scripts/ensure-tools.sh chromium playwright
cargo build --quiet --workspace --bins
python3 scripts/browser_test.py --bin-dir "${CARGO_TARGET_DIR:-target}/debug" \
  --shot "${CARGO_TARGET_DIR:-target}/dashboard.png"
echo "== the README's walk-through, run as written; every link of the docs resolves"
python3 scripts/walkthrough_test.py --bin-dir "${CARGO_TARGET_DIR:-target}/debug"
python3 scripts/check_docs.py
echo "== OpenAPI document fuzzed from outside (Schemathesis: all checks, all phases)"
bash scripts/ensure-tools.sh schemathesis
python3 scripts/schemathesis_test.py --bin-dir "${CARGO_TARGET_DIR:-target}/debug"
echo "== load-test runner, short (every scenario on a small campaign, invariants checked)"
bash loadtest/run.sh all --short --debug
echo "== load-test runner's before/after mode (the debug build against itself: the swap and checks work)"
python3 loadtest/run.py ab --short --bin-dir "${CARGO_TARGET_DIR:-target}/debug" \
  --baseline-bin-dir "${CARGO_TARGET_DIR:-target}/debug" --out "${CARGO_TARGET_DIR:-target}/loadtest-ab"
