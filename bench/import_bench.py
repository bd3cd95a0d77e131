"""Readings per second of ``flask import-opensensor`` on a generated 1M-reading source (issue 11).

    python -m bench.import_bench             # about 6-8 minutes; --help for the knobs

Real parts: its own SecantusDB (``secantusd-py``, a MongoDB wire server) and redis-server as
processes; the source database is written the way opensensor writes it (``devstack/opensensor_source.py``:
``Users`` with embedded keys, a ``FreeTier`` time series of text values, moisture as Python's repr of
Decimals, relays as JSON text); the import is the real command in its own process
(``flask --app wsgi import-opensensor``), into another database of the same server. Measured: the
first run (everything), then a second run (nothing new: it reads only the checkpoint's margin).
The figure is readings imported / the command's own wall time (users, keys and reading the
source included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import struct
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

from bson import ObjectId
from pymongo import MongoClient

from bench.common import Servers
from bench.sections import write_section
from devstack.opensensor_source import add_user, create_collections, stored_document
from devstack.processes import ROOT

SECTION = "## opensensor import (issue 11)"


def generate(db, readings: int, devices: int, seed: int) -> dict:
    """Users of two boards each (a chain), ``readings`` FreeTier documents spread over the devices."""
    rng = random.Random(seed)
    create_collections(db)
    pairs = []
    for user in range(devices // 2):
        name = f"room {user:04d}"
        owner = add_user(
            db, [{"device_id": f"b{user:04d}-{n}", "device_name": name} for n in range(2)], uuid.UUID(int=user + 1)
        )
        pairs += [(f"b{user:04d}-{n}", name, owner) for n in range(2)]
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=30)
    batch = []
    for i in range(readings):
        device_id, name, owner = pairs[i % len(pairs)]
        blocks = {
            "temp": {"temp": f"{rng.uniform(15, 30):.2f}", "unit": "C"},
            "rh": {"rh": f"{rng.uniform(30, 80):.1f}"},
            "co2": {"ppm": str(rng.randint(400, 1500))},
        }
        if i % 10 == 0:
            blocks["moisture"] = {"readings": f"[Decimal('{rng.uniform(0.2, 0.6):.2f}'), {rng.uniform(0.2, 0.6):.2f}]"}
        if i % 20 == 0:
            blocks["relays"] = {"relays": [{"position": 1, "enabled": rng.random() < 0.5, "seconds": 30}]}
        at = start + timedelta(seconds=i * 2)
        doc = stored_document(device_id, name, owner, at, blocks)
        # The ObjectId a client stamps at insert time: its clock, then a counter (as opensensor's pymongo did).
        doc["_id"] = ObjectId(struct.pack(">I", int(at.replace(tzinfo=UTC).timestamp())) + i.to_bytes(8, "big"))
        batch.append(doc)
        if len(batch) == 5000:
            db["FreeTier"].insert_many(batch, ordered=False)
            batch = []
    if batch:
        db["FreeTier"].insert_many(batch, ordered=False)
    return {"devices": len(pairs), "users": devices // 2}


def ceiling(client: MongoClient, count: int, batch_size: int) -> float:
    """Readings per second of plain ``insert_many`` of already converted readings into a fresh
    time series on the same server: what the import cannot beat, whatever its own cost."""
    from app.db import ensure_schema

    db = client["ceiling"]
    ensure_schema(db)
    now = datetime.now(UTC)
    docs = [
        {
            "timestamp": now - timedelta(seconds=2 * i),
            "meta": {
                "device_id": f"b{i % 100:04d}-0",
                "device_name": f"room {i % 100:04d}",
                "owner_id": "0123456789abcdef",
            },
            "temp": 21.5,
            "rh": 55.0,
            "co2": 612,
        }
        for i in range(count)
    ]
    started = time.monotonic()
    for start in range(0, count, batch_size):
        db["readings"].insert_many(docs[start : start + batch_size], ordered=False)
    elapsed = time.monotonic() - started
    client.drop_database("ceiling")
    return count / elapsed


def run_import(env: dict, source_uri: str, batch_size: int) -> tuple[float, dict]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "import-opensensor", "--source-uri", source_uri,
         "--batch-size", str(batch_size)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"import failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=200, help="boards, two per user (a chain each)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()

    with Servers("import-bench-") as servers:
        redis_server = servers.redis
        base = f"mongodb://127.0.0.1:{servers.mongo_port}"
        with MongoClient(base) as client:
            t0 = time.monotonic()
            shape = generate(client["opensensor"], args.readings, args.devices, args.seed)
            generated = time.monotonic() - t0
            ceiling_n = min(args.readings, 200_000)
            ceiling_rate = ceiling(client, ceiling_n, args.batch_size)
            print(f"ceiling: insert_many of converted readings, {ceiling_rate:,.0f} readings/s")
            print(f"source: {args.readings:,} readings, {shape['devices']} devices written in {generated:.0f} s")
        env = {
            **os.environ,
            "MONGO_URI": f"{base}/service",
            "REDIS_URL": redis_server.url(0),
            "CELERY_BROKER_URL": redis_server.url(1),
            "LOG_LEVEL": "WARNING",
        }
        load_before = os.getloadavg()[0]
        first_s, first = run_import(env, f"{base}/opensensor", args.batch_size)
        second_s, second = run_import(env, f"{base}/opensensor", args.batch_size)
        load_after = os.getloadavg()[0]
        imported = first["readings"]["imported"]
        assert imported == args.readings, first
        assert second["readings"] == {"imported": 0}, second
        rate = imported / first_s
        print(f"first run: {imported:,} readings in {first_s:.1f} s = {rate:,.0f} readings/s")
        print(f"second run (nothing new): {second_s:.1f} s")

    measured = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    block = f"""Measured {measured} on {cpu}, {os.cpu_count()} cores shared by SecantusDB, redis-server and the
import (1-minute load average {load_before:.1f} before, {load_after:.1f} after). Versions: pymongo {version("pymongo")},
SecantusDB {version("secantusdb")}, Python {platform.python_version()}.

Command (from the venv, at the repository root): `python -m bench.import_bench`

Source: {args.readings:,} `FreeTier` readings of {shape["devices"]} devices ({shape["users"]} users, two boards each,
a chain), written as opensensor writes them: temp/rh/CO2 as text on every reading, moisture as Python's repr of Decimals
on 1 in 10, relays as JSON text on 1 in 20 ({generated:.0f} s to write). Target: another database of the same
SecantusDB process. `import-opensensor --batch-size {args.batch_size}` as its own process; the figure is readings
imported / the command's wall time (users, keys, reading and converting the source, checkpoints included).

| run | readings imported | seconds | readings/s |
| --- | ---: | ---: | ---: |
| first (everything) | {imported:,} | {first_s:.1f} | {rate:,.0f} |
| second (nothing new) | 0 | {second_s:.1f} | – |
| ceiling: `insert_many` of converted readings, same batches, same server | {ceiling_n:,} | – | {ceiling_rate:,.0f} |

The import reaches {rate / ceiling_rate:.0%} of the ceiling: the rest is reading the source, converting and
validating each reading (`parse_readings`), and two checkpoint writes per batch. On SecantusDB the
server's time-series inserts are the bound; a real MongoDB takes inserts faster, so expect more there.

Each reading's ObjectId carries its time, as when opensensor stored it (readings 2 s apart over
{args.readings * 2 / 86400:.0f} days). The second run re-reads only what was stored in the 5 minutes before the
checkpoint (the margin for ObjectIds from a late clock) and checks those against what is stored. Most of its time is
SecantusDB finding them: it reads the whole time series to match `_id` > checkpoint (twice: the count for the
progress bar, then the sorted read), where MongoDB can skip whole buckets by their minimum and maximum `_id`.
"""
    print(block)
    if not args.no_doc:
        write_section(SECTION, block)


if __name__ == "__main__":
    main()
