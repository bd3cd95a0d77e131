"""Celery tasks: thin wrappers around the cache's service functions."""
