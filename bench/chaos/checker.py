"""The checker: stale reads, lost writes and unexpected statuses in a recorded history.

A change is judged by its response: a read that *started* after the change's response *ended*
must not see the state the change replaced. Reads that overlap a change of what they read are
not judged (either answer is linearizable). The workload changes each pair and each user's token
one change at a time, so a pair's state at an instant is that of its last change ended before it.

A change whose outcome is unknown (503, no answer) leaves the state unknown until the next change
with a known outcome. Statuses: any 5xx but 503 is unexpected; a 503 or a request left without an
answer is expected only while a fault is active or within ``RECOVERY_MARGIN`` seconds of its heal
(a request without an answer only for the faults in ``NO_ANSWER_FAULTS``, on its own replica).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.chaos.history import Fault, History, Op

RECOVERY_MARGIN = 5.0  # seconds after a heal during which a 503 still counts as the fault's
# Faults after which a request may go unanswered (its connection reset or refused): a process ended.
NO_ANSWER_FAULTS = ("worker_kill", "replica_restart")
PRESENT, ABSENT = "present", "absent"


@dataclass
class Report:
    stale: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.stale or self.lost or self.unexpected)


def describe(op: Op, t0: float = 0.0) -> str:
    status = op.status if op.status is not None else op.error
    req = {k: v for k, v in op.req.items() if k != "token"}
    return f"#{op.id} {op.kind} r{op.replica} [{op.start - t0:.3f}-{op.end - t0:.3f}] {req} -> {status} {op.resp}"


class PairTimeline:
    """The changes of one pair, in order: what state a read of [start, end] must see, if known."""

    def __init__(self, changes: list[Op]) -> None:
        self.changes = sorted(changes, key=lambda o: o.start)

    def state(self, start: float, end: float) -> tuple[str | None, Op | None]:
        last = None
        for change in self.changes:
            if change.end < start:
                last = change
            elif change.start < end:
                return None, change  # a change overlaps the read: not judged
        if last is None:
            return ABSENT, None
        return outcome(last), last


def outcome(change: Op) -> str | None:
    if change.kind == "create_key":
        return PRESENT if change.status in (201, 409) else None
    return ABSENT if change.status in (204, 404) else None


def timelines(ops: Iterable[Op]) -> dict[tuple[str, str], PairTimeline]:
    by_pair: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind in ("create_key", "delete_key"):
            by_pair[op.pair].append(op)
    return {pair: PairTimeline(changes) for pair, changes in by_pair.items()}


def after(op: Op, change: Op) -> str:
    """Which change a read came after, and how long after its response it started."""
    return f"after #{change.id} (+{(op.start - change.end) * 1000:.0f} ms)"


def check_lookups(ops: list[Op], lines: dict, t0: float) -> list[str]:
    """A lookup's found/unknown and its chain against the pairs' states when it started."""
    chains: dict[tuple[str, str], set[str]] = defaultdict(set)  # (owner, name) -> ids
    owner_of = {}
    for op in ops:
        if op.kind == "create_key":
            chains[op.req["user"], op.req["device_name"]].add(op.req["device_id"])
            owner_of[op.pair] = op.req["user"]
    found = []
    for op in ops:
        if op.kind not in ("lookup", "readings") or op.status not in (200, 404) or op.pair not in lines:
            continue
        state, change = lines[op.pair].state(op.start, op.end)
        if state == PRESENT and op.status == 404:
            found.append(f"unknown after its key's create answered: {describe(op, t0)} {after(op, change)}")
        elif state == ABSENT and op.status == 200:
            why = after(op, change) if change else "never created"
            found.append(f"found after its last key's delete answered: {describe(op, t0)} {why}")
        if op.status != 200 or "chain" not in op.resp:
            continue
        for device_id in sorted(chains[owner_of[op.pair], op.pair[1]] - {op.pair[0]}):  # itself: judged above
            other = (device_id, op.pair[1])
            state, change = lines[other].state(op.start, op.end)
            shown = device_id in op.resp["chain"]
            if (state == PRESENT and not shown) or (state == ABSENT and shown and change is not None):
                where = "in" if shown else "out"
                found.append(f"chain shows {device_id} {where}: {describe(op, t0)} {after(op, change)}")
    return found


def check_pushes(ops: list[Op], lines: dict, t0: float) -> list[str]:
    """A push accepted with a key already deleted; a new key refused after its create answered."""
    deleted: dict[str, Op] = {}
    created: dict[str, Op] = {}
    for op in ops:
        if op.kind == "delete_key" and op.status in (204, 404):
            first = deleted.get(op.req["key_id"])
            deleted[op.req["key_id"]] = op if first is None or op.end < first.end else first
        if op.kind == "create_key" and op.status == 201:
            created[op.resp["key_id"]] = op
    found = []
    for op in ops:
        if op.kind != "push":
            continue
        gone = deleted.get(op.req["key_id"])
        if op.status == 201 and gone is not None and gone.end < op.start:
            found.append(f"push accepted with a deleted key: {describe(op, t0)} {after(op, gone)}")
        if op.status in (401, 403) and op.pair in lines:
            state, change = lines[op.pair].state(op.start, op.end)
            made = created.get(op.req["key_id"])
            if state == PRESENT and made is not None and change is made:
                found.append(f"push refused with a live key: {describe(op, t0)} {after(op, made)}")
    return found


def check_tokens(ops: list[Op], t0: float) -> list[str]:
    """A token accepted after a rotate that replaced it answered; the new one refused after it."""
    issued: dict[str, float] = {}  # token -> when the client got it (0: before the run)
    rotates: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "rotate":
            rotates[op.req["user"]].append(op)
            if op.status == 200:
                issued[op.resp["token"]] = op.end
    found = []
    for op in ops:
        token = op.req.get("token")
        if token is None or op.kind == "rotate" or op.status is None or op.status >= 500:
            continue
        mine = sorted(rotates[op.req["user"]], key=lambda r: r.start)
        born = issued.get(token, 0.0)
        if op.status != 401:
            replaced = [r for r in mine if r.status == 200 and born < r.start and r.end < op.start]
            if replaced:
                found.append(f"old token accepted: {describe(op, t0)} after rotate #{replaced[0].id}")
        else:
            last = [r for r in mine if r.start < op.end][-1:]
            if last and last[0].status == 200 and last[0].resp.get("token") == token and last[0].end < op.start:
                found.append(f"new token refused: {describe(op, t0)} after rotate #{last[0].id}")
    return found


def check_readings(ops: list[Op], t0: float) -> list[str]:
    """A readings query must count every push of its pair answered 201 before it started."""
    acked: dict[tuple[str, str], list[float]] = defaultdict(list)
    for op in ops:
        if op.kind == "push" and op.status == 201:
            acked[op.pair].append(op.end)
    found = []
    for op in ops:
        if op.kind == "readings" and op.status == 200:
            before = sum(1 for end in acked[op.pair] if end < op.start)
            if op.resp["count"] < before:
                found.append(f"{before} pushes acknowledged before, {op.resp['count']} counted: {describe(op, t0)}")
    return found


def check_lost(ops: list[Op], stored: dict[tuple[str, str], set[float]], t0: float) -> list[str]:
    """Every push answered 201 is in MongoDB once everything is healed (``stored``: values by pair)."""
    return [
        f"acknowledged push missing from MongoDB: {describe(op, t0)}"
        for op in ops
        if op.kind == "push" and op.status == 201 and float(op.req["value"]) not in stored.get(op.pair, set())
    ]


def excused(op: Op, faults: list[Fault], kinds: tuple[str, ...] | None) -> bool:
    for fault in faults:
        if kinds is not None and (fault.kind not in kinds or fault.replica not in (None, op.replica)):
            continue
        if fault.start <= op.end and op.start <= fault.end + RECOVERY_MARGIN:
            return True
    return False


def check_statuses(ops: list[Op], faults: list[Fault], t0: float) -> list[str]:
    found = []
    for op in ops:
        if op.status is not None and op.status >= 500 and op.status != 503:
            found.append(f"{op.status}: {describe(op, t0)}")
        elif op.status == 503 and not excused(op, faults, None):
            found.append(f"503 with no fault active: {describe(op, t0)}")
        elif op.status is None and op.kind != "rotate" and not excused(op, faults, NO_ANSWER_FAULTS):
            found.append(f"no answer ({op.error}) with no process of its replica ended: {describe(op, t0)}")
    return found


def check(history: History, stored: dict[tuple[str, str], set[float]], t0: float = 0.0) -> Report:
    ops = sorted(history.ops, key=lambda o: o.start)
    lines = timelines(ops)
    report = Report()
    report.stale = [
        *check_pushes(ops, lines, t0),
        *check_lookups(ops, lines, t0),
        *check_tokens(ops, t0),
        *check_readings(ops, t0),
    ]
    report.lost = check_lost(ops, stored, t0)
    report.unexpected = check_statuses(ops, history.faults, t0)
    return report
