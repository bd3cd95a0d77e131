"""JSON for every value in Redis: pickle would let anyone who can write to Redis run code."""

from __future__ import annotations

import json
from typing import Any

from cachelib.serializers import BaseSerializer


class JSONSerializer(BaseSerializer):
    """Flask-Caching's ``CACHE_SERIALIZER``; unlike cachelib's own it treats a miss as a miss.

    (cachelib's JSONSerializer logs a warning for every ``None`` it is handed.)
    """

    def dumps(self, value: Any, *args: Any, **kwargs: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, bvalue: bytes | None, *args: Any, **kwargs: Any) -> Any:
        if bvalue is None:
            return None
        try:
            return json.loads(bvalue)
        except ValueError:
            return None
