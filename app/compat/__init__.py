"""Compatibility with opensensor-api: its device protocol, its legacy reads and its data.

``protocol.py`` turns opensensor's shapes (a push body, a stored ``FreeTier`` document) into
the ``readings`` object of ``POST /api/v1/readings``; ``views.py`` serves opensensor's routes
through the existing services (device lookup, access rules, validation, storage);
the ``importer`` package is ``flask --app wsgi import-opensensor``. Nothing here validates or stores
a reading by itself: ``app/readings/schema.py`` and ``app/readings/service.py`` do.
"""
