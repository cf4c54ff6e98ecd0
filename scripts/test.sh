#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test against the real Redis,
# RabbitMQ and MariaDB (started or installed first when missing), then a short run of
# the load-test runner so its invariant checks stay tested.
set -euo pipefail
cd "$(dirname "$0")/.."
# The cluster scripts/ensure-services.sh --cluster starts.
REDIS_CLUSTER_NODES="redis://127.0.0.1:55001,redis://127.0.0.1:55002,redis://127.0.0.1:55003"

bash scripts/ensure-services.sh --cluster

target="${CARGO_TARGET_DIR:-target}"
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*"; }
# Suites that run beside the cargo tests, each logging to its own file (printed when
# it ends); they use their own namespaces, databases and ports.
declare -A side_pid side_log
side() {
  local name=$1
  shift
  side_log[$name]="$target/side-$name.log"
  ("$@") >"${side_log[$name]}" 2>&1 &
  side_pid[$name]=$!
}
side_failed=()
join_side() {
  local name=$1
  if wait "${side_pid[$name]}"; then
    step "$name: passed"
  else
    side_failed+=("$name")
    step "$name: FAILED"
  fi
  cat "${side_log[$name]}"
}
trap 'for p in "${side_pid[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "build the tests and the binaries once"
# Every cargo call selects --workspace: a narrower -p selection resolves features
# differently and recompiles part of the dependency tree.
cargo test --workspace --no-run --quiet
cargo build --quiet --workspace --bins

outside() {
  echo "== ops: alert rules (promtool; the metric names are checked by faults/tests/ops.rs)"
  bash scripts/ensure-tools.sh promtool
  promtool check rules ops/alerts.yml
  echo "== operator dashboard in headless Chromium (playwright-core)"
  bash scripts/ensure-tools.sh chromium playwright
  python3 scripts/browser_test.py --bin-dir "$target/debug" --shot "$target/dashboard.png"
  echo "== the README's walk-through, run as written; every link of the docs resolves"
  python3 scripts/walkthrough_test.py --bin-dir "$target/debug"
  python3 scripts/check_docs.py
  echo "== OpenAPI document fuzzed from outside (Schemathesis: all checks, all phases)"
  bash scripts/ensure-tools.sh schemathesis
  python3 scripts/schemathesis_test.py --bin-dir "$target/debug"
}
load() {
  echo "== load-test runner, short (every scenario on a small campaign, invariants checked)"
  bash loadtest/run.sh all --short --debug
  echo "== load-test runner's before/after mode (the debug build against itself: the swap and checks work)"
  python3 loadtest/run.py ab --short --bin-dir "$target/debug" \
    --baseline-bin-dir "$target/debug" --out "$target/loadtest-ab"
}
side outside outside

step "cargo test"
cargo test --workspace --no-fail-fast
side load load
step "the script, cache and API suites again, against the local 3-master Redis Cluster"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --no-fail-fast --test scripts --test cache --test shards --test properties --test api
step "a sharded sale through two gateways and a worker, on the cluster"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --no-fail-fast --test faults -- sharded
step "a lost shard found and rebuilt by the worker, and a rebuild whose worker was killed, on the cluster"
echo "   (the fault tests of one master restarted empty, blackholed or script-flushed run in the"
echo "   cargo test pass above, each on a private 3-master cluster it starts and stops itself)"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --no-fail-fast --test worker -- one_lost_shard a_worker_killed_mid_rebuild
step "each master's share of a hot sku's script calls, and what notices cost the cluster (alone on it)"
FLASHSALE__REDIS__CLUSTER_NODES="$REDIS_CLUSTER_NODES" \
  cargo test --workspace --test shards -- --ignored --nocapture --test-threads=1 \
  each_master_serves_a_fair_share_of_a_hot_sku shard_notices_cost_the_cluster_less_than_broadcast_ones

join_side outside
join_side load
step "reconciliation of a campaign of 2,000,000 orders, and Redis memory per pending order (alone)"
cargo test --workspace --test reconcile_big -- --ignored --nocapture
cargo test --workspace --test scripts -- --ignored --nocapture redis_memory_per_pending_order
if ((${#side_failed[@]})); then
  step "failed: ${side_failed[*]}"
  exit 1
fi
step "all passed"
