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
import time
from collections.abc import Callable

from tracemind.process import current_pid

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


class JobThread:
    """A helper thread (as :func:`start_helper_thread` starts one) that runs jobs at their
    times, one at a time: started when a job is given, it ends once it has had nothing to do
    for ``idle_s``. In a child made by ``fork`` it starts afresh, with no job of its parent's.
    A job's exceptions are its own: the thread goes on with the next."""

    def __init__(self, name: str, idle_s: float = 5.0) -> None:
        self.name = name
        self.idle_s = idle_s
        self._reset()

    def _reset(self) -> None:
        self._owner = current_pid()
        self._cond = threading.Condition(threading.Lock())
        self._jobs: dict[str, tuple[float, Callable[[], object]]] = {}
        """key → (when it is due, ``time.monotonic`` seconds; the job)"""
        self._running = False

    def at(self, key: str, due_s: float, job: Callable[[], object]) -> bool:
        """Run ``job`` once, at ``due_s`` (``time.monotonic``) or soon after, unless a job of
        the same ``key`` is waiting already (that one stands). False when no thread may start
        (``RLIMIT_NPROC``): then the job does not run."""
        if self._owner != current_pid():
            self._reset()  # (a fork's child: its parent's thread and lock are not its own)
        with self._cond:
            if key in self._jobs:
                return True
            if not self._running:
                try:
                    start_helper_thread(self._run, self.name)
                except RuntimeError:
                    return False
                self._running = True
            self._jobs[key] = (due_s, job)
            self._cond.notify()
        return True

    def run_now(self, key: str) -> None:
        """Run the waiting job of ``key`` here and now, if there is one."""
        if self._owner != current_pid():
            return
        with self._cond:
            due = self._jobs.pop(key, None)
        if due is not None:
            due[1]()

    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._next_job()
            if job is None:
                return
            try:
                job()
            except Exception:
                continue  # (its failure is its own: the next job still runs)

    def _next_job(self) -> Callable[[], object] | None:
        """(Holding the condition.) The next job once it is due; None once there has been
        nothing to do for ``idle_s`` (the thread then ends)."""
        idle_until_s = time.monotonic() + self.idle_s
        while True:
            now_s = time.monotonic()
            if self._jobs:
                key, (due_s, job) = min(self._jobs.items(), key=lambda item: item[1][0])
                if due_s <= now_s:
                    del self._jobs[key]
                    return job
                self._cond.wait(due_s - now_s)
            elif now_s < idle_until_s:
                self._cond.wait(idle_until_s - now_s)
            else:
                self._running = False
                return None
