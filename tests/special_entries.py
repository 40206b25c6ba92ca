"""Entries that are not (good) regular files, made for real: FIFOs, unix sockets, directories,
symlinks (to a FIFO and dangling), empty and torn files, and a huge sparse file.

``make_entry(path, kind)`` puts one at ``path``. Each would hang or exhaust a reader that opens
it with a plain blocking ``open`` and reads it whole.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from tracemind.fsutil import MAX_RECORD_BYTES

NOT_REGULAR = ("fifo", "socket", "directory", "symlink-to-fifo", "dangling-symlink")
"""Kinds that are not regular files: never opened by a reader, never counted as a task."""
REGULAR_DAMAGE = ("empty", "torn", "huge")
"""Regular files whose contents are damaged (``huge`` is never read: it is over the limit)."""
KINDS = NOT_REGULAR + REGULAR_DAMAGE
HUGE_BYTES = MAX_RECORD_BYTES + 4096
"""A sparse file just over the record limit: it costs no disk."""


def make_entry(path: Path, kind: str) -> Path:
    """Create an entry of ``kind`` at ``path`` (its directory must exist); returns ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        _bind_socket(path)
    elif kind == "directory":
        path.mkdir()
        (path / "inside.json").write_text("{}")
    elif kind == "symlink-to-fifo":
        target = path.parent / f".{path.name}.target-fifo"  # a dotfile: ignored by readers
        os.mkfifo(target)
        path.symlink_to(target)
    elif kind == "dangling-symlink":
        path.symlink_to(path.parent / "no-such-file.json")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "torn":
        path.write_bytes(b'{"v": 1, "task_id": "')
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.truncate(HUGE_BYTES)
    else:
        raise ValueError(kind)
    return path


def _bind_socket(path: Path) -> None:
    """A unix socket file at ``path`` (bound in a short directory, since socket paths are
    limited to 108 bytes, then renamed into place), with nothing listening on it."""
    with tempfile.TemporaryDirectory(prefix="tm-sock-") as short:
        where = os.path.join(short, "s")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(where)
            os.rename(where, path)
        finally:
            server.close()
