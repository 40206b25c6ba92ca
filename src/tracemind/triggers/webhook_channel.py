"""The channel between the webhook's gunicorn worker and the process that runs the triggers.

A Unix socket in a private (0700) directory that the trigger process listens on. Each call is one
connection carrying one request frame and one reply frame; a frame is a 4-byte big-endian length
and that many bytes of JSON. One connection per call means a worker that dies mid-call leaves
nothing behind for the next one to misread.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_LENGTH = struct.Struct(">I")
MAX_FRAME_BYTES = 2**31
CALL_TIMEOUT_S = 30.0
"""How long a worker waits for the trigger process (which submits one task at a time)."""


class ChannelError(OSError):
    """The other side closed the connection or sent something that is not a frame."""


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode("utf-8")
    sock.sendall(_LENGTH.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ChannelError(f"frame of {length} bytes")
    try:
        message = json.loads(_recv_exact(sock, length))
    except ValueError as error:
        raise ChannelError(f"frame is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ChannelError("frame is not a JSON object")
    return message


def call(path: str, message: dict[str, Any], timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Send ``message`` to the trigger process listening at ``path``; its reply (OSError when
    the channel is down or the reply is late)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        send_frame(sock, message)
        return recv_frame(sock)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ChannelError("the channel closed mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Route:
    """What the HTTP side needs of one webhook trigger."""

    trigger_id: str
    method: str
    max_body_bytes: int
    secret: bytes | None

    def to_dict(self) -> dict[str, Any]:
        secret = None if self.secret is None else self.secret.decode("utf-8")
        return {
            "id": self.trigger_id,
            "method": self.method,
            "max_body_bytes": self.max_body_bytes,
            "secret": secret,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Route:
        secret = data["secret"]
        return cls(
            str(data["id"]),
            str(data["method"]),
            int(data["max_body_bytes"]),
            None if secret is None else str(secret).encode("utf-8"),
        )
