"""Where both sides' programs are, the competitor's own venv, scratch space and timed processes.

Our side runs with the interpreter that runs the bench (the project venv) and the ``tm`` next to
it (or on PATH). Huey lives in ``bench/.venv-huey``, created on demand with the base interpreter
of that same Python (``python3 -m venv``) and ``pip install huey`` — nothing of it enters the
project's dependencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import BenchError
from bench.procstat import tree

BENCH_DIR = Path(__file__).resolve().parent
CHILDREN_DIR = BENCH_DIR / "children"
HUEY_VENV = BENCH_DIR / ".venv-huey"
DEFAULT_SCRATCH = BENCH_DIR / ".scratch"
PYCACHE_DIR = BENCH_DIR / ".pycache"
EXIT_NO_COMPETITOR = 75
"""Exit status of ``python -m bench`` when Huey cannot be installed (EX_TEMPFAIL)."""


class CompetitorUnavailable(BenchError):
    """Huey could not be installed (no network, no pip)."""


@dataclass(frozen=True)
class Programs:
    python: str
    """The project venv's interpreter: runs our library-level children, and is the
    ``python3 -c pass`` anchor (the interpreter ``tm`` itself starts, same site-packages)."""
    tm: str
    huey_python: str
    huey_consumer: str


def base_interpreter() -> str:
    """The interpreter the project venv was made from (not a pyenv shim, not the venv)."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def find_tm() -> str:
    beside = Path(sys.executable).parent / "tm"
    if beside.exists():
        return str(beside)
    found = shutil.which("tm")
    if found is None:
        raise BenchError("cannot find `tm` next to this Python or on PATH (install the project)")
    return found


def ensure_huey(refresh: bool = False) -> tuple[str, str]:
    """Create ``bench/.venv-huey`` with the latest Huey if needed; its python and consumer."""
    python = HUEY_VENV / "bin" / "python"
    consumer = HUEY_VENV / "bin" / "huey_consumer"
    if refresh or not (python.exists() and consumer.exists() and _imports_huey(python)):
        _install_huey(refresh)
    return str(python), str(consumer)


def _imports_huey(python: Path) -> bool:
    probe = subprocess.run(
        [str(python), "-c", "import huey"], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def _install_huey(refresh: bool) -> None:
    print("bench: installing Huey (latest from PyPI) into bench/.venv-huey …", file=sys.stderr)
    steps: list[list[str]] = []
    if refresh or not (HUEY_VENV / "bin" / "python").exists():
        steps.append([base_interpreter(), "-m", "venv", "--clear", str(HUEY_VENV)])
    pip = [str(HUEY_VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    steps.append([*pip, "install", "--quiet", "--upgrade", "huey"])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise CompetitorUnavailable(f"`{' '.join(step[-3:])}` failed: {' / '.join(tail)}")


def programs(refresh_huey: bool = False) -> Programs:
    huey_python, huey_consumer = ensure_huey(refresh_huey)
    return Programs(sys.executable, find_tm(), huey_python, huey_consumer)


def version_of(python: str, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def _base_env(drop: tuple[str, ...]) -> dict[str, str]:
    """The caller's environment with both sides' bytecode cached in one bench-owned tree.

    Interpreters started with PYTHONDONTWRITEBYTECODE and no cache would compile every module
    on each start, which is not how either program runs once installed; a shared
    PYTHONPYCACHEPREFIX gives both sides warm caches without writing into the source trees.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    return env


def plain_env() -> dict[str, str]:
    """The environment of either side's processes with no ``TM_``/``BENCH_`` settings, bytecode
    cached as in :func:`_base_env`."""
    return _base_env(("TM_", "BENCH_"))


def ours_env(data_dir: Path) -> dict[str, str]:
    """Our processes' environment: durable queue (V2), every directory under ``data_dir``."""
    env = _base_env(("TM_",))
    env.update(TM_FILE_QUEUE_V2="1", TM_DATA_DIR=str(data_dir))
    return env


def huey_env(db_path: Path, **extra: str) -> dict[str, str]:
    """The competitor's environment: its app module importable, its SQLite file given."""
    env = _base_env(("TM_", "BENCH_"))
    env.update(PYTHONPATH=str(CHILDREN_DIR), BENCH_HUEY_DB=str(db_path), **extra)
    return env


@dataclass(frozen=True)
class Finished:
    elapsed_s: float
    """Wall time from spawn to exit."""
    stdout: str


def run_timed(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    stdout_path: Path | None = None,
    stderr_path: Path | None = None,
    capture: bool = False,
) -> Finished:
    """Run ``cmd`` to completion (stdout to a file, captured, or discarded; stderr to a file or
    captured); BenchError unless it exits 0."""
    out: Any = subprocess.PIPE if capture else subprocess.DEVNULL
    err: Any = subprocess.PIPE
    with contextlib.ExitStack() as stack:
        if stdout_path is not None:
            out = stack.enter_context(open(stdout_path, "wb"))
        if stderr_path is not None:
            err = stack.enter_context(open(stderr_path, "wb"))
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        stdout, stderr, timed_out = _communicate_exactly(proc, timeout_s)
        elapsed_s = time.perf_counter() - started
        if timed_out:
            raise BenchError(f"`{' '.join(cmd[:4])} …` did not finish in {timeout_s:g} s")
    if proc.returncode != 0:
        errors = stderr_path.read_bytes() if stderr_path is not None else stderr
        tail = errors.decode(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"`{' '.join(cmd[:4])} …` exited {proc.returncode}: {' / '.join(tail)}")
    return Finished(elapsed_s, (stdout or b"").decode())


def _communicate_exactly(
    proc: subprocess.Popen[bytes], timeout_s: float
) -> tuple[bytes | None, bytes | None, bool]:
    """``proc.communicate()`` that sees the exit when it happens: (stdout, stderr, whether the
    process tree was killed for outliving ``timeout_s``).

    ``communicate(timeout=...)`` of a process without pipes waits by polling, with sleeps that
    grow to 50 ms, so a run's time would be rounded up to the next poll: up to 50 ms more, far
    more than the end of a burst takes. Here the wait blocks in ``waitpid`` (or reads the
    pipes to their end), and a watchdog thread kills the tree if it runs too long. (A process
    that left the tree, reparented, and kept a pipe open would hold the wait: none of the
    commands run here does.)"""
    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        _kill_all(proc)

    timer = threading.Timer(timeout_s, watchdog)
    timer.start()
    try:
        stdout, stderr = proc.communicate()
    finally:
        timer.cancel()
    return stdout, stderr, expired.is_set()


def last_json(text: str) -> dict[str, Any]:
    """The JSON object a child script printed on its last line."""
    lines = text.strip().splitlines()
    if not lines:
        raise BenchError("child printed nothing")
    value = json.loads(lines[-1])
    if not isinstance(value, dict):
        raise BenchError(f"child printed {lines[-1]!r}, not a JSON object")
    return value


def stop_process(proc: subprocess.Popen[bytes], first_signal: int, timeout_s: float) -> None:
    """Stop a process this bench started: ``first_signal``, then after ``timeout_s`` SIGKILL to it
    and its descendants."""
    if proc.poll() is None:
        proc.send_signal(first_signal)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process this bench started and every descendant, each by its PID (found before
    the parent dies, while they are still its children)."""
    _kill_all(proc)
    proc.wait(timeout=10)


def _kill_all(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and its descendants, each by its PID, the deepest first."""
    for pid in reversed(tree(proc.pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(directory: Path) -> bool:
    """Mark ``directory`` as a top of hierarchy for ext4's Orlov allocator (``chattr +T``), so
    each measurement's directory gets its own block group. On ext4 without a journal, creating a
    file skips every inode of its group freed in the last minutes, one cache lookup each; without
    this, one measurement's deleted files would slow the next one's creates. Best effort: False
    where the file system does not support the flag."""
    import array
    import fcntl

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] |= FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
