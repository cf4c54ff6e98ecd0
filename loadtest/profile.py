#!/usr/bin/env python3
"""A `perf` profile of the gateway under wrk, one path at a time: sold-out answers (a
campaign with no stock: the local cache answers) and reservations with the sync-worker
paused (what the gateway itself spends per durable reservation, without the pipeline's
CPU in the way). Each path runs `--seconds` under wrk (64 connections, the runner's
request) while `perf record -g` samples the gateway; the top of each report goes to
`<out>/profile-<path>.txt`.

    python3 loadtest/profile.py --bin-dir target/release [--seconds 10]

Needs `perf` (linux-perf), wrk, and a release build with debug info (the workspace's
release profile has it).
"""
import argparse, os, signal, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the runner: its stack, tokens, launch and wrk)


def profile(stack, out, label, cid, tok, p, seconds):
    gateway = next(proc for proc in stack.procs if proc.args[0].endswith("/gateway"))
    data = os.path.join(out, f"profile-{label}.data")
    rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(gateway.pid), "-o", data,
                            "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    numbers = run.wrk(f"profile-{label}", out, run.GATEWAY, cid, "sku0", tok, dict(p, duration=seconds),
                      f"pf{label[0]}")
    rec.wait()
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "--percent-limit", "0.7",
                             "--sort", "symbol", "-g", "none"], capture_output=True, text=True).stdout
    path = os.path.join(out, f"profile-{label}.txt")
    with open(path, "w") as f:
        f.write(report)
    run.log(f"profile {label}: {numbers['rate_per_sec']}/s; {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
    ap.add_argument("--out", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "profile"))
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stack = run.Stack(args.bin_dir, args.out)
    p = dict(vus=64, users=20000)
    try:
        stack.up()
        tok = run.tokens(args.out, p["users"])
        tag = run.uuid.uuid4().hex[:8]
        empty, stocked = f"pf-{tag}-empty", f"pf-{tag}-stock"
        run.launch(empty, {"limit": 1}, 0)
        run.launch(stocked, {"limit": 10_000}, 100_000_000)
        profile(stack, args.out, "sold_out", empty, tok, p, args.seconds)
        stack.signal("sync-worker", signal.SIGSTOP)
        try:
            profile(stack, args.out, "paused", stocked, tok, p, args.seconds)
        finally:
            stack.signal("sync-worker", signal.SIGCONT)
        time.sleep(1)
    finally:
        stack.down()
        run.reset_state()


if __name__ == "__main__":
    main()
