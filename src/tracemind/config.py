"""Where things live and which feature flags are on, resolved from flags and the environment.

Where the data is: :func:`tracemind.backend.location.data_location`. The daemon's state
directory: ``--state-dir``, then
``TM_DAEMON_STATE_DIR``, then ``$TM_DATA_DIR/state``, then ``~/.trace-mind/daemon``. The cache of
validated flows: ``$XDG_CACHE_HOME/tracemind/flows``, else ``~/.cache/tracemind/flows``.

App dirs (where hooks are imported from, before ``PYTHONPATH``): every ``--app-dir``, else
``TM_APP_DIR`` (directories separated by ``os.pathsep``), else none.
"""

from __future__ import annotations

import os

from tracemind.errors import DisabledError, UsageError
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

TRUTHY = frozenset({"1", "true", "yes", "on"})
MAX_WORKERS = 256
"""Most worker processes one pool (``tm workers start -n``, ``tm daemon start --workers``) may
run: each is a Python process of some tens of MB, so far more than this exhausts a host's memory
before it adds throughput. Run several pools (they share the queue) to go beyond it."""
DEFAULT_IDEMPOTENCY_TTL_S = 24 * 3600.0


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUTHY


class DataDirs(Value):
    __slots__ = ("dlq", "idempotency", "queue")

    def __init__(self, queue: Path, idempotency: Path, dlq: Path) -> None:
        self.queue = queue
        self.idempotency = idempotency
        self.dlq = dlq

    @classmethod
    def of(cls, queue: str, idempotency: str, dlq: str) -> DataDirs:
        from pathlib import Path

        return cls(Path(queue), Path(idempotency), Path(dlq))

    def to_dict(self) -> dict[str, str]:
        return {
            "queue": str(self.queue),
            "idempotency": str(self.idempotency),
            "dlq": str(self.dlq),
        }


def app_dirs(
    flags: Sequence[str] | None = None,
    env: Mapping[str, str] = os.environ,
    *,
    check: bool = True,
) -> tuple[str, ...]:
    """The app dirs as absolute path strings, in order: ``flags`` (``--app-dir``, repeatable)
    when given, else ``TM_APP_DIR``. With ``check``, one that is not a directory is a
    :class:`UsageError` naming it."""
    if flags:
        raw, source = list(flags), "--app-dir"
    else:
        raw, source = (env.get("TM_APP_DIR") or "").split(os.pathsep), "TM_APP_DIR"
    found: list[str] = []
    for entry in raw:
        if not entry:
            continue
        path = os.path.abspath(entry)
        if check and not os.path.isdir(path):
            raise UsageError(f"{source} {entry}: not a directory")
        if path not in found:
            found.append(path)
    return tuple(found)


def state_path(explicit: str | None = None, env: Mapping[str, str] = os.environ) -> str:
    """:func:`state_dir` as a string, without pathlib (for ``tm enqueue``)."""
    if explicit:
        return os.path.abspath(explicit)
    if env.get("TM_DAEMON_STATE_DIR"):
        return os.path.abspath(env["TM_DAEMON_STATE_DIR"])
    if env.get("TM_DATA_DIR"):
        return os.path.abspath(os.path.join(env["TM_DATA_DIR"], "state"))
    return os.path.join(os.path.expanduser("~"), ".trace-mind", "daemon")


def state_dir(explicit: str | None = None, env: Mapping[str, str] = os.environ) -> Path:
    from pathlib import Path

    if explicit:
        return Path(explicit).absolute()
    if env.get("TM_DAEMON_STATE_DIR"):
        return Path(env["TM_DAEMON_STATE_DIR"]).absolute()
    if env.get("TM_DATA_DIR"):
        return (Path(env["TM_DATA_DIR"]) / "state").absolute()
    return Path.home() / ".trace-mind" / "daemon"


def flow_cache_dir(env: Mapping[str, str] = os.environ) -> str | None:
    """Where ``tm enqueue`` caches validated flow snapshots (see :mod:`tracemind.flows.cache`);
    None when ``TM_FLOW_CACHE`` turns the cache off or there is no home directory to put it in."""
    if not truthy(env.get("TM_FLOW_CACHE", "1")):
        return None
    root = env.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(root):  # unset, or relative, which the XDG spec says to ignore
        home = env.get("HOME") or os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        root = os.path.join(home, ".cache")
    return os.path.join(root, "tracemind", "flows")


def durable(env: Mapping[str, str] = os.environ) -> bool:
    """``TM_FILE_QUEUE_V2``: sync data and directory entries so writes survive power loss."""
    return truthy(env.get("TM_FILE_QUEUE_V2"))


def require_daemon_flag(env: Mapping[str, str] = os.environ) -> None:
    if not truthy(env.get("TM_ENABLE_DAEMON")):
        raise DisabledError(
            "daemon mode is disabled: set TM_ENABLE_DAEMON=1 to use it "
            "(see docs/daemon.md); nothing was started or enqueued"
        )


def seconds_setting(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    """A duration variable ``name`` in seconds (``default`` when unset or empty); one line
    (:class:`UsageError`) for a value that is not a non-negative number."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise UsageError(f"{name} must not be negative, got {raw!r}")
    return value


WORKER_NICE = 5
"""How much lower than its pool's the CPU priority of a worker process is, by default."""


def worker_nice(env: Mapping[str, str] = os.environ) -> int:
    """``TM_WORKER_NICE`` (0-19, default :data:`WORKER_NICE`): workers run their steps this much
    nicer than the daemon, so that steps which keep every core busy never starve the
    supervisor's heartbeat or the probes. 0 keeps the daemon's priority. One line
    (:class:`UsageError`) for anything else."""
    raw = env.get("TM_WORKER_NICE")
    if not raw:
        return WORKER_NICE
    if not raw.isdigit() or int(raw) > 19:
        raise UsageError(f"TM_WORKER_NICE must be a whole number from 0 to 19, got {raw!r}")
    return int(raw)


def idempotency_ttl_s(env: Mapping[str, str] = os.environ) -> float:
    return seconds_setting("TM_IDEMPOTENCY_TTL_S", DEFAULT_IDEMPOTENCY_TTL_S, env)
