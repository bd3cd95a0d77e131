"""Readings query cache (issue 16 §1): dashboard queries cached vs ``QUERY_CACHE_ENABLED=false``.

One run, same settings: a device whose chain (two ids, the second replacing the first half-way)
holds 7 days of ``temp`` readings a minute apart, and a device of one id with the same readings;
two gunicorn masters (``-w 2 -k gevent``) of ``wsgi:app`` on the same redis-server and SecantusDB,
one with the query cache, one without.
Measured with wrk: the dashboard's default query (last 24 h, 30-minute buckets, ``avg``), 7 days
at 60-minute buckets, and the warm device lookup route of the same device; then the Redis memory
one device, one measurement, one resolution takes per day of buckets, and one device's push log;
last, what a push costs when a process may keep a dashboard's answer over its device (a fence).

    python -m bench.query_bench          # about 3 minutes; writes its section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote
from urllib.request import Request, urlopen

import redis

from bench.common import GUNICORN_SETTINGS, PREFIX, Servers, bench_env, cpu_model, versions
from bench.load import CpuMeter, LoadGen, find_loadgen, wait_for_quiet
from bench.sections import publish
from devstack.processes import signals_exit
from devstack.web import start_gunicorn

NAME = "Bench Room"
CHAIN = ("bench-a", "bench-b")
SOLO, SOLO_NAME = "bench-solo", "Bench Solo"  # a chain of one id (another name), the same readings
QUIET, QUIET_NAME = "bench-quiet", "Bench Quiet"  # pushed to, never read: no answer is kept over it
DAYS = 7
SECTION = "## Readings query cache (issue 16)"


def seed(env: dict) -> dict[str, str]:
    """The chain and its week of readings, written by the service's own code (in process); the
    API keys of the 1-id device and of a device nobody reads, by device id."""
    from app import create_app
    from app.db import READINGS
    from app.extensions import mongo
    from app.keys.service import create_key
    from app.readings.cache import drop_members
    from app.users.service import add_user

    app = create_app(
        {
            "MONGO_URI": env["MONGO_URI"],
            "REDIS_URL": env["REDIS_URL"],
            "CACHE_KEY_PREFIX": env["CACHE_KEY_PREFIX"],
            "LOG_LEVEL": "WARNING",
            "MONGO_TIMEOUT_MS": 30_000,  # a bulk insert into SecantusDB
        }
    )
    with app.app_context():
        user, _ = add_user("bench", admin=False)
        keys = {}
        for device_id, name in ((CHAIN[0], NAME), (CHAIN[1], NAME), (SOLO, SOLO_NAME), (QUIET, QUIET_NAME)):
            fields = {"device_id": device_id, "device_name": name, "description": "", "private": False}
            keys[device_id] = create_key(user, fields)["api_key"]
        now = datetime.now(UTC).replace(microsecond=0)
        minutes = DAYS * 24 * 60
        docs = []
        for step in range(minutes):
            device_id = CHAIN[0] if step >= minutes // 2 else CHAIN[1]  # the older half from the first id
            meta = {"device_id": device_id, "device_name": NAME, "owner_id": user.user_id}
            at = now - timedelta(minutes=step)
            docs.append({"timestamp": at, "meta": meta, "temp": 20 + (step % 97) / 10})
            docs.append(
                {
                    "timestamp": at,
                    "meta": {**meta, "device_id": SOLO, "device_name": SOLO_NAME},
                    "temp": 20 + (step % 97) / 10,
                }
            )
        for begin in range(0, len(docs), 1000):
            mongo.db[READINGS].insert_many(docs[begin : begin + 1000], ordered=False)
        drop_members({(user.user_id, device_id, NAME) for device_id in CHAIN} | {(user.user_id, SOLO, SOLO_NAME)})
        app.extensions["shared_cache"].stop()
    return {device_id: key for device_id, key in keys.items() if device_id in (SOLO, QUIET)}


def push_latency(base: str, keys: dict[str, str], dash: str, rounds: int) -> dict[str, float]:
    """Milliseconds a push takes (p50, p99), one at a time: to the 1-id device right after a read of
    its dashboard (so a process may keep an answer over it: the push waits for the near caches'
    fence), and to a device nobody reads (no fence)."""
    times: dict[str, list[float]] = {SOLO: [], QUIET: []}
    for _ in range(rounds):
        urlopen(base + dash, timeout=10).read()  # sets the memo key
        for device_id, name in ((SOLO, SOLO_NAME), (QUIET, QUIET_NAME)):
            body = json.dumps({"device_id": device_id, "device_name": name, "readings": {"temp": 21.5}}).encode()
            request = Request(
                base + "/api/v1/readings", body, {"Content-Type": "application/json", "X-API-Key": keys[device_id]}
            )
            started = time.perf_counter()
            urlopen(request, timeout=10).read()
            times[device_id].append((time.perf_counter() - started) * 1000)
    out = {}
    for device_id, label in ((SOLO, "kept"), (QUIET, "quiet")):
        ordered = sorted(times[device_id])
        out[f"{label}_p50"] = statistics.median(ordered)
        out[f"{label}_p99"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return out


def measure(load: LoadGen, url: str, duration: float, rounds: int, connections: int) -> dict:
    load.connections = connections
    load.run(url, 2)  # warm-up: fills the chunks, the lookup
    runs = [load.run(url, duration) for _ in range(rounds)]
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50": statistics.median(r["p50_us"] for r in runs) / 1000,
        "non2xx": sum(r["non2xx"] for r in runs),
        "others": max(r["others"] for r in runs),
        "connections": connections,
    }


def memory_per_day(client: redis.Redis) -> dict[int, float]:
    """Bytes (Redis ``MEMORY USAGE``, key and value) per day of buckets, by resolution, for one chain member."""
    out: dict[int, float] = {}
    for resolution in (30, 60):
        keys = list(client.scan_iter(match=f"{PREFIX}query:*|{SOLO}|{SOLO_NAME}}}:temp:n:{resolution}:*", count=1000))
        if not keys:
            continue
        used = sum(client.memory_usage(key) or 0 for key in keys)
        buckets = 64 * len(keys)
        out[resolution] = used / buckets * (1440 / resolution)
    return out


def log_memory(client: redis.Redis) -> tuple[int, int]:
    """Bytes (``MEMORY USAGE`` of the sorted set and its hash) and readings of the 1-id device's push log."""
    keys = list(client.scan_iter(match=f"{PREFIX}query:*|{SOLO}|{SOLO_NAME}}}:log*", count=1000))
    log = next((k for k in keys if k.endswith(b":log")), None)
    return sum(client.memory_usage(k) or 0 for k in keys), client.zcard(log) if log else 0


def report(
    results: dict,
    memory: dict[int, float],
    pushed: tuple[int, int],
    pushes: dict[str, float],
    load: LoadGen,
    args: argparse.Namespace,
) -> str:
    def ratio(a: str, b: str) -> float:
        return results[a]["rps"] / results[b]["rps"] if results[b]["rps"] else float("nan")

    lines = [
        SECTION,
        "",
        f"`python -m bench.query_bench` ({datetime.now(UTC):%Y-%m-%d}; {cpu_model()}, 2 cores shared with other work).",
        f"A chain of two ids holding {DAYS} days of `temp` readings a minute apart; gunicorn `-w 2 -k gevent` of",
        "`wsgi:app` (`MONGO_TIMEOUT_MS=10000`) on SecantusDB and redis-server; "
        + load.describe().replace(f"-c{load.connections}", "-c<n>")
        + f", {args.rounds} rounds of {args.duration:g} s per variant (medians).",
        "",
        "| variant | connections | req/s | p50 ms | non-2xx | other processes' CPU |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "dash": "chain of 2 ids: dashboard query (24 h, 30-min buckets, avg), cached",
        "dash_off": "the same, `QUERY_CACHE_ENABLED=false`",
        "week": "chain of 2 ids: 7 days at 60-min buckets, cached",
        "week_off": "the same, `QUERY_CACHE_ENABLED=false`",
        "solo_dash": "chain of 1 id: dashboard query, cached",
        "solo_dash_off": "the same, `QUERY_CACHE_ENABLED=false`",
        "solo_week": "chain of 1 id: 7 days at 60-min buckets, cached",
        "solo_week_off": "the same, `QUERY_CACHE_ENABLED=false`",
        "lookup": "warm device lookup route (the 1-id device)",
    }
    for name, label in labels.items():
        r = results[name]
        row = (label, r["connections"], f"{r['rps']:.1f}", f"{r['p50']:.1f}", r["non2xx"], f"{r['others']:.0%}")
        lines.append("| " + " | ".join(map(str, row)) + " |")
    mem = ", ".join(f"{int(b):,} B at {res}-minute buckets" for res, b in memory.items()) or "n/a"
    lines += [
        "",
        "| figure | goal | measured |",
        "|---|---|---|",
        f"| dashboard query cached vs off | ≥ 20× req/s | 2 ids {ratio('dash', 'dash_off'):.1f}×,"
        f" 1 id {ratio('solo_dash', 'solo_dash_off'):.1f}× |",
        f"| 7 days at 60-min buckets cached vs off | ≥ 20× req/s | 2 ids {ratio('week', 'week_off'):.1f}×,"
        f" 1 id {ratio('solo_week', 'solo_week_off'):.1f}× |",
        f"| cached dashboard query vs warm lookup route | ≥ 0.5× req/s | 2 ids {ratio('dash', 'lookup'):.2f}×,"
        f" 1 id {ratio('solo_dash', 'lookup'):.2f}× |",
        f"| Redis memory, one device, one measurement, one resolution, one day | stated | {mem} |",
        f"| Redis memory, one device's push log (every measurement, the last 6 hours) | stated | {pushed[0]:,} B"
        f" for {pushed[1]:,} readings ({pushed[0] / max(pushed[1], 1):.0f} B each) |",
        f"| a push, one at a time ({args.pushes} each): to a device whose dashboard a process may keep (it waits for"
        f" the near caches' fence) vs to one nobody reads | stated | p50 {pushes['kept_p50']:.2f} vs"
        f" {pushes['quiet_p50']:.2f} ms, p99 {pushes['kept_p99']:.2f} vs {pushes['quiet_p99']:.2f} ms |",
        "",
        "Few connections: every uncached readings request waits on SecantusDB (CPU-bound, one process), and more",
        "connections only queue past wrk's 2 s timeout for the uncached variants (0 req/s). A warm cached query",
        "makes no MongoDB query: one EVAL per chain member returns its chunks of ended buckets, the readings of",
        "the range's partial first bucket (cached whole, as partials) and, from the push log, the readings of the",
        "buckets not yet final (`app/readings/cache.py`, `app/readings/log.py`). A query that ends now and found",
        "all of it there is then kept whole in the near cache (`app/readings/memo.py`), and the lane before Flask",
        "that answers the warm lookup (`app/devices/hot.py`) serves it with each request's start and end, until a",
        "push to a member, a drop, the clock (a reading leaving or entering the range) or 10 s ends it: a warm",
        "dashboard query then costs about what the warm lookup costs.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--connections", type=int, default=2, help="for the cached variants and the lookup")
    parser.add_argument("--uncached-connections", type=int, default=2)
    parser.add_argument("--quiet-wait", type=float, default=20)
    parser.add_argument("--pushes", type=int, default=200, help="pushes timed per device")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (the temp dir is printed)")
    args = parser.parse_args()
    with signals_exit(), Servers("query-bench-", keep_logs=args.keep_logs) as servers:
        # SecantusDB aggregates a week of readings in seconds on a busy machine: no 503 for the uncached runs.
        env = {**bench_env(servers.redis, servers.mongo_port), "MONGO_TIMEOUT_MS": "10000"}
        keys = seed(env)
        group, workdir = servers.group, servers.workdir
        _, cached = start_gunicorn(group, "cached", GUNICORN_SETTINGS, env, workdir / "cached.log", health="/health")
        off_env = {**env, "QUERY_CACHE_ENABLED": "false"}
        _, off = start_gunicorn(group, "off", GUNICORN_SETTINGS, off_env, workdir / "off.log", health="/health")
        meter = CpuMeter(group, servers.redis)
        load = LoadGen(find_loadgen("auto"), 2, args.connections, workdir, meter)
        week_start = (datetime.now(UTC) - timedelta(days=DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")
        plan = []
        for chain, device_id, name in (("", CHAIN[1], NAME), ("solo_", SOLO, SOLO_NAME)):
            path = f"/api/v1/devices/{quote(device_id)}/{quote(name)}"
            dash, week = f"{path}/readings/temp?resolution=30", f"{path}/readings/temp?resolution=60&start={week_start}"
            for base in (cached, off):
                urlopen(base + dash, timeout=60).read()  # raises on an error status
            plan += [
                (chain + "dash", cached + dash, args.connections),
                (chain + "dash_off", off + dash, args.uncached_connections),
                (chain + "week", cached + week, args.connections),
                (chain + "week_off", off + week, args.uncached_connections),
            ]
        plan.append(("lookup", cached + path, args.connections))
        wait_for_quiet(meter, args.quiet_wait)
        results = {}
        for name, url, connections in plan:
            started = time.monotonic()
            results[name] = measure(load, url, args.duration, args.rounds, connections)
            print(f"{name}: {results[name]['rps']:.1f} req/s ({time.monotonic() - started:.0f} s)", flush=True)
        client = redis.Redis.from_url(env["REDIS_URL"])
        memory, pushed = memory_per_day(client), log_memory(client)
        solo_dash = f"/api/v1/devices/{quote(SOLO)}/{quote(SOLO_NAME)}/readings/temp?resolution=30"
        pushes = push_latency(cached, keys, solo_dash, args.pushes)
    publish(report(results, memory, pushed, pushes, load, args), write=not args.no_docs)


if __name__ == "__main__":
    main()
