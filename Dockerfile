# syntax=docker/dockerfile:1
# One image for every role: `web` (gunicorn), `worker` and `beat` (Celery), `init-db`.
# The role is the container's command; docker/entrypoint.sh maps it to the process it execs.
# Pin the base to a digest as well (python:3.11.14-slim-bookworm@sha256:...) once your registry
# mirror is known; the patch tag alone is what this repository can check offline.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: resolve and install the runtime dependencies into a virtualenv -----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Only requirements.txt: dev and test tools (SecantusDB among them) never enter the image.
# Copied alone, before the code, so a code change does not reinstall the dependencies.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --require-virtualenv -r /tmp/requirements.txt

# ---- runtime: the virtualenv, the code and nothing else ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000

# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot without resolving names.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# The code stays owned by root: the app user can read it but not change it.
COPY . /app
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/docker-entrypoint
# Bytecode is compiled now because the root filesystem is read-only at run time.
RUN python -m compileall -q /app

USER 10001:10001
EXPOSE 8000

# Liveness of the web role; compose and Kubernetes override or disable it for worker and beat.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["docker-entrypoint", "healthcheck"]

ENTRYPOINT ["docker-entrypoint"]
CMD ["web"]
