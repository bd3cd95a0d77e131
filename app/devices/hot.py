"""The warm device read, and a dashboard's kept answer, answered before Flask (issue 16 §5).

``GET /api/v1/devices/<device_id>/<device_name>`` is what devices and dashboards call most, and
a warm one is answered from the near cache in a small part of what the request costs: the rest
is Flask's own work (request context, URL matching, hooks, the response object; ``python -m
bench.hot_profile`` has the profile). This WSGI middleware answers the common case itself, with
the bytes the view answers:

- a GET of that exact path, without a query string, an ``X-API-Key`` or an ``Origin``;
- whose pair the near cache holds as found, and which the caller may read: anyone when it is
  public, its owner's bearer token (whose user the near cache holds too) when it is private;
- with what the request hooks add: the X-Request-ID, the request's metrics and its log fields,
  ``Vary: Origin`` when CORS is on (``app/cors.py``).

The same lane serves ``GET …/<device_id>/<device_name>/readings/<measurement>?<query>`` when the
near cache keeps that query's answer whole and it is still current (``app/readings/memo.py``), to
the same callers.

Anything else goes to Flask as it came, with nothing counted: the lane counts its cache hits
only once it answers, and a request it passes on makes its lookup in the view, counted there.
So a miss, an error to answer (401, 403, 404), a malformed header or a stale near cache (it
answers only while ``readable()`` would, without polling) cost a few microseconds more, never
a different answer. ``tests/test_hot_read.py`` compares the two answers byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from app.auth import TOKEN_PREFIX, same_hash, secret_id
from app.cache.keys import device_key, user_key
from app.cache.shared import QUERY, USER, SharedCache
from app.devices.service import public_view
from app.metrics import REQUEST_ID_HEADER, finished, request_id_from
from app.readings import memo
from app.validation import valid_pair

PREFIX = "/api/v1/devices/"
ROUTE = PREFIX + "<device_id>/<device_name>"  # the view's URL rule (its metrics' label)
READINGS_ROUTE = ROUTE + "/readings/<measurement>"
PASSED_ON = ("HTTP_X_API_KEY", "HTTP_ORIGIN")  # either header present, even empty: Flask answers

StartResponse = Callable[..., Any]


class HotRead:
    def __init__(self, app: Flask, wsgi_app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app
        self.cache: SharedCache = app.extensions["shared_cache"]
        self.json_body = app.json.body  # type: ignore[attr-defined]  # app.JSONProvider's: jsonify's bytes
        self.extra_headers = [("Vary", "Origin")] if app.config["CORS_ORIGINS"] else []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and path.startswith(PREFIX)
            and not any(name in environ for name in PASSED_ON)
        ):
            answered = self._answer(path[len(PREFIX) :], environ.get("QUERY_STRING", ""), environ)
            if answered is not None:
                route, body = answered
                request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
                headers = [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    *self.extra_headers,
                    (REQUEST_ID_HEADER, request_id),
                ]
                start_response("200 OK", headers)
                finished(environ, "GET", route, 200, started, request_id, "l1")
                return [body]
        return self.wsgi_app(environ, start_response)

    def _answer(self, rest: str, query_string: str, environ: dict[str, Any]) -> tuple[str, bytes] | None:
        """The route and the view's body if the near cache alone can answer (hits counted), else None."""
        parts = rest.split("/")  # also: a trailing slash makes an empty part, never a valid pair
        if len(parts) == 2 and not query_string:
            route = ROUTE
        elif len(parts) == 4 and parts[2] == "readings":
            route = READINGS_ROUTE
        else:
            return None
        device_id, device_name = parts[0], parts[1]
        reader = self._reader(device_id, device_name, environ.get("HTTP_AUTHORIZATION"))
        if reader is None:
            return None
        device, user_id = reader
        if route == ROUTE:
            body = self.json_body(public_view(device, user_id)).encode()
            self._count(device_id, device_name, user_id)
            return route, body
        answer = memo.served(self.cache, device, parts[3], query_string)
        body = None if answer is None else memo.body(answer, datetime.now(UTC))
        if body is None:
            return None
        self._count(device_id, device_name, user_id)
        self.cache.count(QUERY, "hits", amount=answer.watch.units)  # as the query cache counts its chunks
        return route, body

    def _reader(self, device_id: str, device_name: str, authorization: str | None) -> tuple[dict, str | None] | None:
        """The pair as the near cache holds it, found, and the caller's user id (None: anonymous),
        if the caller may read it; else None. Counted as nothing."""
        if not valid_pair(device_id, device_name):
            return None
        device = self.cache.lookups.near_value(self.cache.device, device_key(device_id, device_name))
        if device is None or not device["found"]:
            return None
        user_id = self._bearer(authorization) if authorization is not None else None
        if authorization is not None and user_id is None:
            return None
        if not device["public"] and user_id != device["owner_id"]:
            return None
        return device, user_id

    def _count(self, device_id: str, device_name: str, user_id: str | None) -> None:
        """The view's lookups, counted as it counts them, in its order."""
        lookups = self.cache.lookups
        if user_id is not None:
            lookups.count_near_hit(USER, user_key(user_id))
        lookups.count_near_hit(self.cache.device, device_key(device_id, device_name))

    def _bearer(self, header: str) -> str | None:
        """The user id of a genuine bearer token whose user the near cache holds; None otherwise."""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        user_id = secret_id(token, TOKEN_PREFIX) if scheme.lower() == "bearer" else None
        if user_id is None:
            return None
        user = self.cache.lookups.near_value(USER, user_key(user_id))
        if user is None or not user["found"] or not same_hash(user.get("token_hash"), token):
            return None
        return user_id


def register_hot_read(app: Flask) -> None:
    """In front of Flask (behind the input guard, which must see every request first)."""
    lane = HotRead(app, app.wsgi_app)
    app.extensions["hot_read"] = lane
    app.wsgi_app = lane  # type: ignore[method-assign]
