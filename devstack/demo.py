"""What ``scripts/run`` adds to the service it runs: the schema, demo data on the first run, and how to reach it.

``instance/demo.json`` keeps the first run's credentials (an admin, the demo owner, a device key);
``instance/env.sh`` is rewritten on each start with the environment of the running service.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devstack.processes import ROOT

# The service's settings a shell needs to reach the running service with ``flask --app wsgi …``.
ENV_SH_VARIABLES = ("MONGO_URI", "REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_CLUSTER_NODES",
                    "CELERY_BROKER_URL", "CACHE_KEY_PREFIX")  # fmt: skip


def flask(*args: str, stdout: Any = subprocess.PIPE, stderr: Any = None) -> subprocess.CompletedProcess:
    """``flask --app wsgi <args>`` from the repository root (its output as text)."""
    argv = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
    return subprocess.run(argv, cwd=ROOT, stdout=stdout, stderr=stderr, text=True, check=False)


def checked(result: subprocess.CompletedProcess) -> str:
    """The output of a command that must succeed (else its exit code ends the run, as ``set -e`` did)."""
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout)
    return result.stdout


def last_json(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (``umask 077``: a new file is 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def create_admin(log: Callable[[str], None]) -> dict[str, Any]:
    """``users create admin --admin``; ``admin-<6 hex>`` when an ``admin`` exists already."""
    result = flask("users", "create", "admin", "--admin", stderr=subprocess.STDOUT)
    if result.returncode == 0:
        return last_json(result.stdout)
    if "already exists" not in result.stdout:
        log(f"users create failed: {result.stdout.rstrip()}")
        raise SystemExit(1)
    return last_json(checked(flask("users", "create", f"admin-{secrets.token_hex(3)}", "--admin")))


def prepare(instance: Path, log: Callable[[str], None]) -> Path:
    """init-db; the first time (no ``demo.json``), an admin and demo data. Returns ``demo.json``."""
    checked(flask("init-db", stdout=subprocess.DEVNULL))
    demo_json = instance / "demo.json"
    if demo_json.exists():
        return demo_json
    log("first run: creating an admin user and demo data (20 devices, 2 days of readings)")
    admin = create_admin(log)
    demo_out = flask("demo-data", "--devices", "20", "--days", "2", "--owner", "demo", stderr=subprocess.DEVNULL)
    demo = last_json(checked(demo_out))
    credentials = {
        "admin": {"name": admin["name"], "user_id": admin["user_id"], "token": admin["token"]},
        "demo_owner": {"name": demo["owner"], "user_id": demo["user_id"], "token": demo["token"]},
        "api_key": demo["api_key"],
        "device": demo["device"],
    }
    tmp = demo_json.with_name(demo_json.name + ".tmp")
    write_private(tmp, json.dumps(credentials, indent=2) + "\n")
    tmp.replace(demo_json)
    demo_json.chmod(0o600)
    return demo_json


def write_env_sh(instance: Path, base: str, credentials: dict[str, Any]) -> Path:
    env_sh = instance / "env.sh"
    lines = [
        "# Written by scripts/run on each start: the environment of the running service.",
        f"# . {env_sh}  (after . .venv/bin/activate) to use flask --app wsgi ... against it.",
        *(f"export {name}={shlex.quote(os.environ[name])}" for name in ENV_SH_VARIABLES if os.environ.get(name)),
        "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in shell_values(base, credentials)),
    ]
    write_private(env_sh, "\n".join(lines) + "\n")
    return env_sh


def shell_values(base: str, credentials: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("BASE", base),
        ("ADMIN", credentials["admin"]["token"]),
        ("TOKEN", credentials["demo_owner"]["token"] or ""),
        ("API_KEY", credentials["api_key"]),
    ]


def banner(base: str, credentials: dict[str, Any], env_sh: Path, demo_json: Path) -> str:
    """The tokens, a device key and curl lines to paste."""
    device = credentials["device"]
    path = "/".join(quote(device[k], safe="") for k in ("device_id", "device_name"))
    admin = credentials["admin"]["token"]
    token = credentials["demo_owner"]["token"] or "(not shown: the demo owner existed before)"
    return f"""
  OpenSensor: {base}   (web, Celery worker and beat; Ctrl-C stops everything)
  admin token       {admin}
  demo owner token  {token}
  device key        {credentials["api_key"]}   (device {device["device_id"]} / {device["device_name"]})
  this environment  . .venv/bin/activate && . {env_sh}
  demo credentials  {demo_json}

  curl {base}/health
  curl {base}/api/v1/devices/{path}
  curl '{base}/api/v1/devices/{path}/readings/temp?resolution=60&size=3'
  curl -H 'Authorization: Bearer {admin}' {base}/cache/stats
"""


def show(instance: Path, base: str, demo_json: Path) -> None:
    """Rewrite ``env.sh`` and print how to reach the service."""
    credentials = json.loads(demo_json.read_text())
    env_sh = write_env_sh(instance, base, credentials)
    print(banner(base, credentials, env_sh, demo_json), flush=True)
