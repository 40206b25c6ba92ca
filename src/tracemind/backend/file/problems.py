"""Records a process may not read: never damage, reported until they are gone.

``EACCES``/``EPERM`` on a record means the data directory's modes or groups are wrong — a fix an
operator makes — not that the record is damaged. So a worker that meets one leaves the record
where it is (never quarantined), logs it once per path and process with the fix, goes on with
other tasks, and drops a small report in ``<queue-dir>/problems/`` so that every other process
sees it: ``tm daemon ps``, ``GET /status`` and ``GET /readyz`` list the reports whose record is
still there (reading them costs one small file per problem, nothing when there is none).

A report names its record relative to the queue directory (``pending/<name>``), so a host and a
container that mount the directory at different paths agree. A writer removes a report when its
record is gone (:meth:`ProblemBoard.sweep`, run with lease recovery) or when the reporting
process later read the record after all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

from tracemind.errors import QueueError
from tracemind.fsutil import (
    DamagedEntry,
    dump_json,
    ensure_dir,
    read_json,
    scan_entries,
    write_atomic,
)
from tracemind.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tracemind.fsutil import StrPath

PERMISSION_FIX = (
    "give the data directory's group read and write on it (umask 002, setgid directories); "
    "see docs/deployment.md, 'Sharing through a group'"
)
OTHER_FIX = "check the file system under the data directory (the error says what failed)"
DETAILS_LIMIT = 20
"""How many reports readers show in full (all are counted)."""

_logged: set[str] = set()
"""Paths this process has already logged as unreadable (one line per path and process)."""


def is_permission_error(exc: OSError) -> bool:
    return exc.errno in (errno.EACCES, errno.EPERM)


def describe_unreadable(path: StrPath, exc: OSError) -> dict[str, Any]:
    """What to log and report about ``path``, which this process could not open or read."""
    details: dict[str, Any] = {
        "path": os.fspath(path),
        "error": exc.strerror or str(exc),
        "uid": os.geteuid(),
        "gid": os.getegid(),
        "fix": PERMISSION_FIX if is_permission_error(exc) else OTHER_FIX,
    }
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        details.update(owner=f"{st.st_uid}:{st.st_gid}", mode=f"{st.st_mode & 0o7777:04o}")
    return details


def log_unreadable(path: StrPath, exc: OSError, **context: Any) -> dict[str, Any]:
    """Log, once per path in this process, that ``path`` is left in place unreadable; returns
    the details (for a report)."""
    details = describe_unreadable(path, exc)
    if details["path"] not in _logged:
        _logged.add(details["path"])
        get_logger("tracemind.problems").error(
            f"record not readable by uid {details['uid']}, left in place",
            **details,
            **context,
        )
    return details


class ProblemBoard:
    """The reports of one queue directory (``<queue-dir>/problems/``)."""

    def __init__(self, queue_root: StrPath, tmp_dir: StrPath) -> None:
        self.queue_root = queue_root
        self.folder = os.path.join(queue_root, "problems")
        self.tmp_dir = tmp_dir
        self.reported: set[str] = set()
        """Records this process reported (relative names), so a later good read removes them."""

    def _report_path(self, relative: str) -> str:
        import hashlib

        digest = hashlib.sha256(relative.encode()).hexdigest()[:32]
        return os.path.join(self.folder, f"{digest}.json")

    def report(self, relative: str, exc: OSError) -> None:
        """Log and report the record ``relative`` (to the queue dir) as unreadable, once."""
        details = log_unreadable(os.path.join(self.queue_root, relative), exc)
        if relative in self.reported:
            return
        self.reported.add(relative)
        details.update(record=relative, at=time.time(), pid=os.getpid())
        try:
            ensure_dir(self.folder)
            write_atomic(
                self._report_path(relative), dump_json(details), tmp_dir=self.tmp_dir, durable=False
            )
        except QueueError as exc_write:  # the log line above still says it
            get_logger("tracemind.problems").error(
                "cannot write a problem report", path=details["path"], error=str(exc_write)
            )

    def resolve(self, relative: str) -> None:
        """Withdraw this process's report on ``relative`` (it was read after all, or is gone)."""
        if relative in self.reported:
            self.reported.discard(relative)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._report_path(relative))

    def sweep(self) -> int:
        """Remove reports whose record is gone (writers only); returns how many."""
        removed = 0
        for name, regular in scan_entries(self.folder):
            path = os.path.join(self.folder, name)
            try:
                record = _load(path) if regular and name.endswith(".json") else None
            except OSError:
                continue  # e.g. another uid's report this one may not read: not ours to judge
            if record is None or not os.path.lexists(os.path.join(self.queue_root, record)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        return removed


def unreadable_error(path: StrPath, exc: OSError) -> QueueError:
    """The one-line error of a reader that may not read ``path`` (logged once as well)."""
    details = log_unreadable(path, exc)
    return QueueError(
        f"{details['path']}: cannot read ({details['error']}, uid {details['uid']}): "
        f"{details['fix']}"
    )


def unreadable_records(queue_root: StrPath) -> tuple[int, list[dict[str, Any]]]:
    """How many reports of unreadable records whose record is still there, and the first
    :data:`DETAILS_LIMIT` of them (read-only: stale reports are skipped, not removed)."""
    folder = os.path.join(queue_root, "problems")
    count = 0
    shown: list[dict[str, Any]] = []
    try:
        entries = sorted(scan_entries(folder))
    except QueueError:
        return 0, []
    for name, regular in entries:
        if not (regular and name.endswith(".json")):
            continue
        try:
            report = read_json(os.path.join(folder, name))
        except (OSError, ValueError):
            continue
        record = report.get("record") if isinstance(report, dict) else None
        if not isinstance(record, str) or not os.path.lexists(os.path.join(queue_root, record)):
            continue
        count += 1
        if len(shown) < DETAILS_LIMIT:
            shown.append({k: report.get(k) for k in ("record", "error", "uid", "fix", "at")})
    return count, shown


def _load(path: str) -> str | None:
    """The record named by the report at ``path``; None for a damaged report (``OSError`` when
    it cannot be read)."""
    try:
        report = read_json(path)
    except (DamagedEntry, ValueError):
        return None
    record = report.get("record") if isinstance(report, dict) else None
    return record if isinstance(record, str) else None
