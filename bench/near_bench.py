"""The near cache (issue 10): a hit without Redis, and what coherence costs; about 8 minutes.

    . .venv/bin/activate && python -m bench.near_bench      # from the repository root

Starts its own redis-server and SecantusDB (demo data: 50 devices, every fifth private), then:

1. Throughput. gunicorn ``-w 2 -k gevent`` serving ``bench.benchapp:app`` (the service plus the
   bench routes), wrk on loopback at ``-t2 -c64`` and ``-t1 -c32``, rounds interleaved:
     l1        GET /api/v1/devices/<id>/<name>, a public device, warm (answered by the near cache)
     owner     the owner reading a warm private device with its bearer token (token and device
               both from the near cache)
     redis     the same public lookup on a second instance with ``L1_CACHE_SIZE=0`` (one GET)
     ceiling   /bench/ceiling: a bare route doing one Redis GET (the same body)
     bare      the external ceiling (issue 16): ``bench.bareapp:app``, a separate minimal Flask app
               doing one Redis GET and answering the lookup's body as is, under the same gunicorn
               settings; it pays none of the service's per-request work
2. Coherence. Two replicas (gunicorn ``-w 2 -k gthread --threads 4``). For 60 s, one client
   registers and deletes keys in one device's chain through replica A, and the moment each
   response arrives reads the device through replica B on eight keep-alive connections (spread
   over B's workers); a read that shows the chain as it was before is stale. Also the time from
   A's response until B's answer shows the change.
3. Memory. One process fills its near cache with 10,000 device lookups; the growth of its
   resident memory (and of Python's allocations, tracemalloc) per entry.

Writes its tables into docs/BENCHMARKS.md under "Near cache (issue 10)".
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import redis

from bench.bareapp import BARE_KEY
from bench.common import (
    CEILING_KEY,
    GUNICORN_SETTINGS,
    HIT_DEVICE,
    PREFIX,
    Servers,
    bench_env,
    med,
    seed,
    start_bench_app,
    start_replica,
)
from bench.load import CpuMeter, LoadGen, find_loadgen
from bench.sections import publish
from devstack.processes import ROOT, Group, signals_exit
from devstack.web import start_gunicorn

SECTION = "## Near cache (issue 10)"
PRIVATE_DEVICE = ("demo-00005", "Room 3")  # demo-data makes every fifth device private
LABELS = {
    "l1": "lookup route, warm, near cache (default)",
    "owner": "owner's bearer, private device, warm",
    "redis": "lookup route, warm, `L1_CACHE_SIZE=0` (one Redis GET)",
    "ceiling": "ceiling: a bare route doing one Redis GET",
    "bare": "external ceiling: a minimal Flask app doing one Redis GET (`bench/bareapp.py`)",
}
VARIANTS = tuple(LABELS)


def path(device: tuple[str, str]) -> str:
    return f"/api/v1/devices/{quote(device[0])}/{quote(device[1])}"


def throughput(group: Group, env: dict, workdir: Path, token: str, meter: CpuMeter, args) -> dict:
    _, base = start_bench_app(group, env, workdir, "gunicorn-l1")
    _, base_off = start_bench_app(group, {**env, "L1_CACHE_SIZE": "0"}, workdir, "gunicorn-no-l1")
    urls = {
        "l1": base + path(HIT_DEVICE),
        "owner": base + path(PRIVATE_DEVICE),
        "redis": base_off + path(HIT_DEVICE),
        "ceiling": base + "/bench/ceiling",
    }
    auth = {"Authorization": f"Bearer {token}"}
    get(urls["l1"])  # fills the lookup's entry, which the ceiling's value copies
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.set(CEILING_KEY, client.get(f"{PREFIX}device:{HIT_DEVICE[0]}|{HIT_DEVICE[1]}"))
    client.set(PREFIX + BARE_KEY, get(urls["l1"])[1])  # the external ceiling answers the lookup's own body
    client.close()
    _, base_bare = start_gunicorn(group, "gunicorn-bare", GUNICORN_SETTINGS, env, workdir / "gunicorn-bare.log",
                                  app="bench.bareapp:app", health="/")  # fmt: skip
    urls["bare"] = base_bare + "/"
    bodies = {}
    for name, url in urls.items():
        status, body = get(url, auth if name == "owner" else None)
        if status != 200:
            raise RuntimeError(f"{name} answered {status}: {body[:200]!r}")
        bodies[name] = json.loads(body)
    results: dict[str, dict[str, list[dict]]] = {}
    for threads, connections in ((2, 64), (1, 32)):
        load = LoadGen(find_loadgen("wrk"), threads, connections, workdir, meter)
        config = f"-t{threads} -c{connections}"
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for name in VARIANTS:  # warm-up (and every process's near cache subscribed)
            load.run(urls[name], args.warmup, headers=auth if name == "owner" else None)
        for rnd in range(args.rounds):
            order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
            for name in order:
                result = load.run(urls[name], args.duration, headers=auth if name == "owner" else None)
                runs[name].append(result)
                print(f"{config} round {rnd + 1} {name:8s} {result['rps']:8.0f} req/s  non-2xx {result['non2xx']}",
                      flush=True)  # fmt: skip
        results[config] = runs
    return {"runs": results, "bodies": bodies}


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", parts.path, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


class Client:
    """One keep-alive connection to a replica."""

    def __init__(self, base: str, token: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, url: str, body: dict | None = None) -> tuple[int, dict | None]:
        self.conn.request(method, url, json.dumps(body) if body is not None else None, self.headers)
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None


def storm(group: Group, env: dict, workdir: Path, token: str, seconds: float) -> dict:
    bases = [start_replica(group, env, workdir, name) for name in ("storm-a", "storm-b")]
    writer = Client(bases[0], token)
    readers = [Client(bases[1], token) for _ in range(8)]
    device = "/api/v1/devices/storm-0/storm"
    status, _ = writer.call("POST", "/api/v1/api-keys", {"device_id": "storm-0", "device_name": "storm"})
    assert status == 201, status
    time.sleep(1.0)  # every process's near cache subscribed
    for reader in readers:  # warm: every reader's worker holds the device in L1
        for _ in range(3):
            reader.call("GET", device)
    chain = ["storm-0"]
    stale = reads = changes = 0
    seen_after: list[float] = []
    started = time.monotonic()
    n = 0
    keys: list[str] = []
    while time.monotonic() - started < seconds:
        n += 1
        if keys and n % 2 == 0:  # delete the newest key
            key_id, device_id = keys.pop()
            status, _ = writer.call("DELETE", f"/api/v1/api-keys/{key_id}")
            assert status == 204, status
            chain.remove(device_id)
        else:
            device_id = f"storm-{n}"
            status, body = writer.call("POST", "/api/v1/api-keys", {"device_id": device_id, "device_name": "storm"})
            assert status == 201, status
            keys.append((body["key_id"], device_id))
            chain = sorted([*chain, device_id])
        answered = time.monotonic()
        changes += 1
        for i, reader in enumerate(readers[n % 2 :: 2]):  # four of the eight, in turn: both of B's workers
            status, body = reader.call("GET", device)
            reads += 1
            if status != 200 or body["chain"] != chain:
                stale += 1
            elif i == 0:  # B's first answer after A's response, complete and showing the change
                seen_after.append((time.monotonic() - answered) * 1000)
    return {
        "seconds": seconds,
        "changes": changes,
        "reads": reads,
        "stale": stale,
        "seen_p50_ms": statistics.median(seen_after),
        "seen_p99_ms": sorted(seen_after)[int(len(seen_after) * 0.99) - 1],
        "seen_max_ms": max(seen_after),
    }


MEMORY_SCRIPT = r"""
import json, os, sys, time, tracemalloc
from app import create_app
from app.devices.lookup import lookup_device
n = int(sys.argv[1])
app = create_app()
dc = app.extensions["shared_cache"]
client = dc.client
template = json.loads(client.get(sys.argv[2]))
pipe = client.pipeline(transaction=False)
for i in range(n):
    value = {**template, "device_id": f"mem-{i:05d}", "chain": [f"mem-{i:05d}"]}
    pipe.set(dc.keys.value(f"device:mem-{i:05d}|{template['device_name']}"), json.dumps(value), ex=3600)
pipe.execute()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
with app.app_context():
    lookup_device("warm", "up")
    deadline = time.monotonic() + 10
    while not dc.near.serving and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(200):  # settle allocator pools before measuring
        lookup_device(f"x-{i}", "y")
    dc.near.clear()
    before, traced = rss(), tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        lookup_device(f"mem-{i:05d}", template["device_name"])
    held = len(dc.near)
    after, t1 = rss(), tracemalloc.get_traced_memory()[0]
print("BENCHJSON " + json.dumps({"entries": held, "rss_bytes": after - before, "traced_bytes": t1 - t0,
                                 "value_bytes": len(client.get(sys.argv[2]))}))
dc.stop()
"""


def memory(env: dict, entries: int) -> dict:
    key = f"{PREFIX}device:{HIT_DEVICE[0]}|{HIT_DEVICE[1]}"
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(entries), key], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"memory run failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix("BENCHJSON "))


def report(result: dict, coherence: dict | None, mem: dict | None, args, others: list[float]) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"Measured {stamp} with `python -m bench.near_bench` on {os.cpu_count()} cores shared by gunicorn, "
        "redis-server, SecantusDB and wrk (ratios are the point: every variant ran in the same invocation, "
        f"rounds interleaved). Other processes used at most {max(others):.0%} of the CPU during a run. "
        f"gunicorn `-w 2 -k gevent` serving `bench.benchapp:app`; {args.rounds} rounds x {args.duration:g} s per "
        "variant and wrk setting, medians; metrics on (the default) in every variant.",
        "",
        "The external ceiling (issue 16) is a separate process: `gunicorn bench.bareapp:app` with the same "
        "settings, a minimal Flask app whose one route does one Redis GET and answers the lookup's body as "
        'is; "x bare app" is each variant\'s median requests/s over its (goals: warm anonymous lookup >= 1.3x, '
        'owner\'s bearer read >= 1.1x), "paired" the median over rounds of the ratio within each round (the '
        'variants of a round run back to back, so a drift of the machine\'s load cancels out). "x ceiling" is '
        "over the route inside the service doing one Redis GET, which pays the service's own per-request work too.",
        "",
        "| wrk | variant | req/s | x bare app | x bare app, paired | x ceiling | p50 ms | p99 ms | non-2xx |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config, runs in result["runs"].items():
        ceiling, bare = med(runs["ceiling"], "rps"), med(runs["bare"], "rps")
        for name in VARIANTS:
            rps, p50, p99 = (med(runs[name], field) for field in ("rps", "p50_us", "p99_us"))
            non2xx = sum(r["non2xx"] for r in runs[name])
            paired = statistics.median(a["rps"] / b["rps"] for a, b in zip(runs[name], runs["bare"], strict=True))
            lines.append(
                f"| `{config}` | {LABELS[name]} | {rps:,.0f} | {rps / bare:.2f} | {paired:.2f} | {rps / ceiling:.2f} "
                f"| {p50 / 1000:.2f} | {p99 / 1000:.2f} | {non2xx} |"
            )
    lines += [
        "",
        "Requests/s per round (l1 / owner / redis / ceiling / bare app):",
        "",
    ]
    for config, runs in result["runs"].items():
        per = ["/".join(f"{runs[name][i]['rps']:,.0f}" for name in VARIANTS) for i in range(args.rounds)]
        lines.append(f"- `{config}`: " + "; ".join(per))
    if coherence is None:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Coherence: {coherence['seconds']:.0f} s of key changes in one device's chain through replica A (register "
        "and delete in turn), each followed at once by reads of the device through replica B on keep-alive "
        "connections spread over its two workers (two replicas of `wsgi:app`, `-w 2 -k gthread --threads 4`).",
        "",
        "| changes | reads after a change | stale reads "
        "| change seen by B's first read after A's response: p50 / p99 / max ms |",
        "| ---: | ---: | ---: | --- |",
        f"| {coherence['changes']:,} | {coherence['reads']:,} | {coherence['stale']} "
        f"| {coherence['seen_p50_ms']:.2f} / {coherence['seen_p99_ms']:.2f} / {coherence['seen_max_ms']:.2f} |",
        "",
        "(the time of a whole request to B: its read already shows the change, the invalidation reached B's "
        "workers before it.)",
        "",
        f"Memory: one process with {mem['entries']:,} entries in its near cache (device lookups of "
        f"{mem['value_bytes']} bytes of JSON each): resident memory grew {mem['rss_bytes'] / 2**20:.1f} MiB "
        f"({mem['rss_bytes'] / max(mem['entries'], 1):.0f} bytes per entry); Python's own allocations "
        f"(tracemalloc) {mem['traced_bytes'] / 2**20:.1f} MiB.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--storm", type=float, default=60, help="seconds of the coherence storm")
    parser.add_argument("--entries", type=int, default=10_000, help="near-cache entries of the memory run")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--throughput-only", action="store_true", help="skip coherence and memory; print only")
    args = parser.parse_args()
    with signals_exit(), Servers("near-bench-") as servers:
        group, workdir = servers.group, servers.workdir
        meter = CpuMeter(group, servers.redis)
        env = bench_env(servers.redis, servers.mongo_port)
        demo = seed(env, workdir, 50)
        result = throughput(group, env, workdir, demo["token"], meter, args)
        others = [r["others"] for runs in result["runs"].values() for rs in runs.values() for r in rs]
        if args.throughput_only:
            print(report(result, None, None, args, others))
            return 0
        coherence = storm(group, env, workdir, demo["token"], args.storm)
        mem = memory(env, args.entries)
    publish(report(result, coherence, mem, args, others), write=not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
