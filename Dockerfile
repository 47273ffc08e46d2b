# syntax=docker/dockerfile:1
# One image for every role; the command picks it (deploy/ecs/task-definitions/):
#   web      gunicorn "billing:create_app()"                      (the default below)
#   workers  celery -A workers worker -Q billing|pdf|mail|webhooks ...
#   beat     celery -A workers beat -S workers.beat:BillingRedBeatScheduler
#   migrate  billing db upgrade
# Build: docker build -t billing .   Lint: .venv/bin/hadolint Dockerfile (make lint)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the virtualenv, from wheels only (no compiler anywhere) ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, in a layer of their own that only pyproject.toml or
# constraints.txt invalidate: the direct ones from pyproject.toml, every version from
# constraints.txt (which also pins the dev tools; those are never installed here).
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
    && pip install --no-cache-dir --only-binary=:all: -c constraints.txt -r /tmp/requirements.txt

# The project, installed in editable mode from /app: the final stage has the same tree at
# the same path, so the code runs from /app as from a checkout. billing/cli finds
# alembic.ini and migrations/ next to the package (PROJECT_ROOT), and gunicorn reads
# gunicorn.conf.py from the working directory, /app.
COPY billing ./billing
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps -e .

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime

# WeasyPrint's system libraries: Pango (with its FreeType backend), HarfBuzz's subsetter
# (several times faster than fontTools') and fontconfig. The invoice fonts ship with the
# package. Versions come from the base image's Debian release; security fixes arrive by
# rebuilding, which a pinned Debian version would break once the mirror drops it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 \
        libpangoft2-1.0-0 \
        libharfbuzz-subset0 \
        fontconfig \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 billing \
    && useradd --system --uid 10001 --gid billing --create-home --home-dir /home/billing \
        --shell /usr/sbin/nologin billing \
    && install -d -o billing -g billing -m 0700 /tmp/prometheus

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    BILLING_ROLE=web \
    HEARTBEAT_FILE=/tmp/billing-heartbeat \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

WORKDIR /app
COPY alembic.ini gunicorn.conf.py ./
COPY migrations ./migrations
COPY billing ./billing
COPY workers ./workers
COPY deploy/healthcheck.py /usr/local/bin/billing-healthcheck
# Bytecode compiled now: /app is read-only to the app user, so no process could cache it.
RUN chmod 0755 /usr/local/bin/billing-healthcheck \
    && python -m compileall -q /app/billing /app/workers /app/migrations

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["billing-healthcheck"]
CMD ["gunicorn", "billing:create_app()"]
