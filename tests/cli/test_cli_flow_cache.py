"""The snapshot cache as ``tm enqueue`` uses it: real processes, a hook module that records every
import of itself (an import means the flow was validated), and the cache in ``tmp_path``."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tm_testing import Tm, files_under, task_record

HOOKS = textwrap.dedent(
    """
    import os

    with open(os.environ["TM_TEST_IMPORTS"], "a") as log:
        log.write("imported\\n")


    def work(ctx, state):
        return {"worked": True}
    """
)
FLOW = textwrap.dedent(
    """
    flow:
      id: cached-a
      steps:
        - id: work
          kind: task
          hooks:
            run: cache_probe_hooks.work
    """
)


class Project:
    """A flow and its hook module in ``tm``'s working directory, and what ``tm`` did with them."""

    def __init__(self, tm: Tm, root: Path) -> None:
        self.tm = tm
        self.flow = tm.cwd / "flow.yaml"
        self.hooks = tm.cwd / "cache_probe_hooks.py"
        self.imports_log = root / "imports.log"
        self.cache = root / "cache"
        self.env = {"TM_TEST_IMPORTS": str(self.imports_log), "XDG_CACHE_HOME": str(self.cache)}
        self.flow.write_text(FLOW)
        self.hooks.write_text(HOOKS)

    def enqueue(self, *args: str, code: int = 0, **env: str) -> str:
        """Run ``tm enqueue flow.yaml ARGS``; its stdout (or its one stderr line on failure)."""
        proc = self.tm("enqueue", self.flow, *args, env={**self.env, **env})
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr
        return proc.stdout.strip() if code == 0 else proc.stderr.strip()

    def validations(self) -> int:
        """How often the hook module was imported, i.e. the flow validated."""
        return len(self.imports_log.read_text().splitlines()) if self.imports_log.exists() else 0

    def entries(self) -> list[Path]:
        return sorted((self.cache / "tracemind" / "flows").glob("*.json"))


@pytest.fixture
def project(tm: Tm, tmp_path: Path) -> Project:
    return Project(tm, tmp_path)


def _queued_flow_ids(data_root: Path) -> list[str]:
    pending = sorted((data_root / "queue" / "pending").glob("*/*/*.json"))
    return [task_record(path)["flow_id"] for path in pending]


def test_an_unchanged_flow_is_validated_once(project: Project, data_root: Path) -> None:
    first = project.enqueue("-i", "{}")
    second = project.enqueue("-i", "{}")

    assert first != second  # two tasks
    assert project.validations() == 1
    assert len(project.entries()) == 1
    assert _queued_flow_ids(data_root) == ["cached-a", "cached-a"]


def test_an_edited_flow_is_validated_again_even_with_the_same_size_and_mtime(
    project: Project, data_root: Path
) -> None:
    project.enqueue()
    before = project.flow.stat()
    project.flow.write_text(FLOW.replace("cached-a", "cached-b"))
    os.utime(project.flow, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert project.flow.stat().st_size == before.st_size

    project.enqueue()

    assert project.validations() == 2
    assert _queued_flow_ids(data_root) == ["cached-a", "cached-b"]
    assert len(project.entries()) == 1  # the entry of the flow file, rewritten


def test_an_edited_hook_module_invalidates_the_entry(project: Project) -> None:
    project.enqueue()
    project.hooks.write_text(HOOKS + "\n# edited\n")

    project.enqueue()
    project.enqueue()

    assert project.validations() == 2


def test_a_removed_hook_module_is_reported_not_served_from_the_cache(project: Project) -> None:
    project.enqueue()
    project.hooks.unlink()

    error = project.enqueue(code=2)

    assert "step 'work'" in error and "cache_probe_hooks" in error


def test_an_invalid_flow_is_never_cached(project: Project, data_root: Path) -> None:
    project.flow.write_text(FLOW.replace("cache_probe_hooks.work", "cache_probe_hooks.absent"))

    errors = [project.enqueue(code=2) for _ in range(2)]

    assert errors[0] == errors[1]
    assert len(errors[0].splitlines()) == 1 and "has no attribute 'absent'" in errors[0]
    assert project.validations() == 2
    assert not project.cache.exists()
    assert files_under(data_root) == []


@pytest.mark.parametrize(
    ("args", "env", "code"),
    [
        (["-i", "{"], {}, 2),
        (["-i", "{}", "--queue-dir", "/proc/no-queue-here"], {}, 1),
    ],
    ids=["bad input", "unwritable queue"],
)
def test_a_rejected_request_leaves_no_cache_entry(
    project: Project, args: list[str], env: dict[str, str], code: int
) -> None:
    project.enqueue(*args, code=code, **env)

    assert not project.cache.exists()


def test_run_detached_uses_the_cache_too(project: Project) -> None:
    refused = project.tm("run", project.flow, "--detached", env=project.env)
    assert refused.returncode == 1  # TM_ENABLE_DAEMON unset: rejected, so nothing is cached
    assert not project.cache.exists()

    for _ in range(2):
        done = project.tm(
            "run", project.flow, "--detached", env={**project.env, "TM_ENABLE_DAEMON": "1"}
        )
        assert done.returncode == 0, done.stderr

    assert project.validations() == 1
    assert len(project.entries()) == 1


@pytest.mark.parametrize("damage", [b"", b"{", b"[]", b'{"key": 1}', b"\xff\xfe"])
def test_a_damaged_entry_is_ignored_and_rewritten(project: Project, damage: bytes) -> None:
    project.enqueue()
    [entry] = project.entries()
    entry.write_bytes(damage)

    project.enqueue()
    project.enqueue()

    assert project.validations() == 2
    assert json.loads(entry.read_text())["snapshot"]["flow"]["id"] == "cached-a"


def test_an_unwritable_cache_directory_is_silently_not_used(
    project: Project, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    for _ in range(2):
        project.enqueue(XDG_CACHE_HOME=str(blocker))

    assert project.validations() == 2


def test_the_cache_can_be_turned_off(project: Project) -> None:
    for _ in range(2):
        project.enqueue(TM_FLOW_CACHE="0")

    assert project.validations() == 2
    assert not project.cache.exists()
