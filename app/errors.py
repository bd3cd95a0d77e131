"""Every error leaves as ``{"error": {"code", "message"}}`` with the status of the spec; from a CLI
command, as one line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from flask import Flask, jsonify
from pymongo.errors import (
    PyMongoError,
)
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "validation_error",
    401: "auth_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class APIError(Exception):
    """A domain error with its status, code and message."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def validation_error(message: str, **details: Any) -> APIError:
    return APIError(400, "validation_error", message, details or None)


def not_found(message: str = "not found") -> APIError:
    return APIError(404, "not_found", message)


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None):
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return jsonify({"error": body}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def handle_api_error(exc: APIError):
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException):
        status = exc.code or 500
        if status >= 500:
            return error_response(500, "internal_error", "internal server error")
        response = error_response(status, HTTP_CODES.get(status, "error"), exc.description or exc.name)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response[0].headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(PyMongoError)
    def handle_db_down(exc: Exception):
        # Unreachable, timed out, or a command failed on the server (a failing node, a fail point):
        # whatever the change did is recorded (the cache's outbox), so the client may retry.
        log.warning("MongoDB unavailable: %s: %.300s", exc.__class__.__name__, exc)  # the driver's reason, bounded
        return error_response(503, "db_unavailable", "the database is unavailable, retry shortly")

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")


@contextmanager
def fails_in_one_line(*expected: type[Exception], full: bool = False) -> Iterator[None]:
    """A CLI command's failure as one line (click's ``Error: ...``, exit status 1), never a traceback.

    MongoDB not answering says so, with the driver's whole message if ``full`` (where it helps to
    set the server up), else the error's name; an ``expected`` error (an unknown user...) by its message.
    """
    try:
        yield
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc if full else exc.__class__.__name__}") from None
    except expected as exc:
        raise click.ClickException(str(exc)) from None
