"""This process's id, without a system call each time it is asked.

``os.getpid`` asks the kernel on every call (C libraries no longer cache it); a pack's writer
asks twice on every call, to tell its own packs from those a parent made before a ``fork``. A
fork hook keeps the answer here instead. A child made by a C library's ``fork`` that runs
Python without ``exec`` (no fork hook runs) is not supported.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def current_pid() -> int:
    """This process's id (``os.getpid()``)."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
