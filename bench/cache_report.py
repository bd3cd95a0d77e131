"""The report of ``bench/cache_bench.py``: its section of docs/BENCHMARKS.md, tables and prose."""

from __future__ import annotations

import statistics

from bench.common import GUNICORN_SETTINGS, HIT_DEVICE, PREFIX, fmt_ratio, med
from bench.load import LoadGen

SECTION = "## Cache hit path (issue 3)"
VARIANTS = ("hit", "ceiling", "memoize", "uncached")
LABELS = {
    "hit": "hit: lookup route, warm (SharedCache)",
    "ceiling": "(a) ceiling: one Redis GET",
    "memoize": "(b) Flask-Caching `@cache.memoize`",
    "uncached": "(c) uncached MongoDB lookup",
    "hung": "(d) lookup route, Redis hung (SIGSTOP)",
}


def row(label: str, rps: float, p50: float, p99: float, base: tuple[float, float, float], non2xx: str) -> str:
    """One table row: figures and their ratio to the ceiling's (latencies in microseconds)."""
    cells = [label]
    for value, ref, scale, fmt in ((rps, base[0], 1, ",.0f"), (p50, base[1], 1000, ".2f"), (p99, base[2], 1000, ".2f")):
        cells += [format(value / scale, fmt), fmt_ratio(value, ref)]
    return "| " + " | ".join([*cells, non2xx]) + " |"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def variants_table(runs: dict, hung: dict | None) -> list[str]:
    """Each variant's median figures and their ratios to (a), the ceiling."""
    base = runs["ceiling"]
    ref = (med(base, "rps"), med(base, "p50_us"), med(base, "p99_us"))
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
    return lines


def goals_table(runs: dict, check: dict, hung: dict | None, trials: list[dict], args) -> list[str]:
    """The goals of issue 3, each with its measured figure and whether it is met."""
    base_rps = med(runs["ceiling"], "rps")
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
    return goals


def rounds_table(runs: dict, rounds: int) -> list[str]:
    """Requests/s of each variant per round, with the CPU other processes used meanwhile."""
    heads = [LABELS[n].split(":")[0] for n in VARIANTS]
    lines = ["| round | " + " | ".join(heads) + " | hit ÷ (a) | hit ÷ (b) |", "| --- |" + " ---: |" * (len(heads) + 2)]
    for i in range(rounds):
        cells = [f"{runs[n][i]['rps']:,.0f} ({runs[n][i]['others']:.0%})" for n in VARIANTS]
        hit_i = runs["hit"][i]["rps"]
        cells += [f"{hit_i / runs['ceiling'][i]['rps']:.2f}", f"{hit_i / runs['memoize'][i]['rps']:.2f}"]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return lines


def stampede_table(trials: list[dict]) -> list[str]:
    if not trials:
        return []
    lines = ["| device | MongoDB loads | misses | 200s | seconds for all |", "| --- | ---: | ---: | ---: | ---: |"]
    for t in trials:
        lines.append(
            f"| `{t['device'][0]}` / `{t['device'][1]}` | {t['loads']} | {t['misses']} | {t['ok']}/{t['requests']}"
            f" | {t['seconds']:.2f} |"
        )
    return lines


def micro_table(per_call: dict) -> str:
    ref_call = per_call["ceiling"]
    text = (
        "\nIn-process cost of one lookup call, without HTTP (`bench/lookup_micro.py`: sequential calls in one process,"
        "\nno gevent, against the same servers; median of 3 batches; ratios to (a)):\n\n"
        "| call | wall µs | × (a) | CPU µs | × (a) |\n| --- | ---: | ---: | ---: | ---: |\n"
    )
    for name, figures in per_call.items():
        text += (
            f"| {name} | {figures['wall_us']:.1f} | {fmt_ratio(figures['wall_us'], ref_call['wall_us'])}"
            f" | {figures['cpu_us']:.1f} | {fmt_ratio(figures['cpu_us'], ref_call['cpu_us'])} |\n"
        )
    return text


def report(runs, check, hung, trials, per_call, info, load: LoadGen, args, command: str) -> str:
    measured = [r for n in VARIANTS for r in runs[n]] + ([hung] if hung else [])
    others_mean = statistics.mean(r["others"] for r in measured)
    others_max = max(r["others"] for r in measured)
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

- hit: `GET /api/v1/devices/<id>/<name>`, no credentials, served by `SharedCache.get` (one GET, warm).
- (a) `/bench/ceiling`: one GET of a {info["value_bytes"]}-byte copy of that value on the cache's own client
  (`app.extensions["shared_cache"].client`), JSON-decoded, answered with the same body.
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

{chr(10).join(variants_table(runs, hung))}

Goals of issue 3:

{chr(10).join(goals_table(runs, check, hung, trials, args))}

Requests/s per round (in brackets: CPU used by other processes on the machine during that run, as a share of
all cores; the bench cannot stop them, and above a few per cent they make the figures noisy):

{chr(10).join(rounds_table(runs, args.rounds))}
"""
    text += micro_table(per_call)
    stampede_lines = stampede_table(trials)
    if stampede_lines:
        text += "\nStampede trials (each a different cold device):\n\n" + "\n".join(stampede_lines) + "\n"
    return text
