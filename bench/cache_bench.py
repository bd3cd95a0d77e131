"""Benchmark of the device-lookup cache's hit path (issue 3); one command, about 4 minutes.

    . .venv/bin/activate && python bench/cache_bench.py

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
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from urllib.parse import quote, urlsplit

import redis
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer, free_port  # noqa: E402

DOCS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Cache hit path (issue 3)"
PREFIX = "bench:"  # CACHE_KEY_PREFIX of the bench
CEILING_KEY = PREFIX + "bench:ceiling"  # bench/benchapp.py reads it
GUNICORN_SETTINGS = [
    "--workers", "2",
    "--worker-class", "gevent",
    "--worker-connections", "100",
    "--keep-alive", "5",
    "--timeout", "30",
    "--graceful-timeout", "5",
    "--log-level", "warning",
    "--no-control-socket",
]  # fmt: skip
HIT_DEVICE = ("demo-00001", "Room 1")  # public (demo-data makes every fifth device private)
STAMPEDE_DEVICES = [("demo-00011", "Room 6"), ("demo-00021", "Room 11"), ("demo-00031", "Room 16")]
VARIANTS = ("hit", "ceiling", "memoize", "uncached")
LABELS = {
    "hit": "hit: lookup route, warm (DeviceCache)",
    "ceiling": "(a) ceiling: one Redis GET",
    "memoize": "(b) Flask-Caching `@cache.memoize`",
    "uncached": "(c) uncached MongoDB lookup",
    "hung": "(d) lookup route, Redis hung (SIGSTOP)",
}

WRK_SCRIPT = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) s4xx = 0; s5xx = 0 end
COUNT_STATUS
function done(summary, latency, requests)
  local s4, s5 = 0, 0
  for _, t in ipairs(threads) do s4 = s4 + (t:get("s4xx") or 0); s5 = s5 + (t:get("s5xx") or 0) end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"non2xx":%d,"s4xx":%d,"s5xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    latency.mean, e.status, s4, s5, e.connect, e.read, e.write, e.timeout))
end
"""
# Counting statuses needs a per-response Lua callback, which costs wrk time: only where
# the status split matters (Redis hung). Elsewhere wrk's own non-2xx count is enough.
COUNT_STATUS = """
function response(status, headers, body)
  if status >= 500 then s5xx = s5xx + 1 elseif status >= 400 then s4xx = s4xx + 1 end
end
"""


# -- processes -------------------------------------------------------------------------


class Group:
    """Processes started in their own session, stopped (whole group) in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log_path: Path, **kwargs) -> subprocess.Popen:
        log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        log.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group (workers)
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop_all(self) -> None:
        while self.procs:
            _, proc = self.procs.pop()
            self.stop(proc)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet, whatever the error
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_secantus(group: Group, workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    binary = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    proc = group.start(
        "secantusd",
        [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(workdir / "mongo"),
         "--log-level", "WARNING"],
        workdir / "secantusd.log",
    )  # fmt: skip
    client = MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=500)
    try:
        wait_until(lambda: proc.poll() is None and client.admin.command("ping"), 30, "SecantusDB")
    finally:
        client.close()
    return proc, port


def start_gunicorn(group: Group, env: dict, workdir: Path, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = group.start(
        name,
        [sys.executable, "-m", "gunicorn", "bench.benchapp:app", "--bind", f"127.0.0.1:{port}", *GUNICORN_SETTINGS],
        workdir / f"{name}.log",
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: proc.poll() is None and http_get(base + "/health/live")[0] == 200, 30, name)
    return proc, base


def bench_env(redis_server: RedisServer, mongo_port: int) -> dict[str, str]:
    """The environment of the bench's service processes: its own servers, a warm entry that cannot expire."""
    env = {
        **os.environ,
        "MONGO_URI": f"mongodb://127.0.0.1:{mongo_port}/bench",
        "REDIS_URL": redis_server.url(0),
        "CELERY_BROKER_URL": redis_server.url(1),
        "CACHE_KEY_PREFIX": PREFIX,
        "DEVICE_CACHE_TTL": "3600",
        "LOG_LEVEL": "WARNING",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each gunicorn master makes its own (gunicorn.conf.py)
    return env


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class CpuMeter:
    """CPU used by processes outside the bench while it measures: other work on a shared machine.

    Busy CPU of the whole machine (/proc/stat) less the bench's own: this process and its
    waited-for children (wrk), and the servers it started with their children (gunicorn workers).
    """

    def __init__(self, group: Group, redis_server: RedisServer) -> None:
        self.group = group
        self.redis_server = redis_server
        self.tick = os.sysconf("SC_CLK_TCK")

    def machine_busy(self) -> float:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(values) - values[3] - values[4]) / self.tick  # less idle and iowait

    def ours(self) -> float:
        pids = [proc.pid for _, proc in self.group.procs]
        if self.redis_server.proc is not None:
            pids.append(self.redis_server.proc.pid)
        pids += [child for pid in list(pids) for child in children(pid)]
        used = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                used += (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime
        t = os.times()
        return used + t.user + t.system + t.children_user + t.children_system

    def snapshot(self) -> tuple[float, float, float]:
        return time.monotonic(), self.machine_busy(), self.ours()

    def others(self, before: tuple[float, float, float]) -> float:
        """Share of all cores used by other processes since ``before`` (0..1)."""
        now = self.snapshot()
        wall = now[0] - before[0]
        return max(0.0, ((now[1] - before[1]) - (now[2] - before[2])) / (wall * (os.cpu_count() or 1)))


# -- load generation -------------------------------------------------------------------


class LoadGen:
    def __init__(self, kind: str, threads: int, connections: int, workdir: Path, meter: CpuMeter) -> None:
        self.kind = kind
        self.meter = meter
        self.threads = threads
        self.connections = connections
        self.plain = workdir / "plain.lua"
        self.counting = workdir / "counting.lua"
        self.plain.write_text(WRK_SCRIPT.replace("COUNT_STATUS", ""))
        self.counting.write_text(WRK_SCRIPT.replace("COUNT_STATUS", COUNT_STATUS))

    def describe(self) -> str:
        if self.kind == "wrk":
            return f"wrk -t{self.threads} -c{self.connections} --latency (keep-alive, closed loop)"
        return f"bench/loadgen.py (gevent fallback) --connections {self.connections}"

    def run(self, url: str, duration: float, count_status: bool = False, headers: dict[str, str] | None = None) -> dict:
        if self.kind == "wrk":
            script = self.counting if count_status else self.plain
            extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
            argv = ["wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{duration:g}s", "--timeout", "2s",
                    "--latency", *extra, "-s", str(script), url]  # fmt: skip
        else:
            if headers:
                raise RuntimeError("the python load generator sends no headers: install wrk")
            argv = [sys.executable, str(ROOT / "bench" / "loadgen.py"), url, "--connections", str(self.connections),
                    "--duration", str(duration), "--timeout", "2"]  # fmt: skip
        before = self.meter.snapshot()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        others = self.meter.others(before)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
        if line is None:
            raise RuntimeError(f"load generator failed: {proc.stdout}\n{proc.stderr}")
        result = json.loads(line.removeprefix("BENCHJSON "))
        result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
        result["others"] = others
        return result


def find_loadgen(choice: str) -> str:
    if choice == "python":
        return "python"
    if shutil.which("wrk") is None and os.geteuid() == 0:
        print("wrk is missing: apt-get install -y wrk", flush=True)
        apt = ["apt-get", "install", "-y", "-q", "wrk"]
        quiet = {
            "stdout": subprocess.DEVNULL,
            "stderr": subprocess.DEVNULL,
            "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        }
        if subprocess.run(apt, **quiet).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], **quiet)
            subprocess.run(apt, **quiet)
    if shutil.which("wrk"):
        return "wrk"
    if choice == "wrk":
        raise SystemExit("wrk is not installed and could not be installed (apt-get install wrk)")
    print("wrk unavailable: using the gevent fallback bench/loadgen.py", flush=True)
    return "python"


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


def lookup_path(device: tuple[str, str]) -> str:
    return f"{quote(device[0])}/{quote(device[1])}"


def variant_urls(base: str, device: tuple[str, str]) -> dict[str, str]:
    pair = lookup_path(device)
    return {
        "hit": f"{base}/api/v1/devices/{pair}",
        "ceiling": f"{base}/bench/ceiling",
        "memoize": f"{base}/bench/memoize/{pair}",
        "uncached": f"{base}/bench/uncached/{pair}",
    }


def seed(env: dict, workdir: Path, devices: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "bench.benchapp",
            "demo-data",
            "--devices",
            str(devices),
            "--days",
            "0",
        ],  # fmt: skip
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (workdir / "seed.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"demo-data failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def wait_for_quiet(meter: CpuMeter, limit: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit`` s) for 3 s in which other processes use under ``threshold`` of the CPU."""
    deadline = time.monotonic() + limit
    while True:
        before = meter.snapshot()
        time.sleep(3)
        others = meter.others(before)
        if others < threshold or time.monotonic() >= deadline:
            print(f"other processes use {others:.0%} of the CPU; measuring", flush=True)
            return others
        print(f"other processes use {others:.0%} of the CPU; waiting for a quieter machine", flush=True)


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
        [sys.executable, str(ROOT / "bench" / "lookup_micro.py")], env=env, cwd=ROOT, capture_output=True, text=True,
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


def stampede(group: Group, env: dict, workdir: Path, bases: list[str], load: LoadGen, rclient, counters, args):
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


# -- the report ----------------------------------------------------------------------------


def summary(result: dict) -> str:
    return (
        f"{result['rps']:8.0f} req/s  p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms"
        f"  non-2xx {result['non2xx']}  (other processes: {result['others']:.0%} CPU)"
    )


def row(label: str, rps: float, p50: float, p99: float, base: tuple[float, float, float], non2xx: str) -> str:
    """One table row: figures and their ratio to the ceiling's (latencies in microseconds)."""
    cells = [label]
    for value, ref, scale, fmt in ((rps, base[0], 1, ",.0f"), (p50, base[1], 1000, ".2f"), (p99, base[2], 1000, ".2f")):
        cells += [format(value / scale, fmt), fmt_ratio(value, ref)]
    return "| " + " | ".join([*cells, non2xx]) + " |"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def med(runs: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def fmt_ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def versions() -> dict[str, str]:
    found = {}
    for dist in ("gunicorn", "gevent", "Flask", "Flask-Caching", "redis", "pymongo", "SecantusDB"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    if m := re.search(r"v=(\S+)", out):
        found["redis-server"] = m.group(1)
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        if m := re.search(r"wrk (\S+)", out.stdout + out.stderr):
            found["wrk"] = m.group(1)
    found["Python"] = platform.python_version()
    return found


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def report(runs, check, hung, trials, per_call, info, load: LoadGen, args, command: str) -> str:
    base = runs["ceiling"]
    base_rps = med(base, "rps")
    ref = (base_rps, med(base, "p50_us"), med(base, "p99_us"))
    lines = [
        "| variant | req/s | × (a) | p50 ms | × (a) | p99 ms | × (a) | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in VARIANTS:
        figures = (med(runs[name], "rps"), med(runs[name], "p50_us"), med(runs[name], "p99_us"))
        lines.append(row(LABELS[name], *figures, ref, str(sum(r["non2xx"] for r in runs[name]))))
    if hung:
        non2xx = f"{hung['non2xx']} (5xx: {hung['s5xx']})"
        lines.append(row(LABELS["hung"], hung["rps"], hung["p50_us"], hung["p99_us"], ref, non2xx))
    hit_rps, memo_rps = med(runs["hit"], "rps"), med(runs["memoize"], "rps")
    unc_p99 = med(runs["uncached"], "p99_us")
    goals = [
        "| goal | target | measured | met |",
        "| --- | --- | --- | --- |",
        f"| hit req/s vs (a) ceiling | ≥ 0.85 | {hit_rps / base_rps:.2f} | {yes(hit_rps >= 0.85 * base_rps)} |",
        f"| hit req/s vs (b) memoize | ≥ 1.4 | {hit_rps / memo_rps:.2f} | {yes(hit_rps >= 1.4 * memo_rps)} |",
    ]
    if hung:
        ratio = hung["p99_us"] / unc_p99
        s5xx = hung["s5xx"]
        goals += [
            f"| Redis hung: p99 vs (c) uncached | ≤ 1.5 | {ratio:.2f} ({hung['p99_us'] / 1000:.2f} ms vs "
            f"{unc_p99 / 1000:.2f} ms) | {yes(ratio <= 1.5)} |",
            f"| Redis hung: 5xx | 0 | {s5xx} (non-2xx {hung['non2xx']}, socket errors "
            f"{sum(hung[k] for k in ('connect', 'read', 'write', 'timeout'))}) | {yes(s5xx == 0)} |",
        ]
    if trials:
        worst = max(t["loads"] for t in trials)
        each = ", ".join(str(t["loads"]) for t in trials)
        goals.append(
            f"| stampede: MongoDB loads for {args.stampede} concurrent cold requests, 2 replicas | ≤ 2 | "
            f"max {worst} (trials: {each}) | {yes(worst <= 2)} |"
        )
    hit_ok = check["loads"] == 0 and check["misses"] == 0 and check["hits"] >= check["requests"]
    goals.append(
        f"| hit run served from the cache | hits ≥ requests, 0 misses, 0 loads | hits +{check['hits']:,} for "
        f"{check['requests']:,} requests, misses +{check['misses']}, loads +{check['loads']} | {yes(hit_ok)} |"
    )
    heads = [LABELS[n].split(":")[0] for n in VARIANTS]
    rounds = ["| round | " + " | ".join(heads) + " | hit ÷ (a) | hit ÷ (b) |", "| --- |" + " ---: |" * (len(heads) + 2)]
    for i in range(args.rounds):
        cells = [f"{runs[n][i]['rps']:,.0f} ({runs[n][i]['others']:.0%})" for n in VARIANTS]
        hit_i = runs["hit"][i]["rps"]
        cells += [f"{hit_i / runs['ceiling'][i]['rps']:.2f}", f"{hit_i / runs['memoize'][i]['rps']:.2f}"]
        rounds.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    measured = [r for n in VARIANTS for r in runs[n]] + ([hung] if hung else [])
    others_mean = statistics.mean(r["others"] for r in measured)
    others_max = max(r["others"] for r in measured)
    stampede_lines = []
    if trials:
        stampede_lines = ["| device | MongoDB loads | misses | 200s | seconds for all |"]
        stampede_lines.append("| --- | ---: | ---: | ---: | ---: |")
        for t in trials:
            stampede_lines.append(
                f"| `{t['device'][0]}` / `{t['device'][1]}` | {t['loads']} | {t['misses']} | {t['ok']}/{t['requests']}"
                f" | {t['seconds']:.2f} |"
            )
    ver = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    text = f"""{SECTION}

Measured {info["date"]} on {info["cpu"]}, {info["cores"]} cores shared by gunicorn, redis-server,
SecantusDB and the load generator (so absolute figures are low; the ratios are the point).
Versions: {ver}.
Other processes on the machine used {others_mean:.0%} of its CPU on average during the measured runs (at most
{others_max:.0%} in one run).

Command (from the venv, at the repository root): `{command}`

Settings: gunicorn `{" ".join(GUNICORN_SETTINGS)}` serving `bench.benchapp:app` (the service plus the
bench routes of `bench/benchapp.py`); load: {load.describe()}, {args.rounds} rounds × {args.duration:g} s per
variant, variants interleaved (the order rotates each round) after a {args.warmup:g} s warm-up each; figures are the
median over rounds. App environment: `CACHE_KEY_PREFIX={PREFIX}`, `DEVICE_CACHE_TTL=3600` (so the warm entry cannot
expire mid-run), `LOG_LEVEL=WARNING`, `L1_CACHE_SIZE=0` (the near cache off: this is the shared cache's own hit
path; `bench/near_bench.py` measures the near cache), everything else at its default (100 ms Redis timeouts,
breaker after 3 failures, probes every 0.1 s, 1 s counter flush, metrics on).
Data: `demo-data --devices 50 --days 0`; the device is the public
`{HIT_DEVICE[0]}` / `{HIT_DEVICE[1]}`, whose cached lookup is {info["value_bytes"]} bytes of JSON and whose
response body is {info["body_bytes"]} bytes (the same body from every variant, checked).

- hit: `GET /api/v1/devices/<id>/<name>`, no credentials, served by `DeviceCache.get` (one GET, warm).
- (a) `/bench/ceiling`: one GET of a {info["value_bytes"]}-byte copy of that value on the cache's own client
  (`app.extensions["device_cache"].client`), JSON-decoded, answered with the same body.
- (b) `/bench/memoize/<id>/<name>`: `load_device` behind `@cache.memoize()` of a second `Cache` on the same Redis
  (Flask-Caching defaults: no socket timeouts, redis-py retries; plus the JSON serializer, a `bench:memo:` namespace and
  the same TTL). A hit costs it two round trips: MGET of the memoize version key, then GET.
- (c) `/bench/uncached/<id>/<name>`: `load_device`, one MongoDB query per request.
- (d) the lookup route while redis-server is stopped with SIGSTOP (port open, nothing answers) for
  {args.duration:g} s, from the first request on (includes the 100 ms timeouts before the breaker opens);
  statuses counted by a wrk Lua `response` callback.
- (e) stampede: the cached lookup of a cold device (its key unlinked), {args.stampede} requests sent at once
  (connections opened first) alternately at two gunicorn instances (two replicas, each `-w 2`, same Redis and
  MongoDB); loads counted by the service's `loads` counter (`meta:{{{PREFIX}}}stats:device`) after the flush interval.

{chr(10).join(lines)}

Goals of issue 3:

{chr(10).join(goals)}

Requests/s per round (in brackets: CPU used by other processes on the machine during that run, as a share of
all cores; the bench cannot stop them, and above a few per cent they make the figures noisy):

{chr(10).join(rounds)}
"""
    ref_call = per_call["ceiling"]
    text += (
        "\nIn-process cost of one lookup call, without HTTP (`bench/lookup_micro.py`: sequential calls in one process,"
        "\nno gevent, against the same servers; median of 3 batches; ratios to (a)):\n\n"
        "| call | wall µs | × (a) | CPU µs | × (a) |\n| --- | ---: | ---: | ---: | ---: |\n"
    )
    for name, figures in per_call.items():
        text += (
            f"| {name} | {figures['wall_us']:.1f} | {fmt_ratio(figures['wall_us'], ref_call['wall_us'])}"
            f" | {figures['cpu_us']:.1f} | {fmt_ratio(figures['cpu_us'], ref_call['cpu_us'])} |\n"
        )
    if stampede_lines:
        text += "\nStampede trials (each a different cold device):\n\n" + "\n".join(stampede_lines) + "\n"
    return text


def write_docs(section: str, heading: str = SECTION) -> None:
    """Replace only the section under ``heading`` in docs/BENCHMARKS.md (others add their own sections)."""
    section = section.rstrip("\n") + "\n"
    if not DOCS.exists():
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text(
            "# Benchmarks\n\nFigures measured by the scripts under `bench/`; each section says how to re-run it.\n\n"
            + section
        )
        return
    text = DOCS.read_text()
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        DOCS.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    DOCS.write_text("".join(lines[:start]) + section + ("\n" + tail if tail else ""))


# -- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM runs the finally blocks too."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds per variant per round (and Redis hung)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per variant")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--stampede", type=int, default=100, help="concurrent requests of the stampede")
    parser.add_argument("--stampede-trials", type=int, default=3, choices=range(1, len(STAMPEDE_DEVICES) + 1))
    parser.add_argument(
        "--quiet-wait", type=float, default=45, help="seconds to wait at most for other processes to quieten"
    )
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--hold", type=float, default=0, help=argparse.SUPPRESS)  # manual probing
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with server logs")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    command = "python bench/cache_bench.py" + ("".join(f" {a}" for a in sys.argv[1:]))
    load = None
    group = Group()
    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    redis_server = RedisServer()
    rclient = None
    started = time.monotonic()
    with terminate_as_exit():
        try:
            meter = CpuMeter(group, redis_server)
            load = LoadGen(find_loadgen(args.loadgen), args.threads, args.connections, workdir, meter)
            redis_server.start()
            _, mongo_port = start_secantus(group, workdir)
            # The shared cache's own hit path (one GET): the near cache in front of it is near_bench.py's.
            env = {**bench_env(redis_server, mongo_port), "L1_CACHE_SIZE": "0"}
            print(f"seeding MongoDB (port {mongo_port}); Redis on port {redis_server.port}", flush=True)
            seed(env, workdir, 50)
            rclient = redis.Redis(port=redis_server.port, socket_timeout=5)
            counters = Counters(rclient, flush_wait=2.5)
            first, base = start_gunicorn(group, env, workdir, "gunicorn-a")
            print(f"gunicorn {base} (master {first.pid}, workers {children(first.pid)})", flush=True)
            urls = variant_urls(base, HIT_DEVICE)
            info = prepare(urls, rclient)
            if args.hold:
                print(f"holding {args.hold:g} s: {json.dumps(urls)} redis {redis_server.port}", flush=True)
                time.sleep(args.hold)
                return 0
            wait_for_quiet(meter, args.quiet_wait)
            runs, check = main_rounds(load, urls, counters, args)
            per_call = micro(env)
            second, base_b = start_gunicorn(group, env, workdir, "gunicorn-b")
            try:
                trials = stampede(group, env, workdir, [base, base_b], load, rclient, counters, args)
            finally:
                group.stop(second)
            hung = redis_hung(redis_server, load, urls["hit"], args)
            info.update(
                date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                cpu=cpu_model(),
                cores=os.cpu_count(),
                versions=versions(),
            )
            text = report(runs, check, hung, trials, per_call, info, load, args, command)
        finally:
            group.stop_all()
            redis_server.cleanup()
            if rclient is not None:
                rclient.close()
            if args.keep_logs:
                print(f"logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(text)
    if not args.no_docs:
        write_docs(text)
        print(f"written to {DOCS.relative_to(ROOT)} ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
