"""Celery entry point: ``celery -A celery_worker worker`` / ``celery -A celery_worker beat``.

The Flask app is not called ``app`` here: Celery's ``-A`` would pick that attribute first.
"""

from app import create_app

flask_app = create_app()
celery = flask_app.extensions["celery"]
