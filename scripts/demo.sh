#!/usr/bin/env bash
# The main job: bring up the stack (Redis, RabbitMQ, MariaDB, a gateway and a
# sync-worker), launch a demo campaign, drive a burst of orders, pay some, cancel
# some, let the rest expire, and print what happened and whether the invariants hold.
# Exits non-zero when an invariant fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-services.sh
echo "== building release binaries"
cargo build --release --quiet -p gateway -p sync-worker

out=target/demo
mkdir -p "$out"
for name in gateway sync-worker; do
  if [[ -f "$out/$name.pid" ]] && kill -0 "$(cat "$out/$name.pid")" 2>/dev/null; then
    kill "$(cat "$out/$name.pid")" 2>/dev/null || true
    sleep 1
  fi
done

export FLASHSALE__NAMESPACE="${FLASHSALE__NAMESPACE:-demo}"
export FLASHSALE__MYSQL__URL="${FLASHSALE__MYSQL__URL:-mysql://root@127.0.0.1:3306/flashsale_demo}"
export FLASHSALE__GATEWAY__LISTEN="${FLASHSALE__GATEWAY__LISTEN:-127.0.0.1:8080}"
export RUST_LOG="${RUST_LOG:-warn}"

target/release/gateway > "$out/gateway.log" 2>&1 &
echo $! > "$out/gateway.pid"
target/release/sync-worker > "$out/sync-worker.log" 2>&1 &
echo $! > "$out/sync-worker.pid"
stop() {
  for name in gateway sync-worker; do
    [[ -f "$out/$name.pid" ]] && kill -TERM "$(cat "$out/$name.pid")" 2>/dev/null || true
  done
}
trap stop EXIT

base="http://${FLASHSALE__GATEWAY__LISTEN}"
for _ in $(seq 120); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs "$base/readyz" >/dev/null || { echo "gateway never became ready; see $out/gateway.log"; exit 1; }

python3 scripts/demo.py --base "$base" --mysql-db "${FLASHSALE__MYSQL__URL##*/}"
