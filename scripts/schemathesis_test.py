#!/usr/bin/env python3
"""Schemathesis against a running gateway and sync-worker: every check, every phase
(examples, coverage, fuzzing, stateful), the storefront routes with a buyer's JWT and
the operator routes with the admin token (ops/schemathesis.toml). The campaign the
document's examples name (`spring-sale`, sku `phone-128g`) is launched first, so
generated orders also reach a live sale and the links lead to real orders. Exits with
Schemathesis's code (0: no failure).

    python3 scripts/schemathesis_test.py --bin-dir target/debug
"""
import argparse, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsclient import ADMIN_TOKEN, jwt  # noqa: E402
import teststack  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(teststack.ROOT, "target", "debug"))
    ap.add_argument("--max-examples", type=int, default=None, help="override the config's generation.max-examples")
    args = ap.parse_args()
    with teststack.running(args.bin_dir, "schemathesis", 18380, 19990) as (base, run):
        teststack.launch(base, "spring-sale", [{"sku_id": "phone-128g", "stock": 10_000_000, "price_cents": 99900}],
                         limit=10_000)
        env = dict(os.environ, ADMIN_TOKEN=ADMIN_TOKEN, STOREFRONT_TOKEN=jwt(f"fuzzer-{run}", 7200))
        report = os.path.join(teststack.ROOT, "target", "schemathesis")
        cmd = ["st", "--config-file", os.path.join(teststack.ROOT, "ops", "schemathesis.toml"), "run",
               f"{base}/openapi.json", "--report", "junit", "--report-dir", report]
        if args.max_examples:
            cmd += ["--max-examples", str(args.max_examples)]
        rc = subprocess.run(cmd, env=env, timeout=1200).returncode  # each request has its own 10 s
    sys.exit(rc)


if __name__ == "__main__":
    main()
