"""``tm enqueue``'s check that the daemon serving the queue can import the task's hooks.

The caller validated the flow by importing its hooks here; the daemon's workers import them
again from their own path, which the daemon records in ``daemon.json`` (``import_path``: its
app dirs, its current directory, its ``sys.path``). A hook module found here but not there
would dead-letter the task at once, so ``tm enqueue`` says so in one line (the task is still
enqueued: exit 0). The check is skipped when no daemon serves this queue from this host (no
fresh heartbeat, another location, another host or container: paths differ there).
No pathlib, no typing: this runs on ``tm enqueue``'s path.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tracemind import config
from tracemind.daemon.recorded import recorded_location

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tracemind.backend.location import Location

STALE_HEARTBEAT_S = 10.0
"""A heartbeat older than this means no daemon is serving (it beats every second)."""


def serving_daemon(location: Location, state_dir: str | None = None) -> dict[str, Any] | None:
    """The ``daemon.json`` of the daemon serving ``location`` from this host, if one is."""
    state = config.state_path(state_dir)
    try:
        with open(os.path.join(state, "daemon.json"), "rb") as file:
            meta = json.loads(file.read())
        beat_age_s = time.time() - os.stat(os.path.join(state, "heartbeat.json")).st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or beat_age_s > STALE_HEARTBEAT_S:
        return None
    if meta.get("host") != os.uname().nodename:
        return None
    recorded = recorded_location(meta)
    if recorded is None or not _same(recorded, location):
        return None
    return meta


def _same(recorded: Location, location: Location) -> bool:
    """Whether two locations are one: file locations whose queue directories resolve to one
    directory (symbolic links followed), or the same redacted text."""
    if recorded.is_file and location.is_file:
        here, there = recorded.file_dirs()[0], location.file_dirs()[0]
        return os.path.realpath(here) == os.path.realpath(there)
    return recorded.redacted() == location.redacted()


def unimportable(modules: list[str], import_path: list[str]) -> list[str]:
    """The top-level ``modules`` that no entry of ``import_path`` provides (looked up, not
    imported)."""
    from importlib.machinery import PathFinder

    return [name for name in modules if PathFinder.find_spec(name, import_path) is None]


def found_in(module: str) -> str | None:
    """The directory this process imports the top-level ``module`` from."""
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec(module, [os.getcwd(), *sys.path])
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: its directory's parent
        return os.path.dirname(next(iter(spec.submodule_search_locations)))
    return os.path.dirname(spec.origin) if spec.origin else None


def warn_unimportable(location: Location, modules: list[str]) -> None:
    """Print one warning line per hook module the serving daemon's workers cannot import."""
    meta = serving_daemon(location)
    path = None if meta is None else meta.get("import_path")
    if not isinstance(path, list) or not all(isinstance(entry, str) for entry in path):
        return  # no serving daemon, or one too old to record where its workers import from
    for module in unimportable(modules, path):
        here = found_in(module)
        if here is None:
            continue
        app_dirs = meta.get("app_dirs") if meta else None
        print(
            f"tm: warning: the daemon serving this queue (pid {meta.get('pid') if meta else '?'}) "
            f"cannot import {module!r}, which this flow's hooks need: its workers import from "
            f"app dirs {app_dirs or '(none)'}, its directory and its PYTHONPATH, and {module} "
            f"is in {here}; restart it with --app-dir {here} (or TM_APP_DIR), or the task "
            "will be dead-lettered",
            file=sys.stderr,
        )
