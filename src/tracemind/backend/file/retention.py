"""Retention: what the data volume forgets, and when, so a queue can run for months.

| kind | removed | setting (default) |
|---|---|---|
| ``results`` | a succeeded task's done record, that long after it finished | ``TM_RESULT_TTL_S`` (7 days) |
| ``keys`` | an idempotency key whose task succeeded that long ago, or no longer exists | ``TM_IDEMPOTENCY_TTL_S`` (1 day) |
| ``dlq_audit`` | ``purged/`` and ``requeued/`` copies of DLQ entries | ``TM_DLQ_AUDIT_TTL_S`` (30 days) |
| ``quarantine`` | files moved aside as damaged | 7 days |
| ``temporaries`` | leftovers of writers that died mid-write | 1 hour |

Dead-letter entries stay until purged.

**Why removing a result never lets its task run again.** The done record fences every other
copy of its task (docs/queue-format.md). Copies other than the one that succeeded exist only
after a crash: an inflight copy whose lease lapsed (recovery deletes it as soon as the lease
expires, because the done record exists), or a pending copy that a recovery returned just
before a late ack (deleted when a consumer reaches it, however deep the backlog). So before it
removes any result, a pass collects the ids of every copy that could still be stale — every
inflight file and every pending copy delivered before — and keeps their results. What remains
is a stale lease whose worker is paused: it lapses within its lease, which is why a result TTL
below :data:`~tracemind.backend.retention.MIN_RESULT_TTL_S` (far above any lease) is refused. Keys go before their results
(a key whose task no longer exists would otherwise be taken for a live one), and a result TTL
shorter than the idempotency TTL is refused for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from typing import TYPE_CHECKING

from tracemind.backend.retention import (
    KINDS,
    QUARANTINE_TTL_S,
    TEMPORARY_TTL_S,
    RetentionPolicy,
)
from tracemind.errors import LockTimeout, QueueError
from tracemind.fsutil import scan_entries
from tracemind.log import get_logger
from tracemind.queue.names import DONE_BUCKET_MS, is_task_id, staged_name
from tracemind.queue.protocol import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tracemind.backend.file.keys import Pointer
    from tracemind.backend.file.stores import Stores

PASS_EVERY_S = 60.0
CHECKPOINT_ALL = 1_000_000
"""A pass settles every listed pack first (however many writers came and went), so that what
holds retention back is only what a replay could really bring back."""
PASS_BUDGET = 5_000
"""At most this many removals per background pass, so a pass never stalls a serving process."""


class Pruner:
    """Removes what :class:`RetentionPolicy` lets go, at most ``budget`` records per call.

    ``prune`` is safe to run from any number of processes at once (every removal tolerates the
    record being gone already) and to interrupt at any instant.
    """

    def __init__(self, stores: Stores, policy: RetentionPolicy) -> None:
        self.stores = stores
        self.policy = policy
        self.log = get_logger("tracemind.retention")
        self.totals: Counter[str] = Counter({kind: 0 for kind in KINDS})
        """Records removed by this pruner since it was made, by kind (for metrics)."""
        self._next_pass_s = time.monotonic() + PASS_EVERY_S  # (a short burst never prunes)
        self._unsettled_ms: int | None = None
        """Tasks enqueued from then on may be linked again after a reboot: none of them is
        removed (see :mod:`tracemind.backend.file.packs`)."""

    def prune_if_due(self) -> None:
        """One bounded pass every :data:`PASS_EVERY_S` (a serving process calls this often)."""
        now_s = time.monotonic()
        if now_s < self._next_pass_s:
            return
        self._next_pass_s = now_s + PASS_EVERY_S
        self.totals.update(self.prune(budget=PASS_BUDGET))

    def prune(
        self, *, now_s: float | None = None, dry_run: bool = False, budget: int = 10_000
    ) -> Counter[str]:
        """Remove (or, with ``dry_run``, only count) what has expired; returns counts by kind."""
        now_s = time.time() if now_s is None else now_s
        removed: Counter[str] = Counter({kind: 0 for kind in KINDS})
        # (a dry run too: a checkpoint removes no record, and without it the count would not
        # be what a prune removes)
        self.stores.queue.checkpoint(limit=CHECKPOINT_ALL)
        self._unsettled_ms = self.stores.queue.oldest_unsettled_ms()
        for kind, path in self._expired(now_s):
            if sum(removed.values()) >= budget:
                break
            if dry_run:
                removed[kind] += 1
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed[kind] += 1
        if not dry_run:
            self._remove_empty_done_buckets(now_s)
            if any(removed.values()):
                self.log.info("expired records removed", **dict(removed))
        return removed

    def _expired(self, now_s: float) -> Iterator[tuple[str, str]]:
        yield from self._expired_keys(now_s)  # keys first: see the module docstring
        yield from self._expired_results(now_s)
        dlq_root = os.fspath(self.stores.dlq.root)
        for folder in ("purged", "requeued"):
            for kind, path in _older_than(
                "dlq_audit", os.path.join(dlq_root, folder), now_s - self.policy.dlq_audit_ttl_s
            ):
                if self._settled(os.path.basename(path)):
                    yield kind, path
        for store_root in (self.stores.queue.root, self.stores.dlq.root, self.stores.keys.root):
            root = os.fspath(store_root)
            yield from _quarantined(os.path.join(root, "quarantine"), now_s - QUARANTINE_TTL_S)
            yield from _older_than(
                "temporaries", os.path.join(root, "tmp"), now_s - TEMPORARY_TTL_S
            )

    def _expired_results(self, now_s: float) -> Iterator[tuple[str, str]]:
        """Done records finished (their file's mtime: the ack's append) before the TTL, in hour
        buckets that ended before it, except those of tasks that may still have a stale copy."""
        queue = self.stores.queue
        done_root = os.fspath(queue.done_dir)
        cutoff_s = now_s - self.policy.result_ttl_s
        keep: set[str] | None = None
        for bucket, regular in sorted(scan_entries(done_root)):
            if (
                regular
                or not bucket.isdigit()
                or (int(bucket) + 1) * DONE_BUCKET_MS > cutoff_s * 1000
            ):
                continue
            folder = os.path.join(done_root, bucket)
            for name, is_file in scan_entries(folder):
                if not (is_file and name.endswith(".json") and is_task_id(name[:-5])):
                    continue
                if not self._settled(name):
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(path).st_mtime >= cutoff_s:
                        continue
                    if keep is None:
                        keep = queue.copies_that_may_be_stale()
                    if name[:-5] not in keep:
                        yield "results", path

    def _settled(self, name: str) -> bool:
        """Whether the task a record's ``name`` starts with (its id) was enqueued before every
        task a replay may bring back; the others are kept."""
        if self._unsettled_ms is None:
            return True
        try:
            return int(name[:12], 16) < self._unsettled_ms
        except ValueError:
            return True

    def _expired_keys(self, now_s: float) -> Iterator[tuple[str, str]]:
        """Keys written before the TTL whose task succeeded before it, or no longer exists
        (decided and removed under the key's lock, from the record as read under it; a key a
        submitter holds is left for the next pass)."""
        keys = self.stores.keys
        cutoff_s = now_s - self.policy.key_ttl_s
        for path in keys.records():
            try:
                if os.lstat(path).st_mtime >= cutoff_s:
                    continue
                with keys.locked_stripes([os.path.basename(path)[:2]], timeout_s=0.05):
                    pointer = keys.pointer_at(path)  # (rewritten since the listing, maybe)
                    if pointer is not None and self._key_expired(pointer, cutoff_s):
                        yield "keys", path
            except (LockTimeout, OSError):
                continue
            except QueueError:  # a record this process may not read: not damage, left alone
                continue

    def _key_expired(self, pointer: Pointer, cutoff_s: float) -> bool:
        """Whether a key may go: its task succeeded before ``cutoff_s``, or no longer exists
        anywhere (a dead task's key goes when the task is purged)."""
        queue = self.stores.queue
        task_id, due_ms = pointer.task_id, pointer.due_ms
        info = queue.finished(task_id)
        if info is not None:
            succeeded = info.status is TaskStatus.SUCCEEDED
            return succeeded and info.finished_s is not None and info.finished_s < cutoff_s
        if due_ms is not None and queue.is_staged(staged_name(task_id, due_ms, pointer.stripe)):
            return False  # its submitter died; settling publishes it
        # A task found nowhere: looked for twice, as a task can move between two listings.
        return queue.find(task_id) is None and queue.find(task_id) is None

    def _remove_empty_done_buckets(self, now_s: float) -> None:
        done_root = os.fspath(self.stores.queue.done_dir)
        cutoff_ms = (now_s - self.policy.result_ttl_s) * 1000
        for bucket, regular in scan_entries(done_root):
            if not regular and bucket.isdigit() and (int(bucket) + 1) * DONE_BUCKET_MS <= cutoff_ms:
                with contextlib.suppress(OSError):  # not empty: something is kept
                    os.rmdir(os.path.join(done_root, bucket))


def upkeep(stores: Stores, pruner: Pruner) -> None:
    """What a serving process does about once a second besides recovery: settle what dead
    submitters staged, and remove what expired (the pruner paces itself)."""
    stores.settle_staged()
    pruner.prune_if_due()


def _older_than(kind: str, folder: str, cutoff_s: float) -> Iterator[tuple[str, str]]:
    for name, regular in scan_entries(folder):
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if regular and os.lstat(path).st_mtime < cutoff_s:
                yield kind, path


def _quarantined(folder: str, cutoff_s: float) -> Iterator[tuple[str, str]]:
    """Quarantined entries by the time in their name (a move keeps the file's own mtime)."""
    for name, _ in scan_entries(folder):
        stamp = name.rsplit(".", 2)
        if len(stamp) == 3 and stamp[1].isdigit() and int(stamp[1]) / 1000 < cutoff_s:
            path = os.path.join(folder, name)
            if not os.path.isdir(path) or os.path.islink(path):
                yield "quarantine", path
