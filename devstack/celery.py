"""Celery worker and beat as their own processes (``celery -A celery_worker``), as production runs them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from devstack.processes import spawn


def celery_argv(role: str, *options: str, quiet: bool = False) -> list[str]:
    """``celery -A celery_worker [--quiet] <role> <options>`` (``--quiet`` as docker/entrypoint.sh)."""
    return [sys.executable, "-m", "celery", "-A", "celery_worker", *(["--quiet"] if quiet else []), role, *options]


def start_celery(
    role: str, options: list[str], env: Mapping[str, str], log_path: Path, *, quiet: bool = False
) -> subprocess.Popen:
    """A worker or beat (``role``) from the repository root, its output in ``log_path``."""
    return spawn(celery_argv(role, *options, quiet=quiet), log_path, env=dict(env))
