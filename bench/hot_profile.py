"""Where a warm request's time goes, in process (issue 16 §5): the WSGI app called directly.

    . .venv/bin/activate && python -m bench.hot_profile            # about a minute
    python -m bench.hot_profile --profile owner --top 40           # cProfile of one variant
    python -m bench.hot_profile --baseline 78900b0 --doc            # this checkout against a revision

Starts its own redis-server and SecantusDB (demo data, as ``bench/near_bench.py``), builds the
service (``bench.benchapp:app``) and the external ceiling (``bench.bareapp:app``) in this process
and calls each WSGI app with a prepared environ, no HTTP server and no gevent, so what is left is
the Python each request runs: Flask, the request hooks, the lookup, JSON. Prints microseconds of
CPU per request (median of batches) for the warm anonymous lookup, the owner's bearer read of a
private device, the bare app and a warm cached dashboard query (the lookup device's last 24 hours
in 30-minute buckets, its readings a minute apart), their ratios, and optionally the cProfile top
entries. With ``--doc`` it writes the figures and the top entries of the anonymous lookup's and the
dashboard query's profiles into docs/BENCHMARKS.md under "Hot path in process (issue 16)".

With ``--baseline REV`` it times instead the service of this checkout against the service of REV
(``git archive``), each ``wsgi:app`` in a child process of its own (``--child TREE``) on the same
servers and data, batches interleaved and their order alternating: the CPU of a warm anonymous
lookup and of the owner's bearer read, and their ratio (issue 14: the hit path keeps its speed).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench.common import HIT_DEVICE, PREFIX, Servers, bench_env, export, seed
from bench.sections import publish
from devstack.processes import ROOT

SECTION = "## Hot path in process (issue 16)"
BASELINE_SECTION = "## Hot path against the release before the outbox (issue 14)"
LABELS = {
    "l1": "warm anonymous lookup (near cache)",
    "owner": "owner's bearer read of a private device (near cache)",
    "bare": "bare app: one Redis GET (`bench/bareapp.py`)",
    "dash": "cached dashboard query, warm (24 h, 30-minute buckets, `avg`)",
}
DASHBOARD_QUERY = "resolution=30"  # the default range: the last 24 hours
READING_MINUTES = 36 * 60  # a day and a half of readings, a minute apart

PRIVATE_DEVICE = ("demo-00005", "Room 3")


def environ(path: str, headers: dict[str, str], query: str = "") -> dict:
    env = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "wrk",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    env.update({"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    return env


def caller(app, path: str, headers: dict[str, str], query: str = ""):
    template = environ(path, headers, query)  # PATH_INFO is the decoded path, as a WSGI server gives it
    statuses: list[str] = []

    def start_response(status, response_headers, exc_info=None):
        statuses.append(status)

    def call() -> None:
        env = dict(template)
        env["wsgi.input"] = io.BytesIO(b"")
        body = app(env, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    call()
    if not statuses[-1].startswith("200"):
        raise RuntimeError(f"{path} answered {statuses[-1]}")
    return call


def per_request_us(calls: dict, n: int, batches: int) -> dict[str, float]:
    """Median CPU microseconds per request of each call, batches interleaved (the machine's load
    drifts: interleaving keeps the ratios meaningful)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(batches):
        for name, call in calls.items():
            cpu = time.process_time()
            for _ in range(n):
                call()
            samples[name].append((time.process_time() - cpu) / n * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def variants(app, token: str) -> dict:
    """The warm anonymous lookup and the owner's bearer read of a private device, each a call."""
    return {
        "l1": caller(app, f"/api/v1/devices/{HIT_DEVICE[0]}/{HIT_DEVICE[1]}", {}),
        "owner": caller(
            app, f"/api/v1/devices/{PRIVATE_DEVICE[0]}/{PRIVATE_DEVICE[1]}", {"Authorization": f"Bearer {token}"}
        ),
    }


def seed_readings(app, device: tuple[str, str]) -> None:
    """``READING_MINUTES`` of ``temp`` readings a minute apart for ``device``, by the service's code."""
    from app.db import READINGS
    from app.devices.lookup import load_device
    from app.extensions import mongo
    from app.readings.cache import drop_members

    with app.app_context():
        owner = load_device(*device)["owner_id"]
        meta = {"device_id": device[0], "device_name": device[1], "owner_id": owner}
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        docs = [
            {"timestamp": now - dt.timedelta(minutes=m), "meta": meta, "temp": 20 + (m % 97) / 10}
            for m in range(READING_MINUTES)
        ]
        mongo.db[READINGS].insert_many(docs, ordered=False)
        drop_members({(owner, *device)})


def warm(calls: dict) -> None:
    """Near caches subscribed and filled."""
    for call in calls.values():
        for _ in range(200):
            call()
    time.sleep(0.5)


def child(tree: str) -> int:
    """``--child TREE``: TREE's ``wsgi:app`` here; each line of stdin a batch size, each answer a JSON line of
    CPU microseconds per request of each variant."""
    sys.path.insert(0, tree)
    from wsgi import app

    loaded = Path(sys.modules["app"].__file__).resolve()
    if not loaded.is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"the service came from {loaded}, not from {tree}")
    calls = variants(app, os.environ["HOT_PROFILE_TOKEN"])
    warm(calls)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(per_request_us(calls, int(line), 1)), flush=True)
    sys.stdout.flush()
    os._exit(0)  # the service's threads are not the point


def against(rev: str, env: dict, token: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median CPU microseconds per request of each variant, for REV and for this checkout."""
    with tempfile.TemporaryDirectory(prefix="hot-baseline-") as tmp:
        trees = {"baseline": str(export(rev, Path(tmp))), "this checkout": str(ROOT)}
        children = {}
        try:
            for n, (name, tree) in enumerate(trees.items()):
                child_env = {**env, "CACHE_KEY_PREFIX": f"hot{n}:", "HOT_PROFILE_TOKEN": token}
                children[name] = subprocess.Popen(
                    [sys.executable, "-m", "bench.hot_profile", "--child", tree],
                    cwd=ROOT,
                    env=child_env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                if (line := children[name].stdout.readline().strip()) != "ready":
                    raise RuntimeError(f"{name} did not start: {line!r}")
            samples: dict[str, dict[str, list[float]]] = {name: {"l1": [], "owner": []} for name in trees}
            for batch in range(args.batches):
                for name in list(trees)[:: 1 if batch % 2 else -1]:
                    children[name].stdin.write(f"{args.requests}\n")
                    children[name].stdin.flush()
                    for variant, us in json.loads(children[name].stdout.readline()).items():
                        samples[name][variant].append(us)
        finally:
            for proc in children.values():
                proc.kill()
                proc.wait()
    return {name: {v: statistics.median(us) for v, us in by.items()} for name, by in samples.items()}


def baseline_report(us: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    base, this = us["baseline"], us["this checkout"]
    lines = [
        BASELINE_SECTION,
        "",
        f"Measured {stamp} with `python -m bench.hot_profile --baseline {args.baseline} --doc` on {os.cpu_count()} "
        f"cores: the service of `{args.baseline}` (the release before issue 14) and of this checkout, each "
        "`wsgi:app` in a process of its own on the same redis-server, SecantusDB and data, called in process "
        f"with a prepared environ; {args.batches} batches of {args.requests} requests per variant, interleaved, "
        "their order alternating; median CPU microseconds per request. Goal: within 5 %.",
        "",
        f"| variant | `{args.baseline}` CPU us | this checkout CPU us | this / baseline |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("l1", "owner"):
        lines.append(f"| {LABELS[name]} | {base[name]:.1f} | {this[name]:.1f} | {this[name] / base[name]:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="per batch")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--profile", choices=tuple(LABELS), nargs="*", default=[])
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--doc", action="store_true", help="write the section in docs/BENCHMARKS.md")
    parser.add_argument("--baseline", metavar="REV", help="time this checkout against REV instead")
    parser.add_argument("--child", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.baseline:
        with Servers("hot-baseline-") as servers:
            env = bench_env(servers.redis, servers.mongo_port)
            token = seed(env, servers.workdir, 50)["token"]
            us = against(args.baseline, env, token, args)
        publish(baseline_report(us, args), args.doc)
        return 0
    if args.doc:
        args.profile = [*args.profile, *(name for name in ("l1", "dash") if name not in args.profile)]
    with Servers("hot-profile-") as servers:
        env = bench_env(servers.redis, servers.mongo_port)
        demo = seed(env, servers.workdir, 50)
        os.environ.update(env)
        from bench.bareapp import BARE_KEY
        from bench.bareapp import app as bare_app
        from bench.benchapp import app

        try:
            calls = variants(app, demo["token"])
            body = app.test_client().get(f"/api/v1/devices/{quote(HIT_DEVICE[0])}/{quote(HIT_DEVICE[1])}").data
            app.extensions["shared_cache"].client.set(PREFIX + BARE_KEY, body)
            calls["bare"] = caller(bare_app, "/", {})
            seed_readings(app, HIT_DEVICE)
            readings = f"/api/v1/devices/{HIT_DEVICE[0]}/{HIT_DEVICE[1]}/readings/temp"
            calls["dash"] = caller(app, readings, {}, DASHBOARD_QUERY)
            warm(calls)
            us = per_request_us(calls, args.requests, args.batches)
            for name, value in us.items():
                ratios = f"bare/this {us['bare'] / value:.2f}   l1/this {us['l1'] / value:.2f}"
                print(f"{name:6s} {value:7.1f} us CPU/request   {ratios}")
            profiles = {}
            for name in args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.requests):
                    calls[name]()
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
                print(f"\n=== {name}: {args.requests} requests, sorted by {args.sort}")
                print(out.getvalue())
                profiles[name] = profiler
        finally:
            app.extensions["shared_cache"].stop()
    if args.doc:
        publish(report(us, profiles, args), write=True)
    return 0


def report(us: dict[str, float], profiles: dict[str, cProfile.Profile], args: argparse.Namespace) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"Measured {stamp} with `python -m bench.hot_profile --doc` on {os.cpu_count()} cores (shared with other "
        "work: ratios are the point, batches interleaved): each WSGI app called in process with a prepared "
        f"environ, no HTTP server and no gevent; {args.batches} batches of {args.requests} requests per variant, "
        "median CPU microseconds per request. What HTTP adds (gunicorn, gevent, sockets) is the same for every "
        "variant, so the ratios over HTTP (`near_bench.py`) are closer to 1 than these. The dashboard query reads "
        f"{READING_MINUTES // 60} hours of readings a minute apart of the lookup's device.",
        "",
        "| variant | CPU us per request | req/s over the bare app's (same CPU) | over the warm anonymous lookup's |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, label in LABELS.items():
        lines.append(f"| {label} | {us[name]:.1f} | {us['bare'] / us[name]:.2f} | {us['l1'] / us[name]:.2f} |")
    titles = {"l1": "the warm anonymous lookup", "dash": "the cached dashboard query"}
    for name, title in titles.items():
        lines += ["", *profile_table(profiles[name], f"Where {title}'s time goes", args.requests)]
    return "\n".join(lines) + "\n"


def profile_table(profiler: cProfile.Profile, title: str, requests: int) -> list[str]:
    """A profile's functions at 5 % or more of the cumulative time, as a table."""
    rows = sorted(pstats.Stats(profiler).stats.items(), key=lambda item: -item[1][3])  # cumulative time
    total = max(row[1][3] for row in rows)
    lines = [
        f"{title} (cProfile, {requests} requests; cumulative share of the request, functions at 5 % or more, "
        "the profiler's own overhead included):",
        "",
        "| function | calls per request | cumulative share |",
        "| --- | ---: | ---: |",
    ]
    for (path, line, func), (_, calls, _, cumulative, _) in rows:
        share = cumulative / total
        if share < 0.05:
            break
        where = path.split("site-packages/")[-1].removeprefix(os.getcwd() + "/")
        lines.append(f"| `{where}:{line}({func})` | {calls / requests:g} | {share:.0%} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
