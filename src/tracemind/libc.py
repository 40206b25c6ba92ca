"""The few Linux system calls the standard library does not wrap: prctl, syncfs, inotify.

Everything here degrades to "unavailable" elsewhere; callers keep working without it.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from typing import Any

PR_SET_PDEATHSIG = 1


@functools.cache
def libc() -> Any | None:
    """The C library of this process (None where it cannot be loaded)."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; no-op elsewhere)."""
    with contextlib.suppress(AttributeError):
        if (lib := libc()) is not None:
            lib.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


AT_FDCWD = -100
RENAME_EXCHANGE = 2


def exchange(first: str, second: str) -> bool:
    """Swap two existing paths atomically (``renameat2(RENAME_EXCHANGE)``, Linux 3.15+).

    False where the call is unavailable (no libc wrapper, or a file system that refuses it);
    ``FileNotFoundError`` when either path is missing; another ``OSError`` for other failures.
    """
    import ctypes
    import errno
    import os

    lib = libc()
    call = getattr(lib, "renameat2", None)
    if call is None:
        return False
    result = call(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), second)
