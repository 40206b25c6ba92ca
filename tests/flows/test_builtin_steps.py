"""The built-in steps in tracemind.steps."""

from __future__ import annotations

import time

import pytest

from tracemind import steps


def test_echo_returns_a_copy_of_its_input() -> None:
    state = {"a": 1, "b": [2]}

    result = steps.echo({}, state)

    assert result == state
    assert result is not state


def test_greet_uses_name_or_world() -> None:
    assert steps.greet({}, {"name": "Ada"}) == {"greeting": "Hello, Ada!"}
    assert steps.greet({}, {}) == {"greeting": "Hello, world!"}


def test_fail_raises_runtime_error_with_message() -> None:
    with pytest.raises(RuntimeError, match=r"^custom$"):
        steps.fail({}, {"message": "custom"})
    with pytest.raises(RuntimeError, match=r"^fail step$"):
        steps.fail({}, {})


def test_sleep_sleeps_the_given_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    assert steps.sleep({}, {"seconds": "0.25"}) == {}
    assert steps.sleep({}, {}) == {}
    assert slept == [0.25, 0.0]
