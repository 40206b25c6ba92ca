"""The per-flow retry policy and timeout: defaults, validation, and the backoff formula."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tracemind.errors import FlowError
from tracemind.flows import RetryPolicy, parse_flow

ECHO_FLOW: dict[str, Any] = {"id": "r", "steps": [{"id": "s", "kind": "task", "run": "x.y"}]}


def parse_with(**extra: Any) -> Any:
    return parse_flow({"flow": {**ECHO_FLOW, **extra}}, "r.yaml", check_hooks=False)


class FixedRng(random.Random):
    """A Random whose uniform(a, b) always returns the upper bound, to make jitter visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_defaults() -> None:
    flow = parse_with()

    assert flow.retry == RetryPolicy(max_attempts=3, base_ms=200.0, factor=2.0, jitter_ms=100.0)
    assert flow.timeout_s is None


def test_values_from_the_file() -> None:
    flow = parse_with(
        retry={"max_attempts": 5, "base_ms": 10, "factor": 1, "jitter_ms": 0}, timeout_s=2
    )

    assert flow.retry == RetryPolicy(max_attempts=5, base_ms=10, factor=1.0, jitter_ms=0)
    assert flow.timeout_s == 2.0
    assert flow.to_dict()["timeout_s"] == 2.0


def test_partial_retry_keeps_other_defaults() -> None:
    assert parse_with(retry={"max_attempts": 1}).retry == RetryPolicy(max_attempts=1)


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"max_attempts": 2.5}, "max_attempts must be an integer"),
        ({"max_attempts": True}, "max_attempts must be an integer"),
        ({"base_ms": -1}, "base_ms must be a finite number >= 0"),
        ({"base_ms": "200"}, "base_ms must be a number"),
        ({"factor": 0.5}, "factor must be a finite number >= 1"),
        ({"jitter_ms": float("inf")}, "jitter_ms must be a finite number >= 0"),
    ],
)
def test_invalid_retry_values(retry: dict[str, Any], expected: str) -> None:
    with pytest.raises(FlowError) as info:
        parse_with(retry=retry)

    assert str(info.value).startswith(f"r.yaml: flow.retry.{expected}")


@pytest.mark.parametrize("timeout_s", [0, -1, "5", True, float("nan")])
def test_invalid_timeout(timeout_s: Any) -> None:
    with pytest.raises(FlowError, match=r"r\.yaml: flow\.timeout_s must be a positive number"):
        parse_with(timeout_s=timeout_s)


def test_delay_grows_geometrically_plus_jitter() -> None:
    policy = RetryPolicy(max_attempts=4, base_ms=100, factor=3, jitter_ms=50)
    top = FixedRng()

    assert [policy.delay_ms(n, top) for n in (1, 2, 3)] == [150.0, 350.0, 950.0]


def test_jitter_stays_within_bounds_and_follows_the_rng() -> None:
    policy = RetryPolicy(base_ms=200, factor=2, jitter_ms=100)

    delays = [policy.delay_ms(2, random.Random(seed)) for seed in range(50)]

    assert all(400.0 <= delay <= 500.0 for delay in delays)
    assert len(set(delays)) > 1
    assert policy.delay_ms(2, random.Random(7)) == policy.delay_ms(2, random.Random(7))


def test_no_jitter_is_exact() -> None:
    assert RetryPolicy(base_ms=5, factor=2, jitter_ms=0).delay_ms(4, random.Random()) == 40.0


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        RetryPolicy().delay_ms(0, random.Random())


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()

    with pytest.raises(AttributeError):
        policy.max_attempts = 9  # type: ignore[misc]
    assert policy.max_attempts == 3
