"""File names of the file backend: the state a task is in is encoded in its name.

A task's record lives in one file whose *name* carries everything that changes while it waits
or runs, so every state change is one atomic ``rename`` of an exact name, and whoever renames
first wins (the others get ENOENT):

``pending/{bucket}/{due_ms:013d}_{task_id}_{attempts}.json`` (buckets: :mod:`.pending`)
    ``attempts`` = deliveries so far. Sorting names sorts by due time, then by enqueue time.
``inflight/{task_id}_{attempt}_{consumer}_{token}_{deadline_ms:013d}.json``
    ``attempt`` = this delivery's number; the lease deadline is wall-clock milliseconds.
``done/{enqueue_ms // 3_600_000:06d}/{task_id}.json`` (the terminal record of a succeeded task)
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections import deque

from tracemind.values import Value

_HEX_DIGITS = frozenset("0123456789abcdef")
RANDOM_DIGITS_AT = 16
"""Where a task id's random digits start (the last 6 of its 22, see :func:`new_task_id`)."""
_PENDING = r"(\d{13})_([0-9a-f]{22})_(\d{1,6})\.json"
DUE_DIGITS = 13
"""A pending name starts with its due time, epoch milliseconds zero-padded to this many digits:
so names sort by due time, and a name's due time compares as text with :func:`due_text`."""
_ID_AT = DUE_DIGITS + 1
"""Where a pending name's task id starts (after its due digits and a ``_``); it is 22 long."""
_INFLIGHT = r"([0-9a-f]{22})_(\d{1,6})_([0-9a-z-]{1,64})_([0-9a-f]{8})_(\d{13})\.json"


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled on first use: compiling both at import would cost every ``tm`` ~0.5 ms."""
    return re.compile(pattern)


class _IdClock:
    """Per-process state that keeps ids made in one millisecond in the order they were made."""

    last_ms = -1
    sequence = 0


RANDOM_TAILS_AHEAD = 512
"""Task ids' random digits drawn at once (``os.urandom`` is a system call, and lets other
threads run: a writer of one task per call would make one for every task)."""
_random_tails: deque[str] = deque()
"""Random 6-hex-digit tails not yet used, each taken once (``popleft`` is atomic: threads
never share one); emptied in a child made by ``fork``, so that it never reuses its parent's."""


def _random_tail() -> str:
    try:
        return _random_tails.popleft()
    except IndexError:
        digits = os.urandom(3 * RANDOM_TAILS_AHEAD).hex()
        _random_tails.extend(digits[at : at + 6] for at in range(6, len(digits), 6))
        return digits[:6]


os.register_at_fork(after_in_child=_random_tails.clear)


def new_task_id(now_s: float | None = None, *, at_ms: int | None = None) -> str:
    """A unique, time-sortable id: 12 hex digits of milliseconds (``at_ms``, else ``now_s``,
    else now), 4 of a per-process sequence (so a batch made within one millisecond keeps its
    order), then 6 random hex digits."""
    ms = at_ms if at_ms is not None else int((time.time() if now_s is None else now_s) * 1000)
    if ms == _IdClock.last_ms:
        _IdClock.sequence = (_IdClock.sequence + 1) & 0xFFFF
    else:
        _IdClock.last_ms, _IdClock.sequence = ms, 0
    return f"{ms:012x}{_IdClock.sequence:04x}{_random_tail()}"


def is_task_id(text: str) -> bool:
    """22 lowercase hex digits."""
    return len(text) == 22 and _HEX_DIGITS.issuperset(text)


def new_token() -> str:
    return os.urandom(4).hex()


class PendingName(Value):
    __slots__ = ("attempts", "due_ms", "task_id")

    def __init__(self, due_ms: int, task_id: str, attempts: int) -> None:
        self.due_ms = due_ms
        self.task_id = task_id
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{self.due_ms:013d}_{self.task_id}_{self.attempts}.json"

    @classmethod
    def parse(cls, name: str) -> PendingName | None:
        match = _compiled(_PENDING).fullmatch(name)
        if match is None:
            return None
        return cls(int(match[1]), match[2], int(match[3]))

    @classmethod
    def of_matched(cls, name: str) -> PendingName:
        """``name`` parsed without matching it again: only for a name known to be a pending
        name (e.g. by one match over a whole listing), whose fields have fixed places."""
        return cls(int(name[:DUE_DIGITS]), name[_ID_AT : _ID_AT + 22], int(name[_ID_AT + 23 : -5]))


def due_text(ms: int) -> str:
    """Epoch milliseconds ``ms`` as a pending name starts with them (see :data:`DUE_DIGITS`)."""
    return f"{ms:0{DUE_DIGITS}d}"


def share_of(names: list[str], now_ms: int, index: int, count: int) -> list[str]:
    """Those of the pending names ``names`` (not parsed) due at ``now_ms`` whose task ids'
    random digits, modulo ``count``, are ``index``."""
    now = due_text(now_ms)
    at = _ID_AT + RANDOM_DIGITS_AT
    return [
        name
        for name in names
        if name[:DUE_DIGITS] <= now and int(name[at : _ID_AT + 22], 16) % count == index
    ]


class InflightName(Value):
    __slots__ = ("attempt", "consumer", "deadline_ms", "task_id", "token")

    def __init__(
        self, task_id: str, attempt: int, consumer: str, token: str, deadline_ms: int
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.consumer = consumer
        self.token = token
        self.deadline_ms = deadline_ms

    def __str__(self) -> str:
        return f"{self.task_id}_{self.attempt}_{self.consumer}_{self.token}_{self.deadline_ms:013d}.json"

    @classmethod
    def parse(cls, name: str) -> InflightName | None:
        match = _compiled(_INFLIGHT).fullmatch(name)
        if match is None:
            return None
        return cls(match[1], int(match[2]), match[3], match[4], int(match[5]))

    def with_deadline(self, deadline_ms: int) -> InflightName:
        return InflightName(self.task_id, self.attempt, self.consumer, self.token, deadline_ms)


def staged_name(task_id: str, due_ms: int | None, stripe: str | None = None) -> str:
    """The name a keyed task is staged under in ``staging/``: ``{stripe}-{pending name}``, where
    ``stripe`` is its key's lock stripe (two hex digits), so whoever settles it knows which lock
    to take before opening it. Names staged without a stripe (by earlier versions) are the bare
    pending name. A key record carries ``due_ms``; records without it name none."""
    pending = str(PendingName(due_ms or 0, task_id, 0))
    return pending if stripe is None else f"{stripe}-{pending}"


def parse_staged(name: str) -> tuple[str | None, PendingName] | None:
    """(the lock stripe or None, the pending name) of a name in ``staging/``; None for any other
    name."""
    stripe: str | None = None
    if len(name) > 3 and name[2] == "-":
        stripe, name = name[:2], name[3:]
        if not _HEX_DIGITS.issuperset(stripe):
            return None
    parsed = PendingName.parse(name)
    return None if parsed is None else (stripe, parsed)


def done_name(task_id: str) -> str:
    return f"{task_id}.json"


DONE_BUCKET_MS = 3_600_000


def done_bucket(task_id: str) -> str:
    """The ``done/`` bucket of a task: the hour it was enqueued in (from its id), so a task's
    terminal record is found in O(1) and retention removes whole hours."""
    return f"{int(task_id[:12], 16) // DONE_BUCKET_MS:06d}"


def is_temporary(name: str) -> bool:
    """Names of files that are not records (in-progress temporaries, editor droppings, dotfiles)."""
    return name.startswith(".") or name.endswith(".tmp")
