"""Logging to stdout in one format for web and worker, configured once."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str) -> None:
    """Idempotent: a second ``create_app`` (tests, the worker) only adjusts the level."""
    root = logging.getLogger()
    if not any(getattr(h, "_opensensor", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._opensensor = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("app").setLevel(level)
