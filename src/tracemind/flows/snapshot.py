"""A validated flow frozen for a detached task: runnable without the original file.

The validator is imported by the methods that validate, not with this module: ``tm enqueue``
takes snapshots from its cache (:mod:`tracemind.flows.cache`) without loading it.
"""

from __future__ import annotations

from collections.abc import Mapping

from tracemind.errors import FlowError
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tracemind.flows.model import Flow

_HEX_DIGITS = frozenset("0123456789abcdef")
_UNKNOWN_SOURCE = "<snapshot>"


class FlowSnapshot(Value):
    """The normalized flow mapping plus where it came from.

    ``flow`` is what :meth:`Flow.to_dict` returns (the content under the file's ``flow`` key,
    JSON-serializable). ``source_path`` is the absolute path the file was read from and
    ``sha256`` the hex digest of its bytes; both are provenance only, so a worker on another
    machine or in a container can run the snapshot without the file existing there. Treat
    ``flow`` as read-only.
    """

    __slots__ = ("flow", "sha256", "source_path")

    def __init__(self, flow: dict[str, Any], source_path: str, sha256: str) -> None:
        self.flow = flow
        self.source_path = source_path
        self.sha256 = sha256

    @classmethod
    def of(cls, flow: Flow, source_path: str, sha256: str) -> FlowSnapshot:
        """Snapshot an already validated flow."""
        return cls(flow=flow.to_dict(), source_path=source_path, sha256=sha256)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serializable form a task carries (``from_dict`` reads it back)."""
        return {"flow": self.flow, "source_path": self.source_path, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any, *, check_hooks: bool = False) -> FlowSnapshot:
        """Read back :meth:`to_dict` output, re-validating the flow mapping.

        Never touches ``source_path`` on disk. Hooks are imported only with ``check_hooks``.
        Raises :class:`FlowError` (naming the recorded source path) when anything is malformed.
        """
        from tracemind.flows.validation import parse_flow

        if not isinstance(data, Mapping):
            raise FlowError(_UNKNOWN_SOURCE, "a flow snapshot must be a mapping")
        source_path = data.get("source_path")
        if not isinstance(source_path, str) or not source_path:
            raise FlowError(_UNKNOWN_SOURCE, "snapshot.source_path must be a non-empty string")
        sha256 = data.get("sha256")
        if not isinstance(sha256, str) or len(sha256) != 64 or not set(sha256) <= _HEX_DIGITS:
            raise FlowError(source_path, "snapshot.sha256 must be 64 lowercase hex digits")
        flow = parse_flow({"flow": data.get("flow")}, source_path, check_hooks=check_hooks)
        return cls.of(flow, source_path, sha256)

    def to_flow(self, *, check_hooks: bool = False) -> Flow:
        """Re-validate and return the :class:`Flow` (``source_path`` kept for messages)."""
        from tracemind.flows.validation import parse_flow

        return parse_flow({"flow": self.flow}, self.source_path, check_hooks=check_hooks)
