"""An encoder whose C encoder is built once writes what ``JSONEncoder.encode`` writes."""

from __future__ import annotations

import json
import math

import pytest

from tracemind.encoders import reusing_encoder

VALUES = [
    {"event": "task started", "attempt": 1, "task_id": "01a249ae4d92012af76bde", "error": None},
    {"b": [1, 2.5, -0.0, 1e300, True, False], "a": {"z": 'é ☃ \u0000 "q" \\', "y": []}},
    {"nan": math.nan, "inf": math.inf, "big": 2**70, "path": ("t", "u")},
    "just a string, \n with a newline",
    [],
    12.125,
    None,
]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"separators": (",", ":"), "ensure_ascii": False, "sort_keys": True},
        {"default": repr},
    ],
)
def test_it_writes_what_the_encoder_writes(options: dict[str, object]) -> None:
    encoder = json.JSONEncoder(check_circular=False, **options)  # type: ignore[arg-type]
    encode = reusing_encoder(encoder)

    for value in [*VALUES, *VALUES]:  # (the second time through the same built encoder)
        assert encode(value) == encoder.encode(value)


def test_a_value_the_encoder_cannot_hold_fails_as_it_does() -> None:
    encode = reusing_encoder(json.JSONEncoder(check_circular=False))

    with pytest.raises(TypeError):
        encode({"set": {1}})
    assert encode({"after": "a failure"}) == '{"after": "a failure"}'


def test_an_encoder_that_checks_for_cycles_or_indents_is_refused() -> None:
    with pytest.raises(ValueError):
        reusing_encoder(json.JSONEncoder())
    with pytest.raises(ValueError):
        reusing_encoder(json.JSONEncoder(check_circular=False, indent=2))
