"""A task record's JSON as the file queue writes it: the same record as ``json`` reads it back,
whatever shared values it has, the shared values encoded once while they are the same objects
(tracemind.backend.file.record_json)."""

from __future__ import annotations

import json
import sys
import threading

import pytest

from tracemind.backend.file import record_json
from tracemind.backend.file.record_json import SharedJson, encode_record

FLOW = {"flow": {"name": "demo", "steps": [{"id": "a", "run": "x.y"}]}}
POLICY = {"retry": {"max_attempts": 3}, "timeout_s": None}


@pytest.mark.parametrize(
    "record",
    [
        {"task_id": "t", "inputs": {"é": [1, 2.5, None]}, "flow": FLOW, "policy": POLICY},
        {"task_id": "t", "flow": FLOW},
        {"policy": POLICY, "task_id": "t"},
        {"task_id": "t"},
        {"flow": FLOW, "policy": POLICY},
        {},
    ],
    ids=["both shared", "flow only", "policy only", "none shared", "only shared", "empty"],
)
def test_a_record_reads_back_as_it_was_after_any_other(record: dict[str, object]) -> None:
    shared = SharedJson()
    encode_record({"task_id": "before", "flow": FLOW, "policy": POLICY}, shared)
    assert json.loads(encode_record(record, shared)) == record


def test_shared_values_are_encoded_once_while_they_are_the_same_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[object] = []
    real = record_json.dump_json

    def counting(value: object) -> bytes:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(record_json, "dump_json", counting)
    shared = SharedJson()
    for n in range(3):
        encode_record({"n": n, "flow": FLOW, "policy": POLICY}, shared)
    assert sum(value is FLOW for value in encoded) == 1
    # Another flow object (another flow, or a flow loaded again) is encoded afresh, and reads
    # back as itself
    other = json.loads(json.dumps(FLOW))
    other["flow"]["name"] = "changed"
    assert json.loads(encode_record({"flow": other, "policy": POLICY}, shared))["flow"] == other
    assert sum(value is other for value in encoded) == 1


def test_threads_sharing_it_never_get_another_flows_json() -> None:
    # Given one SharedJson and four threads, each encoding records of a flow of its own, with
    # the interpreter switching threads as often as it can
    shared = SharedJson()
    flows = [{"flow": {"name": f"flow-{n}"}} for n in range(4)]
    wrong: list[object] = []

    def encode_many(flow: dict[str, object]) -> None:
        for n in range(2_000):
            record = {"n": n, "flow": flow, "policy": POLICY}
            if json.loads(encode_record(record, shared))["flow"] != flow:
                wrong.append(flow)

    interval_s = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=encode_many, args=(flow,)) for flow in flows]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval_s)
    # Then every record carries its own flow
    assert wrong == []
