#!/usr/bin/env python3
"""Schemathesis against a running gateway and sync-worker: every check, every phase
(examples, coverage, fuzzing, stateful), the storefront routes with a buyer's JWT and
the operator routes with the admin token (ops/schemathesis.toml). The campaign the
document's examples name (`spring-sale`, sku `phone-128g`) is launched first, so
generated orders also reach a live sale and the links lead to real orders. Exits with
Schemathesis's code (0: no failure).

    python3 scripts/schemathesis_test.py --bin-dir target/debug
"""
import argparse, os, subprocess, sys, threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsclient import ADMIN_TOKEN, jwt  # noqa: E402
import teststack  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(teststack.ROOT, "target", "debug"))
    ap.add_argument("--max-examples", type=int, default=None, help="override the config's generation.max-examples")
    ap.add_argument("--seed", default=None, help="the seed of an earlier run (its report's last lines), to replay it")
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
        if args.seed:
            cmd += ["--seed", args.seed]
        rc, interpreter_fault = run_once(cmd, env)
        if rc != 0 and interpreter_fault:
            # CPython 3.11's AST construction can raise a spurious SystemError under
            # threads (python/cpython#106905, met by Hypothesis's code generation with
            # `workers = 2`): the tool crashed, the API was not judged. Once more.
            print("schemathesis: the Python interpreter's AST fault, not a check; running again", flush=True)
            rc, _ = run_once(cmd, env)
    sys.exit(rc)


def run_once(cmd, env):
    """Runs Schemathesis with its output passed through; its exit code and whether the
    output shows the interpreter's AST fault."""
    fault = False
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        watchdog = threading.Timer(1200, p.kill)  # each request has its own 10 s
        watchdog.start()
        try:
            for line in p.stdout:
                sys.stdout.write(line)
                fault |= "AST constructor recursion depth mismatch" in line
            return p.wait(), fault
        finally:
            watchdog.cancel()


if __name__ == "__main__":
    main()
