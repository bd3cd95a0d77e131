"""``python -m bench.chaos --seed N --minutes M --topology standalone|sentinel|cluster``.

Exits 1 on any stale read, lost write or unexpected status; writes its row (one per topology, the
others kept) into docs/BENCHMARKS.md "Chaos (issue 14)" unless ``--no-doc``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from bench.chaos.checker import RECOVERY_MARGIN
from bench.chaos.run import SECTION, Result, by_fault, doc_row, run_chaos, summary
from bench.sections import DOC, write_report
from devstack.processes import signals_exit

HEADER = "| topology | seed | minutes | ops | faults | stale | lost | unexpected |\n|---|---|---|---|---|---|---|---|"


def report_text(result: Result, doc: Path = DOC) -> str:
    """The section with this topology's row replaced (or added), the other topologies' kept."""
    rows = {}
    if doc.exists() and SECTION in doc.read_text():
        body = doc.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
        for line in body.splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 2 and cells[1] in ("standalone", "sentinel", "cluster"):
                rows[cells[1]] = line
    rows[result.topology] = doc_row(result)
    order = [t for t in ("standalone", "sentinel", "cluster") if t in rows]
    return "\n".join([
        SECTION, "",
        "`python -m bench.chaos --seed N --minutes M --topology T` (bench/README.md): two gunicorn replicas on "
        "fresh connections (keys created and deleted, `users rotate-token`, pushes of unique values, lookups, "
        "readings reads, half of them ending now: kept whole) while a nemesis injects one fault at a time; the "
        "history is checked for stale reads, "
        "lost writes (MongoDB read directly after healing) and unexpected statuses (a 503 is expected only "
        f"during a fault or {RECOVERY_MARGIN:g} s after it).",
        "", HEADER, *(rows[t] for t in order), "",
        f"Last run: {result.topology}, {dt.date.today().isoformat()}."
        + "".join(f"\n- {n} x {what}" for what, n in by_fault(result).most_common(8)),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--topology", choices=("standalone", "sentinel", "cluster"), default="standalone")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--history", type=Path, help="write the recorded history (JSON) here")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    with signals_exit():
        result = run_chaos(args.topology, args.seed, args.minutes * 60, args.replicas, args.keep_logs, args.history)
    print(summary(result))
    if not args.no_doc:
        write_report(report_text(result))
        print(f"written to {DOC}")
    return 0 if result.report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
