"""Turn a trigger event into a submitted task, and count what happened for ``ps``.

The only seam to the queue is :class:`Submitter` (``tracemind.submit`` implements it); tests pass an
in-memory twin. Triggers never run flows: they only submit.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Protocol

import structlog

from tracemind.errors import TraceMindError
from tracemind.triggers.model import AnyTriggerSpec, TriggerEvent, iso_utc
from tracemind.triggers.template import render

log = structlog.get_logger("tracemind.triggers")


class SubmitOutcome(Protocol):
    """What a submission returns (``tracemind.submit.SubmitResult`` has this shape)."""

    @property
    def task_id(self) -> str: ...

    @property
    def duplicate(self) -> bool: ...


class Submitter(Protocol):
    """Enqueues one task; with an ``idempotency_key`` already known, returns the first task id
    with ``duplicate=True`` and enqueues nothing. ``trigger`` is recorded on the task as
    ``_trigger``. Raises (TraceMindError or OSError) when the task could not be enqueued."""

    def submit(
        self,
        flow: Any,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> SubmitOutcome: ...


class SerializedSubmitter:
    """Wraps a Submitter so that it is called by one thread at a time (webhook requests, cron
    and filesystem threads all submit; the wrapped one need not be thread-safe)."""

    def __init__(self, inner: Submitter) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def submit(
        self,
        flow: Any,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> SubmitOutcome:
        with self._lock:
            return self.inner.submit(flow, inputs, idempotency_key=idempotency_key, trigger=trigger)


class TriggerStats:
    """Thread-safe counters and times of one trigger, as shown by ``ps``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.enqueued = 0
        self.deduplicated = 0
        self.failed = 0
        self.last_fire: datetime | None = None
        self.last_error: str | None = None

    def fired(self, moment: datetime) -> None:
        with self._lock:
            self.last_fire = moment

    def submitted(self, duplicate: bool) -> None:
        with self._lock:
            if duplicate:
                self.deduplicated += 1
            else:
                self.enqueued += 1

    def failed_event(self, message: str) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = message

    def error(self, message: str) -> None:
        """A problem that is not one event's failure (e.g. the watched folder vanished)."""
        with self._lock:
            self.last_error = message

    def snapshot(self, spec: AnyTriggerSpec, next_fire: datetime | None) -> dict[str, Any]:
        with self._lock:
            return {
                "id": spec.id,
                "kind": spec.kind,
                "last_fire": None if self.last_fire is None else iso_utc(self.last_fire),
                "next_fire": None if next_fire is None else iso_utc(next_fire),
                "enqueued": self.enqueued,
                "deduplicated": self.deduplicated,
                "failed": self.failed,
                "last_error": self.last_error,
            }


class Dispatcher:
    """Renders a trigger's input for an event and submits it; safe to call from many threads."""

    def __init__(
        self, spec: AnyTriggerSpec, flow: Any, submitter: Submitter, stats: TriggerStats
    ) -> None:
        self.spec = spec
        self.flow = flow
        self.submitter = submitter
        self.stats = stats

    def dispatch(self, event: TriggerEvent) -> SubmitOutcome | None:
        """Submit ``event``; None (counted as failed, logged, kept as ``last_error``) on failure."""
        inputs = render(self.spec.input, event.context())
        key = event.idempotency_key
        self.stats.fired(event.time)
        try:
            result = self.submitter.submit(
                self.flow, inputs, idempotency_key=key, trigger=event.metadata()
            )
        except (TraceMindError, OSError) as error:
            self._failed(event, f"{type(error).__name__}: {error}", traceback=False)
            return None
        except Exception as error:  # one event must not stop its trigger; logged with traceback
            self._failed(event, f"{type(error).__name__}: {error}", traceback=True)
            return None
        self.stats.submitted(result.duplicate)
        log.info(
            "trigger event submitted",
            trigger_id=self.spec.id,
            event_id=event.event_id,
            key=key,
            task_id=result.task_id,
            duplicate=result.duplicate,
        )
        return result

    def _failed(self, event: TriggerEvent, message: str, *, traceback: bool) -> None:
        self.stats.failed_event(message)
        log.error(
            "trigger event failed",
            trigger_id=self.spec.id,
            event_id=event.event_id,
            key=event.idempotency_key,
            error=message,
            exc_info=traceback,
        )
