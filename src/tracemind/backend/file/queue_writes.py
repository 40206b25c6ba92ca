"""Writing to a file queue: enqueue (with the census writers keep), the staging area that
keyed submissions of earlier versions used, requeue, cancel, migration and the packs'
checkpoint — the part of :class:`~tracemind.backend.file.queue.FileQueue` that adds tasks or
moves waiting ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from tracemind.backend.file.dlq import DeadLetterStore
from tracemind.backend.file.packs import append_line, task_bytes
from tracemind.backend.file.quarantine import quarantine, sweep_temporaries
from tracemind.backend.file.queue_reads import LAYOUT_FILE, QueueReads, epoch_ms
from tracemind.backend.file.record_json import SharedJson, encode_record
from tracemind.clock import Clock, system_clock
from tracemind.errors import QueueError
from tracemind.fsutil import (
    dump_json,
    ensure_dir,
    fdatasync_file,
    fsync_dir,
    read_regular,
    rename_into,
    replace_content,
    scan_entries,
    scan_names,
    write_atomic,
)
from tracemind.queue.names import InflightName, PendingName, is_task_id, parse_staged
from tracemind.queue.protocol import NewTask, QueueStats, TaskStatus
from tracemind.queue.records import parse_task_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    from tracemind.fsutil import StrPath


WAITING_OR_RUNNING = frozenset({TaskStatus.PENDING, TaskStatus.DELAYED, TaskStatus.INFLIGHT})
CENSUS_WRITER_AGE_S = 1.0
"""A writer brings the census up to date when it is older than this (or missing) ..."""
CENSUS_WRITER_BYTES_PER_S = 500_000
"""... and than one second per this many bytes of it (about 10,000 buckets): a writer's pass
costs a ``stat`` per bucket, so a backlog spread over many seconds is passed over less often."""
CENSUS_WRITER_BATCH_TASKS = 1_000
"""A writer that has just written at least this many tasks in one call passes whatever the
census's age (its pass then costs little next to the batch), so that a queue filled by batches
has a census up to its last batch, not up to the last pass a second or more before it."""
CENSUS_WRITER_BUDGET = 50_000
"""At most about this many names listed by one writer for the census (more than one writer
enqueues in a second, so that a queue filled by one busy writer is covered up to its last
second)."""


class QueueWrites(QueueReads):
    """The writers' verbs of a file queue (see the module); one instance serves one thread."""

    def __init__(
        self,
        root: StrPath,
        dlq: DeadLetterStore,
        *,
        durable: bool,
        clock: Clock = system_clock,
        key_owner: Callable[[str], str | None] | None = None,
    ) -> None:
        """``key_owner``: the id of the task an idempotency key points at (None when none
        does); without it, a replay after a reboot takes a keyed record as its key's task."""
        super().__init__(root, dlq, durable=durable, clock=clock)
        self.key_owner = key_owner
        self._prepared = False
        self._shared_json = SharedJson()
        self._census_fresh_until_s = float("-inf")
        """Until when (``time.monotonic``) this writer takes the census as fresh: it was found
        younger than its pace, so :meth:`keep_census` has nothing to do before then."""
        self._dead_census_at_exit = False
        dlq.on_put = self._wrote_dead_letter

    def prepare(self) -> None:
        """Create the directories (writers only; readers never call this)."""
        if self._prepared:
            return
        directories = (self._pending, self._inflight, self._done, self._cancelled, self._staging)
        for directory in (*directories, self._tmp):
            ensure_dir(directory)
        self.waiting.ring()  # makes the bell that idle consumers watch
        sweep_temporaries(self._tmp)
        self._prepared = True

    def enqueue(self, tasks: Sequence[NewTask]) -> None:
        self.prepare()
        self.waiting.place(self._new_entries(tasks))
        if tasks:
            self.keep_census(len(tasks))

    def enqueue_keyed(
        self,
        tasks: Sequence[NewTask],
        digests: Sequence[str],
        on_linked: Callable[[int, str], object] | None = None,
    ) -> None:
        """Write keyed tasks into ``pending/`` (their records tagged with their keys'
        ``digests``, durable when the queue is), calling ``on_linked(index, path)`` as each
        task's name is made, in order: from then on its key record may name it (call holding
        their keys' locks). Consumers leave a new keyed task alone until its key record names it
        (see :meth:`~tracemind.backend.file.queue.FileQueue.lease`), so this rings no bell:
        call :meth:`ring` once the key records are written. On failure the tasks already named
        stay: the caller withdraws those no key names (:meth:`keyed_paths`, :meth:`withdraw`).
        The census is the caller's to keep (:meth:`keep_census`, after the locks)."""
        self.prepare()
        self.waiting.place(
            self._new_entries(tasks), digests=digests, ring=False, on_linked=on_linked
        )

    def keyed_paths(self, tasks: Sequence[NewTask]) -> list[str]:
        """Where :meth:`enqueue_keyed` names each of ``tasks`` in ``pending/``."""
        return [self.waiting.path_of(_pending_name(t)) for t in tasks]

    def _new_entries(self, tasks: Sequence[NewTask]) -> list[tuple[PendingName, bytes]]:
        """(pending name, record JSON) of each new task: attempts 0, due as submitted."""
        return [(_pending_name(t), encode_record(t.record, self._shared_json)) for t in tasks]

    def withdraw(self, paths: Iterable[str]) -> None:
        """Remove new keyed tasks whose key records were not written (call holding their keys'
        locks: until a key names its task, no consumer runs it)."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(path)

    def ring(self) -> None:
        """Wake the consumers waiting for work."""
        self.waiting.ring()

    def keep_census(self, wrote: int = 0) -> None:
        """What a writer does for readers on its way (after an enqueue, and after a keyed
        batch's key records; ``wrote``: how many tasks the call wrote): when the census is
        missing or older than :data:`CENSUS_WRITER_AGE_S` (more for a big one), or the call
        wrote a batch (:data:`CENSUS_WRITER_BATCH_TASKS`), count in the buckets that settled
        since, listing at most :data:`CENSUS_WRITER_BUDGET` names. So a queue filled while no
        daemon serves it (an outage) has a census too, and readers list only the buckets
        written since the writers' last pass. Costs one ``stat`` otherwise; on a writer's way
        (``wrote`` > 0), nothing at all while a census it found fresh is young enough still
        (a writer enqueueing one task at a time looks about once a second). A census that
        cannot be written (a read-only volume) is left as it is."""
        batch = wrote >= CENSUS_WRITER_BATCH_TASKS
        if wrote > 0 and not batch and time.monotonic() < self._census_fresh_until_s:
            return  # (found fresh on an earlier call: not even a `stat` until it may be due)
        from tracemind.backend.file import census

        root = os.fspath(self.root)
        state = census.file_state(root, time.time())  # (the file's mtime is the real clock's)
        if state is not None:
            age_s, size = state
            pace_s = size / CENSUS_WRITER_BYTES_PER_S
            if not batch:
                pace_s = max(CENSUS_WRITER_AGE_S, pace_s)
            if 0 <= age_s < pace_s:
                if not batch:
                    self._census_fresh_until_s = time.monotonic() + (pace_s - age_s)
                return
        previous = census.load(root)
        try:
            kept = census.settle_more(
                self.waiting,
                epoch_ms(self.clock()),
                previous,
                CENSUS_WRITER_BUDGET,
                next_tick=batch,
            )
            if kept != previous or state is None:
                census.save(root, self._tmp, kept)
            else:
                census.confirm(root)
        except (QueueError, OSError) as exc:
            self._log.debug("census not kept", error=str(exc))

    def _wrote_dead_letter(self) -> None:
        if not self._dead_census_at_exit:
            import atexit

            atexit.register(self.keep_dead_census)  # (a process that exits normally)
            self._dead_census_at_exit = True

    def keep_dead_census(self) -> None:
        """Count the dead letters into the census, once the directory is settled (see
        :func:`~tracemind.backend.file.census.settle_dead`): done as a process that wrote dead
        letters exits, so that readers of a dead-letter directory no daemon has served since
        (a process that filled it and left) take its count from the census instead of listing
        every entry. A process killed first leaves none: readers then list, as before. Costs a
        listing of the dead letters; a census that cannot be written is left as it is."""
        from tracemind.backend.file import census

        root = os.fspath(self.root)
        try:
            entry = census.settle_dead(os.fspath(self.dlq.root))
            cache = census.load(root) or {}
            if entry is not None and cache.get(census.DLQ_KEY) != entry:
                cache[census.DLQ_KEY] = entry
                census.save(root, self._tmp, cache)
        except (QueueError, OSError) as exc:
            self._log.debug("census not kept", error=str(exc))

    def stage(self, tasks: Sequence[NewTask], names: Sequence[str], digests: Sequence[str]) -> None:
        """Write ``tasks`` where no consumer sees them: ``staging/`` under ``names`` (from
        :func:`~tracemind.queue.names.staged_name`), each a link to the pack holding its record
        (tagged with its key's ``digests``), the records durable when the queue is.

        This is how earlier versions wrote keyed tasks, then pointed their keys at the staged
        files and published them (:meth:`publish`); a queue may still hold what one of their
        submitters left there when it died, which
        :meth:`~tracemind.submit.QueueSubmitter.settle_staged` publishes or removes under the
        key's lock (tests and tools make such entries with this)."""
        self.prepare()
        self.packs.add(
            [
                (
                    t.task_id,
                    digest,
                    encode_record(t.record, self._shared_json),
                    self._staging + name,
                )
                for name, t, digest in zip(names, tasks, digests, strict=True)
            ],
            ensure_dir,
        )

    def publish(self, names: Iterable[str]) -> int:
        """Make staged tasks visible to consumers, each by one rename (a name already published,
        or rolled back, is skipped); returns how many this call moved."""
        moved: list[PendingName] = []
        for name in names:
            parsed = parse_staged(name)
            staged = self._staging + name
            if parsed is not None and self.waiting.move_in(
                staged, parsed[1], sync=False, ring=False
            ):
                moved.append(parsed[1])
        self.waiting.sync_buckets(moved)
        return len(moved)

    def unstage(self, names: Iterable[str]) -> set[str]:
        """Roll staged tasks back (those already published stay); the names it removed."""
        removed = set()
        for name in names:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(self._staging + name)
                removed.add(name)
        return removed

    def staged_path(self, name: str) -> str:
        return self._staging + name

    def is_staged(self, name: str) -> bool:
        return os.path.lexists(self._staging + name)

    def staged(self) -> list[str]:
        """Names of the staged tasks (normally none: only a submitter that died leaves any)."""
        return [n for n in scan_names(self._staging) if parse_staged(n) is not None]

    def quarantine_staged(self, name: str, reason: str) -> bool:
        return quarantine(self._staging + name, self.root, reason) is not None

    def staged_record(self, name: str) -> dict[str, Any] | None:
        """The record of a staged task; None when it is gone or unreadable (or torn: read it
        holding its key's lock, or it may still be being written)."""
        try:
            parsed = parse_staged(name)
            if parsed is None:
                return None
            data = read_regular(self._staging + name)
            record, _ = parse_task_file(task_bytes(data, parsed[1].task_id))
        except (OSError, ValueError):
            return None
        return record

    def requeue(self, task_id: str) -> bool:
        """Move a dead task back into the queue (same id, attempts from 1 again, history kept);
        False when the DLQ has no such entry.

        The move is one ``rename`` of the DLQ entry into ``pending/``, so however many processes
        requeue (or purge) the same entry at once, exactly one of them moves it; a crash leaves
        it either dead or pending, never both. Readers strip the dead-letter fields from a
        requeued record (:func:`~tracemind.queue.records.parse_task_file`).
        """
        entry = self.dlq.get(task_id)
        if entry is None:
            return False
        self.prepare()
        self._discard_dead_copies(task_id, entry.get("lease_token"))
        name = PendingName(epoch_ms(self.clock()), task_id, 0)
        if not self.waiting.move_in(self.dlq.entry_path(task_id), name):
            return False  # another process requeued or purged it first
        if self.durable:
            fsync_dir(self.dlq.root)
        self.dlq.archive(entry, "requeued", "requeued_at")
        self._log.info("task requeued from the dead-letter queue", task_id=task_id)
        return True

    def _discard_dead_copies(self, task_id: str, token: object) -> None:
        """Delete inflight copies of the delivery that dead-lettered ``task_id`` (a crash between
        writing the DLQ entry and deleting the copy leaves one; with the entry moved away,
        recovery could no longer tell that it is stale)."""
        for name in map(InflightName.parse, scan_names(self._inflight)):
            if name is not None and name.task_id == task_id and name.token == token:
                self._discard(self._inflight + str(name), "stale lease of a dead-lettered task")

    def migrate(self) -> int:
        """Bring a queue directory written by the first layout to this one; returns how many
        records moved. Safe to repeat, and to interrupt at any instant: every step is one
        rename, and readers look in both places until the marker file says it is over.

        1. an inflight copy that a first-layout retry left behind (a pending copy with as many
           deliveries exists) is deleted, as that layout's recovery would have;
        2. pending files move into their buckets; 3. done records into their hour buckets;
        4. the marker ``layout-2`` is written.
        """
        self.prepare()
        legacy = [
            name
            for name, regular in scan_entries(self._pending)
            if regular and PendingName.parse(name) is not None
        ]
        newest: dict[str, int] = {}
        for name in legacy:
            parsed = PendingName.parse(name)
            assert parsed is not None
            newest[parsed.task_id] = max(newest.get(parsed.task_id, 0), parsed.attempts)
        for entry in scan_names(self._inflight):
            lease = InflightName.parse(entry)
            if lease is not None and newest.get(lease.task_id, -1) >= lease.attempt:
                self._discard(self._inflight + entry, "stale lease superseded by a newer copy")
        moved = self.waiting.migrate()
        for name, regular in scan_entries(self._done):
            if regular and name.endswith(".json") and is_task_id(name[:-5]):
                with contextlib.suppress(FileNotFoundError):
                    rename_into(self._done + name, self.done_path(name[:-5]), ensure_dir)
                    moved += 1
        write_atomic(
            os.path.join(self.root, LAYOUT_FILE),
            b"2\n",
            tmp_dir=self._tmp,
            durable=self.durable,
        )
        self._layout_current = True
        if moved:
            self._log.info("queue directory moved to the bucketed layout", records=moved)
        return moved

    def cancel(self, task_id: str) -> str:
        """Cancel a task: ``"cancelled"`` when it was waiting (pending or delayed: it never
        runs; one rename into ``cancelled/``, which a lease's rename of the same file excludes),
        ``"requested"`` when it is in flight (its worker stops it before its next step, and a
        copy that recovery or a retry puts back is cancelled instead of run), ``"finished"`` when
        it is already terminal, ``"unknown"`` when there is no such task."""
        self.prepare()
        for _ in range(3):  # a task that moved while we looked is looked for again
            if self.finished(task_id) is not None:
                return "finished"
            name = self.waiting.find(task_id)
            if name is not None:
                if self._move_to_cancelled(self.waiting.path_of(name), task_id):
                    return "cancelled"
                continue
            if any(n.task_id == task_id for n in self._inflight_names()):
                self._request_cancel(task_id)
                return "requested"
        return "unknown"

    def _request_cancel(self, task_id: str) -> None:
        ensure_dir(self._cancel_requests)
        write_atomic(
            self._cancel_requests + task_id,
            dump_json({"task_id": task_id, "requested_at": self.clock()}),
            tmp_dir=self._tmp,
            durable=self.durable,
        )

    def _move_to_cancelled(self, source: str, task_id: str) -> bool:
        """Rename a task file into ``cancelled/`` and stamp it; False when it is gone."""
        target = self.cancelled_path(task_id)
        try:
            rename_into(source, target, ensure_dir)
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            append_line(
                target, task_id, dump_json({"status": "cancelled", "cancelled_at": self.clock()})
            )
        if self.durable:
            with contextlib.suppress(OSError):
                fdatasync_file(target)
                fsync_dir(os.path.dirname(target))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._cancel_requests + task_id)
        self._log.info("task cancelled", task_id=task_id)
        return True

    def _discard(self, path: StrPath, reason: str | None) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        if reason:
            self._log.warning("discarded " + reason, path=str(path))
        return True

    def maintain(self) -> None:
        self.refresh_census()
        self.checkpoint()

    def checkpoint(self, limit: int | None = None) -> int:
        """Settle the packs in ``packs/`` (at most ``limit`` of them, the oldest first; a
        bounded number by default), after a reboot first giving back what a power loss took
        (see :func:`tracemind.backend.file.pack_checkpoint.checkpoint`); returns how many tasks came
        back. Writers only."""
        from tracemind.backend.file.pack_checkpoint import CHECKPOINT_PACKS, checkpoint

        self.packs.let_go()  # (this process's own writer: its pack is not being written)
        _, replayed = checkpoint(
            self._packs, self._replay, limit=CHECKPOINT_PACKS if limit is None else limit
        )
        if replayed:
            self.waiting.ring()
            self._log.warning("tasks given back after a reboot lost them", tasks=replayed)
        return replayed

    def _replay(self, task_id: str, record_json: bytes) -> bool:
        """After a reboot, give back what a power loss may have taken from a task enqueued just
        before it (its record is durable in its pack's journal): its name, written back into
        ``pending/`` (attempts 0, due as submitted) when the task is found nowhere — not
        pending, delayed, in flight, finished, dead, purged or requeued — or its record,
        rewritten under the name it waits or runs under when that name's record was lost.
        True when it wrote either (call holding the pack's replay lock).

        A keyed task comes back only when its key points at it: otherwise its submission never
        finished (rolled back, or its submitter died before it wrote the key), its caller was
        never told it exists, and a retry makes a task of its own."""
        if not is_task_id(task_id):
            return False
        try:
            record = json.loads(record_json)
            due_ms = epoch_ms(float(record.get("due_at") or record["enqueued_at"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        key = record.get("idempotency_key")
        if isinstance(key, str) and self.key_owner is not None:
            try:
                if self.key_owner(key) != task_id:
                    return False
            except QueueError:
                pass  # a key this process may not read: give back rather than lose
        whole = record_json + b"\n"
        info = self.find(task_id)
        if info is None:
            if self.dlq.has_trace(task_id):
                return False
            target = self.waiting.path_of(PendingName(due_ms, task_id, 0))
            write_atomic(target, whole, tmp_dir=self._tmp, durable=True, remake_parent=ensure_dir)
            return True
        if info.record or info.status not in WAITING_OR_RUNNING:
            return False
        path = self._current_path(task_id)
        if path is None:
            return False
        try:
            replace_content(path, whole, tmp_dir=self._tmp, durable=True)
        except FileNotFoundError:
            return False  # it moved on meanwhile (a lease of it quarantines the damage)
        return True

    def _current_path(self, task_id: str) -> str | None:
        """Where the task waits (``pending/``) or runs (``inflight/``) now, if anywhere."""
        copy = self.waiting.find(task_id)
        if copy is not None:
            return self.waiting.path_of(copy)
        for name in self._inflight_names():
            if name.task_id == task_id:
                return self._inflight + str(name)
        return None

    def refresh_census(self) -> QueueStats:
        """:meth:`stats`, saving what it learnt for later readers (writers only)."""
        from tracemind.backend.file import census

        now_ms = epoch_ms(self.clock())
        root = os.fspath(self.root)
        previous = census.load(root)
        counted, settled = census.count_pending(self.waiting, now_ms, previous)
        dead_letters = os.fspath(self.dlq.root)
        settled_ns = census.settled_before_ns(now_ms)
        _, _, dead_entry = census.count_dead(dead_letters, previous, settled_ns)
        if dead_entry is not None:
            settled[census.DLQ_KEY] = dead_entry
        if settled != previous:
            with contextlib.suppress(QueueError):  # a read-only volume: readers list instead
                census.save(root, self._tmp, settled)
        return self._stats(counted, now_ms)


def _pending_name(task: NewTask) -> PendingName:
    """A new task's name in ``pending/``: due as submitted, no attempt made."""
    return PendingName(epoch_ms(task.due_s), task.task_id, 0)
