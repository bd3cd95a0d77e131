"""Request parsing shared by the routes: JSON bodies, device pairs, plain values.

Text enters the service in four places: JSON bodies (``json_object``), the URL and the
headers (``register_input_guard``) and CLI arguments (``guard_commands``). Each rejects a
string that cannot be encoded as UTF-8 (a lone surrogate: a valid JSON escape such as
``"\\ud800"``, or what ``surrogateescape`` makes of invalid bytes) there, as a 400
``validation_error`` (a usage error on the command line), before it reaches MongoDB, Redis
or a log line that would raise ``UnicodeEncodeError`` (a 500) far from where it came in.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from typing import Any

import click
from flask import Flask, request
from werkzeug.wrappers import Response

from app.errors import APIError, validation_error

# Used with fullmatch: a trailing newline must not pass (``$`` alone lets "dev-1\n" through).
# The patterns are also the OpenAPI document's (app/docs/openapi.py).
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9._: -]{1,64}$")


class UnencodableText(APIError):
    """400: a string that cannot be encoded as UTF-8 (a lone surrogate)."""

    def __init__(self, where: str):
        super().__init__(400, "validation_error", f"{where} is not valid UTF-8 text", {"field": where})


def unencodable_path(value: Any, where: str = "") -> str | None:
    """Where a string (key or value, at any depth) that UTF-8 cannot encode is, or None."""
    stack = [(value, where)]
    while stack:  # iterative: a body nested thousands deep must not hit the recursion limit
        item, at = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return at or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):  # name the object holding it: the message must stay encodable
                    return at or "body"
                stack.append((child, f"{at}.{key}" if at else key))
        elif isinstance(item, list):
            stack.extend((child, f"{at}[{i}]") for i, child in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_object(optional: bool = False, *, require_media_type: bool = True) -> dict[str, Any]:
    """The request's JSON object body: 415 for another media type, 400 for bad JSON.

    With ``optional``, an empty body counts as ``{}``. Without ``require_media_type`` a body
    sent with no Content-Type at all is read as JSON too (opensensor's devices do that).
    Every string in it must be encodable as UTF-8 (``UnencodableText`` otherwise).
    """
    if optional and not request.get_data(cache=True):
        return {}
    untyped = not require_media_type and not request.headers.get("Content-Type")
    if not request.is_json and not untyped:
        raise APIError(415, "unsupported_media_type", "the body must be application/json")
    try:
        body = request.get_json(silent=True, force=untyped)
    except RecursionError:  # nested deeper than the parser goes; silent only covers ValueError
        body = None
    if body is None:
        raise validation_error("the body is not valid JSON")
    if not isinstance(body, dict):
        raise validation_error("the body must be a JSON object")
    where = unencodable_path(body)
    if where is not None:
        raise UnencodableText(where)
    return body


def register_input_guard(app: Flask) -> None:
    """400 for a URL or header that is not text, before any view (or werkzeug's routing) sees it.

    What reaches the app (werkzeug 3.1 under gunicorn): a percent-encoded invalid UTF-8 sequence
    in the path is decoded with replacement (U+FFFD), one in the query string stays
    percent-encoded, and raw non-ASCII bytes in the request line are refused by gunicorn itself.
    Two ways remain, both from other servers or clients: ``environ`` strings that are not latin-1
    (PEP 3333 requires it; lone surrogates from ``surrogateescape``), which make werkzeug raise
    ``UnicodeEncodeError`` while it routes, so they are refused around the WSGI app; and raw bytes
    in ``QUERY_STRING`` that are not UTF-8, which make ``request.args`` raise
    ``UnicodeDecodeError``, so that is read once in a ``before_request``.
    """
    app.wsgi_app = NativeStringGuard(app.wsgi_app)  # type: ignore[method-assign]

    @app.before_request
    def reject_undecodable_query() -> None:
        # An ASCII query string always decodes (bad percent-escapes stay escaped): nothing to parse.
        if request.environ.get("QUERY_STRING", "").isascii():
            return
        try:
            request.args  # noqa: B018 - parsed (and cached) here so that a bad one is a 400
        except UnicodeDecodeError:
            raise UnencodableText("query string") from None


class NativeStringGuard:
    """WSGI middleware: a request whose path, query or headers are not latin-1 strings is a 400."""

    FIELDS = ("PATH_INFO", "QUERY_STRING", "SCRIPT_NAME", "CONTENT_TYPE")

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        for name, value in environ.items():
            if not isinstance(value, str) or value.isascii():  # nearly always: nothing to check
                continue
            if (name in self.FIELDS or name.startswith("HTTP_")) and not _latin1(value):
                where = "headers" if name.startswith("HTTP_") or name == "CONTENT_TYPE" else "URL"
                body = {"error": {"code": "validation_error", "message": f"the {where} is not valid text"}}
                response = Response(json.dumps(body), status=400, mimetype="application/json")
                return response(environ, start_response)
        return self.wsgi_app(environ, start_response)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def guard_commands(group: click.Group) -> None:
    """Make every command under ``group`` refuse arguments UTF-8 cannot encode (usage error, exit 2).

    On Linux, argv bytes that are not UTF-8 arrive as lone surrogates (``surrogateescape``);
    a command would otherwise fail deep inside pymongo with a traceback. Wrapping the
    callbacks covers commands added later to any group, without a custom parameter type on
    each option. Idempotent: ``create_app`` runs many times per process in the tests.
    """
    for command in group.commands.values():
        if isinstance(command, click.Group):
            guard_commands(command)
        if command.callback is not None and not getattr(command.callback, "_utf8_guarded", False):
            command.callback = _utf8_checked(command.callback)


def _utf8_checked(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        for param in ctx.command.params:
            value = ctx.params.get(param.name) if param.name else None
            for item in value if isinstance(value, (list, tuple)) else [value]:
                text = os.fspath(item) if isinstance(item, os.PathLike) else item
                if isinstance(text, str) and not _encodable(text):
                    raise click.BadParameter("is not valid UTF-8 text", ctx=ctx, param=param)
        return callback(*args, **kwargs)

    checked._utf8_guarded = True  # type: ignore[attr-defined]
    return checked


def valid_pair(device_id: Any, device_name: Any) -> bool:
    return (
        isinstance(device_id, str)
        and isinstance(device_name, str)
        and bool(DEVICE_ID_RE.fullmatch(device_id))
        and bool(DEVICE_NAME_RE.fullmatch(device_name))
    )


def check_pair(device_id: Any, device_name: Any) -> None:
    """400 unless the pair is well formed (body fields)."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise validation_error("device_id must be 1-64 letters, digits or . _ : -", field="device_id")
    if not isinstance(device_name, str) or not DEVICE_NAME_RE.fullmatch(device_name):
        raise validation_error("device_name must be 1-64 letters, digits, spaces or . _ : -", field="device_name")


def reject_unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise validation_error(f"unknown field {where}{unknown[0]}", field=f"{where}{unknown[0]}")


# BSON integers are 64-bit: a bigger JSON integer would fail at insert time (a 500), not here.
_INT64 = range(-(2**63), 2**63)


# Far beyond any sensor, and small enough that sums, averages and unit conversions of
# stored values stay finite: JSON has no Infinity.
MAX_MAGNITUDE = 1e15


def is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE  # NaN fails both comparisons


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in _INT64
