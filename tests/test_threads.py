"""Helper threads leave the process's signals to the main thread; a job thread runs jobs at
their times (tracemind.threads)."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time

import pytest

from tm_testing import wait_until
from tracemind.threads import (
    MAIN_THREAD_SIGNALS,
    JobThread,
    join_uninterrupted,
    start_helper_thread,
)


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


def _job_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_a_job_thread_runs_each_job_once_at_its_time_and_ends_once_idle() -> None:
    # Given a job thread that ends after 0.2 s with nothing to do
    jobs = JobThread("jobs-probe", idle_s=0.2)
    ran: list[tuple[str, float]] = []
    done = threading.Event()
    now_s = time.monotonic()
    # When a job is given for 0.1 s from now, one of another key for now, and one of the first
    # key again while that one waits
    assert jobs.at(
        "late", now_s + 0.1, lambda: (ran.append(("late", time.monotonic())), done.set())
    )
    assert jobs.at("now", now_s, lambda: ran.append(("now", time.monotonic())))
    assert jobs.at("late", now_s, lambda: ran.append(("again", time.monotonic())))
    assert done.wait(10)
    # Then each waiting key's job ran once, in the order of their times, not before them
    assert [key for key, _ in ran] == ["now", "late"]
    assert ran[1][1] >= now_s + 0.1
    # And once idle the thread ends; a new job starts another
    wait_until(lambda: not _job_threads("jobs-probe"), 10, "the idle job thread to end")
    again = threading.Event()
    assert jobs.at("late", time.monotonic(), again.set)
    assert again.wait(10)


def test_a_job_run_now_runs_here_and_not_again_and_a_failing_job_stops_no_other() -> None:
    jobs = JobThread("jobs-probe-2", idle_s=0.2)
    ran: list[str] = []
    # Given a job due in an hour, and one that fails due now
    assert jobs.at(
        "ring", time.monotonic() + 3600, lambda: ran.append(threading.current_thread().name)
    )
    assert jobs.at("fails", time.monotonic(), lambda: 1 / 0)
    # When the first is run now
    jobs.run_now("ring")
    jobs.run_now("nothing waits under this key")
    # Then it ran here, once; and the thread goes on to the next job after the failing one
    assert ran == [threading.current_thread().name]
    later = threading.Event()
    assert jobs.at("after", time.monotonic(), later.set)
    assert later.wait(10)
    assert ran == [threading.current_thread().name]


def test_a_forked_child_runs_its_own_jobs_never_its_parents() -> None:
    # Given a parent whose job thread holds a job due in an hour
    jobs = JobThread("jobs-probe-3", idle_s=5.0)
    assert jobs.at("parent", time.monotonic() + 3600, lambda: None)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child: no pytest machinery from here on)
        try:
            os.close(read_fd)
            ran = threading.Event()
            jobs.at("child", time.monotonic(), ran.set)
            jobs.run_now("parent")  # (not the child's: nothing to run)
            os.write(write_fd, b"ran" if ran.wait(10) else b"not run")
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        said = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    # Then the child's job ran in the child, and the parent's still waits in the parent
    assert said == b"ran"
    assert len(_job_threads("jobs-probe-3")) == 1
    jobs.run_now("parent")  # (so that the thread ends once idle)
