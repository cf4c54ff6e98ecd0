#!/usr/bin/env bash
# Installs the test tools named as arguments when missing, from Debian's packages,
# PyPI or npm (never a tool's own download): promtool, chromium, playwright,
# schemathesis. Safe to run any number of times.
#   bash scripts/ensure-tools.sh promtool chromium playwright schemathesis
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[tools] %s\n' "$*" >&2; }
source scripts/lib.sh

for tool in "$@"; do
  case $tool in
    promtool)
      command -v promtool >/dev/null || { log "installing prometheus (promtool)"; apt_install prometheus; } ;;
    chromium)
      command -v chromium >/dev/null || { log "installing chromium"; apt_install chromium; } ;;
    playwright)
      # playwright-core drives the system chromium; it downloads no browser.
      [[ -d ops/browser/node_modules/playwright-core ]] || {
        log "installing playwright-core (npm)"
        (cd ops/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
      } ;;
    schemathesis)
      command -v st >/dev/null || { log "installing schemathesis (PyPI)"; pip install --quiet schemathesis; } ;;
    *) log "unknown tool $tool"; exit 2 ;;
  esac
done
