"""The one way to wait for something to become true: a server answering, a failover, a cache settling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    condition: Callable[[], Any],
    seconds: float = 10.0,
    *,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    interval: float = 0.01,
) -> bool:
    """Poll ``condition`` every ``interval`` seconds until it is true (True) or ``seconds`` pass.

    On time-out: False, or with ``what`` a ``RuntimeError("timed out waiting for <what>")``.
    Exceptions of the types in ``ignore`` count as not yet (a server still starting refuses
    connections); any other propagates. Considered: tenacity, which the service does not
    otherwise need for a loop of a few lines.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return True
        except ignore:
            pass
        if time.monotonic() > deadline:
            if what is None:
                return False
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)
