"""Whether this process is draining before it stops, so readiness can answer 503 meanwhile.

The server tells it: gunicorn.conf.py hands each worker's app a function that reads the flag
its master raises on SIGTERM. The app installs no signal handler of its own (tests, the CLI and
Celery build apps too); without a server watching, it never drains.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, current_app


def _never() -> bool:
    return False


class Shutdown:
    def __init__(self) -> None:
        self._draining: Callable[[], bool] = _never

    def watch(self, draining: Callable[[], bool]) -> None:
        """Read ``draining()`` at each readiness probe from now on (cheap: it is polled)."""
        self._draining = draining

    @property
    def draining(self) -> bool:
        return bool(self._draining())


def init_shutdown(app: Flask) -> Shutdown:
    instance = Shutdown()
    app.extensions["shutdown"] = instance
    return instance


def shutdown() -> Shutdown:
    return current_app.extensions["shutdown"]
