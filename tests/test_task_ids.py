"""Task ids stay unique when their random digits are drawn ahead (tracemind.queue.names), and a
forked child knows its own process id (tracemind.process)."""

from __future__ import annotations

import itertools
import os
import threading

import pytest

from tracemind.process import current_pid
from tracemind.queue import names
from tracemind.queue.names import RANDOM_DIGITS_AT, RANDOM_TAILS_AHEAD, new_task_id


def _in_child(make: int) -> list[str]:
    """Fork; the child makes ``make`` ids and reports them with its pid, as seen twice."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child: no pytest machinery from here on)
        try:
            os.close(read_fd)
            lines = [f"{current_pid()} {os.getpid()}"] + [new_task_id() for _ in range(make)]
            os.write(write_fd, "\n".join(lines).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        lines = pipe.read().splitlines()
    assert os.waitpid(pid, 0)[1] == 0
    return lines


def test_a_forked_child_never_reuses_the_random_digits_its_parent_drew_ahead() -> None:
    # Given a parent holding random digits drawn ahead for its next ids
    new_task_id()
    # When it forks a child, and both make ids in the same milliseconds
    child = _in_child(make=20)
    parent = [new_task_id() for _ in range(20)]
    # Then the child knows its own pid, and no id's random digits are the parent's
    seen_pid, real_pid = child[0].split()
    assert seen_pid == real_pid != str(os.getpid())
    assert current_pid() == os.getpid()
    tails = {task_id[RANDOM_DIGITS_AT:] for task_id in parent}
    assert not tails & {task_id[RANDOM_DIGITS_AT:] for task_id in child[1:]}


def test_threads_making_ids_at_once_never_share_random_digits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given random digits that never repeat (a counter), and 4 threads, each making more ids
    # than one draw holds
    counter = itertools.count()
    monkeypatch.setattr(
        names.os,
        "urandom",
        lambda size: b"".join(next(counter).to_bytes(3, "big") for _ in range(size // 3)),
    )
    made: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def make(into: list[str]) -> None:
        start.wait()
        into.extend(new_task_id() for _ in range(RANDOM_TAILS_AHEAD))

    threads = [threading.Thread(target=make, args=(ids,)) for ids in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then no two ids got the same random digits
    ids = [task_id for ids in made for task_id in ids]
    assert len(ids) == 4 * RANDOM_TAILS_AHEAD
    assert len({task_id[RANDOM_DIGITS_AT:] for task_id in ids}) == len(ids)
