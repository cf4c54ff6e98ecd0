#!/usr/bin/env python3
"""Demo campaign driver: standard library only.

Launches a campaign, sends a burst of orders from many buyers (some retrying with the
same idempotency key), pays some through signed callbacks, cancels some, lets the rest
expire, then checks the invariants through the operator API and MySQL.
"""
import argparse, json, os, sys, threading, time, uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsclient import ADMIN, call, jwt, rfc3339, signature, sql  # noqa: E402
import salereport  # noqa: E402

OUTCOME = {201: "reserved", 200: "replayed", 429: "rate_limited", 503: "unavailable"}


def outcome(status, body):
    if status == 409 and isinstance(body, dict):
        return body.get("error", {}).get("code", "conflict")
    return OUTCOME.get(status, str(status))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8080")
    ap.add_argument("--mysql-db", default="flashsale")
    ap.add_argument("--buyers", type=int, default=1500)
    ap.add_argument("--stock", type=int, default=300)
    ap.add_argument("--window", type=int, default=4,
                    help="payment window in seconds (longer than the burst and the payments, or orders expire first)")
    ap.add_argument("--campaign-id", help="the campaign's id (default: demo-<random>)")
    ap.add_argument("--report", default=os.path.join("target", "loadtest", "demo-report.html"),
                    help="where the HTML report of the sale goes (beside the load tests' k6 reports)")
    args = ap.parse_args()
    rec = salereport.Recorder()
    admin = ADMIN
    cid = args.campaign_id or "demo-" + uuid.uuid4().hex[:8]
    window = args.window
    launch = {
        "campaign_id": cid, "name": "Demo flash sale",
        "starts_at": rfc3339(-1),
        "ends_at": rfc3339(600),
        "per_user_limit": 2, "payment_window_secs": window,
        "items": [{"sku_id": "phone-128g", "stock": args.stock, "price_cents": 99900},
                  {"sku_id": "case", "stock": args.stock * 2, "price_cents": 1500}],
    }
    status, view = call("POST", f"{args.base}/admin/v1/campaigns", launch, admin)
    assert status == 201, (status, view)
    print(f"launched {cid}: {args.stock} phones, {args.stock * 2} cases, payment window {window}s")

    def buy(i):
        user = f"buyer-{i}"
        items = [{"sku_id": "phone-128g", "quantity": 1}]
        if i % 5 == 0:
            items.append({"sku_id": "case", "quantity": 1})
        h = {"authorization": f"Bearer {jwt(user)}", "idempotency-key": f"{cid}-{i}"}
        url = f"{args.base}/api/v1/campaigns/{cid}/orders"
        t = time.time()
        first = call("POST", url, {"items": items}, h)
        rec.answer(t, outcome(*first))
        retry = None
        if i % 7 == 0:
            t = time.time()
            retry = call("POST", url, {"items": items}, h)
            rec.answer(t, outcome(*retry))
        return user, first, retry

    # The campaign's counters, sampled through the operator API while the sale runs.
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            s, v = call("GET", f"{args.base}/admin/v1/campaigns/{cid}", headers=admin)
            if s == 200:
                rec.sample(v)
            sampling.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.time()
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(buy, range(args.buyers)))
    elapsed = time.time() - started
    outcomes = Counter(r[1][0] for r in results)
    print(f"{args.buyers} buyers in {elapsed:.2f}s: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    winners = [(u, b) for u, (s, b), _ in results if s == 201]
    replays_ok = all(r[2][0] == 200 and r[2][1]["order_id"] == r[1][1]["order_id"]
                     for r in results if r[2] is not None and r[1][0] == 201)

    paid, cancelled = 0, 0
    for n, (user, order) in enumerate(winners):
        if n % 10 < 6:
            body = json.dumps({"event_id": f"evt-{order['order_id']}", "order_id": order["order_id"],
                               "amount_cents": order["total_cents"], "status": "succeeded"}).encode()
            s, _ = call("POST", f"{args.base}/api/v1/payments/callback", raw=body,
                        headers={"flashsale-signature": signature(body)})
            paid += s == 200
        elif n % 10 == 6:
            s, _ = call("POST", f"{args.base}/api/v1/orders/{order['order_id']}/cancel",
                        headers={"authorization": f"Bearer {jwt(user)}"})
            cancelled += s == 200
    left = len(winners) - paid - cancelled
    print(f"{len(winners)} orders: {paid} paid, {cancelled} cancelled, {left} left to expire")

    print(f"waiting for expiry ({window}s window) and for MySQL to catch up ...")
    deadline = time.time() + 60 + window
    recon = None
    while time.time() < deadline:
        time.sleep(1)
        _, recon = call("GET", f"{args.base}/admin/v1/campaigns/{cid}/reconciliation", headers=admin)
        _, view = call("GET", f"{args.base}/admin/v1/campaigns/{cid}", headers=admin)
        reserved = sum(i["reserved"] for i in view["items"])
        if recon and recon.get("consistent") and reserved == 0:
            break
    sampling.set()
    sampler.join()
    rec.sample(view)
    print()
    print(salereport.table([(i["sku_id"], i["stock_total"], i["available"], i["reserved"], i["sold"])
                            for i in view["items"]], ["sku", "stock", "available", "reserved", "sold"]))
    ms = [a[2] for a in rec.answers]
    print()
    print(salereport.table(sorted(Counter(a[1] for a in rec.answers).items()), ["answer", "count"]))
    print(f"latency (client side): p50 {salereport.percentile(ms, 0.5):.1f} ms, "
          f"p99 {salereport.percentile(ms, 0.99):.1f} ms")

    sold_units = sum(i["sold"] for i in view["items"])
    expected_sold = sum(len(o["items"]) for n, (_, o) in enumerate(winners) if n % 10 < 6)
    try:
        mysql_orders = int(sql(args.mysql_db, f"SELECT COUNT(*) FROM orders WHERE campaign_id = '{cid}'")[0][0])
    except Exception as e:  # noqa: BLE001
        print(f"cannot count MySQL orders: {e}")
        mysql_orders = -1
    checks = {
        "available + reserved + sold = stock_total for every sku":
            all(i["available"] + i["reserved"] + i["sold"] == i["stock_total"] for i in view["items"]),
        "no oversell: phones reserved or sold <= stock": winners and len(winners) <= args.stock,
        "no undersell: demand above stock sold every phone": len(winners) == args.stock or args.buyers * 2 < args.stock,
        "idempotent retries returned the same order": replays_ok,
        "only 201, 200 and 409 sold_out/limit answers": set(outcomes) <= {201, 409},
        "units sold = units paid for": sold_units == expected_sold,
        "every unpaid order expired and was released (nothing reserved)": all(i["reserved"] == 0 for i in view["items"]),
        "one MySQL order per 201": mysql_orders == len(winners),
        "Redis and MySQL reconcile": bool(recon and recon.get("consistent")),
    }
    print(f"\n{len(winners)} reservations answered 201; MySQL holds {mysql_orders} orders of the campaign")
    print("\ninvariants:")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    salereport.write_html(args.report, f"Demo sale {cid}", rec, view, checks)
    print(f"\nreport: {args.report}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
