"""What Prometheus metrics cost per request (issue 9): the lookup route with metrics on vs off.

    . .venv/bin/activate && python -m bench.metrics_bench      # about 2 minutes

Starts its own redis-server and SecantusDB, seeds them, and serves ``bench.benchapp:app`` from two
gunicorn instances at once (``-w 2 -k gevent``, gunicorn.conf.py read as in production, so
metrics are in multiprocess mode): one with the defaults, one with ``METRICS_ENABLED=false``.
wrk drives the warm lookup route of each in turn, rounds interleaved (the order alternates), and
the medians are compared; the time of one ``GET /metrics`` scrape is measured too. It writes the
section "Prometheus metrics cost (issue 9)" of docs/BENCHMARKS.md. Servers, load generator and
helpers are bench/common.py's and bench/load.py's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time

from bench.common import (
    GUNICORN_SETTINGS,
    HIT_DEVICE,
    Servers,
    bench_env,
    cpu_model,
    med,
    seed,
    start_bench_app,
    variant_urls,
    versions,
)
from bench.load import CpuMeter, LoadGen, add_load_options, find_loadgen, summary, wait_for_quiet
from bench.sections import publish
from devstack.processes import signals_exit
from devstack.web import http_get

SECTION = "## Prometheus metrics cost (issue 9)"
VARIANTS = {"on": {}, "off": {"METRICS_ENABLED": "false"}}
LABELS = {"on": "metrics on (default)", "off": "`METRICS_ENABLED=false`"}


def scrape_ms(base: str, times: int = 20) -> float:
    """Median wall time of one GET /metrics (every worker's files read and summed)."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        status, body = http_get(base + "/metrics")
        spent.append((time.perf_counter() - started) * 1000)
        if status != 200 or b"opensensor_cache_gets_total" not in body:
            raise RuntimeError(f"/metrics answered {status}")
    return statistics.median(spent)


def rounds(load: LoadGen, urls: dict[str, str], args: argparse.Namespace) -> dict[str, list[dict]]:
    for name in VARIANTS:
        load.run(urls[name], args.warmup)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for rnd in range(args.rounds):
        for name in list(VARIANTS)[:: 1 if rnd % 2 == 0 else -1]:
            runs[name].append(load.run(urls[name], args.duration))
            print(f"round {rnd + 1}/{args.rounds} metrics {name:3s} {summary(runs[name][-1])}", flush=True)
    return runs


def report(runs: dict[str, list[dict]], scrape: float, load: LoadGen, args: argparse.Namespace) -> str:
    on, off = med(runs["on"], "rps"), med(runs["off"], "rps")
    cost_us = (1 / on - 1 / off) * 1e6 * 2  # two workers share the load: per request, per worker
    others = max(r["others"] for rs in runs.values() for r in rs)
    info = ", ".join(f"{k} {v}" for k, v in versions().items())
    lines = [
        SECTION,
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {cpu_model()}, {os.cpu_count()} cores shared "
        "by both gunicorn instances, redis-server, SecantusDB and the load generator. Versions: " + info + ".",
        f"Other processes used at most {others:.0%} of the CPU during one run (the machine may be shared; "
        "the figures of one run are comparable with each other, not with other runs).",
        "",
        "Command: `python -m bench.metrics_bench" + "".join(f" {a}" for a in sys.argv[1:]) + "`. "
        f"Two gunicorn instances of `bench.benchapp:app` run side by side (`{' '.join(GUNICORN_SETTINGS)}`, "
        "gunicorn.conf.py read, so metrics "
        "are in multiprocess mode), one with `METRICS_ENABLED=false`; each serves the warm lookup "
        f"`GET /api/v1/devices/{HIT_DEVICE[0]}/{HIT_DEVICE[1]}` (a cache hit). Load: {load.describe()}, "
        f"{args.rounds} rounds × {args.duration:g} s per variant after a {args.warmup:g} s warm-up, the order "
        "alternating each round; figures are medians over rounds.",
        "",
        "| variant | req/s | p50 ms | p99 ms | per round req/s |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, label in LABELS.items():
        per_round = ", ".join(f"{r['rps']:,.0f}" for r in runs[name])
        lines.append(
            f"| {label} | {med(runs[name], 'rps'):,.0f} | {med(runs[name], 'p50_us') / 1000:.2f} "
            f"| {med(runs[name], 'p99_us') / 1000:.2f} | {per_round} |"
        )
    lines += [
        "",
        f"Metrics on serve {on / off:.2f}× the requests per second of metrics off ({(on / off - 1) * 100:+.1f} %), "
        f"about {cost_us:.0f} µs of worker time per request (two request-hook updates, the cache counters, "
        "each a lock and an mmap write). One `GET /metrics` scrape of that replica takes "
        f"{scrape:.1f} ms (median of 20).",
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser)
    parser.add_argument("--quiet-wait", type=float, default=30, help="seconds to wait at most for a quiet machine")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    with signals_exit(), Servers("metrics-bench-") as servers:
        meter = CpuMeter(servers.group, servers.redis)
        load = LoadGen(find_loadgen(args.loadgen), 1, args.connections, servers.workdir, meter)
        env = bench_env(servers.redis, servers.mongo_port)
        seed(env, servers.workdir, 10)
        urls = {}
        for name, extra in VARIANTS.items():
            _, base = start_bench_app(servers.group, {**env, **extra}, servers.workdir, f"gunicorn-{name}")
            urls[name] = variant_urls(base, HIT_DEVICE)["hit"]
            if http_get(urls[name])[0] != 200:
                raise RuntimeError(f"{urls[name]} does not answer 200")
        scrape = scrape_ms(urls["on"].split("/api/")[0])
        wait_for_quiet(meter, args.quiet_wait)
        runs = rounds(load, urls, args)
        text = report(runs, scrape, load, args)
    publish(text, write=not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
