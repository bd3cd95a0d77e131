"""Flask CLI: ``init-db`` and ``demo-data`` (the ``users`` commands are ``app/users/cli.py``)."""

from __future__ import annotations

import json
import math
import random
from datetime import timedelta
from typing import Any

import click
from flask.cli import with_appcontext

from app.auth import User
from app.db import READINGS, ensure_schema
from app.errors import APIError, fails_in_one_line
from app.extensions import mongo
from app.keys.service import create_key
from app.readings.cache import drop_members
from app.timeutil import utcnow_ms
from app.users.service import add_user, find_user


@click.command("init-db")
@with_appcontext
@fails_in_one_line(full=True)
def init_db() -> None:
    """Create the collections and indexes (idempotent)."""
    for line in ensure_schema(mongo.state.client().get_default_database()):
        click.echo(line)
    click.echo("database ready")


def demo_values(rng: random.Random, hours: float) -> dict:
    """One plausible indoor-greenhouse reading at a time of day (hours since midnight)."""
    day = math.sin((hours - 9) / 24 * 2 * math.pi)
    temp = 22 + 4 * day + rng.gauss(0, 0.4)
    return {
        "temp": round(temp, 2),
        "rh": round(min(100.0, max(0.0, 60 - 12 * day + rng.gauss(0, 2))), 1),
        "co2": round(max(300.0, 650 - 150 * day + rng.gauss(0, 25))),
        "lux": round(max(0.0, 30000 * day + rng.gauss(0, 500))) if day > 0 else 0,
        "moisture": [round(rng.uniform(35, 55), 1), round(rng.uniform(35, 55), 1)],
        "liquid": rng.random() > 0.05,
    }


@click.command("demo-data")
@click.option("--devices", "count", default=10, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--days", default=3, show_default=True, type=click.IntRange(0, 366))
@click.option(
    "--interval",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1440),
    help="Minutes between readings.",
)
@click.option("--owner", default="demo", show_default=True, help="User who owns the devices (created if missing).")
@click.option("--seed", default=1, show_default=True, type=int)
@with_appcontext
@fails_in_one_line()
def demo_data(count: int, days: int, interval: int, owner: str, seed: int) -> None:
    """Register COUNT devices (in chains of two ids per name) and push DAYS of readings.

    The last line of output is JSON with the owner, a token if the owner was created,
    and one device key to try.
    """
    rng = random.Random(seed)
    user, token = find_user(owner), None
    if user is None:
        user, token = add_user(owner, admin=False)
    devices = register_demo_devices(user, count)
    total = push_demo_readings(user, devices, days, interval, rng)
    sample = devices[0] if devices else None
    click.echo(
        json.dumps(
            {
                "owner": owner,
                "user_id": user.user_id,
                "token": token,
                "devices": len(devices),
                "readings": total,
                "api_key": sample["api_key"] if sample else None,
                "device": {"device_id": sample["device_id"], "device_name": sample["device_name"]} if sample else None,
            }
        )
    )


def register_demo_devices(user: User, count: int) -> list[dict[str, Any]]:
    """The new keys of ``count`` devices (those registered by an earlier run are skipped)."""
    devices = []
    with click.progressbar(range(count), label="registering devices") as bar:
        for i in bar:
            fields = {
                "device_id": f"demo-{i + 1:05d}",
                "device_name": f"Room {i // 2 + 1}",
                "description": "demo sensor",
                "private": i % 5 == 4,
            }
            try:
                devices.append(create_key(user, fields))
            except APIError as exc:
                if exc.status != 409:
                    raise
    return devices


def push_demo_readings(user: User, devices: list[dict[str, Any]], days: int, interval: int, rng: random.Random) -> int:
    """Store ``days`` of readings every ``interval`` minutes, split between the ids of each chain."""
    now = utcnow_ms()
    steps = days * 24 * 60 // interval
    total = 0
    with click.progressbar(devices, label="pushing readings") as bar:
        for n, device in enumerate(bar):
            # The two ids of a chain take turns: the second replaced the first half-way.
            first_half = n % 2 == 0
            span = range(steps // 2, steps) if first_half else range(0, steps // 2)
            batch = []
            for step in span:
                at = now - timedelta(minutes=step * interval)
                meta = {
                    "device_id": device["device_id"],
                    "device_name": device["device_name"],
                    "owner_id": user.user_id,
                }
                batch.append({"timestamp": at, "meta": meta, **demo_values(rng, at.hour + at.minute / 60)})
            if batch:
                mongo.db[READINGS].insert_many(batch, ordered=False)
                drop_members({(user.user_id, device["device_id"], device["device_name"])})  # past buckets changed
                total += len(batch)
    return total
