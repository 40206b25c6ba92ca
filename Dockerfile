# TraceMind daemon image: `tm daemon start` in the foreground under tini, JSON logs on stdout,
# status server (/livez, /readyz, /status, /metrics) on :8080, data on the /data volume.
#
#   docker build -t tracemind:dev .
#   docker compose build            # see compose.yaml; docs/deployment.md explains both
#
# Builds with the classic builder and with BuildKit alike: no `RUN --mount`, no heredocs.
# BASE_IMAGE is any Debian-based image with python3 (>= 3.11) and the venv module; CI passes a
# local debootstrap image built by scripts/ci/docker-engine.sh because it cannot pull.
# VERSION, REVISION, CREATED and SOURCE fill the OCI labels; compose passes them from
# TM_IMAGE_VERSION etc., which `scripts/build-image` sets (`unknown` when nothing does).

ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---- build: the project and every dependency as wheels -------------------------------------------
FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A throwaway venv gives the same pip on the official image and on Debian's python3 (which has
# no pip module of its own, only ensurepip through python3-venv).
RUN python3 -m venv /opt/build-venv

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN /opt/build-venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels ".[status,redis]"

# ---- runtime --------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG BASE_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="tracemind" \
      org.opencontainers.image.description="TraceMind job daemon: a durable shared-directory task queue and its worker pool" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# tini reaps zombies and forwards SIGTERM to the daemon, which drains. The CI base image ships it
# (and has no apt lists); the official slim image does not.
RUN if [ ! -x /usr/bin/tini ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends tini=0.19.* \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && /usr/bin/tini --version

# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it; compose runs the container as
# the host user instead (user: TM_UID:TM_GID); the daemon makes files 0660 and directories 2770.
RUN groupadd --gid 10001 tracemind \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tracemind \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 2770 /data

COPY --from=build /wheels /tmp/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /tmp/wheels /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/venv/bin/tm --version

# The license, where Debian keeps them (the wheel's copy is in the venv's dist-info too).
COPY LICENSE /usr/share/doc/tracemind-daemon/LICENSE

# The bundled example steps and flows; compose and most deployments mount their own over /app.
COPY app /app

# HOME=/tmp: the root filesystem is read-only and the user may have no passwd entry; /tmp is a
# tmpfs. PYTHONPATH=/app puts the user's steps on the workers' import path. TM_FILE_QUEUE_V2=1:
# durable mode. TM_START_ERROR_HOLD_S: a daemon that cannot start (e.g. /data not writable)
# answers health checks with the reason for 8 s, longer than their 5 s interval, then exits 1.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    HOME=/tmp \
    TM_DATA_DIR=/data \
    TM_ENABLE_DAEMON=1 \
    TM_FILE_QUEUE_V2=1 \
    TM_START_ERROR_HOLD_S=8

WORKDIR /app
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080 8081

# Readiness (the default probe of `tm health`): healthy means "ready to take work".
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 CMD ["tm", "health"]

# Arguments given to `docker run IMAGE ...` (or compose's `command:`) are appended, e.g.
# `--workers 4`; a later `--status-bind` overrides this one.
ENTRYPOINT ["/usr/bin/tini", "--", "tm", "daemon", "start", "--foreground", "--inherit-logs", "--status-bind", "0.0.0.0:8080"]
CMD []
