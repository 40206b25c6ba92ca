"""Riding out a queue server that cannot be reached (:class:`~tracemind.errors.QueueUnavailable`).

A long-lived process (a worker, the supervisor, the daemon's heartbeat) keeps its place and
retries instead of exiting: a CLI verb reports the error, but a daemon that exits while Redis
restarts would have to be restarted by hand. :class:`Outage` is one process part's view of the
outage: it logs one warning when the outage begins and one line when it ends (never one per
retry), and says how long to wait before the next try.
"""

from __future__ import annotations

import random
import time
from typing import Any

from tracemind.errors import QueueUnavailable

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
"""The longest wait between two tries: how late, at most, a process notices the server back."""


class Outage:
    """Whether the queue was reachable at the last try, and since when it is not.

    ``failed(error)`` records a failed try and returns the wait before the next one: from
    :data:`MIN_BACKOFF_S`, doubled each time up to :data:`MAX_BACKOFF_S`, with jitter (many
    workers must not come back in step). ``recovered()`` ends the outage (a no-op when there is
    none). Not thread-safe: one per thread that retries.
    """

    def __init__(
        self,
        log: Any,
        *,
        min_backoff_s: float = MIN_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        rng: random.Random | None = None,
    ) -> None:
        self.log = log
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.rng = rng or random.Random()
        self.reason: str | None = None
        """The error line of the outage in progress (None while the queue is reachable)."""
        self.tries = 0
        self._since_s = 0.0  # monotonic

    @property
    def ongoing(self) -> bool:
        return self.reason is not None

    def failed(self, error: QueueUnavailable) -> float:
        """Record a failed try; the seconds to wait before the next one."""
        if self.reason is None:
            self._since_s = time.monotonic()
            self.log.warning("queue unreachable; retrying until it is back", error=str(error))
        self.reason = str(error)
        self.tries += 1
        ceiling_s = min(self.max_backoff_s, self.min_backoff_s * 2 ** min(self.tries - 1, 30))
        return float(ceiling_s * self.rng.uniform(0.5, 1.0))

    def recovered(self) -> None:
        """The queue answered: end the outage in progress, if any."""
        if self.reason is None:
            return
        down_s = time.monotonic() - self._since_s
        self.log.info("queue reachable again", down_s=round(down_s, 3), tries=self.tries)
        self.reason, self.tries = None, 0
