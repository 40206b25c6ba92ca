"""JSON encoders for the lines a worker writes for every task (its log lines, its events to the
pool, its ack's completion line).

``json.JSONEncoder.encode`` builds a new C encoder for every call, which costs more than
encoding a small object: ~5 µs a line where encoding alone takes ~2.5. :func:`reusing_encoder`
builds it once. Same output, byte for byte, as ``encoder.encode``; where the C encoder is
missing (another Python), it is ``encoder.encode`` itself.
"""

from __future__ import annotations

import json
from json import encoder as json_encoder

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``fsutil`` imports this on ``tm enqueue``'s path, which loads no typing)
    from collections.abc import Callable
    from typing import Any


def reusing_encoder(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode`` with its C encoder built once. ``encoder`` must not check for
    circular references (``check_circular=False``: a value that contains itself then fails
    with ``RecursionError`` instead of ``ValueError``) nor indent."""
    indent: object = encoder.indent  # (None when it does not indent, whatever the stubs say)
    if encoder.check_circular or indent is not None:
        raise ValueError("reusing_encoder: an encoder without check_circular or indent")
    make = getattr(json_encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    ascii_only = encoder.ensure_ascii
    strings = json_encoder.encode_basestring_ascii if ascii_only else json_encoder.encode_basestring
    encode_chunks = make(
        None,  # no markers: see check_circular above
        encoder.default,
        strings,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return strings(value)
        return "".join(encode_chunks(value, 0))

    return encode
