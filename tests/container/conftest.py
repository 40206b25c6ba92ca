"""Fixtures for the container tests: a real Docker engine, the image built once per session, the
top-level compose.yaml brought up by pytest-docker under a per-run project name, and the host's
``tm`` (this venv's) pointed at the same bind-mounted data directory.

Everything a run creates is its own and is removed at the end: the compose projects
(``down -v``), the temporary data directories, and the per-run image tag. Nothing else on the
engine is touched. Every subprocess has a timeout.

Without a Docker engine (or without the compose v2 plugin, or the ``docker`` SDK) the container
tests skip; when ``CI`` is set that is a failure instead — CI must really run them.

Environment knobs: ``TM_BASE_IMAGE`` and ``TM_BUILD_NETWORK`` are passed through to the build
(CI sets them from ``scripts/ci/docker-engine.sh --print-env``); a developer's other ``TM_*``
variables and ``.env`` do not leak in, because every variable compose.yaml reads is set here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
SERVICE = "tracemind"
CONTAINER_PORT = 8080
RUN_ID = f"{os.getpid()}{secrets.token_hex(3)}"
IMAGE_TAG = f"tracemind:test-{RUN_ID}"

BUILD_TIMEOUT_S = 900
COMPOSE_TIMEOUT_S = 180
TM_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 5

# Users and groups for running as root (CI). The main stack's container user is deliberately
# not the image's own 10001, so the tests can tell compose's `user:` from the image's USER.
ROOT_RUN_UID, ROOT_RUN_GID = 23001, 23000

# Variables compose.yaml reads; all set explicitly so a developer's .env cannot redirect a test.
_COMPOSE_VARS = ("TM_IMAGE", "TM_UID", "TM_GID", "TM_DATA_DIR", "TM_APP_DIR", "TM_STATUS_PORT")
_PASSTHROUGH = ("TM_BASE_IMAGE", "TM_BUILD_NETWORK")
_LABEL_VARS = ("TM_IMAGE_VERSION", "TM_IMAGE_REVISION", "TM_IMAGE_CREATED", "TM_IMAGE_SOURCE")

FLOWS = {
    # Sleeps state["seconds"]; carries whatever else the input holds.
    "sleep.yaml": """
        flow:
          id: ctest-sleep
          version: "1"
          steps:
            - {id: nap, kind: task, hooks: {run: tracemind.steps.sleep}}
            - {id: done, kind: finish}
          edges:
            - {from: nap, to: done}
    """,
    # Fails at once, no retry: straight to the DLQ.
    "fail.yaml": """
        flow:
          id: ctest-fail
          version: "1"
          retry: {max_attempts: 1}
          steps:
            - {id: boom, kind: task, hooks: {run: tracemind.steps.fail}}
            - {id: done, kind: finish}
          edges:
            - {from: boom, to: done}
    """,
    # Fails once, then waits ten minutes for its retry: a task that stays "delayed".
    "fail_later.yaml": """
        flow:
          id: ctest-fail-later
          version: "1"
          retry: {max_attempts: 2, base_ms: 600000, factor: 1, jitter_ms: 0}
          steps:
            - {id: boom, kind: task, hooks: {run: tracemind.steps.fail}}
            - {id: done, kind: finish}
          edges:
            - {from: boom, to: done}
    """,
}


def is_root() -> bool:
    return os.geteuid() == 0


def missing(what: str) -> None:
    """Skip locally; fail under CI (a container test that silently skips in CI proves nothing)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set: this is a failure, not a skip)", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def host_tm() -> str:
    """This venv's ``tm`` (next to the interpreter running the tests), else the one on PATH."""
    beside = Path(sys.executable).parent / "tm"
    if beside.exists():
        return str(beside)
    found = shutil.which("tm")
    if found is None:
        pytest.fail(
            "no `tm` next to the test interpreter or on PATH: pip install -e '.[status]' --group test"
        )
    return str(found)


def _clean_env() -> dict[str, str]:
    """os.environ without any TM_* or COMPOSE_* setting (those are set per use)."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("TM_", "COMPOSE_", "PYTHONPATH"))
    }


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}", pytrace=False)
        time.sleep(interval_s)


@dataclass
class HttpResult:
    status: int
    content_type: str
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(url: str) -> HttpResult:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return HttpResult(
                response.status,
                response.headers.get("Content-Type", ""),
                response.read().decode("utf-8", "replace"),
            )
    except urllib.error.HTTPError as exc:
        return HttpResult(
            exc.code, exc.headers.get("Content-Type", ""), exc.read().decode("utf-8", "replace")
        )


def make_private_dir(parent: Path, name: str, uid: int, gid: int, mode: int = 0o2775) -> Path:
    """A directory owned by uid:gid (when we may chown) with ``mode`` (setgid by default)."""
    path = parent / name
    path.mkdir()
    if is_root():
        os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


@dataclass
class Project:
    """One compose project of the top-level compose.yaml, its data dir and the host CLI."""

    name: str
    data_dir: Path
    uid: int
    gid: int
    port: int
    image: str
    client: Any  # docker.DockerClient
    flows: Path

    # -- compose -----------------------------------------------------------------------------

    def compose_vars(self) -> dict[str, str]:
        values = {
            "TM_IMAGE": self.image,
            "TM_UID": str(self.uid),
            "TM_GID": str(self.gid),
            "TM_DATA_DIR": str(self.data_dir),
            "TM_APP_DIR": str(REPO / "app"),
            "TM_STATUS_PORT": str(self.port),
        }
        assert set(values) == set(_COMPOSE_VARS)
        values.update({k: os.environ[k] for k in _PASSTHROUGH if os.environ.get(k)})
        return values

    def compose_env(self) -> dict[str, str]:
        return {**_clean_env(), **self.compose_vars()}

    def compose_argv(self, *args: str) -> list[str]:
        return ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.name, *args]

    def shell_command(self, timeout_s: int = COMPOSE_TIMEOUT_S) -> str:
        """The `docker compose` command pytest-docker runs (a shell string): bounded in time and
        with this project's variables, which also override a developer's .env."""
        words = ["timeout", "-k", "10", str(timeout_s), "env"]
        words += [f"-u{k}" for k in sorted(os.environ) if k.startswith("COMPOSE_")]
        words += [f"{k}={v}" for k, v in sorted(self.compose_vars().items())]
        words += ["docker", "compose"]
        return shlex.join(words)

    def compose(
        self, *args: str, timeout_s: float = COMPOSE_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.compose_argv(*args),
            cwd=REPO,
            env=self.compose_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n--- container log tail ---\n{self.log_tail()}",
                pytrace=False,
            )
        return result

    def up(self) -> None:
        """`docker compose up -d --wait` (never builds: the session built the image)."""
        self.compose("up", "-d", "--wait", "--no-build")

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "20", check=False)

    # -- the container -----------------------------------------------------------------------

    def container(self) -> Any:
        found = self.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.name}",
                    f"com.docker.compose.service={SERVICE}",
                ]
            },
        )
        assert len(found) == 1, f"expected one {SERVICE} container in {self.name}, got {found}"
        return found[0]

    def state(self) -> dict[str, Any]:
        container = self.container()
        container.reload()
        return dict(container.attrs["State"])

    def is_healthy(self) -> bool:
        with contextlib.suppress(AssertionError):
            state = self.state()
            return bool(
                state["Status"] == "running"
                and (state.get("Health") or {}).get("Status") == "healthy"
            )
        return False

    def wait_exited(self, timeout_s: float) -> dict[str, Any]:
        return dict(
            wait_for(
                f"{self.name}'s container to exit",
                lambda: (s := self.state())["Status"] == "exited" and s,
                timeout_s,
            )
        )

    def logs(
        self, *, stdout: bool = True, stderr: bool = False, since: float | None = None
    ) -> list[str]:
        """The container's log lines (of every run of this container, or from ``since``)."""
        extra = {} if since is None else {"since": since}
        raw = self.container().logs(stdout=stdout, stderr=stderr, **extra)
        return raw.decode("utf-8", "replace").splitlines()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(Exception):
            raw = self.container().logs(stdout=True, stderr=True, tail=lines)
            return str(raw.decode("utf-8", "replace"))
        return "(no container)"

    def exec(self, *argv: str, user: str = "") -> tuple[int, str]:
        """Run argv in the running container (as its configured user unless told otherwise)."""
        code, output = self.container().exec_run(list(argv), user=user, demux=False)
        return int(code), output.decode("utf-8", "replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> HttpResult:
        """GET a status path through the port published on 127.0.0.1."""
        return http_get(self.url(path))

    # Test modules reach the helpers through the fixtures (conftest is not importable by name).
    wait_for = staticmethod(wait_for)
    container_port = CONTAINER_PORT
    repo = REPO

    # -- the host CLI ------------------------------------------------------------------------

    def host_env(self, **extra: str) -> dict[str, str]:
        """What a user exports on the host to drive the container's daemon (docs/deployment.md)."""
        return {
            **_clean_env(),
            "TM_DATA_DIR": str(self.data_dir),
            "TM_ENABLE_DAEMON": "1",
            "TM_FILE_QUEUE_V2": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **extra,
        }

    def tm(
        self,
        *args: str,
        as_user: tuple[int, int] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = TM_TIMEOUT_S,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """The host's ``tm``; ``as_user=(uid, gid)`` runs it as that user with no other group."""
        prefix: list[str] = []
        if as_user is not None:
            uid, gid = as_user
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        result = subprocess.run(
            [*prefix, host_tm(), *args],
            cwd=self.flows,
            env=env or self.host_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"host tm {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}",
                pytrace=False,
            )
        return result

    def tm_json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.tm(*args, "--json", **kwargs).stdout)

    def enqueue(self, flow: str, inputs: dict[str, Any], **kwargs: Any) -> str:
        doc = self.tm_json("enqueue", str(self.flows / flow), "-i", json.dumps(inputs), **kwargs)
        return str(doc["task_id"])

    def wait_task(self, task_id: str, timeout_s: float = 30, **kwargs: Any) -> dict[str, Any]:
        """``tm task wait`` then ``tm task show --json`` on the host."""
        self.tm("task", "wait", task_id, "--timeout", str(timeout_s), check=False, **kwargs)
        return dict(self.tm_json("task", "show", task_id, **kwargs))

    def queue_busy(self) -> int:
        stats = self.tm_json("queue", "stats")
        return int(stats["pending"]) + int(stats["inflight"])


# -- the engine and the image -------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The Docker SDK client (it negotiates the API version itself), after checking that an
    engine answers and the compose v2 plugin is there."""
    try:
        import docker
    except ImportError:
        missing("the Docker SDK is not installed (pip install -e '.[status]' --group test)")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        missing(f"no Docker engine answers ({type(exc).__name__}: {exc})")
    try:
        version = subprocess.run(
            ["docker", "compose", "version", "--short"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing(f"`docker compose` is not usable ({exc})")
    if version.returncode != 0:
        missing(f"the compose v2 plugin is missing: {version.stderr.strip()}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def session_root(docker_client: Any) -> Iterator[Path]:
    """A world-traversable temporary directory for this run (pytest's own tmp dirs are 0700,
    which a second host user could not enter)."""
    root = Path(tempfile.mkdtemp(prefix=f"tm-ctest-{RUN_ID}-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def flows_dir(session_root: Path) -> Path:
    """The test flows (built-in steps only, so no PYTHONPATH is needed), readable by anyone."""
    flows = session_root / "flows"
    flows.mkdir()
    for name, text in FLOWS.items():
        (flows / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        os.chmod(flows / name, 0o644)
    os.chmod(flows, 0o755)
    return flows


@pytest.fixture(scope="session")
def image_labels() -> dict[str, str]:
    """The TM_IMAGE_* values ``scripts/build-image --print-env`` gives for this checkout."""
    printed = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image"), "--print-env"],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    values = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in printed.splitlines()
    )
    assert set(values) == set(_LABEL_VARS), printed
    return values


@pytest.fixture(scope="session")
def tm_image(docker_client: Any, session_root: Path, image_labels: dict[str, str]) -> Iterator[str]:
    """Build the image once per session with `docker compose build` (BuildKit) under a per-run
    tag; remove that tag at the end (the build cache stays, so the next run is quick)."""
    builder = Project(
        name=f"tmbuild{RUN_ID}",
        data_dir=session_root,
        uid=0,
        gid=0,
        port=0,
        image=IMAGE_TAG,
        client=docker_client,
        flows=session_root,
    )
    started = time.monotonic()
    # scripts/build-image: what CI builds, with the OCI labels filled in (the values of
    # image_labels, so that tests know what to expect).
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image"), SERVICE],
        cwd=REPO,
        env={
            **builder.compose_env(),
            **image_labels,
            "COMPOSE_FILE": str(COMPOSE_FILE),
            "COMPOSE_PROJECT_NAME": builder.name,
        },
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"docker compose build failed ({result.returncode}):\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    sys.stderr.write(
        f"\n[container tests] built {IMAGE_TAG} in {time.monotonic() - started:.1f}s\n"
    )
    try:
        yield IMAGE_TAG
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(IMAGE_TAG)  # untags only if the id has other tags


def _new_project(
    prefix: str,
    *,
    client: Any,
    image: str,
    root: Path,
    flows: Path,
    uid: int,
    gid: int,
    data_mode: int = 0o2775,
    data_owner: tuple[int, int] | None = None,
) -> Project:
    name = f"{prefix}{RUN_ID}"
    owner = data_owner if data_owner is not None else (uid, gid)
    data = make_private_dir(root, f"{name}-data", owner[0], owner[1], data_mode)
    return Project(name, data, uid, gid, free_port(), image, client, flows)


def _default_ids() -> tuple[int, int]:
    """Run the container as the invoking user (what .env tells users to do); as root, as an
    unprivileged uid:gid instead (a root container would prove nothing about permissions)."""
    if is_root():
        return ROOT_RUN_UID, ROOT_RUN_GID
    return os.getuid(), os.getgid()


# -- the main stack (pytest-docker) ----------------------------------------------------------------


@pytest.fixture(scope="session")
def main_project(
    docker_client: Any, tm_image: str, session_root: Path, flows_dir: Path
) -> Iterator[Project]:
    """The project pytest-docker brings up. Its teardown is a safety net: pytest-docker does not
    clean up when `up --wait` itself fails, so `down -v` runs here too (a no-op otherwise)."""
    uid, gid = _default_ids()
    project = _new_project(
        "tmtest", client=docker_client, image=tm_image, root=session_root, flows=flows_dir,
        uid=uid, gid=gid,
    )  # fmt: skip
    try:
        yield project
    finally:
        project.down()


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name(main_project: Project) -> str:
    return main_project.name


@pytest.fixture(scope="session")
def docker_compose_command(main_project: Project) -> str:
    return main_project.shell_command()


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up -d --wait --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans -t 20"]


@pytest.fixture
def stack(docker_services: Any, main_project: Project) -> Project:
    """The main stack, running and healthy (brought back up if an earlier test stopped it)."""
    if not main_project.is_healthy():
        main_project.up()
    return main_project


@pytest.fixture
def make_project(
    docker_client: Any, tm_image: str, session_root: Path, flows_dir: Path
) -> Iterator[Callable[..., Project]]:
    """Extra projects of the same compose.yaml (own data dir, user and port); all downed."""
    made: list[Project] = []

    def make(prefix: str, **kwargs: Any) -> Project:
        project = _new_project(
            prefix, client=docker_client, image=tm_image, root=session_root, flows=flows_dir,
            **kwargs,
        )  # fmt: skip
        made.append(project)
        return project

    try:
        yield make
    finally:
        for project in made:
            project.down()
