"""A cache of validated flow snapshots: ``tm enqueue`` of an unchanged flow skips validating it.

Validating a flow parses it (importing PyYAML costs ~13 ms) and imports every hook module (user
code: any cost); ``tm enqueue`` and ``tm run --detached`` would do it for every task they
submit. The cache keeps, for each flow that validated, its snapshot and what the validation
depended on, and hands the snapshot back while all of that is unchanged:

* the flow file's bytes, compared in full, so no edit is missed however quickly it follows;
* the context its hooks are resolved in: the flow's absolute path, the current directory,
  ``sys.path``, and the Python and TraceMind versions (the entry's *key*);
* the source file of every module that validating imported — the hook modules and their
  packages and imports, the YAML parser, the validator — by size and modification time (to the
  nanosecond; Python makes the same check, to the second, before it reuses compiled bytecode).

Invalid flows are never cached: their error is reported afresh every time. An entry is written
only after the caller has used the snapshot (:meth:`CachedFlow.remember`), so a rejected request
leaves nothing behind, and atomically (temporary file and rename), so concurrent ``tm`` processes
see a whole entry or none. An entry that cannot be read, does not parse or lacks what a hit
needs counts as absent and is rewritten; a cache directory that cannot be created or written is
silently not used. Entries not rewritten for :data:`MAX_AGE_S` are deleted whenever an entry is
written.
"""

from __future__ import annotations

import binascii
import json
import os
import sys
import time

from tracemind import __version__
from tracemind.errors import QueueError
from tracemind.flows.snapshot import FlowSnapshot
from tracemind.fsutil import write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

FORMAT = 1
"""The layout of an entry and what its key covers; entries of another format never match."""
MAX_AGE_S = 30 * 86400.0


class CachedFlow:
    """A flow snapshot loaded through the cache; :meth:`remember` stores it if it was a miss."""

    def __init__(
        self,
        snapshot: FlowSnapshot,
        entry_path: str | None = None,
        entry: dict[str, Any] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self._entry_path = entry_path
        self._entry = entry

    def remember(self) -> None:
        """Store the snapshot for the next load of the same flow (nothing to do after a hit, or
        without a cache); a cache directory that cannot be written is left alone."""
        if self._entry_path is None or self._entry is None:
            return
        directory = os.path.dirname(self._entry_path)
        data = json.dumps(self._entry, sort_keys=True).encode()
        try:
            os.makedirs(directory, exist_ok=True)
            write_atomic(self._entry_path, data, tmp_dir=directory, durable=False)
        except (OSError, QueueError):
            return
        _sweep(directory, time.time() - MAX_AGE_S)


def load_flow_cached(path: str, cache_dir: str | None) -> CachedFlow:
    """:func:`~tracemind.flows.load_flow` (with its hooks checked) through the cache in
    ``cache_dir`` (None: no cache). Raises the same one-line :class:`FlowError` for a flow that
    cannot be read or is invalid."""
    try:
        with open(path, "rb") as file:
            data = file.read()
        key = _key(path)
    except OSError:
        return CachedFlow(_validate(None, path))
    if cache_dir is None:
        return CachedFlow(_validate(data, path))
    entry_path = os.path.join(cache_dir, _entry_name(key))
    hit = _lookup(entry_path, key, data)
    if hit is not None:
        return CachedFlow(hit)
    already_loaded = set(sys.modules)
    snapshot = _validate(data, path)
    imported = sys.modules.keys() - already_loaded
    entry = {
        "key": key,
        "source": data.decode("utf-8"),  # it validated, so it is UTF-8 text
        "snapshot": snapshot.to_dict(),
        "depends_on": _files_of([*imported, *_hook_modules(snapshot)]),
    }
    return CachedFlow(snapshot, entry_path, entry)


def _validate(data: bytes | None, path: str) -> FlowSnapshot:
    """Validate ``data`` as the flow file at ``path`` (None: read it, to report why it cannot
    be); this is where the parser, the validator and the hook modules get imported."""
    from tracemind.flows.loader import load_flow, snapshot_bytes

    return load_flow(path) if data is None else snapshot_bytes(data, path)


def _key(path: str) -> dict[str, Any]:
    """What besides the flow file and the modules decides whether its hooks import."""
    return {
        "format": FORMAT,
        "tracemind": __version__,
        "python": sys.version,
        "flow": os.path.abspath(path),
        "cwd": os.getcwd(),
        "sys_path": list(sys.path),  # a copy: validating puts the current directory on it
    }


def _entry_name(key: dict[str, Any]) -> str:
    # A checksum, not a digest: two keys that collide share a file and each miss the other's
    # entry (the key is stored in it and compared), which costs a validation, never a wrong hit.
    return f"{binascii.crc32(json.dumps(key, sort_keys=True).encode()):08x}.json"


def _lookup(entry_path: str, key: dict[str, Any], data: bytes) -> FlowSnapshot | None:
    """The snapshot stored at ``entry_path`` if it is valid for ``key`` and the flow file's
    bytes ``data`` and nothing it depends on changed; None otherwise."""
    try:
        with open(entry_path, "rb") as file:
            entry = json.loads(file.read())
        text = data.decode("utf-8")
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or entry.get("source") != text:
        return None
    snapshot = entry.get("snapshot")
    if not isinstance(snapshot, dict) or not _unchanged(entry.get("depends_on")):
        return None
    flow, sha256 = snapshot.get("flow"), snapshot.get("sha256")
    if not isinstance(flow, dict) or not isinstance(sha256, str):
        return None
    return FlowSnapshot(flow, key["flow"], sha256)


def _hook_modules(snapshot: FlowSnapshot) -> list[str]:
    """Every module importing the hooks of ``snapshot`` imports itself: each hook's module and
    the packages above it."""
    from tracemind.flows.hooks import split_hook_spec

    modules = []
    for step in snapshot.flow["steps"]:
        spec = step.get("hooks", {}).get("run")
        if spec is not None:
            parts = split_hook_spec(spec)[0].split(".")
            modules += [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return modules


def _files_of(module_names: Iterable[str]) -> list[list[Any]]:
    """``[file, mtime_ns, size]`` of the source (or extension) file of each module that has one."""
    files = set()
    for name in module_names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(file, str):
            files.add(file)
    found = []
    for file in sorted(files):
        try:
            info = os.stat(file)
        except OSError:
            continue
        found.append([file, info.st_mtime_ns, info.st_size])
    return found


def _unchanged(depends_on: Any) -> bool:
    if not isinstance(depends_on, list):
        return False
    for dependency in depends_on:
        try:
            file, mtime_ns, size = dependency
            info = os.stat(file)
        except (OSError, TypeError, ValueError):
            return False
        if info.st_mtime_ns != mtime_ns or info.st_size != size:
            return False
    return True


def _sweep(directory: str, cutoff_s: float) -> None:
    """Delete the entries (and any temporary files) of ``directory`` last written before
    ``cutoff_s``: flows that were moved, deleted or not used for a long time."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.stat().st_mtime < cutoff_s:
                os.unlink(entry.path)
        except OSError:
            continue
