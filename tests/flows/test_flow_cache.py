"""The snapshot cache in-process: where it lives, what an entry records, when it is used.

(``tests/cli/test_cli_flow_cache.py`` runs it as ``tm enqueue`` does, in fresh processes.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracemind.config import flow_cache_dir
from tracemind.errors import FlowError
from tracemind.flows import load_flow, loader
from tracemind.flows.cache import MAX_AGE_S, load_flow_cached

FLOW = {"flow": {"id": "c", "steps": [{"id": "s", "kind": "task", "run": "cachepkg.hooks.fn"}]}}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A flow and its hook package in the current directory, which is on sys.path (as during a
    ``tm`` run once validation made it importable), and sys.path restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "cachepkg").mkdir()
    (tmp_path / "cachepkg" / "__init__.py").write_text("")
    (tmp_path / "cachepkg" / "hooks.py").write_text("def fn(ctx, state):\n    return {}\n")
    (tmp_path / "flow.json").write_text(json.dumps(FLOW))
    yield tmp_path
    for name in ("cachepkg", "cachepkg.hooks"):
        sys.modules.pop(name, None)


def _no_validation(*args: object, **kwargs: object) -> None:
    raise AssertionError("validated although the cache had the snapshot")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CACHE_HOME": "/xdg", "HOME": "/home/u"}, "/xdg/tracemind/flows"),
        ({"XDG_CACHE_HOME": "relative", "HOME": "/home/u"}, "/home/u/.cache/tracemind/flows"),
        ({"XDG_CACHE_HOME": "", "HOME": "/home/u"}, "/home/u/.cache/tracemind/flows"),
        ({"HOME": "/home/u", "TM_FLOW_CACHE": "off"}, None),
        ({"XDG_CACHE_HOME": "/xdg", "TM_FLOW_CACHE": "0"}, None),
        ({"XDG_CACHE_HOME": "/xdg", "TM_FLOW_CACHE": "yes"}, "/xdg/tracemind/flows"),
    ],
)
def test_where_the_cache_lives(env: dict[str, str], expected: str | None) -> None:
    assert flow_cache_dir(env) == expected


def test_a_miss_validates_and_remembering_makes_the_next_load_a_hit(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    expected = load_flow("flow.json")

    miss = load_flow_cached("flow.json", str(cache))
    assert not cache.exists()  # nothing is written before remember()
    miss.remember()
    monkeypatch.setattr(loader, "snapshot_bytes", _no_validation)
    hit = load_flow_cached("flow.json", str(cache))

    assert miss.snapshot == hit.snapshot == expected
    [entry] = cache.iterdir()
    assert entry.suffix == ".json"
    hit.remember()  # a hit has nothing to store
    assert [p.name for p in cache.iterdir()] == [entry.name]


def test_an_entry_records_the_hook_module_and_its_package(project: Path, tmp_path: Path) -> None:
    load_flow_cached("flow.json", str(tmp_path / "cache")).remember()
    [entry] = (tmp_path / "cache").iterdir()

    depends_on = {file for file, _, _ in json.loads(entry.read_text())["depends_on"]}

    assert {str(project / "cachepkg" / "__init__.py"), str(project / "cachepkg" / "hooks.py")} <= (
        depends_on
    )


def test_another_working_directory_is_another_entry(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    load_flow_cached("flow.json", str(cache)).remember()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    load_flow_cached(str(project / "flow.json"), str(cache)).remember()

    assert len(list(cache.iterdir())) == 2


def test_an_unreadable_flow_raises_the_usual_error(project: Path, tmp_path: Path) -> None:
    with pytest.raises(FlowError, match=r"^missing\.yaml: file not found$"):
        load_flow_cached("missing.yaml", str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_without_a_cache_directory_nothing_is_stored(project: Path, tmp_path: Path) -> None:
    loaded = load_flow_cached("flow.json", None)
    loaded.remember()

    assert loaded.snapshot == load_flow("flow.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cachepkg", "flow.json"]


def test_writing_an_entry_sweeps_old_ones(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, fresh = cache / "0000dead.json", cache / "0000beef.json"
    for path in (stale, fresh):
        path.write_text("{}")
    old = time.time() - MAX_AGE_S - 60
    os.utime(stale, (old, old))

    load_flow_cached("flow.json", str(cache)).remember()

    names = {p.name for p in cache.iterdir()}
    assert stale.name not in names
    assert fresh.name in names
    assert len(names) == 2  # fresh and the new entry; no temporary file left behind
