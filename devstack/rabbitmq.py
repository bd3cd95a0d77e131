"""RabbitMQ on 127.0.0.1:5672, Celery's amqp:// broker in the tests: started if installed but not running."""

from __future__ import annotations

import shutil
import subprocess
import sys

from devstack.ports import listening
from devstack.wait import wait_until

PORT = 5672


def ensure_rabbitmq(seconds: float = 120) -> None:
    """Return once RabbitMQ answers on 127.0.0.1:5672, started (``rabbitmq-server -detached``, left
    running for the next run) when it does not."""
    if listening(PORT):
        return
    if shutil.which("rabbitmq-server") is None:
        raise SystemExit("RabbitMQ is not installed")
    print("starting RabbitMQ", file=sys.stderr, flush=True)
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(["rabbitmq-server", "-detached"], **quiet)  # a failure shows as no answer below
    if not wait_until(lambda: listening(PORT), seconds, interval=0.5):
        raise SystemExit(f"RabbitMQ did not answer on 127.0.0.1:{PORT} within {seconds:g} s")
