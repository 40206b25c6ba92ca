"""Moving damaged records aside: a torn or corrupt file affects only itself."""

from __future__ import annotations

import contextlib
import os
import time

from tracemind.errors import QueueError
from tracemind.fsutil import ensure_dir
from tracemind.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tracemind.fsutil import StrPath


def quarantine(path: StrPath, root: StrPath, reason: str) -> str | None:
    """Move ``path`` into ``root/quarantine/`` (keeping its name, plus a time and a random
    suffix) and log it.

    Returns the new path, or None when the file was already gone (another writer moved it) or
    cannot be moved (then it is left in place and logged, and readers keep skipping it).
    """
    log = get_logger("tracemind.quarantine")
    # The random part keeps two damaged files of one name (from two directories) apart.
    suffix = f"{int(time.time() * 1000)}.{os.urandom(3).hex()}"
    try:
        folder = ensure_dir(os.path.join(root, "quarantine"))
        target = os.path.join(folder, f"{os.path.basename(path)}.{suffix}")
        os.rename(path, target)
    except FileNotFoundError:
        return None
    except (OSError, QueueError) as exc:
        log.error("damaged record left in place", path=str(path), reason=reason, error=str(exc))
        return None
    log.warning("damaged record quarantined", path=str(path), moved_to=target, reason=reason)
    return target


def sweep_temporaries(tmp_dir: StrPath, older_than_s: float = 3600.0) -> int:
    """Delete temporary files a crashed writer left behind; returns how many were removed."""
    removed = 0
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    return removed
