"""``flask users create|rotate-token|delete``: the only way users come and go (no identity provider).

Each prints, as its last line of stdout, one JSON object; a failure is one line (``Error: ...``).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from flask.cli import with_appcontext
from pymongo.errors import DuplicateKeyError

from app.errors import fails_in_one_line
from app.users.service import UserError, add_user, delete_user, rotate_token


@click.group()
def users() -> None:
    """Manage users (there is no external identity provider)."""


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May use the /cache admin routes.")
@with_appcontext
@fails_in_one_line(UserError)
def create_user(name: str, admin: bool) -> None:
    """Create a user; the last line of output is JSON with its token, shown only now."""
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise click.BadParameter("must be 1-64 printable characters", param_hint="NAME")
    try:
        user, token = add_user(name, admin)
    except DuplicateKeyError:
        raise click.ClickException(f"a user named {name!r} already exists") from None
    click.echo(json.dumps({**asdict(user), "token": token}))


# Before the outbox, the seconds to keep trying Redis; accepted still (scripts pass it), not needed:
# a change that cannot reach Redis is applied by every other process before it reads the cache.
WAIT_OPTION = click.option("--wait", type=click.FloatRange(0.1, 600), hidden=True)


@users.command("rotate-token")
@click.argument("name")
@WAIT_OPTION
@with_appcontext
@fails_in_one_line(UserError)
def rotate_token_command(name: str, wait: float | None) -> None:
    """Give a user a new token; the old one is refused on every replica once this returns.

    The last line of output is the same JSON as ``users create`` prints, with the new token.
    """
    user, token = rotate_token(name)
    click.echo(json.dumps({**asdict(user), "token": token}))


@users.command("delete")
@click.argument("name")
@click.option("--delete-keys", is_flag=True, help="Also delete the user's device keys (their devices become unknown).")
@WAIT_OPTION
@with_appcontext
@fails_in_one_line(UserError)
def delete_user_command(name: str, delete_keys: bool, wait: float | None) -> None:
    """Delete a user; its token is refused on every replica once this returns.

    A user who still owns device keys is kept, unless ``--delete-keys`` deletes those too
    (their readings stay in MongoDB, but nobody can read them any more).
    """
    user, keys_deleted = delete_user(name, delete_keys)
    click.echo(json.dumps({"user_id": user.user_id, "name": user.name, "deleted": True, "keys_deleted": keys_deleted}))
