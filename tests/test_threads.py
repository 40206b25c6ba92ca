"""Helper threads leave the process's signals to the main thread (tracemind.threads)."""

from __future__ import annotations

import _thread
import signal
import threading
import time

import pytest

from tracemind.threads import MAIN_THREAD_SIGNALS, join_uninterrupted, start_helper_thread


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


def test_waiting_for_a_helper_goes_on_through_an_interrupt_and_raises_it_once_the_helper_ended() -> (
    None
):
    # Given a helper still at work, and the main thread interrupted (Ctrl-C) while it waits
    release = threading.Event()
    ended: list[bool] = []

    def work() -> None:
        release.wait(10)
        ended.append(True)

    def interrupt_then_release() -> None:
        time.sleep(0.05)
        _thread.interrupt_main()
        time.sleep(0.05)
        release.set()

    helper = start_helper_thread(work, "helper")
    threading.Thread(target=interrupt_then_release).start()
    # When the main thread waits for the helper
    with pytest.raises(KeyboardInterrupt):
        join_uninterrupted(helper)
    # Then the interrupt is raised only once the helper ended
    assert ended == [True] and not helper.is_alive()
