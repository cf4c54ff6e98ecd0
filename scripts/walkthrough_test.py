#!/usr/bin/env python3
"""Runs the README's walk-through as written: every fenced `sh` block of its "A
five-minute walk-through" section, in order, in one bash (-e, -u, -o pipefail), against
a gateway and a worker of their own (a fresh namespace and database). Exits with bash's
code.

    python3 scripts/walkthrough_test.py --bin-dir target/debug
"""
import argparse, os, re, subprocess, sys, uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import teststack  # noqa: E402


def blocks(readme):
    text = open(readme).read()
    section = text.split("## A five-minute walk-through", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(teststack.ROOT, "target", "debug"))
    args = ap.parse_args()
    script = "\n".join(blocks(os.path.join(teststack.ROOT, "README.md")))
    if script.count("curl") < 10:
        raise SystemExit("the walk-through's commands were not found in README.md")
    with teststack.running(args.bin_dir, "walkthrough", 18280, 19880) as (base, run):
        env = dict(os.environ, GW=base, CID=f"walk-{run}-{uuid.uuid4().hex[:6]}")
        rc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=teststack.ROOT, env=env,
                            timeout=120).returncode
    print(f"walk-through: {'1 passed, 0 failed' if rc == 0 else '0 passed, 1 failed'}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
