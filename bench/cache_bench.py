"""Benchmark of the device-lookup cache's hit path (issue 3); one command, about 4 minutes.

    . .venv/bin/activate && python -m bench.cache_bench      # from the repository root

Starts its own redis-server and SecantusDB (MongoDB wire server) on free ports, seeds
them through the app's ``demo-data`` command, serves ``bench.benchapp:app`` (the service
plus three bench-only routes) with gunicorn ``-w 2 -k gevent``, and drives it on
loopback with ``wrk -t1 -c32`` (apt-get installed when missing and root; else the
gevent fallback in ``bench/loadgen.py``). In one run, same settings for every variant,
interleaved across rounds:

  hit       GET /api/v1/devices/<id>/<name> of a public device, warm (checked: 200 and
            the service's ``hits`` counter rises while ``misses`` and ``loads`` do not)
  (a)       /bench/ceiling: one Redis GET of a value of the same size, same client
  (b)       /bench/memoize/...: the lookup behind plain Flask-Caching ``@cache.memoize``
  (c)       /bench/uncached/...: ``load_device`` from MongoDB every time
then
  (e)       stampede: 100 concurrent requests for one cold device at two gunicorn
            instances (two replicas, same Redis and MongoDB); MongoDB loads counted
  (d)       the lookup route with Redis hung (SIGSTOP), against (c)

It prints a Markdown table and writes it into docs/BENCHMARKS.md under the heading
"Cache hit path (issue 3)", replacing only that section. Every process it starts is
stopped in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import redis

from bench.cache_report import VARIANTS, report
from bench.common import (
    CEILING_KEY,
    HIT_DEVICE,
    PREFIX,
    Servers,
    bench_env,
    cpu_model,
    lookup_path,
    seed,
    start_bench_app,
    variant_urls,
    versions,
)
from bench.load import CpuMeter, LoadGen, add_load_options, find_loadgen, summary, wait_for_quiet
from bench.sections import publish
from devstack.processes import ROOT, children, signals_exit
from devstack.redis_server import RedisServer
from devstack.web import http_get

STAMPEDE_DEVICES = [("demo-00011", "Room 6"), ("demo-00021", "Room 11"), ("demo-00031", "Room 16")]


# -- the service's own counters ----------------------------------------------------------


class Counters:
    def __init__(self, client: redis.Redis, flush_wait: float) -> None:
        self.client = client
        self.flush_wait = flush_wait

    def read(self, settle: bool = True) -> dict[str, int]:
        """The ``meta:<prefix>stats:device`` hash, after every worker's flusher has run."""
        if settle:
            time.sleep(self.flush_wait)
        raw = self.client.hgetall(f"meta:{{{PREFIX}}}stats:device")  # app/cache/keys.py
        return {name: int(raw.get(name.encode(), 0)) for name in ("hits", "misses", "loads", "errors")}

    @staticmethod
    def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
        return {name: after[name] - before[name] for name in after}


# -- the phases --------------------------------------------------------------------------


def prepare(urls: dict[str, str], rclient: redis.Redis) -> dict:
    """Fill the caches, copy the lookup's value to the ceiling key, check every body is the same."""
    status, body = http_get(urls["hit"])
    if status != 200:
        raise RuntimeError(f"lookup route answered {status}: {body[:200]!r}")
    raw = rclient.get(f"{PREFIX}device:{HIT_DEVICE[0]}|{HIT_DEVICE[1]}")
    if raw is None:
        raise RuntimeError("the lookup is not in Redis after a request: is the cache enabled?")
    rclient.set(CEILING_KEY, raw)
    bodies = {}
    for name, url in urls.items():
        status, bodies[name] = http_get(url)
        if status != 200:
            raise RuntimeError(f"{name} answered {status}: {bodies[name][:200]!r}")
    if len({json.dumps(json.loads(b), sort_keys=True) for b in bodies.values()}) != 1:
        raise RuntimeError(f"the variants answer different bodies: {bodies}")
    memo_keys = [k for k in rclient.scan_iter(match=f"{PREFIX}bench:memo:*", count=1000)]
    return {"value_bytes": len(raw), "body": json.loads(bodies["hit"]), "body_bytes": len(bodies["hit"]),
            "memo_keys": len(memo_keys)}  # fmt: skip


def main_rounds(load: LoadGen, urls: dict[str, str], counters: Counters, args) -> tuple[dict, dict]:
    print(f"warm-up: {args.warmup:g} s per variant", flush=True)
    for name in VARIANTS:
        load.run(urls[name], args.warmup)
    before = counters.read()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for rnd in range(args.rounds):
        order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
        for name in order:
            result = load.run(urls[name], args.duration)
            runs[name].append(result)
            print(f"round {rnd + 1}/{args.rounds} {name:9s} {summary(result)}", flush=True)
    check = Counters.delta(counters.read(), before)
    check["requests"] = sum(r["requests"] for r in runs["hit"])
    return runs, check


def micro(env: dict) -> dict:
    """bench/lookup_micro.py: the cost of each lookup in-process, no HTTP (robust to other load)."""
    print("in-process cost per lookup (bench/lookup_micro.py)", flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "bench.lookup_micro"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"lookup_micro.py failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix("BENCHJSON "))


def fire(urls: list[str]) -> list[int]:
    """Send one request per URL at the same moment (connections opened first)."""
    barrier = threading.Barrier(len(urls))
    statuses: list[int] = [0] * len(urls)

    def one(i: int, url: str) -> None:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        try:
            conn.connect()
            barrier.wait(15)
            conn.request("GET", parts.path)
            resp = conn.getresponse()
            resp.read()
            statuses[i] = resp.status
        except Exception:  # noqa: BLE001 - counted as status 0
            statuses[i] = 0
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i, url)) for i, url in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def stampede(bases: list[str], load: LoadGen, rclient: redis.Redis, counters: Counters, args) -> list[dict]:
    print(f"stampede: {args.stampede} concurrent requests at {len(bases)} gunicorn instances", flush=True)
    for base in bases:  # every worker: MongoDB client and schema check done, flusher running
        load.run(variant_urls(base, HIT_DEVICE)["uncached"], 1)
        load.run(variant_urls(base, HIT_DEVICE)["hit"], 1)
    trials = []
    for device in STAMPEDE_DEVICES[: args.stampede_trials]:
        key = f"{PREFIX}device:{device[0]}|{device[1]}"
        rclient.unlink(key, f"{PREFIX}lock:device:{device[0]}|{device[1]}")  # cold
        before = counters.read()
        urls = [f"{bases[i % len(bases)]}/api/v1/devices/{lookup_path(device)}" for i in range(args.stampede)]
        started = time.perf_counter()
        statuses = fire(urls)
        elapsed = time.perf_counter() - started
        delta = Counters.delta(counters.read(), before)
        ok = sum(1 for s in statuses if s == 200)
        trials.append({"device": device, "ok": ok, "requests": len(statuses), "seconds": elapsed, **delta})
        print(f"  {device}: loads {delta['loads']}, misses {delta['misses']}, 200s {ok}/{len(statuses)}", flush=True)
    return trials


def redis_hung(redis_server: RedisServer, load: LoadGen, url: str, args) -> dict:
    print(f"Redis hung (SIGSTOP) for {args.duration:g} s of load on the lookup route", flush=True)
    redis_server.pause()
    try:
        result = load.run(url, args.duration, count_status=True)
    finally:
        redis_server.resume()
    print(f"  {summary(result)}  5xx {result['s5xx']}", flush=True)
    return result


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, duration_help="seconds per variant per round (and Redis hung)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--stampede", type=int, default=100, help="concurrent requests of the stampede")
    parser.add_argument("--stampede-trials", type=int, default=3, choices=range(1, len(STAMPEDE_DEVICES) + 1))
    parser.add_argument(
        "--quiet-wait", type=float, default=45, help="seconds to wait at most for other processes to quieten"
    )
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--hold", type=float, default=0, help=argparse.SUPPRESS)  # manual probing
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with server logs")
    return parser.parse_args()


def measure(servers: Servers, args: argparse.Namespace, command: str) -> str | None:
    """Every phase on the bench's own servers; the report (None with ``--hold``)."""
    group, redis_server, workdir = servers.group, servers.redis, servers.workdir
    meter = CpuMeter(group, redis_server)
    load = LoadGen(find_loadgen(args.loadgen), args.threads, args.connections, workdir, meter)
    # The shared cache's own hit path (one GET): the near cache in front of it is near_bench.py's.
    env = {**bench_env(redis_server, servers.mongo_port), "L1_CACHE_SIZE": "0"}
    print(f"seeding MongoDB (port {servers.mongo_port}); Redis on port {redis_server.port}", flush=True)
    seed(env, workdir, 50)
    with redis.Redis(port=redis_server.port, socket_timeout=5) as rclient:
        counters = Counters(rclient, flush_wait=2.5)
        first, base = start_bench_app(group, env, workdir, "gunicorn-a")
        print(f"gunicorn {base} (master {first.pid}, workers {children(first.pid)})", flush=True)
        urls = variant_urls(base, HIT_DEVICE)
        info = prepare(urls, rclient)
        if args.hold:
            print(f"holding {args.hold:g} s: {json.dumps(urls)} redis {redis_server.port}", flush=True)
            time.sleep(args.hold)
            return None
        wait_for_quiet(meter, args.quiet_wait)
        runs, check = main_rounds(load, urls, counters, args)
        per_call = micro(env)
        second, base_b = start_bench_app(group, env, workdir, "gunicorn-b")
        try:
            trials = stampede([base, base_b], load, rclient, counters, args)
        finally:
            group.stop(second)
        hung = redis_hung(redis_server, load, urls["hit"], args)
    info.update(
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpu=cpu_model(),
        cores=os.cpu_count(),
        versions=versions(),
    )
    return report(runs, check, hung, trials, per_call, info, load, args, command)


def main() -> int:
    args = parse_args()
    command = "python -m bench.cache_bench" + ("".join(f" {a}" for a in sys.argv[1:]))
    started = time.monotonic()
    with signals_exit(), Servers("cache-bench-", keep_logs=args.keep_logs) as servers:
        text = measure(servers, args, command)
    if text is None:
        return 0
    publish(text, write=not args.no_docs)
    print(f"{time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
