"""Child processes: started with their output in a log, stopped (SIGTERM, then SIGKILL), in groups."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from devstack.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
# Settings of the tests' ``settings`` fixture that are not environment variables of the service.
NOT_ENV = {"TESTING"}


def service_env(settings: Mapping[str, Any], **extra: Any) -> dict[str, str]:
    """The process environment of a replica (or worker, or beat) on these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "GUNICORN_"))}
    for name, value in {**settings, **extra}.items():
        if name in NOT_ENV or value is None:
            continue
        env[name] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    # No drain before a stop unless asked for: the drain gives a load balancer time to notice
    # (Kubernetes, HAProxy); local runs, tests and benchmarks have none and stop at once.
    env.setdefault("SHUTDOWN_DRAIN_SECONDS", "0")
    return env


def spawn(
    argv: list[str], log_path: Path | None = None, *, append: bool = False, new_session: bool = False, **popen: Any
) -> subprocess.Popen:
    """Start ``argv`` from the repository root, stdin from /dev/null.

    Its stdout and stderr go to ``log_path`` (appended with ``append``), else where ``popen``
    says (/dev/null by default). ``new_session``: its own session and process group, so a Ctrl-C
    in the terminal reaches only the caller, which stops it in its own time.
    """
    options: dict[str, Any] = {"cwd": ROOT, "stdin": subprocess.DEVNULL, "start_new_session": new_session, **popen}
    if log_path is None:
        options.setdefault("stdout", subprocess.DEVNULL)
        options.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(argv, **options)
    with open(log_path, "ab" if append else "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **options)


def wait_started(
    proc: subprocess.Popen,
    check: Callable[[], Any],
    seconds: float,
    what: str,
    ignore: tuple[type[BaseException], ...] = (OSError,),
    interval: float = 0.1,
) -> None:
    """Wait until ``check()`` is true while ``proc`` runs; RuntimeError if it exits or time runs out."""
    wait_until(lambda: proc.poll() is not None or check(), seconds, what=what, ignore=ignore, interval=interval)
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode} during start-up")


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    stop_processes([proc], grace)


def stop_processes(procs: Iterable[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM to every process at once (each stops in its own time, side by side), then SIGKILL
    to those still running ``grace`` seconds later."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def alive(pid: int) -> bool:
    """A live process, not a zombie waiting to be reaped (any process, not only our children)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendants(pid: int) -> list[int]:
    """Children, their children and so on (those in sessions of their own too)."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


class Group:
    """Processes started in their own session, stopped (whole group) in reverse order.

    ``log``, if given, is told which process it stops, and which one needed SIGKILL.
    """

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.procs: list[tuple[str, subprocess.Popen, float]] = []
        self.log = log

    def start(
        self, name: str, argv: list[str], log_path: Path | None = None, *, grace: float = 10, **options: Any
    ) -> subprocess.Popen:
        proc = spawn(argv, log_path, new_session=True, **options)
        self.procs.append((name, proc, grace))
        return proc

    def pids(self) -> list[int]:
        return [proc.pid for _, proc, _ in self.procs]

    def stop(self, proc: subprocess.Popen, grace: float | None = None) -> None:
        name, default = next(((n, g) for n, p, g in self.procs if p is proc), (str(proc.args), 10.0))
        self.procs = [entry for entry in self.procs if entry[1] is not proc]
        grace = default if grace is None else grace
        if proc.poll() is None:
            self._say(f"stopping {name} (pid {proc.pid})")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
            if proc.poll() is None:
                self._say(f"{name} did not stop in {grace:g}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group (workers)
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop_all(self, grace: float | None = None) -> None:
        while self.procs:
            self.stop(self.procs[-1][1], grace)

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


@contextlib.contextmanager
def signals_exit(codes: Mapping[int, int] | None = None) -> Iterator[None]:
    """These signals (default: SIGTERM, 143) exit with their code, so ``finally`` blocks run."""
    codes = dict(codes or {signal.SIGTERM: 143})
    previous = {sig: signal.signal(sig, lambda signum, _frame: sys.exit(codes[signum])) for sig in codes}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Server:
    """A process a test or a benchmark starts and stops itself, its output in ``log_path``:
    ``start()`` is the subclass's; ``stop()`` sends SIGTERM, then SIGKILL after ``grace`` seconds."""

    log_path: Path
    proc: subprocess.Popen | None = None
    grace: float = 15

    def start(self) -> Server:
        raise NotImplementedError

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=self.grace)
        self.proc = None

    def __enter__(self) -> Any:  # the subclass itself
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
