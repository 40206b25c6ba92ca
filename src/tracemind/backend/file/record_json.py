"""A task record's JSON, as the file queue writes it: the values many records share (their flow
snapshot and policy) encoded once."""

from __future__ import annotations

from tracemind.fsutil import dump_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_ABSENT = object()
"""A shared field a record does not have."""

_NOTHING_YET = object()
"""What :class:`SharedJson` holds before its first record (no record's value)."""


class SharedJson:
    """The JSON of the values many records share — their flow snapshot and policy, the same
    objects in every record one submitter makes for one flow (see
    :class:`~tracemind.queue.records.TaskMaker`) — encoded once for a batch, or for a process
    that submits one task at a time. Values are told apart by identity; nothing changes a
    snapshot or a policy once made. Thread-safe: the values and their JSON are held as one
    tuple, read and replaced whole, so no thread pairs one flow with another's JSON."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: tuple[object, object, bytes] = (_NOTHING_YET, _NOTHING_YET, b"")

    def tail(self, flow: object, policy: object) -> bytes:
        """``,"flow":…,"policy":…`` — each field that is not ``_ABSENT`` — encoded once while
        the values are the same objects."""
        held_flow, held_policy, tail = self._held
        if flow is held_flow and policy is held_policy:
            return tail
        fields = (("flow", flow), ("policy", policy))
        tail = b"".join(
            b',"%s":%s' % (name.encode(), dump_json(value))
            for name, value in fields
            if value is not _ABSENT
        )
        self._held = (flow, policy, tail)
        return tail


def encode_record(record: dict[str, Any], shared: SharedJson) -> bytes:
    """``record`` as JSON (its shared values last), those values encoded once for many
    records."""
    own = record.copy()
    tail = shared.tail(own.pop("flow", _ABSENT), own.pop("policy", _ABSENT))
    head = dump_json(own)[:-1]
    return head + (tail[1:] if head == b"{" else tail) + b"}"
