# shellcheck shell=bash
# Sourced by scripts/run and scripts/test (not executable on its own).
# ensure_venv: .venv with requirements-dev.txt installed, reinstalled only when the
# requirements files change (a hash stamp in .venv); then activates it.
# ensure_redis_binary: redis-server on PATH, installed with apt-get when missing and root.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

ensure_venv() {
    local venv="$REPO_ROOT/.venv"
    local stamp="$venv/.requirements.sha256"
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        command -v python3 >/dev/null || { echo "python3 is required (3.11+)" >&2; return 1; }
        echo "creating .venv with $(command -v python3)" >&2
        python3 -m venv --clear "$venv" || {
            echo "python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
            return 1
        }
    fi
    local want have
    want=$(cd "$REPO_ROOT" && cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
    have=$(cat "$stamp" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
        echo "installing requirements-dev.txt into .venv" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$REPO_ROOT/requirements-dev.txt"
        echo "$want" >"$stamp"
    fi
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
}

# apt-get install, running apt-get update first only when the package lists lack it.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}

ensure_redis_binary() {
    command -v redis-server >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing redis-server with apt-get" >&2
        apt_install redis-server
    fi
    command -v redis-server >/dev/null || {
        echo "redis-server is not installed (apt-get install redis-server)" >&2
        return 1
    }
}

# ensure_test_tools: what the tests run besides Python (Debian packages, installed with apt-get
# when missing and root): redis-server and redis-cli (the cache, Sentinel sets, Clusters),
# prometheus and promtool (alert rules, the real-Prometheus test), chromium (the dashboard's
# browser test; Playwright drives it and never downloads a browser). And RabbitMQ on
# 127.0.0.1:5672 (Celery's amqp:// broker in the tests): started if installed but not running.
ensure_test_tools() {
    local missing=() pair
    for pair in redis-server:redis-server redis-cli:redis-tools prometheus:prometheus promtool:prometheus \
        chromium:chromium; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing ${missing[*]} with apt-get" >&2
            apt_install "${missing[@]}" </dev/null
        else
            echo "missing (install them first): ${missing[*]}" >&2
            return 1
        fi
    fi
    if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
        if ! command -v rabbitmq-server >/dev/null && [ "$(id -u)" = 0 ]; then
            echo "installing rabbitmq-server with apt-get" >&2
            apt_install rabbitmq-server </dev/null
        fi
        command -v rabbitmq-server >/dev/null || { echo "RabbitMQ is not installed" >&2; return 1; }
        echo "starting RabbitMQ" >&2
        rabbitmq-server -detached >/dev/null 2>&1 || true
        local i
        for ((i = 0; i < 240; i++)); do
            (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && return 0
            sleep 0.5
        done
        echo "RabbitMQ did not answer on 127.0.0.1:5672 within 120 s" >&2
        return 1
    fi
}
