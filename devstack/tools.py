"""The programs besides Python that local runs, tests and benchmarks use: found, or installed with apt-get.

Debian packages are installed only when missing and running as root with apt-get available;
elsewhere the caller is told what to install.

    python -m devstack.tools tests      # what scripts/test needs, RabbitMQ started
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from devstack.ports import listening
from devstack.rabbitmq import PORT as RABBITMQ_PORT
from devstack.rabbitmq import ensure_rabbitmq

# Commands the tests run -> their Debian package: the cache, Sentinel sets and Clusters; alert rules
# and the real-Prometheus test; the dashboard's browser test (Playwright drives it, never downloads one);
# the rolling restart behind a real load balancer.
TEST_COMMANDS = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "chromium": "chromium",
    "haproxy": "haproxy",
}


def can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(*packages: str, say: str | None = None) -> bool:
    """apt-get install, running apt-get update first only when the package lists lack them."""
    if say:
        print(say, file=sys.stderr, flush=True)
    quiet = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    }
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(install, **quiet).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-qq"], **quiet)
    return subprocess.run(install, **quiet).returncode == 0


def ensure_commands(commands: dict[str, str]) -> list[str]:
    """Install the packages of the missing ``commands`` (as root); returns the commands still missing."""
    missing = sorted({package for command, package in commands.items() if shutil.which(command) is None})
    if missing and can_apt():
        apt_install(*missing, say=f"installing {' '.join(missing)} with apt-get")
    return [command for command in commands if shutil.which(command) is None]


def ensure_redis_binary() -> None:
    """redis-server on PATH, installed with apt-get when missing and root."""
    if ensure_commands({"redis-server": "redis-server"}):
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")


def ensure_test_tools() -> None:
    """What the tests run besides Python, and RabbitMQ on 127.0.0.1:5672 (Celery's amqp:// broker)."""
    missing = ensure_commands(TEST_COMMANDS)
    if missing:
        raise SystemExit(f"missing (install them first): {' '.join(missing)}")
    if not listening(RABBITMQ_PORT) and shutil.which("rabbitmq-server") is None and can_apt():
        apt_install("rabbitmq-server", say="installing rabbitmq-server with apt-get")
    ensure_rabbitmq()


if __name__ == "__main__":
    if sys.argv[1:] != ["tests"]:
        raise SystemExit("usage: python -m devstack.tools tests")
    ensure_test_tools()
