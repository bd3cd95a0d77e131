"""MongoDB for local runs, tests and benchmarks: SecantusDB in-process or as its ``secantusd-py`` process."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from devstack.ports import free_port
from devstack.processes import Group, wait_started


class MongoServer:
    """SecantusDB in-process (a MongoDB wire server on WiredTiger), restartable on its port."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secantus-test-")
        self.port = free_port()
        self.server = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> None:
        from secantus import SecantusDBServer

        self.server = SecantusDBServer(port=self.port, storage_path=self.dir, ttl_sweep_seconds=3600)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            # SecantusDB's stop closes its listening socket, which does not wake the thread blocked
            # in accept() on Linux: it then waits 2 s for that thread. A shutdown() wakes it at once.
            listener = getattr(self.server, "_socket", None)
            if listener is not None:
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
            self.server.stop()
            self.server = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def mongo_base_uri() -> str | None:
    """A set MONGO_URI (without its database) replaces the embedded server."""
    uri = os.environ.get("MONGO_URI")
    if not uri:
        return None
    head, _, _ = uri.partition("?")
    scheme, _, rest = head.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}"


def mongo_ping(uri: str) -> bool:
    """Whether a MongoDB answers ``ping`` at ``uri`` within half a second."""
    client = MongoClient(uri, serverSelectionTimeoutMS=500)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def fail_command(uri: str, mode: str | dict, **data: object) -> None:
    """Set SecantusDB's ``failCommand`` fail point (``mode``: ``"alwaysOn"``, ``{"times": n}``,
    ``"off"``; ``data``: ``failCommands``, ``errorCode``, ``blockConnection``, ``blockTimeMS``)."""
    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        client.admin.command("configureFailPoint", "failCommand", mode=mode, data=data)
    finally:
        client.close()


def secantusd_binary() -> str:
    return shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))


def secantusd_argv(port: int, storage: Path, *extra: str) -> list[str]:
    return [secantusd_binary(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage),
            "--log-level", "WARNING", *extra]  # fmt: skip


def start_secantusd(
    group: Group, storage: Path, log_path: Path, seconds: float = 30, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, int]:
    """``secantusd-py`` on a free port, its data in ``storage``; returns once it answers ``ping``.

    ``extra``: more options (``--enable-test-commands`` for ``configureFailPoint``).
    """
    port = free_port()
    proc = group.start("secantusd", secantusd_argv(port, storage, *extra), log_path)
    wait_started(proc, lambda: mongo_ping(f"mongodb://127.0.0.1:{port}/"), seconds, "SecantusDB")
    return proc, port
