"""Load for the HTTP benchmarks: wrk (or the gevent fallback ``bench/loadgen.py``), and the CPU other
processes use meanwhile (a shared machine makes figures noisy; the reports say how much)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devstack.processes import ROOT, Group, children
from devstack.redis_server import RedisServer
from devstack.tools import apt_install, can_apt

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
        pids = self.group.pids()
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
            argv = [sys.executable, "-m", "bench.loadgen", url, "--connections", str(self.connections),
                    "--duration", str(duration), "--timeout", "2"]  # fmt: skip
        before = self.meter.snapshot()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=duration + 30)
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
    if shutil.which("wrk") is None and can_apt():
        apt_install("wrk", say="wrk is missing: apt-get install -y wrk")
    if shutil.which("wrk"):
        return "wrk"
    if choice == "wrk":
        raise SystemExit("wrk is not installed and could not be installed (apt-get install wrk)")
    print("wrk unavailable: using the gevent fallback bench/loadgen.py", flush=True)
    return "python"


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


def summary(result: dict) -> str:
    return (
        f"{result['rps']:8.0f} req/s  p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms"
        f"  non-2xx {result['non2xx']}  (other processes: {result['others']:.0%} CPU)"
    )


def add_load_options(parser: argparse.ArgumentParser, duration_help: str = "seconds per variant per round") -> None:
    """How an HTTP benchmark drives its variants: rounds, seconds, warm-up, connections, load generator."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help=duration_help)
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per variant")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
