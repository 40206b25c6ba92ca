"""The distribution as built: its name (one nobody else's code answers to), its single version
source, license, classifiers and URLs, no test tools among its extras, and install lines in the
docs that install this project and nothing else."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import tracemind

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = "tracemind-daemon"
INSTALL_DOCS = [
    REPO / "README.md",
    REPO / "Dockerfile",
    REPO / ".ci" / "run",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file()),
    *sorted(p for p in (REPO / "scripts").rglob("*") if p.is_file()),
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, offline (hatchling from the test tools)."""
    try:
        import hatchling  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("hatchling is missing (pip install -e '.[status]' --group test)")
        pytest.skip("hatchling is missing (pip install -e '.[status]' --group test)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(out), str(REPO)),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (built,) = out.glob("*.whl")
    return built


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_wheel_name_version_and_license(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["Name"] == DISTRIBUTION
    assert meta["Version"] == tracemind.__version__
    assert wheel.name.startswith(f"tracemind_daemon-{tracemind.__version__}-")
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    with zipfile.ZipFile(wheel) as archive:
        licenses = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(licenses) == 1
        assert archive.read(licenses[0]).decode() == (REPO / "LICENSE").read_text()
        assert "MIT License" in archive.read(licenses[0]).decode()
        assert "tracemind/__init__.py" in archive.namelist()
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        assert "tm = tracemind.cli.main:main" in archive.read(entry_points).decode()


def test_wheel_classifiers_urls_and_extras(wheel: Path) -> None:
    meta = _metadata(wheel)
    classifiers = meta.get_all("Classifier") or []
    for classifier in (
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Typing :: Typed",
    ):
        assert classifier in classifiers
    assert not any(c.startswith("License ::") for c in classifiers), "the expression says it"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Source", "Documentation", "Changelog"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    # What a user installs: the status and redis extras only; the test tools are a dependency group.
    assert meta.get_all("Provides-Extra") == ["redis", "status"]
    requirements = " ".join(meta.get_all("Requires-Dist") or [])
    for tool in ("pytest", "ruff", "mypy", "docker", "hadolint"):
        assert tool not in requirements, tool


def test_one_version_source() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/tracemind/__init__.py"
    assert "test" not in project["project"].get("optional-dependencies", {})
    assert "test" in project["dependency-groups"]
    # The example manifest names the image of this version.
    statefulset = (REPO / "deploy" / "k8s" / "statefulset.yaml").read_text()
    assert f"image: tracemind:{tracemind.__version__}" in statefulset


def test_install_lines_install_this_project_only() -> None:
    # `pip install NAME` where NAME is ours would fetch whatever an index serves under that name
    # (for the old name, someone else's project): every install line names a path instead.
    offenders = []
    for path in INSTALL_DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "pip install" in line and re.search(
                r"(?<![/\w.])(trace-mind|tracemind-daemon)\b", line
            ):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
            if "trace-mind[" in line or "'trace-mind" in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
