"""Helper threads that leave the process's signals to its main thread.

Python runs signal handlers in the main thread only, but the kernel delivers a signal sent to
the process to any thread that does not block it. One delivered to a helper thread interrupts
nothing the main thread waits in: a worker idle in ``select`` stopped only once its wait
timed out (up to 0.1 s after SIGTERM), and a step blocked in a system call would overrun its
flow's ``timeout_s`` (SIGALRM). So helper threads start with these signals blocked.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

MAIN_THREAD_SIGNALS = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD}
)
"""Blocked in helper threads, so the kernel delivers them to the main thread."""


def start_helper_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """Start a daemon thread running ``target`` with :data:`MAIN_THREAD_SIGNALS` blocked (it
    inherits the mask this thread has while starting it: blocked from its first instruction)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


def join_uninterrupted(thread: threading.Thread) -> None:
    """Wait until ``thread`` ends, even through a ``KeyboardInterrupt`` (raised once it has):
    for a helper whose work the caller must see finished before it goes on."""
    interrupted: KeyboardInterrupt | None = None
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted
