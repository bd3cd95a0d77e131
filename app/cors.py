"""Browsers on other origins (``CORS_ORIGINS``): flask-cors on the API and opensensor's routes only.

A dashboard served from another origin (opensensor's graph site did that) reads devices with a
bearer token or a device key. What is allowed, and why:

- Paths: ``/api/v1/...`` and opensensor's ``/environment`` and ``/<type>/<device>``. Never
  ``/cache/*`` (admin operations: a page on a listed origin holding an admin token is not a case
  to open up) or ``/metrics``; nor ``/health*`` (probes for the orchestrator, not for pages),
  ``/docs`` (a page one navigates to; navigation needs no CORS) or ``/openapi.json`` (read by
  ``/docs`` on its own origin, and by tools that are not browsers).
- Origins: exactly the listed ones, never ``*`` (``app/config.py`` refuses it). With ``*``,
  flask-cors answers a credentialed request by echoing whatever ``Origin`` came, which would let
  any site act with a browser's credentials; listing origins costs a dashboard one line.
- Credentials (``Access-Control-Allow-Credentials: true``) for those listed origins only; the
  tokens travel in ``Authorization`` / ``X-API-Key``, which are allowed request headers.
- Headers appear only when the request's ``Origin`` is listed (``always_send`` off), so every
  response of these paths says ``Vary: Origin`` for shared caches; flask-cors adds it only when
  several origins are configured, so it is added here, for one origin too.
- Errors: Flask runs ``after_request`` on what the error handlers answer (401, 403, 404, 405,
  413, 415 and the rest of ``app/errors.py``), so a browser reads their body too; flask-cors's
  ``intercept_exceptions`` (which rewraps Flask's handlers) is not needed.
- Preflights: Flask answers ``OPTIONS`` for every route itself, before any view, so no auth
  check sees them (no 401) and other methods keep their 405.
"""

from __future__ import annotations

import re

from flask import Flask, Response, request
from flask_cors import CORS

from app.compat.protocol import LEGACY_TYPES
from app.metrics import REQUEST_ID_HEADER

# Matched from the start (``re.match``) against the request's percent-decoded path.
PATHS = (
    re.compile(r"/api/v1/"),
    re.compile(r"/environment/?$"),
    re.compile(rf"/(?:{'|'.join(re.escape(kind) for kind in LEGACY_TYPES)})/"),
)
ALLOWED_HEADERS = ("Authorization", "X-API-Key", "Content-Type", REQUEST_ID_HEADER)
METHODS = ("GET", "HEAD", "POST", "DELETE")
PREFLIGHT_MAX_AGE = 7200  # seconds; Chromium's ceiling (Firefox allows a day)


def register_cors(app: Flask) -> None:
    """CORS on the API and compatibility routes for ``CORS_ORIGINS``; nothing at all when unset."""
    origins = list(app.config["CORS_ORIGINS"])
    if not origins:
        return

    @app.after_request
    def vary_on_origin(response: Response) -> Response:
        if any(path.match(request.path) for path in PATHS):
            response.vary.add("Origin")
        return response

    CORS(
        app,
        resources={path: {} for path in PATHS},
        origins=origins,
        methods=list(METHODS),
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=[REQUEST_ID_HEADER],
        supports_credentials=True,
        max_age=PREFLIGHT_MAX_AGE,
        always_send=False,
        vary_header=False,
        intercept_exceptions=False,
    )
