#!/bin/sh
# One image, one role per container, chosen by the first argument (the Redash pattern):
#   web | worker | beat | init-db | healthcheck | any other command (run as given).
# Every role ends in `exec`, so the process gets PID 1's signals (SIGTERM -> graceful stop).
# DRY_RUN=1 prints the command instead of running it; the test suite relies on that.
set -eu

usage() {
    echo "usage: entrypoint.sh {web|worker|beat|init-db|healthcheck|COMMAND [ARG...]}" >&2
}

fail() {
    echo "entrypoint.sh: $*" >&2
    exit 64
}

# Reject a malformed tuning value with one line, before gunicorn or celery print a traceback.
require_int() {
    case "$2" in
        '' | *[!0-9]*) fail "$1 must be a non-negative integer, got '$2'" ;;
    esac
}

require_positive_int() {
    require_int "$1" "$2"
    [ "$2" -gt 0 ] || fail "$1 must be at least 1, got '$2'"
}

run() {
    if [ "${DRY_RUN:-0}" = "1" ]; then
        printf '%s\n' "$*"
        exit 0
    fi
    exec "$@"
}

if [ "$#" -eq 0 ]; then
    usage
    exit 64
fi

role=$1
shift

PORT=${PORT:-8000}
LOG_LEVEL=${LOG_LEVEL:-INFO}
require_positive_int PORT "$PORT"
# LOG_FORMAT=json: every line a JSON object, so Celery prints no start-up banner (--quiet);
# gunicorn's lines follow LOG_FORMAT through gunicorn.conf.py, the app's through app/logging.py.
CELERY_QUIET=
case "${LOG_FORMAT:-text}" in
    json | JSON) CELERY_QUIET=--quiet ;;
esac

case "$role" in
    web)
        WEB_CONCURRENCY=${WEB_CONCURRENCY:-2}
        GUNICORN_WORKER_CLASS=${GUNICORN_WORKER_CLASS:-gevent}
        GUNICORN_WORKER_CONNECTIONS=${GUNICORN_WORKER_CONNECTIONS:-100}
        GUNICORN_THREADS=${GUNICORN_THREADS:-1}
        GUNICORN_TIMEOUT=${GUNICORN_TIMEOUT:-30}
        GUNICORN_GRACEFUL_TIMEOUT=${GUNICORN_GRACEFUL_TIMEOUT:-25}
        GUNICORN_KEEPALIVE=${GUNICORN_KEEPALIVE:-5}
        GUNICORN_MAX_REQUESTS=${GUNICORN_MAX_REQUESTS:-2000}
        GUNICORN_MAX_REQUESTS_JITTER=${GUNICORN_MAX_REQUESTS_JITTER:-200}
        require_positive_int WEB_CONCURRENCY "$WEB_CONCURRENCY"
        require_positive_int GUNICORN_WORKER_CONNECTIONS "$GUNICORN_WORKER_CONNECTIONS"
        require_positive_int GUNICORN_THREADS "$GUNICORN_THREADS"
        require_int GUNICORN_TIMEOUT "$GUNICORN_TIMEOUT"
        require_int GUNICORN_GRACEFUL_TIMEOUT "$GUNICORN_GRACEFUL_TIMEOUT"
        require_int GUNICORN_KEEPALIVE "$GUNICORN_KEEPALIVE"
        require_int GUNICORN_MAX_REQUESTS "$GUNICORN_MAX_REQUESTS"
        require_int GUNICORN_MAX_REQUESTS_JITTER "$GUNICORN_MAX_REQUESTS_JITTER"
        # --threads only matters for gthread; --worker-connections only for gevent.
        # The heartbeat files go to /dev/shm (a tmpfs in every container runtime), and the
        # control socket is off: the root filesystem is read-only and scaling is the
        # orchestrator's job. gunicorn.conf.py in the working directory (/app) is read too:
        # Prometheus multiprocess mode and JSON logs.
        run gunicorn wsgi:app \
            --bind "0.0.0.0:$PORT" \
            --worker-class "$GUNICORN_WORKER_CLASS" \
            --workers "$WEB_CONCURRENCY" \
            --threads "$GUNICORN_THREADS" \
            --worker-connections "$GUNICORN_WORKER_CONNECTIONS" \
            --timeout "$GUNICORN_TIMEOUT" \
            --graceful-timeout "$GUNICORN_GRACEFUL_TIMEOUT" \
            --keep-alive "$GUNICORN_KEEPALIVE" \
            --max-requests "$GUNICORN_MAX_REQUESTS" \
            --max-requests-jitter "$GUNICORN_MAX_REQUESTS_JITTER" \
            --worker-tmp-dir /dev/shm \
            --no-control-socket \
            --access-logfile - \
            --error-logfile - \
            --log-level "$LOG_LEVEL" \
            "$@"
        ;;
    worker)
        CELERY_WORKER_CONCURRENCY=${CELERY_WORKER_CONCURRENCY:-2}
        require_positive_int CELERY_WORKER_CONCURRENCY "$CELERY_WORKER_CONCURRENCY"
        # Gossip and mingle add broker chatter that grows with the number of workers and
        # serve features (revokes sync, worker-to-worker events) this service does not use.
        # shellcheck disable=SC2086  # CELERY_QUIET is empty or one word
        run celery -A celery_worker $CELERY_QUIET worker \
            --loglevel "$LOG_LEVEL" \
            --concurrency "$CELERY_WORKER_CONCURRENCY" \
            --without-gossip \
            --without-mingle \
            "$@"
        ;;
    beat)
        # A singleton: run exactly one beat process per deployment (see docs/DEPLOY.md).
        # The schedule file must live on a writable path; the root filesystem is read-only.
        # shellcheck disable=SC2086
        run celery -A celery_worker $CELERY_QUIET beat \
            --loglevel "$LOG_LEVEL" \
            --schedule "${CELERY_BEAT_SCHEDULE:-/tmp/celerybeat-schedule}" \
            "$@"
        ;;
    init-db)
        run flask --app wsgi init-db "$@"
        ;;
    healthcheck)
        # The slim image has no curl; the standard library is enough for a liveness check.
        run python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/health/live', timeout=3).status == 200 else 1)"
        ;;
    -*)
        usage
        exit 64
        ;;
    *)
        if command -v "$role" >/dev/null 2>&1; then
            run "$role" "$@"
        fi
        echo "entrypoint.sh: unknown role or command '$role'" >&2
        usage
        exit 64
        ;;
esac
