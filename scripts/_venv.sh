# shellcheck shell=bash
# Sourced by scripts/run and scripts/test (not executable on its own).
# ensure_venv: .venv with requirements-dev.txt installed, reinstalled only when the
# requirements files change (a hash stamp in .venv); then activates it. The rest (servers, Debian
# packages, RabbitMQ) is Python: the devstack package.

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
