"""What a change costs since the outbox (issue 14): DELETE's latency and MongoDB writes, against a baseline.

    python -m bench.change_cost [--baseline REV] [--rounds 200] [--no-doc]

The baseline revision (default ``78900b0``, the release before invalidations went through the
outbox) is exported with ``git archive`` into a temp dir; one gunicorn replica of it and one of
this checkout run side by side on the same redis-server and SecantusDB (each its own database
and prefix). Each round creates a key on both, then DELETEs it on both in alternating order,
timing each DELETE from the client, a light lookup load running against both meanwhile. Then
each replica alone takes a burst of changes (``--clients`` threads creating and deleting keys
for ``--burst`` seconds), and MongoDB's write operations per change are read from
``serverStatus`` opcounters around the burst (insert + update + delete, the outbox's batched
removals included). Figures go to docs/BENCHMARKS.md, "Coherence (issue 14)".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from pymongo import MongoClient

from bench.common import REPLICA_SETTINGS, ROOT, Servers, bench_env, export
from bench.sections import publish
from devstack.ports import free_port
from devstack.web import gunicorn_argv, wait_serving

SECTION = "## Coherence (issue 14)"
WRITES = ("insert", "update", "delete")


class Replica:
    def __init__(self, servers: Servers, name: str, tree: Path, db: str) -> None:
        self.name, self.tree = name, tree
        self.env = {**bench_env(servers.redis, servers.mongo_port), "PYTHONPATH": str(tree)}
        self.env["MONGO_URI"] = f"mongodb://127.0.0.1:{servers.mongo_port}/{db}"
        self.env["CACHE_KEY_PREFIX"] = f"{db}:"
        self.db = db
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = gunicorn_argv("wsgi:app", port, *REPLICA_SETTINGS)
        proc = servers.group.start(name, argv, servers.workdir / f"{name}.log", env=self.env, cwd=tree)
        self.flask(["init-db"])
        wait_serving(proc, self.url + "/health", 60, name)
        self.token = json.loads(self.flask(["users", "create", "bench"]).splitlines()[-1])["token"]

    def flask(self, args: list[str]) -> str:
        argv = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
        out = subprocess.run(argv, env=self.env, cwd=self.tree, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{self.name}: flask {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out.stdout

    def create(self, n: int) -> str:
        body = {"device_id": f"d{n}", "device_name": "bench"}
        response = requests.post(self.url + "/api/v1/api-keys", json=body, headers=self.auth(), timeout=10)
        response.raise_for_status()
        return response.json()["key_id"]

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def writes(mongo: MongoClient) -> int:
    counters = mongo.admin.command("serverStatus")["opcounters"]
    return sum(int(counters.get(name, 0)) for name in WRITES)


def timed_delete(replica: Replica, key_id: str) -> float:
    started = time.perf_counter()
    response = requests.delete(f"{replica.url}/api/v1/api-keys/{key_id}", headers=replica.auth(), timeout=10)
    elapsed = time.perf_counter() - started
    assert response.status_code == 204, response.text
    return elapsed


def burst(replica: Replica, mongo: MongoClient, clients: int, seconds: float) -> float:
    """MongoDB writes per change (a create or a delete) while ``clients`` threads change keys."""
    changes, lock, deadline = [0], threading.Lock(), time.monotonic() + seconds

    def work(worker: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            key_id = replica.create(1_000_000 * (worker + 1) + n)
            timed_delete(replica, key_id)
            with lock:
                changes[0] += 2

    time.sleep(1.0)  # earlier rounds' removals land before the count starts
    before = writes(mongo)
    threads = [threading.Thread(target=work, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(1.0)  # and this burst's last removal inside it
    return (writes(mongo) - before) / changes[0]


def background_lookups(replicas: list[Replica], stop: threading.Event) -> None:
    session = requests.Session()
    while not stop.is_set():
        for replica in replicas:
            session.get(f"{replica.url}/api/v1/devices/d0/bench", timeout=5)
        time.sleep(0.005)


def run(rev: str, rounds: int, clients: int, seconds: float) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {"baseline": [], "outbox": []}
    figures: dict[str, dict[str, float]] = {}
    with Servers("change-cost-") as servers, tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        replicas = {
            "baseline": Replica(servers, "baseline", export(rev, Path(tmp)), "base"),
            "outbox": Replica(servers, "outbox", ROOT, "outbox"),
        }
        for replica in replicas.values():
            replica.create(0)  # the device the background lookups read
        mongo = MongoClient(f"mongodb://127.0.0.1:{servers.mongo_port}/")
        stop = threading.Event()
        load = threading.Thread(target=background_lookups, args=(list(replicas.values()), stop), daemon=True)
        load.start()
        try:
            for n in range(1, rounds + 1):
                order = ["baseline", "outbox"] if n % 2 else ["outbox", "baseline"]
                keys = {name: replicas[name].create(n) for name in order}
                for name in order:
                    samples[name].append(timed_delete(replicas[name], keys[name]) * 1000)
        finally:
            stop.set()
            load.join(5)
        for name, replica in replicas.items():
            figures[name] = {**summarise(samples[name]), "writes": burst(replica, mongo, clients, seconds)}
        mongo.close()
    return figures


def summarise(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50": statistics.median(ms), "p95": ms[int(len(ms) * 0.95) - 1]}


def report(figures: dict[str, dict[str, float]], rev: str, args: argparse.Namespace) -> str:
    base, new = figures["baseline"], figures["outbox"]
    lines = [
        SECTION,
        "",
        f"`python -m bench.change_cost --rounds {args.rounds} --clients {args.clients} --burst {args.burst:g}`: one",
        f"gthread replica of `{rev}` (before the outbox) and one of this checkout, side by side on one redis-server",
        "and SecantusDB. Latency: each round DELETEs a key on both in alternating order, one at a time, a light",
        f"lookup load on both. Writes: each replica alone, {args.clients} clients creating and deleting keys for",
        f"{args.burst:g} s; serverStatus opcounters (insert, update, delete) over the burst, per change. A change",
        "adds the outbox record's insert on its request path; the records' removal is one `delete_many` about",
        "once a second (a third of the takeover age) for every record applied since.",
        "",
        "| | baseline | outbox | ratio |",
        "|---|---|---|---|",
        f"| DELETE p50 (ms) | {base['p50']:.1f} | {new['p50']:.1f} | {new['p50'] / base['p50']:.2f}× |",
        f"| DELETE p95 (ms) | {base['p95']:.1f} | {new['p95']:.1f} | {new['p95'] / base['p95']:.2f}× |",
        f"| MongoDB writes per change | {base['writes']:.2f} | {new['writes']:.2f} "
        f"| +{new['writes'] - base['writes']:.2f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--baseline", default="78900b0", help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=200, help="DELETEs timed on each replica")
    parser.add_argument("--clients", type=int, default=8, help="threads changing keys in the burst")
    parser.add_argument("--burst", type=float, default=10.0, help="seconds of the burst on each replica")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    figures = run(args.baseline, args.rounds, args.clients, args.burst)
    publish(report(figures, args.baseline, args), not args.no_doc)


if __name__ == "__main__":
    main()
