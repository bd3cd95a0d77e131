"""``flask --app wsgi import-opensensor``: the command, and the source it reads."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import with_appcontext
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from app.compat.importer.report import print_report
from app.compat.importer.run import Importer
from app.db import ensure_schema

# opensensor-api ignores the path of its connection string and always uses this database
# (opensensor/db.py: ``client["default"]``).
OPENSENSOR_DATABASE = "default"


def open_source(uri: str) -> tuple[MongoClient, Database, str]:
    """A client on the source URI (only read, by how it is used), the source database (the URI's, or
    opensensor's ``default`` when it names none) and the source's name: its hosts and database
    without credentials, which names its checkpoints."""
    try:
        parsed = parse_uri(uri, validate=True, warn=False)
    except Exception as exc:  # noqa: BLE001 - pymongo raises several types for a bad URI
        raise click.BadParameter(f"not a valid MongoDB URI: {exc}", param_hint="--source-uri") from None
    name = parsed.get("database") or OPENSENSOR_DATABASE
    client: MongoClient = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000, appname="opensensor-import")
    hosts = ",".join(sorted(f"{host}:{port}" for host, port in parsed["nodelist"]))
    return client, client[name], f"opensensor:{hosts}/{name}"


def check_source(source: Database, source_id: str, collections: list[str]) -> None:
    """A database without any of opensensor's documents is a wrong URI, not an import of nothing."""
    if not any(source[name].find_one({}, {"_id": 1}) is not None for name in collections):
        where = source_id.removeprefix("opensensor:")
        raise click.ClickException(
            f"the database {source.name!r} ({where}) holds no opensensor data: no {' or '.join(collections)} "
            f"documents (opensensor keeps them in {OPENSENSOR_DATABASE!r}, which a --source-uri without a "
            "database reads)"
        )


@click.command("import-opensensor")
@click.option("--source-uri", required=True,
              help="MongoDB URI of opensensor's server (only read); its database is 'default' unless the URI "
                   "names another.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Read and convert everything, write nothing, print the report.")
@click.option(
    "--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Readings per bulk write."
)
@click.option("--users-collection", default="Users", show_default=True)
@click.option("--readings-collection", "readings_collections", multiple=True, default=["FreeTier"], show_default=True,
              help="Time series to import (repeatable; paid tiers had their own).")  # fmt: skip
@click.option("--rescan", is_flag=True,
              help="Read every reading again, not only those after the last checkpoint (e.g. once a pair's "
                   "conflict is resolved in opensensor); what is stored already is not written twice.")  # fmt: skip
@with_appcontext
def import_opensensor(
    source_uri: str,
    dry_run: bool,
    batch_size: int,
    users_collection: str,
    readings_collections: tuple[str, ...],
    rescan: bool,
) -> None:
    """Import opensensor's users, device keys and readings; safe to re-run (it resumes, never duplicates).

    Prints one JSON line per new user (with its token, shown only now), then the report; the last
    line is the report as JSON.
    """
    client, source, source_id = open_source(source_uri)
    # Our database through a client of its own: the service's timeouts (MONGO_TIMEOUT_MS, about a
    # second) suit a request, not a bulk write of a batch to a server busy with the import.
    target_client: MongoClient = MongoClient(
        current_app.config["MONGO_URI"], tz_aware=True, serverSelectionTimeoutMS=30_000, socketTimeoutMS=300_000
    )
    out, err = sys.stdout, sys.stderr  # read now: the CLI test runner swaps them
    try:
        target = target_client.get_default_database()
        source.command("ping")
        check_source(source, source_id, [users_collection, *readings_collections])
        ensure_schema(target)  # readings must exist as a time series before the first insert
        importer = Importer(
            source, source_id, target, dry_run=dry_run, batch_size=batch_size, out=out, err=err, rescan=rescan
        )
        report = importer.run(users_collection, list(readings_collections))
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc.__class__.__name__}: {exc}") from None
    finally:
        client.close()
        target_client.close()
    print_report(report, out)
