#!/usr/bin/env python3
"""Redis's own cost of `lua/reserve.lua` per order, without the gateway: batches of fresh
one-line orders (distinct users among 20,000, one sku) sent straight to the local Redis
as `EVALSHA`, each call deciding `--per-call` orders as a coalesced batch does. Prints
Redis's CPU (`INFO cpu`) and the scripts' own time (`INFO commandstats`) per order.

    python3 loadtest/lua_cost.py                    # the script as built
    python3 loadtest/lua_cost.py --script my.lua    # a variant, to compare

Run variants side by side, several times each: one run moves by ±10 % on this machine.
The keys and arguments mirror `engine/src/scripts/reserve.rs` (`invocation`); the
script's header says what they are. The run's keys are deleted at the end.
"""
import argparse
import os
import random
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Redis:
    """Just enough RESP2 for this tool."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.file = self.sock.makefile("rb")

    def cmd(self, *args):
        self.sock.sendall(encode(*args))
        return self.read()

    def read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--script", default=os.path.join(ROOT, "lua", "reserve.lua"))
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--per-call", type=int, default=11, help="orders per call (a ratios run averages ~11)")
    ap.add_argument("--port", type=int, default=6379)
    args = ap.parse_args()

    prelude = open(os.path.join(ROOT, "lua", "prelude.lua")).read()
    r = Redis("127.0.0.1", args.port)
    sha = r.cmd("SCRIPT", "LOAD", prelude + "\n" + open(args.script).read())
    ns, campaign = f"luacost{random.randrange(1 << 30)}", "c"
    key = lambda name: f"{ns}:{{c:{campaign}}}:{name}"  # noqa: E731
    r.cmd("HSET", key("meta"), "starts", 0, "ends", 99_999_999_999_999, "limit", 1000, "window", 900,
          "max_orders_per_sec", "", "max_user_rps", "", "skus", "sku0", "version", 1, "layout", 2)
    r.cmd("HSET", key("stock:sku0"), "total", 10**9, "avail", 10**9, "resv", 0, "sold", 0, "price", 19900, "gen", 0)

    calls, n = [], 0
    for _ in range(args.calls):
        keys = [key(k) for k in ("meta", "outbox", "deadlines", "buyers", "rate", "users")]
        argv = [campaign, 900, 10**9, key("events"), 0, 3]
        for _ in range(args.per_call):
            n += 1
            ref = "8%019x" % random.getrandbits(76)
            keys += [key("order:" + ref), key("stock:sku0")]
            argv += [ref, f"user-{random.randrange(20_000)}", "sku0:1", f"key-{n}", "", 1, "sku0", 1]
        calls.append(encode("EVALSHA", sha, len(keys), *keys, *argv))

    def sample():
        cpu = dict(line.split(":") for line in r.cmd("INFO", "cpu").splitlines() if line.startswith("used_cpu_"))
        stats = [line for line in r.cmd("INFO", "commandstats").splitlines() if line.startswith("cmdstat_evalsha:")]
        usec = int(stats[0].split("usec=")[1].split(",")[0]) if stats else 0
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), usec

    try:
        cpu0, usec0 = sample()
        last = None
        for call in calls:
            r.sock.sendall(call)
            last = r.read()
        cpu1, usec1 = sample()
        # A new order's reply is its prices alone (a string), or a list led by its tag.
        first = last[0] if last else None
        if not first or not (isinstance(first, str) or first[0] in ("granted", "reserved")):
            raise SystemExit(f"the script did not reserve: {last[:1] if last else last}")
        print(f"{n} orders in {args.calls} calls: Redis CPU {1e6 * (cpu1 - cpu0) / n:.2f} us/order, "
              f"scripts {(usec1 - usec0) / n:.2f} us/order")
    finally:
        cursor = "0"
        while True:
            cursor, found = r.cmd("SCAN", cursor, "MATCH", ns + ":*", "COUNT", 1000)
            if found:
                r.cmd("UNLINK", *found)
            if cursor == "0":
                break


if __name__ == "__main__":
    main()
