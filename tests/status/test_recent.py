"""The status app reuses its expensive reads for a second, then reads again."""

from __future__ import annotations

import threading
import time

from tracemind.status.app import Recent


def test_a_read_is_reused_while_young_and_repeated_once_old() -> None:
    calls: list[float] = []
    recent = Recent(lambda: calls.append(time.monotonic()) or len(calls), max_age_s=0.2)
    assert [recent.get() for _ in range(5)] == [1] * 5
    time.sleep(0.25)
    assert recent.get() == 2
    assert len(calls) == 2


def test_concurrent_readers_share_one_computation() -> None:
    started = threading.Barrier(8)
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        time.sleep(0.1)
        return len(calls)

    recent = Recent(slow, max_age_s=10)
    results: list[int] = []

    def reader() -> None:
        started.wait()
        results.append(recent.get())

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert results == [1] * 8 and len(calls) == 1
