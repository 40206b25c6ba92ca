"""Value classes without ``dataclasses``: equality, hashing and a repr derived from ``__slots__``.

The classes on the path of ``tm enqueue`` cannot be dataclasses: importing ``dataclasses`` pulls in
``inspect`` (and with it ``ast``, ``dis``, ``tokenize``), ~9 ms, and every ``@dataclass`` builds its
methods with ``exec`` at import, up to ~0.5 ms each, when the whole process should take under
~30 ms. They declare ``__slots__`` and an ``__init__`` instead and inherit the rest from
:class:`Value`. Their fields are read-only by convention, as with ``frozen=True`` before.
"""

from __future__ import annotations


class Value:
    """Equal to another instance of the same class with equal fields, hashable if they are, and
    shown as ``Name(field=value, ...)``; the fields are the subclass's ``__slots__``, in order."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Value) and type(other) is type(self):
            return self._fields() == other._fields()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
