"""Unbound extension objects; each keeps its state in ``app.extensions``."""

from flask_caching import Cache

from app.db import Mongo

cache = Cache()
mongo = Mongo()
