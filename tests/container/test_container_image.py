"""What the image says about itself: its OCI labels (as ``docker inspect`` shows them), the
distribution installed in it, its license, and durable mode on by default."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import tracemind

pytestmark = [pytest.mark.container]

REPO = Path(__file__).resolve().parents[2]


def _inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "image", "inspect", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    doc: dict[str, Any] = json.loads(out)[0]
    return doc


def _run(docker_client: Any, image: str, *argv: str) -> str:
    """Run argv in a throwaway container of the image; its output (the container and its
    anonymous /data volume are removed)."""
    container = docker_client.containers.create(
        image, entrypoint=list(argv), command=[], read_only=True, network_mode="none"
    )
    try:
        container.start()
        code = container.wait(timeout=60)["StatusCode"]
        output = container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(v=True, force=True)
    assert code == 0, output
    return str(output)


def test_labels_name_version_revision_creation_and_source(
    tm_image: str, image_labels: dict[str, str]
) -> None:
    labels = _inspect(tm_image)["Config"]["Labels"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert labels["org.opencontainers.image.version"] == tracemind.__version__
    assert labels["org.opencontainers.image.source"] == pyproject["project"]["urls"]["Source"]
    assert labels["org.opencontainers.image.licenses"] == pyproject["project"]["license"] == "MIT"
    revision = labels["org.opencontainers.image.revision"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    if head.returncode == 0:
        assert re.fullmatch(re.escape(head.stdout.strip()) + "(-dirty)?", revision), revision
    assert revision == image_labels["TM_IMAGE_REVISION"]
    created = datetime.strptime(labels["org.opencontainers.image.created"], "%Y-%m-%dT%H:%M:%SZ")
    age = datetime.now(UTC) - created.replace(tzinfo=UTC)
    assert timedelta(0) <= age < timedelta(hours=6), created


def test_the_image_holds_the_distribution_its_license_and_durable_mode(
    docker_client: Any, tm_image: str
) -> None:
    license_text = (REPO / "LICENSE").read_text()
    # The distribution as installed (name, version, license file in its metadata)...
    code = (
        "import importlib.metadata as m; d = m.distribution('tracemind-daemon'); "
        "print(d.metadata['Name'], d.version, d.metadata['License-Expression']); "
        "print(d.read_text('licenses/LICENSE'), end='')"
    )
    out = _run(docker_client, tm_image, "python3", "-c", code)
    first, _, rest = out.partition("\n")
    assert first == f"tracemind-daemon {tracemind.__version__} MIT"
    assert rest == license_text
    # ... the license where Debian keeps them...
    assert _run(docker_client, tm_image, "cat", "/usr/share/doc/tracemind-daemon/LICENSE") == (
        license_text
    )
    # ... and durable mode on wherever the image runs.
    env = dict(item.split("=", 1) for item in _inspect(tm_image)["Config"]["Env"])
    assert env["TM_FILE_QUEUE_V2"] == "1" and env["TM_ENABLE_DAEMON"] == "1"
