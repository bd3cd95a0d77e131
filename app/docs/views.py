"""``GET /openapi.json`` and ``GET /docs``; the page's assets are this blueprint's static folder.

Swagger UI's bundle (1.7 MB as published) is kept gzip-compressed: Flask serves a ``.js.gz``
as ``text/javascript`` with ``Content-Encoding: gzip``, which every browser decodes.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app.docs.openapi import STATIC_DIR, openapi_document

bp = Blueprint("docs", __name__, static_folder=STATIC_DIR, static_url_path="/docs/static")

# Same-origin only, no inline script; Swagger UI sets inline styles and uses data: images.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>OpenSensor API</title>
    <link rel="stylesheet" href="docs/static/swagger-ui.css">
    <link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <noscript>This page needs JavaScript; the description itself is <a href="openapi.json">openapi.json</a>.</noscript>
    <script src="docs/static/swagger-ui-bundle.js.gz"></script>
    <script src="docs/static/docs.js"></script>
  </body>
</html>
"""


@bp.get("/openapi.json")
def openapi() -> Response:
    """Built once per app from its config (the history limit depends on it)."""
    document = current_app.extensions.get("openapi")
    if document is None:
        document = current_app.extensions["openapi"] = openapi_document(current_app.config)
    return jsonify(document)


@bp.get("/docs")
def page() -> Response:
    response = current_app.response_class(PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
