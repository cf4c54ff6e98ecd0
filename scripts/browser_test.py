#!/usr/bin/env python3
"""Starts a gateway and a sync-worker (built binaries, own namespace, database and
ports), launches a campaign, and runs the dashboard's browser test against them
(ops/browser/dashboard.test.mjs). Exits with the test's exit code.

    python3 scripts/browser_test.py --bin-dir target/debug --shot target/dashboard.png
"""
import argparse, json, os, subprocess, sys, time, uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsclient import ADMIN, ADMIN_TOKEN, call, jwt, rfc3339  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = "127.0.0.1:18180"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "debug"))
    ap.add_argument("--shot", default=os.path.join(ROOT, "target", "dashboard.png"))
    args = ap.parse_args()
    run = uuid.uuid4().hex[:8]
    ns, db = f"browser{run}", f"flashsale_browser_{run}"
    out = os.path.join(ROOT, "target", "browser-test")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, FLASHSALE__NAMESPACE=ns, FLASHSALE__MYSQL__URL=f"mysql://root@127.0.0.1:3306/{db}",
               FLASHSALE__GATEWAY__LISTEN=GATEWAY, FLASHSALE__GATEWAY__METRICS_LISTEN="127.0.0.1:19998",
               FLASHSALE__WORKER__METRICS_LISTEN="127.0.0.1:19999", RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    procs = [subprocess.Popen([os.path.join(args.bin_dir, name)], env=env,
                              stdout=open(os.path.join(out, f"{name}.log"), "w"), stderr=subprocess.STDOUT)
             for name in ("gateway", "sync-worker")]
    try:
        deadline = time.time() + 60
        while True:
            try:
                if call("GET", f"http://{GATEWAY}/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"the gateway never became ready; see {out}")
            time.sleep(0.3)
        cid = f"browser-{run}"
        status, view = call("POST", f"http://{GATEWAY}/admin/v1/campaigns", {
            "campaign_id": cid, "name": "Browser test sale", "starts_at": rfc3339(-1), "ends_at": rfc3339(3600),
            "per_user_limit": 2, "payment_window_secs": 900,
            "items": [{"sku_id": "sku0", "stock": 500, "price_cents": 1999},
                      {"sku_id": "sku1", "stock": 50, "price_cents": 500}]}, ADMIN)
        if status != 201:
            raise SystemExit(f"launch: {status} {view}")
        tokens = os.path.join(out, "tokens.json")
        json.dump([jwt(f"shopper-{run}-{i}") for i in range(200)], open(tokens, "w"))
        test_env = dict(os.environ, BASE=f"http://{GATEWAY}", ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN=cid, TOKENS=tokens,
                        SHOT=os.path.abspath(args.shot))
        rc = subprocess.run(["node", os.path.join(ROOT, "ops", "browser", "dashboard.test.mjs")], env=test_env).returncode
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS {db}"], check=False)
        keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{ns}:*"], capture_output=True, text=True).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "DEL", *keys[i:i + 500]], capture_output=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
