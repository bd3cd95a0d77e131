"""``GET /cache/dashboard``: a live page of the cache for a person, drawn from the admin JSON routes.

Its own blueprint (not the ``/cache`` admin one), so loading the page and its static files needs
no token: the page holds no data, asks for an admin token, keeps it in ``sessionStorage`` and
calls ``/cache/stats`` and ``/cache/stats/history`` with it. Everything it loads comes from this
origin, which the Content-Security-Policy enforces (no inline script or style, no CDN).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/cache",
    static_folder="static",
    static_url_path="/dashboard/static",
    template_folder="templates",
)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HISTORY_POINTS = 360  # snapshots drawn: six hours at the default STATS_INTERVAL


@bp.get("/dashboard")
def dashboard() -> Response:
    config = current_app.config
    html = render_template(
        "dashboard.html",
        stats_interval=config["STATS_INTERVAL"],
        history_limit=min(HISTORY_POINTS, config["STATS_HISTORY_SIZE"]),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.after_request
def same_policy_for_static_files(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
