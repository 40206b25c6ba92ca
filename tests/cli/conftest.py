"""The ``tm`` processes of the CLI tests keep their flow cache (docs/daemon.md, "The flow cache")
under the test's own directory, not in the home directory of whoever runs the tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tm_env(tm_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**tm_env, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
