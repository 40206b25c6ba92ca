"""scripts/daemon_smoke.sh passes against the real ``tm``, and fails when ``tm`` misbehaves."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from daemon_harness import base_env, pids_mentioning

from tm_testing import tm_command, wait_until

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "daemon_smoke.sh"
EXAMPLE_FLOW = Path(__file__).resolve().parents[2] / "examples" / "flows" / "hello.yaml"

# A stand-in for `tm` that passes everything to the real one except the command it breaks.
WRAPPER = """#!/usr/bin/env bash
case "$1 $2" in
  {pattern}) {action} ;;
esac
exec {tm} "$@"
"""
BREAKAGES = {  # name: (command pattern, what the wrapper does instead, expected complaint)
    "task-wait-times-out": ("'task wait'", "echo '{}'; exit 3", "tm task wait exited 3"),
    "task-wait-lies": (
        "'task wait'",
        """echo '{"status": "dead"}'; exit 0""",
        "the task did not succeed",
    ),
    "ps-shows-pending": (
        "'daemon ps'",
        """{tm} "$@" | sed 's/"pending": 0/"pending": 7/'; exit ${PIPESTATUS[0]}""",
        "the queue did not drain",
    ),
    "ps-prints-garbage": ("'daemon ps'", "echo 'not json'; exit 0", "ps does not say running"),
    "run-prints-no-id": ("'run '*", "echo 'queued!'; exit 0", "printed no task id"),
}


def smoke_env(tmp_path: Path) -> dict[str, str]:
    """TMPDIR under tmp_path, ``tm`` on PATH, and inherited TM_* directories the script must
    not use."""
    env = base_env(tmp_path)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    env["TMPDIR"] = str(tmp_path)
    inherited = tmp_path / "inherited"
    env.update(
        TM_DATA_DIR=str(inherited / "data"),
        TM_QUEUE_DIR=str(inherited / "queue"),
        TM_IDEMPOTENCY_DIR=str(inherited / "idempotency"),
        TM_DLQ_DIR=str(inherited / "dlq"),
        TM_DAEMON_STATE_DIR=str(inherited / "state"),
    )
    return env


def run_script(
    env: dict[str, str], *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_nothing_left_running(tmp_path: Path) -> None:
    # the daemon releases its lock (and stop returns) an instant before its process exits
    wait_until(lambda: not pids_mentioning(str(tmp_path)), 10, "the daemon's processes to exit")
    for lock in tmp_path.glob("tm-smoke.*/state/daemon.lock"):
        probe = subprocess.run(
            ["flock", "--nonblock", "--shared", str(lock), "true"], timeout=10, check=False
        )
        assert probe.returncode == 0, f"{lock} is still held"


@pytest.mark.slow
def test_smoke_script_passes(tmp_path: Path) -> None:
    env = smoke_env(tmp_path)

    proc = run_script(env, cwd=tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke: OK" in proc.stdout
    assert not (tmp_path / "inherited").exists()  # inherited TM_* directories untouched
    assert list(tmp_path.glob("tm-smoke.*")) == []  # cleaned up on success
    assert_nothing_left_running(tmp_path)


@pytest.mark.slow
def test_smoke_script_with_triggers(tmp_path: Path) -> None:
    # Given: a triggers file with a filesystem trigger on an empty folder (it never fires)
    (tmp_path / "incoming").mkdir()
    config = tmp_path / "triggers.yaml"
    trigger = {
        "id": "inbox",
        "kind": "filesystem",
        "path": "incoming",
        "pattern": "*.json",
        "flow": str(EXAMPLE_FLOW),
        "input": {"name": "{{ name }}"},
    }
    config.write_text(yaml.safe_dump({"version": 1, "triggers": [trigger]}))

    proc = run_script(smoke_env(tmp_path), "--triggers", config)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke: OK" in proc.stdout
    assert_nothing_left_running(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_smoke_script_fails_when_tm_misbehaves(tmp_path: Path, breakage: str) -> None:
    # Given: TM_BIN pointing at a tm that breaks one command
    pattern, action, complaint = BREAKAGES[breakage]
    real_tm = " ".join(shlex.quote(part) for part in tm_command())
    wrapper = tmp_path / "broken-tm"
    wrapper.write_text(
        WRAPPER.format(pattern=pattern, action=action.replace("{tm}", real_tm), tm=real_tm)
    )
    wrapper.chmod(0o755)
    env = smoke_env(tmp_path)
    env["TM_BIN"] = str(wrapper)

    # When: the smoke script runs
    proc = run_script(env)

    # Then: it fails, names the daemon log (kept for inspection), and leaves no daemon behind
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "smoke: OK" not in proc.stdout
    assert complaint in proc.stderr
    [kept] = tmp_path.glob("tm-smoke.*")
    assert f"daemon log: {kept / 'state' / 'daemon.log'}" in proc.stderr
    assert "last lines of the daemon log" in proc.stderr
    assert_nothing_left_running(tmp_path)


def test_smoke_script_rejects_a_missing_triggers_file(tmp_path: Path) -> None:
    proc = run_script(smoke_env(tmp_path), "--triggers", tmp_path / "nope.yaml")

    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    assert list(tmp_path.glob("tm-smoke.*")) == []


def test_smoke_script_needs_tm(tmp_path: Path) -> None:
    env = smoke_env(tmp_path)
    env["TM_BIN"] = str(tmp_path / "no-such-tm")

    proc = run_script(env)

    assert proc.returncode == 2
    assert "not found" in proc.stderr
