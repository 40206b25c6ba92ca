"""The Dockerfile builds with the engine's classic builder too (``docker build``, the Docker SDK):
the session image comes from ``docker compose build`` (BuildKit), this builds it the other way."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable
from typing import Any

import pytest

pytestmark = [pytest.mark.container, pytest.mark.slow]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images_built_here(build_log: Iterable[dict[str, Any]]) -> list[str]:
    """Ids of the images this build created (not reused from the cache, not a FROM base): the
    classic builder leaves the last image of every earlier stage behind as a dangling image."""
    created: list[str] = []
    skip_next = False
    for chunk in build_log:
        for line in str(chunk.get("stream", "")).splitlines():
            line = line.strip()
            from_step = line.startswith("Step ") and " : FROM " in line.upper()
            if from_step or line == "---> Using cache":
                skip_next = True
            elif re.fullmatch(r"---> [0-9a-f]{12,64}", line):
                if not skip_next:
                    created.append(line.removeprefix("---> "))
                skip_next = False
    return created


def _remove_untagged(client: Any, image_ids: list[str]) -> None:
    import docker.errors

    for image_id in reversed(image_ids):
        with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
            if not client.images.get(image_id).tags:  # never an image someone tagged
                client.images.remove(image_id)


@pytest.mark.timeout(600)
def test_the_classic_builder_builds_a_working_image(docker_client: Any, tm_image: str) -> None:
    import docker.errors

    tag = f"{tm_image}-classic"
    build_args = {}
    if os.environ.get("TM_BASE_IMAGE"):
        build_args["BASE_IMAGE"] = os.environ["TM_BASE_IMAGE"]
    started = time.monotonic()
    built: list[str] = []
    try:
        # The SDK's build endpoint without BuildKit: `RUN --mount` or a heredoc would fail here.
        try:
            image, log = docker_client.images.build(
                path=REPO_ROOT,
                tag=tag,
                buildargs=build_args,
                network_mode=os.environ.get("TM_BUILD_NETWORK") or "default",
                rm=True,
                forcerm=True,
                pull=False,
                timeout=540,
            )
        except docker.errors.BuildError as exc:
            built = _images_built_here(exc.build_log)
            log = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
            pytest.fail(f"classic build failed: {exc.msg}\n{log[-4000:]}", pytrace=False)
        built = _images_built_here(log)
        print(f"classic build: {time.monotonic() - started:.1f} s")
        config = image.attrs["Config"]
        assert config["User"] == "10001:10001"
        assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
        assert config["Healthcheck"]["Test"] == ["CMD", "tm", "health"]
        assert config["Labels"]["org.opencontainers.image.title"] == "tracemind"
        # And it runs: the venv's `tm`, as the image's own non-root user, on a read-only root.
        # (Not `run(remove=True)`: the SDK removes the container without its anonymous /data
        # volume, which would be left behind on every run.)
        container = docker_client.containers.create(
            tag,
            entrypoint=["tm", "--version"],
            command=[],
            read_only=True,
            network_mode="none",
        )
        try:
            container.start()
            assert container.wait(timeout=60)["StatusCode"] == 0
            output = container.logs(stdout=True, stderr=True)
            container.reload()
            volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
        finally:
            container.remove(v=True, force=True)
        assert output.decode().startswith("tm "), output
        # And its anonymous /data volume went with it.
        assert volumes, "the image declares VOLUME /data"
        for name in volumes:
            with pytest.raises(docker.errors.NotFound):
                docker_client.volumes.get(name)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag)
        _remove_untagged(docker_client, built)
