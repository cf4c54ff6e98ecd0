#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test against the real Redis,
# RabbitMQ and MariaDB (started or installed first when missing), then a short run of
# the load-test runner so its invariant checks stay tested.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-services.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast
echo "== load-test runner, short (every scenario on a small campaign, invariants checked)"
bash loadtest/run.sh all --short --debug
