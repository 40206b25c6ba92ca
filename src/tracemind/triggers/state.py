"""What triggers remember across restarts, one small JSON file per trigger in the state dir.

Layout: ``<state dir>/triggers/<trigger id>.json`` holding
``{"started_at": ISO, "last_fire": ISO | null, "files": {"<relative path>": "<size>:<mtime_ns>"}}``.

Contract: :meth:`TriggerStateStore.save` is atomic (temp file in the same directory, chmod 0o660,
``os.replace``), so a reader sees the old or the new state, never a torn one. A damaged file is
logged and read as "no state" — the trigger then behaves as on a first start, and the idempotency
store still catches repeats within its TTL. Not safe for two processes running the *same* trigger
ids on one state dir (the last writer wins).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from tracemind.fsutil import read_regular
from tracemind.triggers.model import iso_utc, parse_iso_utc

log = structlog.get_logger("tracemind.triggers")
_FILE_MODE = 0o660  # fsutil.FILE_MODE: the data's group reads and writes, nobody else
_DIR_MODE = 0o770  # setgid comes from the state dir (fsutil.DIR_MODE)


@dataclass
class TriggerState:
    """One trigger's memory. ``files`` maps a path relative to the watched folder to the version
    (``"<size>:<mtime_ns>"``) last enqueued for it."""

    started_at: datetime
    last_fire: datetime | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": iso_utc(self.started_at),
            "last_fire": None if self.last_fire is None else iso_utc(self.last_fire),
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_json(cls, data: Any) -> TriggerState:
        """Raises ValueError/TypeError/KeyError when ``data`` is not a state record."""
        if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
            raise ValueError("not a trigger state record")
        last = data.get("last_fire")
        return cls(
            started_at=parse_iso_utc(data["started_at"]),
            last_fire=None if last is None else parse_iso_utc(last),
            files={str(key): str(value) for key, value in data.get("files", {}).items()},
        )


class TriggerStateStore:
    """Reads and atomically writes :class:`TriggerState` records under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "triggers"

    def path_for(self, trigger_id: str) -> Path:
        return self.directory / f"{trigger_id}.json"

    def load(self, trigger_id: str) -> TriggerState | None:
        """The saved state, or None on a first start (or when the record is damaged)."""
        path = self.path_for(trigger_id)
        try:
            return TriggerState.from_json(json.loads(read_regular(path, 1024 * 1024)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as error:
            log.warning(
                "trigger state unreadable", trigger_id=trigger_id, path=str(path), error=str(error)
            )
            return None

    def save(self, trigger_id: str, state: TriggerState) -> None:
        """Atomically replace the record; raises OSError when the state dir is unwritable."""
        self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        payload = json.dumps(state.to_json(), indent=1).encode("utf-8")
        handle, temp = tempfile.mkstemp(dir=self.directory, prefix=f".{trigger_id}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(payload)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temp, _FILE_MODE)
            os.replace(temp, self.path_for(trigger_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
