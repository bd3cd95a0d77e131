"""Debian's HAProxy on a free loopback port in front of replicas, health-checking their readiness.

For what a test or benchmark of a rolling update needs: a real load balancer that takes a replica
out when its ``/health`` stops answering 200 (checked every ``inter``; ``fall`` failures in a row:
2, so one slow probe on a busy machine does not empty the pool) and back in at the first 200, and
that sends a request whose connection was refused to another replica (``retries`` + ``option
redispatch``; a refused connection carried nothing, so retrying it is safe). Its admin socket
answers ``show stat``: ``states()`` tells which servers it sees up.
"""

from __future__ import annotations

import csv
import io
import socket
import subprocess
from pathlib import Path

from devstack.ports import free_port
from devstack.processes import Server, spawn, wait_started
from devstack.wait import wait_until

CONFIG = """\
global
    maxconn 2000
    stats socket {socket} mode 600 level admin

defaults
    mode http
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 10s
    timeout check 2s
    retries 3
    option redispatch 1
    retry-on conn-failure

frontend web
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET {check}
    http-check expect status 200
    default-server inter {inter_ms}ms fastinter {inter_ms}ms downinter {inter_ms}ms fall {fall} rise 1
{servers}
"""


class HAProxy(Server):
    """``haproxy -db -f <config>`` (foreground) in ``workdir``; ``start()`` returns once it answers."""

    def __init__(
        self, ports: list[int], workdir: Path, *, check: str = "/health", inter_ms: int = 200, fall: int = 2
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.socket_path = workdir / "haproxy.sock"
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        servers = "\n".join(f"    server r{n} 127.0.0.1:{port} check" for n, port in enumerate(ports))
        self.config = CONFIG.format(
            socket=self.socket_path, port=self.port, check=check, inter_ms=inter_ms, fall=fall, servers=servers
        )
        self.proc: subprocess.Popen | None = None
        self.grace = 5

    def start(self, seconds: float = 10) -> HAProxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        self.proc = spawn(["haproxy", "-db", "-f", str(self.config_path)], self.log_path)
        wait_started(self.proc, lambda: self.socket_path.exists() and self.states() is not None, seconds, "haproxy")
        return self

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it now (``UP``, ``DOWN``, ...), by name (r0, r1, ...)."""
        rows = csv.DictReader(io.StringIO(self.admin("show stat").lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "replicas" and row["svname"][0] == "r"}

    def wait_state(self, server: str, status: str, seconds: float = 15) -> None:
        wait_until(lambda: self.states().get(server, "").startswith(status), seconds, what=f"{server} {status}")
