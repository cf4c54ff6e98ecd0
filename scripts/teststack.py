"""A gateway and a sync-worker for a test driver: built binaries, their own
namespace, database and ports, stopped and cleaned up on exit."""
import contextlib, os, subprocess, sys, time, uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsclient import ADMIN, call, rfc3339  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def running(bin_dir, tag, port, metrics_port):
    """Yields (base URL, run id); logs under target/<tag>/."""
    run = uuid.uuid4().hex[:8]
    ns, db = f"{tag}{run}", f"flashsale_{tag}_{run}"
    out = os.path.join(ROOT, "target", tag)
    os.makedirs(out, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, FLASHSALE__NAMESPACE=ns, FLASHSALE__MYSQL__URL=f"mysql://root@127.0.0.1:3306/{db}",
               FLASHSALE__GATEWAY__LISTEN=f"127.0.0.1:{port}",
               FLASHSALE__GATEWAY__METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
               FLASHSALE__WORKER__METRICS_LISTEN=f"127.0.0.1:{metrics_port + 1}",
               RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    procs = [subprocess.Popen([os.path.join(bin_dir, name)], env=env,
                              stdout=open(os.path.join(out, f"{name}.log"), "w"), stderr=subprocess.STDOUT)
             for name in ("gateway", "sync-worker")]
    try:
        deadline = time.time() + 60
        while True:
            try:
                if call("GET", f"{base}/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"the gateway never became ready; see {out}")
            time.sleep(0.3)
        yield base, run
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS {db}"], check=False)
        delete_queues(ns)
        keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{ns}:*"], capture_output=True,
                              text=True).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "DEL", *keys[i:i + 500]], capture_output=True)


def delete_queues(ns):
    """Deletes the RabbitMQ queues of namespace `ns` (best effort: needs rabbitmqctl)."""
    try:
        names = subprocess.run(["rabbitmqctl", "list_queues", "-q", "name"], capture_output=True, text=True,
                               timeout=30).stdout.split()
        for name in names:
            if name.startswith(f"{ns}."):
                subprocess.run(["rabbitmqctl", "delete_queue", name], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


def launch(base, campaign_id, items, limit=2):
    status, view = call("POST", f"{base}/admin/v1/campaigns", {
        "campaign_id": campaign_id, "name": f"Test sale {campaign_id}", "starts_at": rfc3339(-1),
        "ends_at": rfc3339(3600), "per_user_limit": limit, "payment_window_secs": 900, "items": items}, ADMIN)
    if status != 201:
        raise SystemExit(f"launch {campaign_id}: {status} {view}")
    return view
