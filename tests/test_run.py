"""scripts/run end to end: the whole service from one command, and Ctrl-C stops all it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

from devstack.ports import free_port, listening
from devstack.processes import ROOT, alive, descendants
from devstack.web import http_get
from tests.helpers import wait_until

# Where the service's servers are: unset, so that scripts/run starts its own.
SERVERS = ("MONGO_URI", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES", "CELERY_BROKER_URL")


def run_env(port: int, instance: Path) -> dict[str, str]:
    """The test's environment, with nothing answering at REDIS_URL and no MONGO_URI."""
    env = {k: v for k, v in os.environ.items() if k not in SERVERS and not k.startswith(("PROMETHEUS_", "GUNICORN_"))}
    env.update(PORT=str(port), INSTANCE_DIR=str(instance), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    return env


def test_scripts_run_serves_demo_devices_and_stops_everything_it_started_on_sigint(tmp_path):
    """Its own redis-server and SecantusDB, the demo data of a first run, web + worker + beat;
    SIGINT (Ctrl-C) leaves no process behind and exits 130."""
    port, instance, log_path = free_port(), tmp_path / "instance", tmp_path / "run.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(ROOT / "scripts" / "run")], env=run_env(port, instance), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        up = wait_until(lambda: proc.poll() is None and http_get(base + "/health")[0] == 200, 120, ignore=(OSError,))
        assert up, log_path.read_text()
        device = json.loads((instance / "demo.json").read_text())["device"]
        status, body = http_get(f"{base}/api/v1/devices/{quote(device['device_id'])}/{quote(device['device_name'])}")
        assert status == 200 and json.loads(body)["device_id"] == device["device_id"], body
        assert f"export BASE={base} " in (instance / "env.sh").read_text()
        started = descendants(proc.pid)
        assert len(started) >= 5, started  # redis-server, SecantusDB, honcho and what it runs
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
    assert code == 130, log_path.read_text()
    assert [pid for pid in started if alive(pid)] == [], log_path.read_text()
    assert not listening(port)
    assert not (instance / "run.pid").exists() and not (instance / "redis.pid").exists()
