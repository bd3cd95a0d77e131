"""What one run did: counted as it goes, printed at the end as text and, on the last line, as JSON."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import click


@dataclass
class Report:
    dry_run: bool
    users: Counter[str] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    readings: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    dropped_values: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # the whole run, reading the source included

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "users": dict(self.users),
            "keys": dict(self.keys),
            "readings": dict(self.readings),
            "skipped": dict(self.skipped.most_common()),
            "dropped_values": dict(self.dropped_values.most_common()),
        }


def print_report(report: Report, out: TextIO) -> None:
    title = "dry run: nothing was written" if report.dry_run else "import finished"
    lines = [
        title,
        f"users: {report.users['imported']} imported, {report.users['existing']} already here",
        f"keys: {report.keys['imported']} imported, {report.keys['existing']} already here"
        + (f", {report.keys['replaced']} replaced by a newer opensensor key" if report.keys["replaced"] else ""),
        f"readings: {report.readings['imported']} imported in {report.seconds:.1f} s"
        f" ({report.readings['imported'] / max(report.seconds, 1e-9):,.0f} per second)",
    ]
    lines += [f"skipped {count}: {reason}" for reason, count in report.skipped.most_common()]
    lines += [f"values dropped {count}: {reason}" for reason, count in report.dropped_values.most_common()]
    for line in lines:
        click.echo(line, file=out)
    click.echo(json.dumps(report.as_dict()), file=out)
