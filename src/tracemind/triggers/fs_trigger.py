"""The filesystem trigger: poll a folder and fire once per version of each matching file.

Contract:

- A file matches when its name matches ``pattern`` (``fnmatch``, case-sensitive). Names starting
  with ``.`` (editor and upload temp files) are skipped unless the pattern starts with ``.``; so
  are hidden folders when ``recursive``.
- A version is ``(size, mtime_ns)``. A version fires only once it has been seen unchanged by two
  consecutive polls, so a file still being written waits.
- Each version fires once: the trigger keeps a record of enqueued versions in the state dir, which
  holds across restarts and beyond the idempotency TTL; the idempotency key is
  ``<id>:<relative path>:<size>:<mtime_ns>``. A changed file (new size or mtime) fires again.
- A first start (no state) fires the files already there, unless ``ignore_existing: true``: then
  the files present at the first start are recorded as seen without firing. On later starts,
  files that arrived while nothing ran do fire.
- A failed submission is retried at the next poll. Records of deleted files are dropped.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from tracemind.triggers.dispatch import Dispatcher
from tracemind.triggers.model import FilesystemSpec, TriggerEvent
from tracemind.triggers.state import TriggerState, TriggerStateStore

log = structlog.get_logger("tracemind.triggers")


@dataclass(frozen=True)
class FileVersion:
    """One observed file: its path relative to the watched folder, size and mtime."""

    relative: str
    path: Path
    size: int
    mtime_ns: int

    @property
    def version(self) -> str:
        return f"{self.size}:{self.mtime_ns}"


class FilesystemTrigger:
    """Drive with :meth:`start` once, then :meth:`step` every ``interval_s``."""

    def __init__(
        self, spec: FilesystemSpec, dispatcher: Dispatcher, store: TriggerStateStore
    ) -> None:
        self.spec = spec
        self.dispatcher = dispatcher
        self.store = store
        self._state = TriggerState(started_at=datetime.now(UTC))
        self._started = False
        self._pending: dict[str, str] = {}

    def start(self, now: datetime) -> None:
        """Load the record; on a first start with ``ignore_existing``, record what is there."""
        state = self.store.load(self.spec.id)
        if state is None:
            state = TriggerState(started_at=now)
            if self.spec.ignore_existing:
                found, _complete = self.scan()
                state.files = {file.relative: file.version for file in found}
            self._save(state)
        self._state = state
        self._started = True

    def poll(self, now: datetime) -> list[tuple[FileVersion, TriggerEvent]]:
        """Scan once; the file versions that are now stable and not yet enqueued, oldest first."""
        if not self._started:
            self.start(now)
        try:
            found, complete = self.scan()
        except OSError as error:
            self.dispatcher.stats.error(f"cannot list {self.spec.path}: {error}")
            log.warning("filesystem poll failed", trigger_id=self.spec.id, error=str(error))
            return []
        ready: list[tuple[FileVersion, TriggerEvent]] = []
        seen: dict[str, str] = {}
        for file in found:
            seen[file.relative] = file.version
            if self._state.files.get(file.relative) == file.version:
                continue
            if self._pending.get(file.relative) == file.version:
                ready.append((file, self._event(file, now)))
        self._pending = {rel: ver for rel, ver in seen.items() if self._state.files.get(rel) != ver}
        if complete:
            gone = [rel for rel in self._state.files if rel not in seen]
            for rel in gone:
                del self._state.files[rel]
            if gone:
                self._save(self._state)
        return ready

    def step(self, now: datetime) -> int:
        """Poll and submit what is ready; returns how many events were submitted."""
        submitted = 0
        for file, event in self.poll(now):
            if self.dispatcher.dispatch(event) is not None:
                self._state.files[file.relative] = file.version
                self._pending.pop(file.relative, None)
                submitted += 1
        if submitted:
            # One write per poll; a crash before it re-submits with the same keys (deduplicated).
            self._save(self._state)
        return submitted

    def scan(self) -> tuple[list[FileVersion], bool]:
        """Matching files, oldest first, and whether every folder could be listed.

        Raises OSError when the watched folder itself cannot be listed."""
        root = self.spec.path
        errors: list[OSError] = []
        found: list[FileVersion] = []
        if self.spec.recursive:
            os.stat(root)  # raise, rather than report an empty tree, when the folder is gone
            for folder, dirs, names in os.walk(root, onerror=errors.append):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(self._files(Path(folder), names))
        else:
            with os.scandir(root) as entries:
                names = [entry.name for entry in entries]
            found.extend(self._files(root, names))
        found.sort(key=lambda file: (file.mtime_ns, file.relative))
        return found, not errors

    def _files(self, folder: Path, names: list[str]) -> list[FileVersion]:
        files = []
        hidden_ok = self.spec.pattern.startswith(".")
        for name in names:
            if (name.startswith(".") and not hidden_ok) or not fnmatch.fnmatchcase(
                name, self.spec.pattern
            ):
                continue
            path = folder / name
            try:
                status = path.stat()
            except OSError:
                continue  # vanished between listing and stat, or a dangling link
            if not stat.S_ISREG(status.st_mode):
                continue
            relative = path.relative_to(self.spec.path).as_posix()
            files.append(FileVersion(relative, path, status.st_size, status.st_mtime_ns))
        return files

    def _event(self, file: FileVersion, now: datetime) -> TriggerEvent:
        return TriggerEvent(
            trigger_id=self.spec.id,
            kind="filesystem",
            event_id=uuid.uuid4().hex,
            time=now,
            identity=f"{file.relative}:{file.version}",
            fields={
                "path": str(file.path),
                "name": file.path.name,
                "parent": str(file.path.parent),
                "size": file.size,
                "mtime": file.mtime_ns / 1e9,
            },
        )

    def _save(self, state: TriggerState) -> None:
        try:
            self.store.save(self.spec.id, state)
        except OSError as error:
            self.dispatcher.stats.error(f"cannot save trigger state: {error}")
            log.error("trigger state not saved", trigger_id=self.spec.id, error=str(error))
