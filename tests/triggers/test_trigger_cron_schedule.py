"""The cron trigger driven with injected instants: keys, restarts, catch_up, failures."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from trigger_fakes import FakeSubmitter

from tracemind.triggers import CronSpec
from tracemind.triggers.cron_trigger import CronTrigger
from tracemind.triggers.dispatch import Dispatcher, TriggerStats
from tracemind.triggers.state import TriggerStateStore

T0 = datetime(2024, 5, 1, 12, 0, 20, tzinfo=UTC)

MakeTrigger = Callable[..., CronTrigger]


@pytest.fixture
def make_trigger(load: Any, project: Path, submitter: FakeSubmitter) -> MakeTrigger:
    """A fresh CronTrigger over the same state dir (a new one per call = a restart)."""

    def make(**keys: Any) -> CronTrigger:
        entry = {
            "id": "tick",
            "kind": "cron",
            "cron": "@every 60s",
            "flow": "flows/hello.yaml",
            "input": {"at": "{{ scheduled_at }}", "meta": "{{ trigger_id }}/{{ trigger_kind }}"},
            **keys,
        }
        spec = load(entry).triggers[0]
        assert isinstance(spec, CronSpec)
        dispatcher = Dispatcher(spec, {"flow": "hello"}, submitter, TriggerStats())
        return CronTrigger(spec, dispatcher, TriggerStateStore(project / "state"))

    return make


def test_first_start_fires_at_the_next_grid_point_with_a_scheduled_key(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    # Given a trigger started at 12:00:20 for "@every 60s"
    trigger = make_trigger()
    assert trigger.start(T0) == []
    assert trigger.next_fire == datetime(2024, 5, 1, 12, 1, tzinfo=UTC)
    # When time reaches 12:00:59 nothing fires; at 12:01:00 exactly one event does
    assert trigger.step(T0 + timedelta(seconds=39)) == 0
    assert trigger.step(datetime(2024, 5, 1, 12, 1, tzinfo=UTC)) == 1
    # Then the task carries the key, the rendered input and the _trigger metadata
    (call,) = submitter.calls
    assert call.key == "tick:2024-05-01T12:01:00Z"
    assert call.inputs == {"at": "2024-05-01T12:01:00Z", "meta": "tick/cron"}
    assert call.flow == {"flow": "hello"}
    assert call.trigger is not None
    assert call.trigger["trigger_id"] == "tick"
    assert call.trigger["kind"] == "cron"
    assert call.trigger["key"] == "tick:2024-05-01T12:01:00Z"
    assert call.trigger["time"] == "2024-05-01T12:01:00Z"
    assert len(call.trigger["event_id"]) == 32
    assert trigger.next_fire == datetime(2024, 5, 1, 12, 2, tzinfo=UTC)


def test_each_scheduled_time_fires_once(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    trigger = make_trigger()
    trigger.start(T0)
    moments = [T0 + timedelta(seconds=s) for s in range(40, 200, 5)]
    fired = sum(trigger.step(moment) for moment in moments)
    # 12:01, 12:02, 12:03 are inside [12:01:00, 12:03:15]
    assert fired == 3
    assert [call.key for call in submitter.calls] == [
        "tick:2024-05-01T12:01:00Z",
        "tick:2024-05-01T12:02:00Z",
        "tick:2024-05-01T12:03:00Z",
    ]


def test_restart_does_not_refire_what_already_fired(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    first = make_trigger()
    first.start(T0)
    fire_time = datetime(2024, 5, 1, 12, 1, tzinfo=UTC)
    assert first.step(fire_time) == 1
    # A restart in the same instant plans the *next* slot and fires nothing now.
    second = make_trigger()
    assert second.start(fire_time) == []
    assert second.next_fire == fire_time + timedelta(minutes=1)
    assert second.step(fire_time) == 0
    assert len(submitter.calls) == 1


def test_missed_times_are_skipped_without_catch_up(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    first = make_trigger()
    first.start(T0)
    first.step(datetime(2024, 5, 1, 12, 1, tzinfo=UTC))
    # Down from 12:01 to 12:05:30: four slots were missed.
    second = make_trigger()
    assert second.start(datetime(2024, 5, 1, 12, 5, 30, tzinfo=UTC)) == []
    assert second.next_fire == datetime(2024, 5, 1, 12, 6, tzinfo=UTC)
    assert len(submitter.calls) == 1


def test_catch_up_fires_the_most_recent_missed_time_once(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    first = make_trigger(catch_up=True)
    first.start(T0)
    first.step(datetime(2024, 5, 1, 12, 1, tzinfo=UTC))
    # Given the trigger was down from 12:01 to 12:05:30
    second = make_trigger(catch_up=True)
    events = second.start(datetime(2024, 5, 1, 12, 5, 30, tzinfo=UTC))
    # Then exactly one catch-up event, for 12:05, is planned; then normal service at 12:06
    assert [event.idempotency_key for event in events] == ["tick:2024-05-01T12:05:00Z"]
    assert second.fire(events[0])
    assert second.next_fire == datetime(2024, 5, 1, 12, 6, tzinfo=UTC)
    assert [call.key for call in submitter.calls][-1] == "tick:2024-05-01T12:05:00Z"
    # And a third start right after does not catch up the same slot again
    third = make_trigger(catch_up=True)
    assert third.start(datetime(2024, 5, 1, 12, 5, 40, tzinfo=UTC)) == []


def test_a_first_start_never_catches_up(make_trigger: MakeTrigger) -> None:
    trigger = make_trigger(catch_up=True)
    assert trigger.start(T0) == []


def test_catch_up_counts_from_the_first_start_when_nothing_fired_yet(
    make_trigger: MakeTrigger,
) -> None:
    make_trigger(catch_up=True).start(T0)  # started at 12:00:20, stopped before 12:01
    events = make_trigger(catch_up=True).start(datetime(2024, 5, 1, 12, 3, 10, tzinfo=UTC))
    assert [event.idempotency_key for event in events] == ["tick:2024-05-01T12:03:00Z"]


def test_falling_behind_fires_only_the_latest_due_time(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    trigger = make_trigger()
    trigger.start(T0)
    # The process was suspended from 12:00:20 to 12:10:30.
    assert trigger.step(datetime(2024, 5, 1, 12, 10, 30, tzinfo=UTC)) == 1
    assert [call.key for call in submitter.calls] == ["tick:2024-05-01T12:10:00Z"]
    assert trigger.next_fire == datetime(2024, 5, 1, 12, 11, tzinfo=UTC)


def test_failed_submission_is_counted_and_not_remembered(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    trigger = make_trigger(catch_up=True)
    trigger.start(T0)
    submitter.failing = True
    assert trigger.step(datetime(2024, 5, 1, 12, 1, tzinfo=UTC)) == 0
    stats = trigger.dispatcher.stats.snapshot(trigger.spec, trigger.next_fire)
    assert stats["failed"] == 1
    assert stats["enqueued"] == 0
    assert "queue directory is not writable" in stats["last_error"]
    assert stats["last_fire"] == "2024-05-01T12:01:00Z"
    # The failed slot was not recorded as fired, so a catch-up restart retries it.
    submitter.failing = False
    restarted = make_trigger(catch_up=True)
    events = restarted.start(datetime(2024, 5, 1, 12, 1, 30, tzinfo=UTC))
    assert [event.idempotency_key for event in events] == ["tick:2024-05-01T12:01:00Z"]


def test_cron_in_a_timezone_keys_by_the_utc_instant(
    make_trigger: MakeTrigger, submitter: FakeSubmitter
) -> None:
    trigger = make_trigger(cron="30 2 * * *", timezone="Europe/Berlin")
    trigger.start(datetime(2024, 3, 30, 12, tzinfo=UTC))
    assert trigger.next_fire == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)  # after the DST gap
    assert trigger.step(datetime(2024, 3, 31, 1, 0, tzinfo=UTC)) == 1
    assert submitter.calls[0].key == "tick:2024-03-31T01:00:00Z"


def test_state_file_is_group_writable_json(make_trigger: MakeTrigger, project: Path) -> None:
    trigger = make_trigger()
    trigger.start(T0)
    trigger.step(datetime(2024, 5, 1, 12, 1, tzinfo=UTC))
    path = project / "state" / "triggers" / "tick.json"
    assert path.stat().st_mode & 0o777 == 0o660
    assert '"last_fire": "2024-05-01T12:01:00Z"' in path.read_text()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
