"""Client helpers shared by the demo driver and the load-test runner (standard library only):
storefront JWTs, signed payment callbacks, JSON calls, and MySQL queries via the CLI."""
import base64, hashlib, hmac, json, os, subprocess, time
import urllib.error, urllib.request
from datetime import datetime, timedelta, timezone

JWT_SECRET = os.environ.get("FLASHSALE__AUTH__JWT_SECRET", "dev-jwt-secret")
ADMIN_TOKEN = os.environ.get("FLASHSALE__ADMIN__TOKEN", "dev-admin-token")
WEBHOOK_SECRET = os.environ.get("FLASHSALE__PAYMENTS__WEBHOOK_SECRET", "dev-webhook-secret")
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(sub: str, ttl_secs: int = 3600) -> str:
    """An HS256 storefront token for `sub`, as an identity provider would issue it."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + ttl_secs}).encode())
    sig = hmac.new(JWT_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def signature(body: bytes, t: int | None = None) -> str:
    """The `Flashsale-Signature` header of a payment callback body."""
    t = int(time.time()) if t is None else t
    sig = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}"


def call(method, url, body=None, headers=None, raw=None, timeout=10):
    """One JSON request; returns (status, parsed body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def rfc3339(offset_secs: float) -> str:
    """Now plus `offset_secs`, as the API writes times."""
    t = datetime.now(timezone.utc) + timedelta(seconds=offset_secs)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sql(db: str, query: str) -> list[list[str]]:
    """Rows of a MySQL query (root over TCP, as the services run here)."""
    out = subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-N", "-B", "-e", query, db],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("\t") for line in out.splitlines() if line]


if __name__ == "__main__":
    # `python3 scripts/fsclient.py jwt USER`: a storefront token for USER;
    # `python3 scripts/fsclient.py sign BODY`: the Flashsale-Signature header of BODY
    # (both with the secrets of the environment, else the development defaults).
    import sys
    usage = "usage: fsclient.py jwt USER | sign BODY"
    if len(sys.argv) != 3 or sys.argv[1] not in ("jwt", "sign"):
        raise SystemExit(usage)
    print(jwt(sys.argv[2]) if sys.argv[1] == "jwt" else signature(sys.argv[2].encode()))
