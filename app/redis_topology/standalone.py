"""One Redis server (``REDIS_URL``): Flask-Caching's own ``RedisCache``."""

from __future__ import annotations

from typing import Any

from redis import Redis

from app.redis_topology.base import Topology


class StandaloneTopology(Topology):
    name = "standalone"

    def __init__(self, url: str, password: str | None = None) -> None:
        super().__init__(password)
        self.url = url

    def describe(self) -> str:
        return "standalone Redis"

    def _auth(self) -> dict[str, Any]:
        return {"password": self.password} if self.password else {}

    def cache_config(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": self.url, "CACHE_OPTIONS": {**options, **self._auth()}}

    def new_client(self, options: dict[str, Any]) -> Any:
        return Redis.from_url(self.url, **options, **self._auth())
