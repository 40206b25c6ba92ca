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
