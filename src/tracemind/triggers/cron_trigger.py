"""The cron trigger: decide which scheduled times fire, given the time passed in.

Contract:

- The idempotency key of a fire is ``<id>:<scheduled time, ISO UTC>``, the same in every process.
- A first start (no state) never catches up: the first fire is the next scheduled time after it.
- A restart never re-fires what already fired: the next fire is after both ``now`` and the last
  fire kept in the state dir.
- ``catch_up: true`` (cron only): on a restart, if scheduled times passed while nothing ran (since
  the last fire, or since the first start if it never fired), the most recent one fires once,
  right away; older ones are skipped. Without it, missed times are skipped.
- If the process falls behind while running (suspended, clock jump), it fires the most recent due
  time once, not every missed one.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog

from tracemind.triggers.dispatch import Dispatcher
from tracemind.triggers.model import CronSpec, TriggerEvent, iso_utc, parse_iso_utc
from tracemind.triggers.state import TriggerState, TriggerStateStore

log = structlog.get_logger("tracemind.triggers")


class CronTrigger:
    """Drive with :meth:`start` once, then :meth:`step` whenever :attr:`next_fire` is reached."""

    def __init__(self, spec: CronSpec, dispatcher: Dispatcher, store: TriggerStateStore) -> None:
        self.spec = spec
        self.dispatcher = dispatcher
        self.store = store
        self.next_fire: datetime | None = None
        self._state: TriggerState | None = None

    def start(self, now: datetime) -> list[TriggerEvent]:
        """Load the state and plan the next fire; returns the catch-up event, if any."""
        state = self.store.load(self.spec.id)
        catch_up: list[TriggerEvent] = []
        if state is None:
            state = TriggerState(started_at=now)
            self._save(state)
        elif self.spec.catch_up:
            missed = self.spec.schedule.prev_fire(now)
            since = state.last_fire or state.started_at
            if missed is not None and missed > since:
                catch_up.append(self._event(missed, now))
                log.info(
                    "catching up a missed cron run",
                    trigger_id=self.spec.id,
                    scheduled_at=iso_utc(missed),
                )
        self._state = state
        after = max(now, state.last_fire) if state.last_fire is not None else now
        self.next_fire = self.spec.schedule.next_fire(after)
        return catch_up

    def due(self, now: datetime) -> list[TriggerEvent]:
        """The event to fire at ``now`` (at most one), advancing :attr:`next_fire` past ``now``."""
        if self.next_fire is None or now < self.next_fire:
            return []
        latest = self.spec.schedule.prev_fire(now)
        scheduled = latest if latest is not None and latest > self.next_fire else self.next_fire
        self.next_fire = self.spec.schedule.next_fire(now)
        return [self._event(scheduled, now)]

    def fire(self, event: TriggerEvent) -> bool:
        """Submit one event; on success remember its scheduled time. True when submitted."""
        if self.dispatcher.dispatch(event) is None:
            return False
        state = self._state
        if state is not None:
            scheduled = parse_iso_utc(event.fields["scheduled_at"])
            last = state.last_fire
            state.last_fire = scheduled if last is None else max(last, scheduled)
            self._save(state)
        return True

    def step(self, now: datetime) -> int:
        """Fire whatever is due at ``now``; returns how many events were submitted."""
        return sum(self.fire(event) for event in self.due(now))

    def _event(self, scheduled: datetime, now: datetime) -> TriggerEvent:
        when = iso_utc(scheduled)
        return TriggerEvent(
            trigger_id=self.spec.id,
            kind="cron",
            event_id=uuid.uuid4().hex,
            time=now,
            identity=when,
            fields={"scheduled_at": when},
        )

    def _save(self, state: TriggerState) -> None:
        try:
            self.store.save(self.spec.id, state)
        except OSError as error:
            self.dispatcher.stats.error(f"cannot save trigger state: {error}")
            log.error("trigger state not saved", trigger_id=self.spec.id, error=str(error))
