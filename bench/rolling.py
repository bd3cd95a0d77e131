"""Rolling restart behind HAProxy (issue 14): every replica replaced under load, nothing failed or lost.

HAProxy (``devstack/haproxy.py``) in front of ``--replicas`` gunicorn replicas of ``wsgi:app``
(gthread), health-checking ``/health`` every 200 ms. Client threads send, each on a fresh
connection, pushes (``temp`` a value no other push has) and reads of the readings. Meanwhile
each replica in turn gets SIGTERM (it drains for ``SHUTDOWN_DRAIN_SECONDS``, then stops), is
waited for, and a new one is started on its port and waited for until HAProxy sees it up.
Afterwards every pushed value that was answered 201 is looked for in MongoDB.

    python -m bench.rolling              # writes "Rolling restart behind HAProxy (issue 14)" in docs/BENCHMARKS.md
    python -m bench.rolling --no-docs    # prints only

``tests/test_rolling_restart.py`` runs the same ``rolling_restart`` on the test's servers.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pymongo import MongoClient

from devstack.haproxy import HAProxy
from devstack.web import LiveReplica

SECTION = "## Rolling restart behind HAProxy (issue 14)"
DEVICE = ("roll-1", "rolling")


@dataclass
class Outcome:
    """What the clients saw, and what MongoDB holds afterwards."""

    requests: Counter = field(default_factory=Counter)  # "push"/"read" -> answered as expected
    failures: list[tuple[float, str, str]] = field(default_factory=list)  # (time, kind, what)
    pushed: list[float] = field(default_factory=list)  # values answered 201
    lost: list[float] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)  # seconds each replacement took
    seconds: float = 0.0


class Clients:
    """Closed-loop client threads on fresh connections: a push, then a read, and again."""

    def __init__(self, port: int, api_key: str, threads: int, outcome: Outcome) -> None:
        self.port, self.api_key, self.outcome = port, api_key, outcome
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.values = itertools.count(1)
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            headers = {"X-API-Key": self.api_key, "Content-Type": "application/json", "Connection": "close"}
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def run(self) -> None:
        device_id, name = DEVICE
        read_path = f"/api/v1/devices/{device_id}/{quote(name)}/readings/temp?resolution=1&size=5"
        while not self.halt.is_set():
            with self.lock:
                value = float(next(self.values))
            body = {"device_id": device_id, "device_name": name, "readings": {"temp": value}}
            self.one("push", 201, lambda body=body: self.call("POST", "/api/v1/readings", body), value)
            self.one("read", 200, lambda: self.call("GET", read_path), None)

    def one(self, kind: str, expected: int, send: Callable[[], tuple[int, bytes]], value: float | None) -> None:
        try:
            status, body = send()
            what = "" if status == expected else f"{status} {body[:200]!r}"
        except OSError as exc:
            what = repr(exc)
        with self.lock:
            if what:
                self.outcome.failures.append((time.monotonic() - self.started, kind, what))
                return
            self.outcome.requests[kind] += 1
            if value is not None:
                self.outcome.pushed.append(value)

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(30)


def restart(replica: LiveReplica, haproxy: HAProxy, name: str) -> float:
    """SIGTERM one replica, wait for it to exit, start its successor on the same port, until HAProxy sees it up."""
    began = time.monotonic()
    replica.stop()
    replica.start(timeout=60)
    haproxy.wait_state(name, "UP", seconds=30)
    return time.monotonic() - began


def rolling_restart(
    settings: Mapping[str, Any],
    workdir: Path,
    api_key: str,
    *,
    replicas: int = 4,
    workers: int = 2,
    clients: int = 4,
    drain: float = 1.0,
    settle: float = 1.0,
    fall: int = 2,
    log: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """The run described at the top, on servers of the caller's (``settings``: MONGO_URI and the Redis)."""
    outcome = Outcome()
    env = {**settings, "SHUTDOWN_DRAIN_SECONDS": drain}
    fleet = [LiveReplica(env, workdir / f"replica-{n}.log", workers=workers, threads=4) for n in range(replicas)]
    # ``fall`` failed checks 200 ms apart take a replica out: within the drain, and a MongoDB
    # stall shorter than that (one shared SecantusDB under a loaded test suite) takes none out.
    haproxy = HAProxy([replica.port for replica in fleet], workdir / "haproxy", fall=fall)
    try:
        starting = [threading.Thread(target=replica.start, kwargs={"timeout": 60}) for replica in fleet]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        haproxy.start()
        for n in range(replicas):
            haproxy.wait_state(f"r{n}", "UP")
        load = Clients(haproxy.port, api_key, clients, outcome)
        try:
            time.sleep(settle)
            for n, replica in enumerate(fleet):
                outcome.restarts.append(restart(replica, haproxy, f"r{n}"))
                log(f"replica {n} replaced in {outcome.restarts[-1]:.1f}s")
            time.sleep(settle)
        finally:
            load.stop()
            outcome.seconds = time.monotonic() - load.started
            log(f"load stopped after {outcome.seconds:.1f}s")
    finally:
        haproxy.stop()
        for replica in fleet:
            replica.stop()
    outcome.lost = sorted(set(outcome.pushed) - stored_values(str(settings["MONGO_URI"])))
    return outcome


def stored_values(mongo_uri: str) -> set[float]:
    client = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        rows = client.get_default_database()["readings"].find({"meta.device_id": DEVICE[0]}, {"temp": 1})
        return {row["temp"] for row in rows if "temp" in row}
    finally:
        client.close()


def seed_key(settings: Mapping[str, Any]) -> str:
    """An owner and a public device key for DEVICE, made through the service's own CLI and API."""
    from app import create_app

    app = create_app(dict(settings))
    try:
        out = app.test_cli_runner().invoke(args=["users", "create", "roller"]).output
        token = json.loads(out.strip().splitlines()[-1])["token"]
        body = {"device_id": DEVICE[0], "device_name": DEVICE[1]}
        response = app.test_client().post("/api/v1/api-keys", json=body, headers={"Authorization": f"Bearer {token}"})
        return response.get_json()["api_key"]
    finally:
        app.extensions["shared_cache"].stop()
        app.extensions["mongo"].close()


def report(outcome: Outcome, args: argparse.Namespace) -> str:
    failed = Counter(what.split("(")[0] for _, _, what in outcome.failures)
    rows = [
        ("requests answered as expected", f"{sum(outcome.requests.values())}"
         f" ({outcome.requests['push']} pushes, {outcome.requests['read']} reads)"),
        ("failed requests", f"{len(outcome.failures)}" + (f" ({dict(failed)})" if failed else "")),
        ("pushes answered 201 but missing from MongoDB", str(len(outcome.lost))),
        ("replicas replaced", f"{len(outcome.restarts)}, {min(outcome.restarts):.1f}-{max(outcome.restarts):.1f} s each"
         " (SIGTERM to successor seen up by HAProxy)"),
        ("load", f"{args.clients} client threads, {outcome.seconds:.1f} s,"
         f" {sum(outcome.requests.values()) / outcome.seconds:.0f} requests/s"),
    ]  # fmt: skip
    lines = [
        SECTION,
        "",
        f"Command: `python -m bench.rolling --replicas {args.replicas} --workers {args.workers}"
        f" --clients {args.clients} --drain {args.drain:g}`. HAProxy 2.6 (Debian) in front of the"
        f" replicas (gunicorn gthread, {args.workers} workers × 4 threads each,"
        f" `SHUTDOWN_DRAIN_SECONDS={args.drain:g}`), checking `GET /health` every 200 ms"
        " (`fall 2 rise 1`, `retries 3`, `option redispatch`). Each client thread sends, on a fresh"
        " connection each, a push with a value no other push has and a read of the device's"
        " readings. Each replica in turn gets SIGTERM, drains (readiness 503 while it still serves),"
        " stops, and a new one is started on its port; afterwards every value answered 201 is"
        " looked for in MongoDB.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines)


def main() -> int:
    from bench.common import Servers, bench_env
    from bench.sections import publish

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per replica")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--drain", type=float, default=1.0, help="SHUTDOWN_DRAIN_SECONDS of the replicas")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    with Servers("bench-rolling-") as servers:
        env = bench_env(servers.redis, servers.mongo_port)
        settings = {name: env[name] for name in ("MONGO_URI", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_KEY_PREFIX")}
        settings["LOG_LEVEL"] = "WARNING"
        key = seed_key(settings)
        workdir = Path(tempfile.mkdtemp(prefix="bench-rolling-", dir=servers.workdir))
        outcome = rolling_restart(
            settings,
            workdir,
            key,
            replicas=args.replicas,
            workers=args.workers,
            clients=args.clients,
            drain=args.drain,
            log=print,
        )
    publish(report(outcome, args), write=not args.no_docs)
    return 1 if outcome.failures or outcome.lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
