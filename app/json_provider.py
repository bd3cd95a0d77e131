"""Flask's JSON provider with its encoder built once, not per response.

``json.dumps`` with any keyword builds a new ``JSONEncoder`` on every call; a response does it
once per request. This provider keeps two encoders (compact and indented) with Flask's own
settings (``default``, ``ensure_ascii``) and the service's (keys in insertion order), so every
body stays byte for byte what ``DefaultJSONProvider`` writes. orjson was considered: faster,
but it writes non-ASCII as UTF-8 and some floats differently, which would change bodies.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider


class JSONProvider(DefaultJSONProvider):
    sort_keys = False  # the order the views build: the spec's field order

    def __init__(self, app: Flask) -> None:
        super().__init__(app)
        common = {"default": self.default, "ensure_ascii": self.ensure_ascii, "sort_keys": self.sort_keys}
        self._compact = json.JSONEncoder(separators=(",", ":"), **common)  # type: ignore[arg-type]
        self._indented = json.JSONEncoder(indent=2, **common)  # type: ignore[arg-type]

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """``DefaultJSONProvider.response`` with the kept encoders (same body, same mimetype)."""
        obj = self._prepare_response_obj(args, kwargs)
        pretty = (self.compact is None and self._app.debug) or self.compact is False
        encoder = self._indented if pretty else self._compact
        return self._app.response_class(f"{encoder.encode(obj)}\n", mimetype=self.mimetype)
