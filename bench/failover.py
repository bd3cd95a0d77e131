"""What a Redis failover costs the clients (issue 8); one command, about 3 minutes.

    . .venv/bin/activate && python -m bench.failover      # from the repository root

For each topology with replicas it starts real servers on free loopback ports (a Sentinel set:
primary, replica, three sentinels; a Cluster: three primaries, three replicas), SecantusDB,
and two gunicorn replicas of ``wsgi:app`` (2 gthread workers x 4 threads each, the service's
own gunicorn.conf.py). Eight client threads send lookups (4 in 5) and pushes (1 in 5) of 40
devices through both replicas, on keep-alive connections, as fast as they are answered. After
a warm-up the failover is forced while the load runs:

  sentinel   ``SENTINEL FAILOVER``: the replica is promoted, the old master demoted
  cluster    SIGKILL of the primary holding the first device's entry; the cluster promotes
             its replica after ``cluster-node-timeout`` (1 s here)

Measured from outside: every response's status and body (5xx, wrong answers), and the service's
own Prometheus counters of both replicas, scraped every 0.2 s (MongoDB loads, hits, breaker).
"Hits resume" is the time from the promotion to the last scrape interval with a MongoDB load;
before the failover every lookup is a hit. The counters' check compares the lookups the clients
made with the hits + misses ``/cache/stats`` sums over every process.

It prints a Markdown table and writes it into docs/BENCHMARKS.md under "Failover (issue 8)".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlsplit

from bench.common import start_replica
from bench.sections import publish
from devstack.cluster import ClusterSet
from devstack.mongo import start_secantusd
from devstack.processes import Group, service_env, signals_exit
from devstack.redis_server import RedisServer
from devstack.sentinel import SentinelSet
from devstack.web import http_get

SECTION = "## Failover (issue 8)"
DEVICES = 40
CLIENT_THREADS = 8
SAMPLE = re.compile(r"^(opensensor_cache_(?:gets|loads|errors)_total)\{([^}]*)\} ([0-9.e+-]+)$", re.M)


def seed(env: dict) -> tuple[str, dict[str, str]]:
    """An admin token, and DEVICES public devices (one chain each) with their keys."""
    from app import create_app

    app = create_app({k: v for k, v in env.items() if k.isupper()})
    runner = app.test_cli_runner()
    admin = json.loads(runner.invoke(args=["users", "create", "root", "--admin"]).output.strip().splitlines()[-1])
    owner = json.loads(runner.invoke(args=["users", "create", "owner"]).output.strip().splitlines()[-1])
    client, keys = app.test_client(), {}
    for i in range(DEVICES):
        body = {"device_id": f"f{i:03d}", "device_name": f"room {i}"}
        response = client.post("/api/v1/api-keys", json=body, headers={"Authorization": f"Bearer {owner['token']}"})
        keys[body["device_id"]] = response.get_json()["api_key"]
    app.extensions["shared_cache"].stop()
    return admin["token"], keys


class Clients:
    """CLIENT_THREADS closed-loop clients; every response kept as (time, kind, status, correct)."""

    def __init__(self, bases: list[str], keys: dict[str, str]) -> None:
        self.bases, self.keys = bases, keys
        self.results: list[tuple[float, str, int, bool]] = []
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(CLIENT_THREADS)]
        for thread in self.threads:
            thread.start()

    def run(self, n: int) -> None:
        rng = random.Random(n)
        address = urlsplit(self.bases[n % len(self.bases)])
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=5)
        ids = sorted(self.keys)
        while not self.halt.is_set():
            device_id = rng.choice(ids)
            name = f"room {int(device_id[1:])}"
            kind = "push" if rng.random() < 0.2 else "lookup"
            try:
                if kind == "push":
                    body = json.dumps({"device_id": device_id, "device_name": name, "readings": {"temp": 20.5}})
                    headers = {"X-API-Key": self.keys[device_id], "Content-Type": "application/json"}
                    conn.request("POST", "/api/v1/readings", body, headers)
                else:
                    conn.request("GET", f"/api/v1/devices/{device_id}/{quote(name)}")
                response = conn.getresponse()
                payload = response.read()
                status = response.status
                correct = kind == "push" or (status == 200 and json.loads(payload)["chain"] == [device_id])
            except (OSError, http.client.HTTPException):
                conn.close()
                status, correct = 599, False  # no answer within 5 s: counted as an error
            self.results.append((time.monotonic(), kind, status, correct))

    def stop(self) -> list[tuple[float, str, int, bool]]:
        self.halt.set()
        for thread in self.threads:
            thread.join(10)
        return self.results


class Scraper:
    """The replicas' own counters (summed over both), every 0.2 s: (time, {name: value})."""

    def __init__(self, bases: list[str]) -> None:
        self.bases = bases
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def scrape(self) -> dict[str, float]:
        totals: Counter[str] = Counter()
        for base in self.bases:
            status, body = http_get(base + "/metrics", timeout=2)
            for name, labels, value in SAMPLE.findall(body.decode()):
                key = name.removeprefix("opensensor_cache_").removesuffix("_total")
                if 'result="hit"' in labels:
                    key = "hits"
                elif 'result="miss"' in labels:
                    key = "misses"
                totals[key] += float(value)
        return dict(totals)

    def run(self) -> None:
        while not self.halt.wait(0.2):
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), self.scrape()))

    def stop(self) -> list[tuple[float, dict[str, float]]]:
        self.halt.set()
        self.thread.join(5)
        return self.samples


def counters(base: str, token: str) -> dict:
    """The lookups counted over every process (``/cache/stats``), once Redis answers the call."""
    address = urlsplit(base)
    for _ in range(50):
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        conn.request("GET", "/cache/stats", headers={"Authorization": f"Bearer {token}"})
        lookups = json.loads(conn.getresponse().read())["lookups"]["device"]
        if lookups["scope"] == "all replicas":
            return lookups
        time.sleep(0.2)
    raise RuntimeError(f"/cache/stats never reached Redis: {lookups}")


def scenario(name: str, deployment, broker: RedisServer, args, workdir: Path) -> dict:
    group = Group()
    try:
        _, mongo_port = start_secantusd(group, workdir / "mongo", workdir / "secantusd.log")
        settings = {
            "MONGO_URI": f"mongodb://127.0.0.1:{mongo_port}/failover",
            **deployment.settings(broker=broker.url(1)),
            "CACHE_KEY_PREFIX": "failover:",
            "DEVICE_CACHE_TTL": 3600,
            "LOG_LEVEL": "WARNING",
        }
        env = service_env(settings)
        token, keys = seed(env)
        bases = [start_replica(group, env, workdir, f"{name}-web-{n}") for n in range(2)]
        entry = "failover:device:f000|room 0"

        warm = Clients(bases, keys)
        time.sleep(args.warmup)
        warm.stop()
        time.sleep(1.5)  # counters flushed
        before = counters(bases[0], token)

        scraper = Scraper(bases)
        clients = Clients(bases, keys)
        time.sleep(args.before)
        started = time.monotonic()
        promoted = deployment.fail_primary(entry)
        time.sleep(args.after)
        results = clients.stop()
        samples = scraper.stop()
        time.sleep(2.5)  # every process has flushed its counters
        after = counters(bases[0], token)
        with contextlib.suppress(Exception):
            deployment.settle()
        return measure(name, results, samples, started, promoted, before, after)
    finally:
        group.stop_all()


def measure(name, results, samples, started, promoted, before, after) -> dict:
    window = [r for r in results if r[0] >= started]
    statuses = Counter(status for _, _, status, _ in window)
    wrong = sum(1 for _, kind, status, correct in window if status < 500 and not correct)
    # loads per scrape interval, after the failover began
    loads_at = [(t, s.get("loads", 0.0)) for t, s in samples]
    steps = [(t, b - a) for (_, a), (t, b) in zip(loads_at, loads_at[1:], strict=False) if t >= started]
    load_times = [t for t, added in steps if added > 0]
    loads = sum(added for _, added in steps)
    lookups_made = len(results)
    counted = (after["hits"] - before["hits"]) + (after["misses"] - before["misses"])
    return {
        "name": name,
        "requests": len(window),
        "rps": len(window) / (window[-1][0] - started) if window else 0,
        "5xx": sum(n for status, n in statuses.items() if status >= 500),
        "wrong": wrong,
        "promotion_s": promoted - started,
        "resume_s": (max(load_times) - promoted) if load_times else None,
        "loads": loads,
        "lookups_made": lookups_made,
        "lookups_counted": counted,
    }


def report(rows: list[dict], args) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"Measured {stamp} with `python -m bench.failover` on 2 cores shared by every server, both replicas and",
        f"the clients. Load: {CLIENT_THREADS} closed-loop client threads over two gunicorn replicas (2 gthread workers",
        f"x 4 threads), lookups 4 in 5 and pushes 1 in 5 over {DEVICES} warm devices; the failover is forced",
        f"{args.before:.0f} s into the measured run, which goes on {args.after:.0f} s after the promotion.",
        "Promotion: when the",
        "sentinels name the new master, or when the Cluster's replica reports itself master (node timeout 1 s).",
        "'Hits resume' is the time from the promotion to the end of the last 0.2 s scrape interval in which either",
        "replica made a MongoDB load (negative: the last load came before the promotion was announced); 'counted'",
        "is hits + misses in `/cache/stats` (all processes) over the whole run, against the lookups the clients made.",
        "",
        "| topology | failover | requests | req/s | 5xx | wrong answers | promotion after (s) "
        "| hits resume (s after promotion) | MongoDB loads during failover | lookups made / counted |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"sentinel": "`SENTINEL FAILOVER`", "cluster": "SIGKILL of a primary"}
    for row in rows:
        resume = "no load after the failover began" if row["resume_s"] is None else f"{row['resume_s']:.1f}"
        lines.append(
            f"| {row['name']} | {labels[row['name']]} | {row['requests']:,} | {row['rps']:,.0f} | {row['5xx']} "
            f"| {row['wrong']} | {row['promotion_s']:.1f} | {resume} | {row['loads']:.0f} "
            f"| {row['lookups_made']:,} / {row['lookups_counted']:,} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--before", type=float, default=3, help="seconds of load before the failover")
    parser.add_argument("--after", type=float, default=15, help="seconds of load after the promotion")
    parser.add_argument("--only", choices=("sentinel", "cluster"))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    rows = []
    with signals_exit():
        broker = RedisServer()  # the Cluster's Celery broker (unused here, but required)
        broker.start()
        try:
            for name, make in (("sentinel", SentinelSet), ("cluster", ClusterSet)):
                if args.only and name != args.only:
                    continue
                workdir = Path(tempfile.mkdtemp(prefix=f"failover-{name}-"))
                deployment = make()
                deployment.start()
                try:
                    rows.append(scenario(name, deployment, broker, args, workdir))
                finally:
                    deployment.cleanup()
                    shutil.rmtree(workdir, ignore_errors=True)
        finally:
            broker.cleanup()
    publish(report(rows, args), write=not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
