#!/usr/bin/env python3
"""Starts a gateway and a sync-worker, launches a campaign, and runs the dashboard's
browser test against them (ops/browser/dashboard.test.mjs). Exits with its code.

    python3 scripts/browser_test.py --bin-dir target/debug --shot target/dashboard.png
"""
import argparse, json, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsclient import ADMIN_TOKEN, jwt  # noqa: E402
import teststack  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(teststack.ROOT, "target", "debug"))
    ap.add_argument("--shot", default=os.path.join(teststack.ROOT, "target", "dashboard.png"))
    args = ap.parse_args()
    with teststack.running(args.bin_dir, "browser", 18180, 19980) as (base, run):
        cid = f"browser-{run}"
        teststack.launch(base, cid, [{"sku_id": "sku0", "stock": 500, "price_cents": 1999},
                                     {"sku_id": "sku1", "stock": 50, "price_cents": 500}])
        tokens = os.path.join(teststack.ROOT, "target", "browser", "tokens.json")
        json.dump([jwt(f"shopper-{run}-{i}") for i in range(200)], open(tokens, "w"))
        env = dict(os.environ, BASE=base, ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN=cid, TOKENS=tokens,
                   SHOT=os.path.abspath(args.shot))
        # Every step has playwright's own timeout; this bounds the whole test.
        rc = subprocess.run(["node", os.path.join(teststack.ROOT, "ops", "browser", "dashboard.test.mjs")],
                            env=env, timeout=300).returncode
    sys.exit(rc)


if __name__ == "__main__":
    main()
