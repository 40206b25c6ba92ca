"""The status app reuses its expensive reads, and refreshes them off the request path."""

from __future__ import annotations

import threading
import time

from tracemind.status.app import Recent


def test_a_read_is_reused_while_young_and_refreshed_in_the_background_once_old() -> None:
    calls: list[float] = []
    recent = Recent(
        lambda: calls.append(time.monotonic()) or len(calls), max_age_s=0.2, stale_limit_s=10.0
    )
    assert [recent.get() for _ in range(5)] == [1] * 5
    time.sleep(0.25)
    # Once old, a request gets the last value at once and starts one refresh
    assert recent.get() == 1
    deadline = time.monotonic() + 5
    while recent.get() != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recent.get() == 2 and len(calls) == 2


def test_a_request_never_waits_for_a_slow_refresh() -> None:
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        if len(calls) > 1:
            time.sleep(0.5)  # the refresh of a deep queue on a busy disk
        return len(calls)

    recent = Recent(slow, max_age_s=0.01, stale_limit_s=10.0)
    assert recent.get() == 1
    time.sleep(0.02)
    started = time.monotonic()
    answers = [recent.get() for _ in range(20)]
    assert time.monotonic() - started < 0.2  # none of them waited for the 0.5 s refresh
    assert answers == [1] * 20 and len(calls) == 2  # and one refresh runs, not twenty


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


def test_a_primed_read_is_ready_before_the_first_request() -> None:
    calls: list[float] = []
    recent = Recent(lambda: calls.append(time.monotonic()) or len(calls), max_age_s=60.0)
    # Given a read primed as the server starts
    recent.prime()
    recent.prime()  # (twice: still one computation)
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    # When the first request comes, then it gets that result without computing another
    assert recent.get() == 1 and len(calls) == 1


def test_a_result_nobody_asked_for_a_while_is_computed_again_not_served() -> None:
    calls: list[float] = []
    recent = Recent(lambda: calls.append(time.monotonic()) or len(calls), max_age_s=0.05)
    assert recent.get() == 1
    # Given a result older than the stale limit (3 x the max age)
    time.sleep(0.2)
    # When a request comes, then it gets a fresh result, not the old one
    assert recent.get() == 2 and len(calls) == 2
