"""A task record's JSON, as the file queue writes it: the values many records share (their flow
snapshot and policy) encoded once."""

from __future__ import annotations

from tracemind.fsutil import dump_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SharedJson:
    """The JSON of the values many records share — their flow snapshot and policy, the same
    objects in every record one submitter makes for one flow (see
    :class:`~tracemind.queue.records.TaskMaker`) — encoded once for a batch, or for a process
    that submits one task at a time. Values are told apart by identity; nothing changes a
    snapshot or a policy once made."""

    __slots__ = ("_held",)

    SHARED = ("flow", "policy")

    def __init__(self) -> None:
        self._held: dict[str, tuple[object, bytes]] = {}

    def of(self, field: str, value: object) -> bytes:
        held = self._held.get(field)
        if held is None or held[0] is not value:
            held = (value, dump_json(value))
            self._held[field] = held
        return held[1]


def encode_record(record: dict[str, Any], shared: SharedJson) -> bytes:
    """``record`` as JSON (its shared values last), those values encoded once for many
    records."""
    own = dict(record)
    tail = b"".join(
        b',"%s":%s' % (field.encode(), shared.of(field, own.pop(field)))
        for field in SharedJson.SHARED
        if field in own
    )
    head = dump_json(own)[:-1]
    return head + (tail[1:] if head == b"{" else tail) + b"}"
