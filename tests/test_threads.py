"""Helper threads leave the process's signals to the main thread (tracemind.threads)."""

from __future__ import annotations

import signal
import threading

from tracemind.threads import MAIN_THREAD_SIGNALS, start_helper_thread


def test_a_helper_thread_blocks_the_signals_its_process_handles_and_its_starter_does_not() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    seen: list[set[signal.Signals]] = []
    done = threading.Event()

    def report_mask() -> None:
        seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        done.set()

    thread = start_helper_thread(report_mask, "probe")
    assert done.wait(10)
    thread.join(10)

    assert thread.daemon and thread.name == "probe"
    assert seen[0] >= MAIN_THREAD_SIGNALS
    assert {signal.SIGTERM, signal.SIGALRM} <= seen[0]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
