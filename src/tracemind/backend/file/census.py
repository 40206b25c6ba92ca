"""Counting the tasks in ``pending/`` at a cost that follows what changed, not the backlog.

Exact counts need every bucket's entries; listing a million names costs a second. But a bucket
in the past only loses tasks, and a bucket whose directory has not changed since it was counted
still holds what it held. So a process that writes (the daemon) keeps ``census.json`` in the
queue directory: for every *settled* bucket — one whose mtime was more than
:data:`SETTLE_S` older than the moment it was listed — its mtime and counts. Any reader then
lists only the buckets whose mtime differs from the cached one (or that were not settled), and
takes the rest from the file: the result is exact, and costs O(buckets + tasks in recently
changed buckets). The settle margin is git's answer to "racily clean" index entries: a
directory changed again within the same timestamp tick as its listing would keep its mtime, so
only buckets that were quiet for a while are trusted. Writers on their way (:func:`settle_more`)
measure quiet on the file system's own clock instead, which needs no margin.

Readers never write the file; a missing, damaged or foreign file only means a full listing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from tracemind.backend.file.pending import INNER_MS, Bucket, PendingDir, all_task_names
from tracemind.fsutil import dump_json, read_regular, write_atomic
from tracemind.queue.names import DUE_DIGITS, PendingName, due_text, is_task_id, is_temporary
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CENSUS_FILE = "census.json"
SETTLE_S = 2.0
"""How long a bucket's directory must have been unchanged before its counts are kept."""
TICK_WAIT_S = 0.05
"""How long a writer that has just written a batch waits at most for the file system's clock to
tick before its census pass (a cache: waiting longer would buy nothing but a shorter listing)."""
MAX_CACHED_BUCKETS = 200_000
"""A bound on the file's size (a backlog spread over more seconds than this lists the rest)."""


def settled_before_ns(now_ms: int) -> int:
    """The mtime (ns) before which a directory counts as settled at ``now_ms`` by this
    process's clock: :data:`SETTLE_S` earlier."""
    return (now_ms - int(SETTLE_S * 1000)) * 1_000_000


class Census(Value):
    """How many tasks are due, delayed and damaged in ``pending/``, and the oldest due time."""

    __slots__ = ("damaged", "delayed", "oldest_due_ms", "pending")

    def __init__(
        self,
        pending: int = 0,
        delayed: int = 0,
        damaged: int = 0,
        oldest_due_ms: int | None = None,
    ) -> None:
        self.pending = pending
        self.delayed = delayed
        self.damaged = damaged
        self.oldest_due_ms = oldest_due_ms

    def add_due(self, count: int, oldest_ms: int | None) -> None:
        self.pending += count
        if oldest_ms is not None and (self.oldest_due_ms is None or oldest_ms < self.oldest_due_ms):
            self.oldest_due_ms = oldest_ms


class _BucketCount:
    """What one listing of a bucket found: tasks due by ``now``, delayed, damaged, the oldest
    due time, and the names of its tasks (canonical: due times compare as strings)."""

    __slots__ = ("damaged", "delayed", "due", "names", "oldest_ms")

    def __init__(self, names: list[str], damaged: int) -> None:
        self.names = names
        self.damaged = damaged
        self.due = self.delayed = 0
        self.oldest_ms: int | None = None

    def id_range(self) -> list[int]:
        """``[lowest, highest]`` task id as integers (``[-1, -1]`` for a bucket with none)."""
        if not self.names:
            return [-1, -1]
        ids = [name[14:36] for name in self.names]
        return [int(min(ids), 16), int(max(ids), 16)]


def count_pending(
    pending: PendingDir,
    now_ms: int,
    cache: dict[str, list[int]] | None = None,
    *,
    keep: bool = True,
) -> tuple[Census, dict[str, list[int]]]:
    """(the census of ``pending/`` as of ``now_ms``, the cache entries for its settled buckets
    — none unless ``keep``: a reader that will not save them spares their task id ranges).

    ``cache`` maps a bucket's path relative to ``pending/`` to ``[mtime_ns, tasks, damaged,
    oldest_due_ms, lowest_task_id, highest_task_id]`` as written by :func:`save` (task ids as
    integers; entries of earlier versions lack the two ids); entries are used only for buckets
    that lie wholly in the past. A bucket the cache does not cover is listed once, and its
    names are counted without a Python step per name where they are all task names.
    """
    census = Census()
    settled: dict[str, list[int]] = {}
    settle_ns = settled_before_ns(now_ms)
    root_length = len(pending.path)
    for bucket in pending.buckets():
        if not isinstance(bucket, Bucket):
            if bucket is None:
                census.damaged += 1
            else:  # a first-layout file
                _add_name(census, bucket.due_ms, now_ms)
            continue
        past = bucket.start_ms + INNER_MS <= now_ms
        key = bucket.path[root_length:]  # relative: a container and its host share the file
        cached = cache.get(key) if cache and past else None
        if cached is not None and cached[0] == bucket.mtime_ns:
            census.add_due(cached[1], cached[3] if cached[3] >= 0 else None)
            census.damaged += cached[2]
            if keep and past and bucket.mtime_ns < settle_ns:
                settled[key] = cached
            continue
        counted = _count_bucket(pending, bucket, now_ms)
        census.add_due(counted.due, counted.oldest_ms)
        census.delayed += counted.delayed
        census.damaged += counted.damaged
        if keep and past and bucket.mtime_ns < settle_ns and len(settled) < MAX_CACHED_BUCKETS:
            oldest = -1 if counted.oldest_ms is None else counted.oldest_ms
            entry = [bucket.mtime_ns, counted.due, counted.damaged, oldest, *counted.id_range()]
            settled[key] = entry
    return census, settled


def settle_more(
    pending: PendingDir,
    now_ms: int,
    cache: dict[str, list[int]] | None,
    budget: int,
    *,
    next_tick: bool = False,
) -> dict[str, list[int]]:
    """``cache`` with the settled buckets it lacks counted in, listing at most about
    ``budget`` names (what a writer does on the way: see :meth:`FileQueue.keep_census`).

    A bucket is settled here when its mtime is earlier than the file system's clock before
    any listing (:func:`fs_clock_ns`; else :data:`SETTLE_S` before ``now_ms``): a change after
    the listing then gives it another mtime, even in the same tick as the listing. Buckets of
    the current second are kept too, with all their tasks (readers take an entry only once its
    bucket is past, when all are due), so a queue whose writers stopped has a census up to
    their last pass. Unlike :func:`count_pending` it lists no bucket that it could not keep (in
    the future, or changed since that clock), and it drops the entries of buckets that changed
    or are gone; entries that are not buckets (the DLQ's) are kept as they are.

    With ``next_tick`` (a writer that has just written a batch), it first waits (briefly, see
    :data:`TICK_WAIT_S`) for the file system's clock to tick, so that the buckets the batch
    changed last are settled too."""
    kept = {key: entry for key, entry in (cache or {}).items() if not key[:1].isdigit()}
    settled_ns = fs_clock_ns(pending.tmp_dir)
    if next_tick and settled_ns is not None:
        settled_ns = _next_tick_ns(pending.tmp_dir, settled_ns)
    if settled_ns is None:
        settled_ns = settled_before_ns(now_ms)
    root_length = len(pending.path)
    listed = 0
    for bucket in pending.buckets():
        if not isinstance(bucket, Bucket) or len(kept) >= MAX_CACHED_BUCKETS:
            continue
        key = bucket.path[root_length:]
        cached = cache.get(key) if cache else None
        if cached is not None and cached[0] == bucket.mtime_ns:
            kept[key] = cached
        elif listed < budget and bucket.start_ms <= now_ms and bucket.mtime_ns < settled_ns:
            counted = _count_bucket(pending, bucket, now_ms)
            tasks = len(counted.names)
            listed += tasks + counted.damaged
            oldest = int(min(counted.names)[:DUE_DIGITS]) if tasks else -1
            kept[key] = [bucket.mtime_ns, tasks, counted.damaged, oldest, *counted.id_range()]
    return kept


def _next_tick_ns(tmp_dir: str, now_ns: int) -> int:
    """The file system's clock once it has moved past ``now_ns`` (its tick is a few
    milliseconds), or ``now_ns`` when it has not within :data:`TICK_WAIT_S` — or at once when
    ``now_ns`` is a whole second: a file system that keeps whole seconds ticks too seldom to
    wait for."""
    if now_ns % 1_000_000_000 == 0:
        return now_ns
    deadline_s = time.monotonic() + TICK_WAIT_S
    while time.monotonic() < deadline_s:
        time.sleep(0.001)
        later_ns = fs_clock_ns(tmp_dir)
        if later_ns is None:
            break
        if later_ns > now_ns:
            return later_ns
    return now_ns


def fs_clock_ns(tmp_dir: str) -> int | None:
    """The file system's clock now, in its own ticks: the mtime of a file made (and removed)
    in ``tmp_dir``. A directory whose mtime is earlier changes its mtime with any later
    change. None when no file can be made there."""
    path = os.path.join(tmp_dir, f".census-clock-{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        return os.fstat(descriptor).st_mtime_ns
    finally:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _add_name(census: Census, due_ms: int, now_ms: int) -> None:
    if due_ms <= now_ms:
        census.add_due(1, due_ms)
    else:
        census.delayed += 1


def _count_bucket(pending: PendingDir, bucket: Bucket, now_ms: int) -> _BucketCount:
    """One listing of ``bucket``: valid names are counted by their due times as strings (13
    digits each, so the order is the numbers'), with one regular expression over all of them
    to tell that they are valid; only a bucket with other entries is parsed name by name."""
    names, others = pending.bucket_listing(bucket.path)
    damaged = sum(1 for name in others if not is_temporary(name))
    if not all_task_names(names):
        canonical = []
        for name in names:
            parsed = PendingName.parse(name)
            if parsed is not None:
                canonical.append(str(parsed))  # (digits other than 0-9 parse too)
            elif not is_temporary(name):
                damaged += 1
        names = canonical
    counted = _BucketCount(names, damaged)
    if names:
        now = due_text(now_ms)
        oldest = min(names)[:DUE_DIGITS]
        if oldest > now:
            counted.delayed = len(names)
        elif max(names)[:DUE_DIGITS] <= now:
            counted.due = len(names)
        else:
            counted.due = sum(1 for name in names if name[:DUE_DIGITS] <= now)
            counted.delayed = len(names) - counted.due
        if counted.due:
            counted.oldest_ms = int(oldest)
    return counted


def may_hold(cache: dict[str, list[int]] | None, key: str, mtime_ns: int, task_id: str) -> bool:
    """Whether the bucket ``key`` (relative to ``pending/``), whose directory has ``mtime_ns``
    now, may hold a copy of ``task_id``: False only when the census counted that bucket at that
    mtime and ``task_id`` lies outside the ids it held."""
    entry = cache.get(key) if cache else None
    if entry is None or len(entry) < 6 or entry[0] != mtime_ns:
        return True
    return entry[4] <= int(task_id, 16) <= entry[5]


class BucketSearch:
    """Which buckets of ``pending/`` one lookup of ``task_id`` (:meth:`FileQueue.find`, in up
    to three passes) lists: not those the census counted at their present mtime whose ids
    exclude it (:func:`may_hold`), nor those an earlier pass listed without finding it that
    have the same mtime and had settled (:data:`SETTLE_S`) by ``now_ms``, when the lookup
    began — a change after that listing gave the directory a later mtime. A bucket that had
    not settled is listed again: a rename into it within the timestamp tick of its last change
    keeps its mtime."""

    def __init__(self, cache: dict[str, list[int]] | None, task_id: str, now_ms: int) -> None:
        self._cache = cache
        self._task_id = task_id
        self._settle_ns = settled_before_ns(now_ms)
        self._missed: dict[str, int] = {}

    def may_hold(self, key: str, mtime_ns: int) -> bool:
        if self._missed.get(key) == mtime_ns:
            return False
        return may_hold(self._cache, key, mtime_ns, self._task_id)

    def missed(self, key: str, mtime_ns: int) -> None:
        """The bucket ``key`` was listed at ``mtime_ns`` (taken before the listing) and held no
        copy."""
        if mtime_ns < self._settle_ns:
            self._missed[key] = mtime_ns


DLQ_KEY = "//dlq"
"""The cache entry of the dead-letter directory: ``[mtime_ns, entries, damaged, -1]``."""


def count_dead(
    dlq_root: str, cache: dict[str, list[int]] | None, settled_ns: int
) -> tuple[int, int, list[int] | None]:
    """(entries, damaged entries, the cache entry to keep or None) of the dead-letter
    directory, by name: a file named like an entry counts as one without being opened. Taken
    from ``cache`` while the directory's mtime is the one counted there. An entry is kept when
    the directory's mtime is earlier than ``settled_ns`` (the file system's clock before the
    listing, or :func:`settled_before_ns`)."""
    from tracemind.fsutil import scan_entries

    try:
        mtime_ns = os.stat(dlq_root).st_mtime_ns
    except OSError:
        return 0, 0, None
    cached = cache.get(DLQ_KEY) if cache else None
    if cached is not None and cached[0] == mtime_ns:
        return cached[1], cached[2], cached
    entries = damaged = 0
    for name, regular in scan_entries(dlq_root):
        if is_temporary(name):
            continue
        if regular and name.endswith(".json") and is_task_id(name[:-5]):
            entries += 1
        elif regular or _named_like_entry(name) or not os.path.isdir(os.path.join(dlq_root, name)):
            damaged += 1  # (real subdirectories are the store's own: tmp/, purged/, ...)
    settled = mtime_ns < settled_ns
    return entries, damaged, ([mtime_ns, entries, damaged, -1] if settled else None)


def settle_dead(dlq_root: str) -> list[int] | None:
    """The cache entry of the dead-letter directory counted now, once the file system's clock
    (read in its ``tmp/``, so on its own file system) has moved past the directory's last change
    — what a process that wrote dead letters leaves for readers; None when it cannot be told
    settled (its clock did not tick in time, or keeps whole seconds)."""
    try:
        mtime_ns = os.stat(dlq_root).st_mtime_ns
    except OSError:
        return None
    tmp_dir = os.path.join(dlq_root, "tmp")
    clock_ns = fs_clock_ns(tmp_dir)
    if clock_ns is not None and clock_ns <= mtime_ns:
        clock_ns = _next_tick_ns(tmp_dir, clock_ns)
    if clock_ns is None or clock_ns <= mtime_ns:
        return None
    return count_dead(dlq_root, None, clock_ns)[2]


def _named_like_entry(name: str) -> bool:
    return name.endswith(".json") and is_task_id(name[:-5])


def load(queue_root: str) -> dict[str, list[int]] | None:
    """The cache in ``queue_root``'s census file; None when missing or unusable."""
    try:
        doc: Any = json.loads(read_regular(os.path.join(queue_root, CENSUS_FILE)))
    except (OSError, ValueError):
        return None
    buckets = doc.get("buckets") if isinstance(doc, dict) and doc.get("v") == 1 else None
    if not isinstance(buckets, dict):
        return None
    return {
        str(path): entry
        for path, entry in buckets.items()
        if isinstance(entry, list) and len(entry) in (4, 6) and all(type(v) is int for v in entry)
    }


def file_state(queue_root: str, now_s: float) -> tuple[float, int] | None:
    """(how long ago the census file was written or confirmed, its size in bytes); None when
    there is none."""
    try:
        info = os.stat(os.path.join(queue_root, CENSUS_FILE))
    except OSError:
        return None
    return now_s - info.st_mtime, info.st_size


def confirm(queue_root: str) -> None:
    """Mark the census file as current without rewriting it (it was found up to date)."""
    os.utime(os.path.join(queue_root, CENSUS_FILE))


def save(queue_root: str, tmp_dir: str, cache: dict[str, list[int]]) -> None:
    """Write the cache (not synced: losing it only costs the next reader a longer listing)."""
    write_atomic(
        os.path.join(queue_root, CENSUS_FILE),
        dump_json({"v": 1, "buckets": cache}),
        tmp_dir=tmp_dir,
        durable=False,
    )
