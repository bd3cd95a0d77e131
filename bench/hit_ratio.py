"""Hit ratio with and without the warmers (issue 4): Zipf lookups over 10,000 devices.

    python -m bench.hit_ratio            # about 12 minutes; --help for the knobs

Real parts throughout: its own redis-server and SecantusDB (MongoDB wire server) as
processes, the service's own ``lookup_device`` (the function every route calls) driven at
a fixed rate from this process, and, for the "warmers" run, a real Celery worker and beat
as processes on the same Redis. Time is accelerated honestly: every interval is the
production default divided by ``--speedup`` (TTL 300 s -> 30 s, warm-up every 240 s ->
24 s, hotness half-life 3600 s -> 360 s), and the request rate is per accelerated second.
Figures are the service's own counters (``/cache/stats`` reads the same hash), taken
after ``--skip`` TTLs of warm-up (steady state) and over the whole run.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Servers
from bench.sections import write_section
from devstack.celery import celery_argv
from devstack.processes import Group

SECTION = "## Hit ratio with warmers (issues 4 and 10)"


def zipf_sampler(n: int, s: float, seed: int):
    weights = [1 / (k**s) for k in range(1, n + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    rng = random.Random(seed)

    def sample() -> int:
        return bisect.bisect_left(cumulative, rng.random() * total)

    return sample


def seed_devices(app, count: int) -> list[tuple[str, str]]:
    """Register ``count`` devices directly in the keys collection (one insert_many)."""
    from pymongo.errors import BulkWriteError

    from app.auth import hash_secret
    from app.db import KEYS
    from app.extensions import mongo

    pairs = [(f"dev-{i:05d}", f"sensor {i:05d}") for i in range(count)]
    with app.app_context():
        docs = [
            {
                "key_id": f"{i:016x}",
                "owner_id": "bench-owner",
                "device_id": device_id,
                "device_name": device_name,
                "description": "",
                "private": False,
                "created_at": datetime.now(UTC),
                "key_hash": hash_secret(f"k{i}"),
                "masked": "osk_…",
            }
            for i, (device_id, device_name) in enumerate(pairs)
        ]
        for start in range(0, len(docs), 200):  # small batches: each well inside the socket timeout
            try:
                mongo.db[KEYS].insert_many(docs[start : start + 200], ordered=False)
            except BulkWriteError as exc:  # a retried batch (its reply timed out on a busy machine) was applied
                if any(error["code"] != 11000 for error in exc.details["writeErrors"]):
                    raise
    return pairs


def counters(app) -> dict[str, int]:
    dc = app.extensions["shared_cache"]
    dc.flush()
    values = dc.counters()
    return {name: values[name] for name in ("hits", "misses", "loads", "errors")}


def reset(app, broker_url: str) -> None:
    import redis

    dc = app.extensions["shared_cache"]
    dc.flush()
    client = dc.admin_client()
    for pattern in (dc.prefix + "*", dc.keys.meta + "*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.unlink(key)
    broker = redis.Redis.from_url(broker_url)
    for key in broker.scan_iter(count=1000):  # the bench's own broker database: results of the last run
        broker.unlink(key)
    broker.close()


def warmed_devices(broker_url: str) -> tuple[int, int]:
    """Sum the warm task results kept in the result backend: (runs, devices warmed)."""
    import redis

    broker = redis.Redis.from_url(broker_url)
    runs = warmed = 0
    for key in broker.scan_iter(match="celery-task-meta-*", count=1000):
        meta = json.loads(broker.get(key))
        result = meta.get("result")
        if isinstance(result, dict) and "warmed" in result:
            runs += 1
            warmed += result["warmed"]
    broker.close()
    return runs, warmed


def drive(app, pairs, sample, rate: float, seconds: float, threads: int, marks: list[float], gaps: list[float]):
    """Issue lookups at ``rate`` per second; snapshot the counters at each mark (seconds).

    Also profiles the lookups after the first mark: how many came more than each of ``gaps``
    seconds after the same device's previous lookup (or were its first).
    """
    from app.devices.lookup import lookup_device

    start = time.monotonic()
    done = [0] * threads
    stop_at = start + seconds
    last_seen = [float("-inf")] * len(pairs)
    after_gap = [[0] * len(gaps) for _ in range(threads)]
    profile_from = start + marks[0]

    def worker(n: int) -> None:
        interval = threads / rate
        next_at = start + n / rate
        with app.app_context():
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    return
                if next_at > now:
                    time.sleep(next_at - now)
                index = sample()
                device_id, device_name = pairs[index]
                lookup_device(device_id, device_name)
                done[n] += 1
                now, previous = time.monotonic(), last_seen[index]
                last_seen[index] = now
                if now >= profile_from:
                    for g, gap in enumerate(gaps):
                        after_gap[n][g] += now - previous > gap
                next_at += interval

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    snapshots = []
    for mark in marks:
        time.sleep(max(0.0, start + mark - time.monotonic()))
        snapshots.append((sum(done), counters(app)))
    for thread in pool:
        thread.join()
    time.sleep(app.config["CACHE_FLUSH_INTERVAL"] * 2)
    snapshots.append((sum(done), counters(app)))
    return snapshots, [sum(counts[g] for counts in after_gap) for g in range(len(gaps))]


def run_variant(name, app, env, pairs, args, warmers: bool, workdir: Path) -> dict:
    reset(app, env["CELERY_BROKER_URL"])
    celery = Group()
    try:
        if warmers:
            for role in (
                ["worker", "--loglevel", "WARNING", "--concurrency", "1", "--pool", "solo"],
                ["beat", "--loglevel", "WARNING", "--schedule", str(workdir / f"beat-{name}")],
            ):
                celery.start(role[0], celery_argv(*role), workdir / f"{name}-{role[0]}.log", env=env)
        ttl = app.config["DEVICE_CACHE_TTL"]
        seconds = ttl * args.ttls
        sample = zipf_sampler(len(pairs), args.s, args.seed)
        window = app.config["WARM_WINDOW"]
        gaps = [window + ttl - app.config["WARM_INTERVAL"], window + ttl]  # the default's hit window after a lookup
        snaps, after_gap = drive(app, pairs, sample, args.rate, seconds, args.threads, [ttl * args.skip], gaps)
    finally:
        celery.stop_all()
    (n0, c0), (n1, c1) = snaps[0], snaps[-1]
    runs, warmed = warmed_devices(env["CELERY_BROKER_URL"]) if warmers else (0, 0)

    def ratio(a: dict, b: dict) -> float:
        hits, misses = b["hits"] - a["hits"], b["misses"] - a["misses"]
        return hits / (hits + misses) if hits + misses else 0.0

    zero = dict.fromkeys(c0, 0)
    steady_requests = n1 - n0
    return {
        "name": name,
        "requests": n1,
        "achieved_rate": n1 / seconds,
        "hit_ratio_steady": ratio(c0, c1),
        "hit_ratio_all": ratio(zero, c1),
        "loads_per_1000_steady": (c1["loads"] - c0["loads"]) * 1000 / steady_requests,
        "misses_per_1000_steady": (c1["misses"] - c0["misses"]) * 1000 / steady_requests,
        "errors": c1["errors"],
        "warm_runs": runs,
        "devices_warmed_per_1000": warmed * 1000 / n1 if n1 else 0.0,
        "gaps": gaps,
        "after_gap_per_1000_steady": [count * 1000 / steady_requests for count in after_gap],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--s", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--rate", type=float, default=1000, help="lookups per (accelerated) second")
    parser.add_argument("--speedup", type=float, default=10, help="divide the production intervals by this")
    parser.add_argument("--ttls", type=int, default=7, help="run length, in TTLs")
    parser.add_argument("--skip", type=int, default=3, help="TTLs of warm-up left out of the steady state")
    parser.add_argument(
        "--top-n",
        type=int,
        nargs="*",
        default=[100],
        help="WARM_TOP_N of more warmers runs, after the one with the default (WARM_TOP_N unset)",
    )
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    return parser.parse_args()


def accelerated_env(redis_port: int, mongo_port: int, speed: float) -> dict[str, str]:
    """The service's settings: the bench's own servers, every interval divided by ``speed``."""
    return {
        **os.environ,
        "MONGO_URI": f"mongodb://127.0.0.1:{mongo_port}/hitratio",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/1",
        "CACHE_KEY_PREFIX": "bench:",
        "DEVICE_CACHE_TTL": str(round(300 / speed)),
        "NEGATIVE_CACHE_TTL": str(max(1, round(30 / speed))),
        "WARM_INTERVAL": str(round(240 / speed)),
        "HOT_HALF_LIFE": str(3600 / speed),
        "STATS_INTERVAL": str(round(60 / speed) or 1),
        "LOG_LEVEL": "WARNING",
    }


def run_all(env: dict[str, str], args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Without warmers, with the default warm-up, then with each ``--top-n``: one app, one data set."""
    os.environ.update(env)
    from app import create_app

    app = create_app()
    try:
        pairs = seed_devices(app, args.devices)
        results = [
            run_variant("without warmers", app, env, pairs, args, warmers=False, workdir=workdir),
            run_variant("with warmers, defaults (WARM_TOP_N unset)", app, env, pairs, args, warmers=True,
                        workdir=workdir),
        ]  # fmt: skip
        for top_n in args.top_n:
            results.append(
                run_variant(
                    f"with warmers, WARM_TOP_N {top_n}",
                    app,
                    {**env, "WARM_TOP_N": str(top_n)},
                    pairs,
                    args,
                    warmers=True,
                    workdir=workdir,
                )
            )
        return results
    finally:
        app.extensions["shared_cache"].stop()


def table(results: list[dict], args: argparse.Namespace) -> str:
    ttl = round(300 / args.speedup)
    short_gap, long_gap = results[0]["gaps"]
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} cores with `python -m bench.hit_ratio"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`: {args.devices:,} devices, Zipf s = {args.s}, "
        f"{args.rate:g} lookups/s through `lookup_device` in {args.threads} threads, time accelerated "
        f"{args.speedup:g}× (DEVICE_CACHE_TTL {ttl} s, WARM_INTERVAL {round(240 / args.speedup)} s, "
        f"HOT_HALF_LIFE {3600 / args.speedup:g} s, WARM_WINDOW {3 * ttl} s = 3 x TTL), {args.ttls} TTLs per run; "
        f'"steady" leaves out the first {args.skip} TTLs. A warm-up loads up to 200 devices per MongoDB query, '
        "so `loads` counts queries; 'devices warmed' counts devices the warmer refreshed. Without warmers every "
        "device costs one miss per TTL in which it is looked up, so the hit ratio is capped by how many distinct "
        "devices a TTL sees. By default (WARM_TOP_N unset) a warm-up refreshes every device looked up within the "
        "last WARM_WINDOW whose entry would expire before the next run: the last warm-up that still counts a "
        "lookup refreshes the entry for one more TTL, so the entry outlives the device's last lookup by between "
        "WARM_WINDOW + TTL - WARM_INTERVAL and WARM_WINDOW + TTL, and a lookup after a longer gap misses. The "
        "last column profiles the steady lookups by that gap (a device's first lookup counts as a long one): "
        "the default's misses per 1,000 fall between its two figures, which no warm-up of that window can lower. "
        "Capped at a top 100 the warm-up removes just those 100 devices' misses. The service's near cache is on "
        "(its hits count as hits).",
        "",
        "| run | lookups | achieved/s | hit ratio (steady) | hit ratio (whole run) | misses per 1,000 (steady) "
        "| MongoDB loads per 1,000 (steady) | cache errors | warm runs | devices warmed per 1,000 "
        f"| lookups per 1,000 more than {short_gap:g} s / {long_gap:g} s after the device's "
        "previous one (steady) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['requests']:,} | {r['achieved_rate']:.0f} | {r['hit_ratio_steady']:.2%} "
            f"| {r['hit_ratio_all']:.2%} | {r['misses_per_1000_steady']:.1f} | {r['loads_per_1000_steady']:.1f} "
            f"| {r['errors']} | {r['warm_runs']} | {r['devices_warmed_per_1000']:.1f} "
            f"| {r['after_gap_per_1000_steady'][0]:.1f} / {r['after_gap_per_1000_steady'][1]:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    with Servers("hit-ratio-") as servers:
        env = accelerated_env(servers.redis.port, servers.mongo_port, args.speedup)
        results = run_all(env, args, servers.workdir)
    text = table(results, args)
    print(text)
    if not args.no_doc:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
