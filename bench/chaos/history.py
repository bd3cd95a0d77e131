"""The recorded history of a chaos run: every operation and every fault, with monotonic times."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Operation kinds. Changes: create_key, delete_key, rotate. Reads: push (judged on acceptance),
# lookup, readings, bearer (a request authenticated by a user's token).
CHANGES = ("create_key", "delete_key", "rotate")


@dataclass
class Op:
    """One request as the client saw it. ``status`` None: no HTTP answer (``error`` says why);
    a CLI command's exit 0 is recorded as 200, exit 1 (a refused change) as 503, others as 500."""

    kind: str
    replica: int | None
    start: float
    end: float = 0.0
    req: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    error: str | None = None
    resp: dict[str, Any] = field(default_factory=dict)
    id: int = 0

    @property
    def pair(self) -> tuple[str, str]:
        return self.req["device_id"], self.req["device_name"]


@dataclass
class Fault:
    """A fault from its injection to its heal; ``replica`` None: it hits every replica."""

    kind: str
    start: float
    end: float
    replica: int | None = None
    detail: str = ""


class History:
    """Thread-safe append-only record of ops and faults."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def begin(self, kind: str, replica: int | None, **req: Any) -> Op:
        return Op(kind, replica, time.monotonic(), req=req, id=next(self._ids))

    def finish(self, op: Op, status: int | None, resp: dict[str, Any] | None = None, error: str | None = None) -> Op:
        op.end, op.status, op.error, op.resp = time.monotonic(), status, error, resp or {}
        with self._lock:
            self.ops.append(op)
        return op

    def fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def dump(self, path: Path) -> None:
        with self._lock:
            data = {"ops": [asdict(o) for o in self.ops], "faults": [asdict(f) for f in self.faults]}
        path.write_text(json.dumps(data))

    @staticmethod
    def load(path: Path) -> History:
        data = json.loads(path.read_text())
        history = History()
        history.ops = [Op(**o) for o in data["ops"]]
        history.faults = [Fault(**f) for f in data["faults"]]
        return history
