"""One chaos run: start the stack, run workload and nemesis, heal, check, report."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.checker import RECOVERY_MARGIN, Report, check
from bench.chaos.history import Fault, History, Op
from bench.chaos.nemesis import Nemesis
from bench.chaos.stack import Stack
from bench.chaos.workload import User, Workload, plan_pairs

SECTION = "## Chaos (issue 14)"
SHOWN = 5  # violations detailed per kind


@dataclass
class Result:
    topology: str
    seed: int
    seconds: float
    history: History
    report: Report
    faults: Counter = field(default_factory=Counter)
    nemesis_failures: list[str] = field(default_factory=list)
    t0: float = 0.0

    @property
    def ops(self) -> int:
        return len(self.history.ops)

    def statuses(self) -> Counter:
        ops = self.history.ops
        return Counter(f"{op.kind} {op.status if op.status is not None else op.error.split(' ')[0]}" for op in ops)


def run_chaos(
    topology: str, seed: int, seconds: float, replicas: int = 2, keep_logs: bool = False,
    history_path: Path | None = None, log=print,
) -> Result:  # fmt: skip
    stack = Stack(topology, replicas, keep_logs)
    history = History()
    try:
        log(f"starting {topology} stack in {stack.workdir}")
        stack.start()
        users = [User(name, stack.create_user(name)) for name in ("alice", "bob")]
        plan_pairs(users)
        workload = Workload(history, stack.bases, users, stack.cli_env(), seed)
        nemesis = Nemesis(stack, history, seed, log)
        t0 = time.monotonic()
        workload.start()
        nemesis.start()
        time.sleep(seconds)
        nemesis.halt.set()
        nemesis.join(120)
        time.sleep(RECOVERY_MARGIN)  # everything healed: the workload goes on a little
        workload.stop()
        elapsed = time.monotonic() - t0
        stored = stack.stored_values()
    finally:
        stack.stop()
    if history_path is not None:
        history.dump(history_path)
    report = check(history, stored, t0)
    return Result(topology, seed, elapsed, history, report, nemesis.counts, nemesis.failures, t0)


def summary(result: Result) -> str:
    r = result.report
    lines = [
        f"chaos {result.topology} seed {result.seed}: {result.seconds:.0f}s, {result.ops} ops, "
        f"{sum(result.faults.values())} faults",
        "faults: " + ", ".join(f"{k} {v}" for k, v in sorted(result.faults.items())),
        "statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(result.statuses().items())),
        f"stale {len(r.stale)}, lost {len(r.lost)}, unexpected {len(r.unexpected)}",
    ]
    lines += [f"  {count} x {what}" for what, count in by_fault(result).most_common()]
    for name, found in (("stale", r.stale), ("lost", r.lost), ("unexpected", r.unexpected)):
        for line in found[:SHOWN]:
            lines.append(f"  {name}: {line} {fault_context(result, line)}")
    for line in result.nemesis_failures:
        lines.append(f"  nemesis: {line}")
    return "\n".join(lines)


def ops_of(result: Result, line: str) -> list[Op]:
    """The ops a violation names (``#id``): the read, and the change it came after if any."""
    ids = {int(m) for m in re.findall(r"#(\d+)", line)}
    return [o for o in result.history.ops if o.id in ids]


def faults_around(result: Result, line: str) -> list[Fault]:
    """Faults active (or healed within the margin) between the change's start and the read's end."""
    ops = ops_of(result, line)
    start, end = min(o.start for o in ops), max(o.end for o in ops)
    return [f for f in result.history.faults if f.start <= end and start <= f.end + RECOVERY_MARGIN]


def fault_context(result: Result, line: str) -> str:
    near = [
        f"{f.kind}{'' if f.replica is None else f' r{f.replica}'}@{f.start - result.t0:.1f}-{f.end - result.t0:.1f}"
        for f in faults_around(result, line)
    ]
    return f"[faults: {', '.join(near) or 'none'}]"


def by_fault(result: Result) -> Counter:
    """Violations counted by their kind (the text before the first colon) and the faults around them."""
    r = result.report
    counts: Counter = Counter()
    for name, found in (("stale", r.stale), ("lost", r.lost), ("unexpected", r.unexpected)):
        for line in found:
            faults = "+".join(sorted({f.kind for f in faults_around(result, line)})) or "no fault"
            what = re.sub(r"\bd\d+\b", "<id>", line.split(":", 1)[0])
            counts[f"{name}: {what} | {faults}"] += 1
    return counts


def doc_row(result: Result) -> str:
    r = result.report
    faults = ", ".join(f"{k} {v}" for k, v in sorted(result.faults.items()))
    failed = Counter(line.split(":", 1)[0] for line in result.nemesis_failures)
    if failed:  # attempted, not injected (a window of the history all the same)
        faults += "; not injected: " + ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
    counts = f"{len(r.stale)} | {len(r.lost)} | {len(r.unexpected)}"
    return f"| {result.topology} | {result.seed} | {result.seconds / 60:.1f} | {result.ops} | {faults} | {counts} |"
