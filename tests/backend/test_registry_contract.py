"""Guarantee 11 (the registry) of the Backend contract, against every backend, on the injected
clock: a registration is visible to every view of the location until it is deregistered or its
heartbeat is older than the stale limit."""

from __future__ import annotations

from typing import Any

from backend_testing import Subject
from tracemind.backend.registration import STALE_S, registration


def _entry(instance_id: str, **changes: Any) -> dict[str, Any]:
    entry = registration(
        instance_id,
        kind="daemon",
        state_dir=f"/state/{instance_id}",
        started_s=1_800_000_000.0,
        workers={"configured": 2, "alive": 2, "busy": 1},
        draining=False,
    )
    return {**entry, **changes}


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(str(e["instance_id"]) for e in entries)


def test_a_registration_is_seen_by_every_view_with_its_fields(subject: Subject) -> None:
    subject.backend.registry.register(_entry("d-one"))

    [seen] = subject.reopen().registry.live()

    assert seen["heartbeat_age_s"] == 0
    expected = _entry("d-one")
    assert {key: seen[key] for key in expected} == expected


def test_a_registration_goes_stale_by_the_clock_and_a_heartbeat_refreshes_it(
    subject: Subject,
) -> None:
    registry = subject.backend.registry
    registry.register(_entry("d-one"))
    registry.register(_entry("d-two"))
    other = subject.reopen().registry
    # Then a heartbeat just younger than the limit is live, with its age
    subject.clock.advance(STALE_S - 1)
    registry.register(_entry("d-two", draining=True))  # d-two beats again
    ages = {e["instance_id"]: e["heartbeat_age_s"] for e in other.live()}
    assert ages == {"d-one": STALE_S - 1, "d-two": 0}
    # And one older than the limit is gone, while the refreshed one stays
    subject.clock.advance(2)
    [live] = other.live()
    assert (live["instance_id"], live["draining"]) == ("d-two", True)
    # And ``now_s`` asks about another moment
    assert _ids(other.live(now_s=subject.clock() - 2)) == ["d-one", "d-two"]


def test_a_deregistered_instance_is_gone_and_deregistering_twice_is_fine(
    subject: Subject,
) -> None:
    registry = subject.backend.registry
    registry.register(_entry("d-one"))
    registry.register(_entry("d-two"))

    subject.reopen().registry.deregister("d-one")
    registry.deregister("d-one")
    registry.deregister("never-registered")

    assert _ids(registry.live()) == ["d-two"]


def test_an_empty_registry_has_no_one_live(subject: Subject) -> None:
    assert subject.backend.registry.live() == []
