"""The file backend: a queue on a shared directory, for any number of processes at once.

Every state change is one ``rename`` of an exact file name (see :mod:`tracemind.queue.names`), so
claims are exclusive without any lock, and a process killed at any instant leaves each task in
exactly one state. An ack appends the outcome to the task's own file and renames it into
``done/`` (durable acks are committed in groups, see :mod:`tracemind.backend.file.commit`). Terminal
records (``done/``) fence stale copies: a copy of a succeeded task that a crash left behind is
discarded, never run. The layout and the exact durability guarantee
are written down in docs/queue-format.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections import deque

from tracemind.backend.file.dlq import DeadLetterStore
from tracemind.backend.file.pack_writer import PackWriter
from tracemind.backend.file.packs import MAGIC, appended_line, task_bytes
from tracemind.backend.file.pending import PendingDir
from tracemind.backend.file.quarantine import quarantine, sweep_temporaries
from tracemind.clock import Clock, system_clock
from tracemind.errors import QueueError
from tracemind.fsutil import (
    DamagedEntry,
    dump_json,
    ensure_dir,
    fdatasync_file,
    fsync_dir,
    open_regular,
    read_fd,
    read_regular,
    rename_into,
    replace_content,
    scan_entries,
    scan_names,
    write_atomic,
)
from tracemind.log import get_logger
from tracemind.queue.names import (
    InflightName,
    PendingName,
    done_bucket,
    done_name,
    is_task_id,
    is_temporary,
    new_token,
    parse_staged,
)
from tracemind.queue.protocol import (
    Failure,
    Lease,
    LeaseLost,
    NewTask,
    QueueStats,
    TaskInfo,
    TaskStatus,
)
from tracemind.queue.records import (
    completion_entry,
    count_of,
    dead_entry,
    max_attempts_of,
    parse_task_file,
    succeeded_entry,
    with_failure,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path
    from typing import Any

    from tracemind.backend.file.census import BucketSearch, Census
    from tracemind.backend.file.commit import GroupCommitter
    from tracemind.backend.file.problems import ProblemBoard
    from tracemind.backend.file.registry import Registry
    from tracemind.backend.file.watch import DirectoryWatch
    from tracemind.fsutil import StrPath

LOST_ERROR = "the worker died or its lease expired during this attempt"
LAYOUT_FILE = "layout-2"
"""Present once a queue directory holds no record of the first layout (see :meth:`migrate`)."""
FENCE_LEASE_S = 60.0
WAITING_OR_RUNNING = frozenset({TaskStatus.PENDING, TaskStatus.DELAYED, TaskStatus.INFLIGHT})
FIND_PASSES = 3
"""Searches that must all miss before ``find`` says a task does not exist."""
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
UNREADABLE_RETRY_S = 1.0
"""How long a consumer leaves a pending task it may not read before it tries it again."""
"""How long a writer holds a lease while it moves the task on (retry, dead-letter, recovery)."""


def _ms(epoch_s: float) -> int:
    return int(epoch_s * 1000)


class FileQueue:
    """A :class:`~tracemind.queue.protocol.TaskQueue` on a directory shared by many processes.

    One instance serves one thread, except that ``renew`` may run on a second thread when the
    caller serialises it with the other lease operations (the worker does).
    """

    def __init__(
        self,
        root: StrPath,
        dlq: DeadLetterStore,
        *,
        durable: bool,
        clock: Clock = system_clock,
        relist_interval_s: float = 1.0,
        key_owner: Callable[[str], str | None] | None = None,
    ) -> None:
        """``key_owner``: the id of the task an idempotency key points at (None when none
        does); without it, a replay after a reboot takes a keyed record as its key's task."""
        self.root = root
        self.dlq = dlq
        self.key_owner = key_owner
        self.durable = durable
        self.clock = clock
        self.relist_interval_s = relist_interval_s
        # Directories as strings ending in a separator: names are joined to them with "+"
        # (no pathlib on `tm enqueue`'s path, nor on the lease/ack hot path).
        self._pending = os.path.join(root, "pending", "")
        self._inflight = os.path.join(root, "inflight", "")
        self._done = os.path.join(root, "done", "")
        self._staging = os.path.join(root, "staging", "")
        self._cancelled = os.path.join(root, "cancelled", "")
        self._cancel_requests = os.path.join(root, "cancel-requests", "")
        self._tmp = os.path.join(root, "tmp")
        self._packs = os.path.join(root, "packs")
        self.packs = PackWriter(self._packs, self._tmp, durable=durable)
        self.waiting = PendingDir(
            self._pending,
            queue_root=os.fspath(root),
            tmp_dir=self._tmp,
            durable=durable,
            packs=self.packs,
        )
        self._next_bucket_ms: int | None = None
        self._layout_current = False
        self._prepared = False
        self._candidates: deque[PendingName] = deque()
        self._listed_at_s = float("-inf")
        self._watch: DirectoryWatch | None = None
        self._committer: GroupCommitter | None = None
        self._board: ProblemBoard | None = None
        self._shared_json = _SharedJson()
        self._census_fresh_until_s = float("-inf")
        """Until when (``time.monotonic``) this writer takes the census as fresh: it was found
        younger than its pace, so :meth:`keep_census` has nothing to do before then."""
        self._held_back: dict[PendingName, float] = {}
        """Pending names this process may not read → when to try again (epoch seconds)."""

    @functools.cached_property
    def pending_dir(self) -> Path:
        return _as_path(self._pending)

    @functools.cached_property
    def inflight_dir(self) -> Path:
        return _as_path(self._inflight)

    @functools.cached_property
    def done_dir(self) -> Path:
        return _as_path(self._done)

    @functools.cached_property
    def registry(self) -> Registry:
        """Who serves this queue (see :mod:`tracemind.backend.file.registry`)."""
        from tracemind.backend.file.registry import Registry

        return Registry(self.root, self._tmp, self.clock)

    @functools.cached_property
    def tmp_dir(self) -> Path:
        return _as_path(self._tmp)

    @property
    def _log(self) -> Any:
        return get_logger(
            "tracemind.queue"
        )  # not at construction: keeps structlog off `tm enqueue`

    # -- writers -------------------------------------------------------------------------------

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
        self.waiting.place(
            [
                (PendingName(_ms(t.due_s), t.task_id, 0), _encode_record(t.record, self._shared_json))
                for t in tasks
            ]
        )
        if tasks:
            self.keep_census(len(tasks))

    def keep_census(self, wrote: int = 0) -> None:
        """What a writer does for readers on its way (after an enqueue, and after a keyed
        batch's publication; ``wrote``: how many tasks the call wrote): when the census is
        missing or older than :data:`CENSUS_WRITER_AGE_S` (more for a big one), or the call
        wrote a batch (:data:`CENSUS_WRITER_BATCH_TASKS`), count in the buckets that settled
        since, listing at most :data:`CENSUS_WRITER_BUDGET` names. So a queue filled while no
        daemon serves it (an outage) has a census too, and readers list only the buckets
        written since the writers' last pass. Costs one ``stat`` otherwise; on a writer's way
        (``wrote`` > 0), nothing at all while a census it found fresh is young enough still
        (a writer enqueueing one task at a time looks about once a second). A census that
        cannot be written (a read-only volume) is left as it is."""
        batch = wrote >= CENSUS_WRITER_BATCH_TASKS
        if 0 < wrote and not batch and time.monotonic() < self._census_fresh_until_s:
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
                _ms(self.clock()),
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

    def stage(self, tasks: Sequence[NewTask], names: Sequence[str], digests: Sequence[str]) -> None:
        """Write ``tasks`` where no consumer sees them: ``staging/`` under ``names`` (from
        :func:`~tracemind.queue.names.staged_name`), each a link to the pack holding its record
        (tagged with its key's ``digests``), the records durable when the queue is; the links'
        entries are made durable by the key records' sync that follows.

        Nothing trusts a staged task before the submitter's key record points at it, which it
        makes only after this returns; one whose submitter died before that is an orphan that
        :meth:`~tracemind.submit.QueueSubmitter.settle_staged` removes under the key's lock."""
        self.prepare()
        self.packs.add(
            [
                (t.task_id, digest, _encode_record(t.record, self._shared_json), self._staging + name)
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
        name = PendingName(_ms(self.clock()), task_id, 0)
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

    def cancel_requested(self, task_id: str) -> bool:
        """Whether someone asked to cancel ``task_id`` while it was in flight; read-only."""
        return os.path.lexists(self._cancel_requests + task_id)

    def cancel_leased(self, lease: Lease) -> None:
        """End a leased task as cancelled (its worker stopped it at a cancel request)."""
        self.renew(lease, FENCE_LEASE_S)
        if not self._move_to_cancelled(self._inflight + str(lease.handle), lease.task_id):
            raise LeaseLost(f"task {lease.task_id}: lease lost (expired and recovered)")

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
            _append_line(
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

    @property
    def cancelled_dir(self) -> str:
        return self._cancelled

    def cancelled_path(self, task_id: str) -> str:
        return self._cancelled + done_bucket(task_id) + "/" + done_name(task_id)

    def _inflight_names(self) -> list[InflightName]:
        return [n for n in map(InflightName.parse, scan_names(self._inflight)) if n is not None]

    def lease(self, consumer: str, lease_s: float) -> Lease | None:
        self.prepare()
        now_s = self.clock()
        while (candidate := self._next_due(now_s)) is not None:
            source = self.waiting.path_of(candidate)
            # Opened before the claim: a record this process may not read stays where it is,
            # and anything but a regular file is never opened in a way that could block.
            try:
                fd = open_regular(source)
            except FileNotFoundError:
                continue  # another consumer was first
            except DamagedEntry as exc:
                quarantine(source, self.root, str(exc))
                continue
            except OSError as exc:
                self._unreadable(self._relative(self.waiting.path_of(candidate)), exc)
                self._held_back[candidate] = now_s + UNREADABLE_RETRY_S
                continue
            try:
                if self._board is not None and self._board.reported:
                    self._board.resolve(self._relative(self.waiting.path_of(candidate)))
                lease = self._claim(candidate, fd, consumer, now_s, lease_s)
            finally:
                os.close(fd)
            if lease is not None:
                return lease
        return None

    def _claim(
        self, candidate: PendingName, fd: int, consumer: str, now_s: float, lease_s: float
    ) -> Lease | None:
        """Rename ``candidate`` (open at ``fd``) into inflight/ and read it; None when another
        consumer was first or the copy is not to be run."""
        claim = InflightName(
            candidate.task_id,
            candidate.attempts + 1,
            consumer,
            new_token(),
            _ms(now_s + lease_s),
        )
        claimed = self._inflight + str(claim)
        try:
            os.rename(self.waiting.path_of(candidate), claimed)
        except FileNotFoundError:
            return None  # another consumer was first
        # Only a copy delivered before can be a stale copy of a succeeded task (a fresh one,
        # attempts 0, comes from enqueue, or from a DLQ requeue, which checks for done/).
        stale = candidate.attempts > 0 and self._is_done(candidate.task_id)
        if stale:
            self._discard(claimed, "stale copy of a succeeded task")
            return None
        if candidate.attempts > 0 and self.cancel_requested(candidate.task_id):
            self._move_to_cancelled(claimed, candidate.task_id)  # asked while it was in flight
            return None
        try:
            record, completion = parse_task_file(
                task_bytes(read_fd(fd, claimed), candidate.task_id)
            )
        except (OSError, ValueError) as exc:
            quarantine(claimed, self.root, f"unreadable task record: {exc}")
            return None
        if completion is not None:  # acked, but its lease lapsed before it reached done/
            self._finish_acked(claimed, candidate.task_id)
            return None
        return Lease(
            task_id=candidate.task_id,
            attempt=claim.attempt,
            consumer=consumer,
            token=claim.token,
            deadline_s=claim.deadline_ms / 1000,
            record=record,
            handle=claim,
        )

    def done_path(self, task_id: str) -> str:
        """Where the terminal record of a succeeded task lives."""
        return self._done + done_bucket(task_id) + "/" + done_name(task_id)

    def _done_record(self, task_id: str) -> str | None:
        """The path of the task's done record (where a first-layout queue kept it too), if any.
        Its existence fences every other copy of the task: a succeeded task never runs again."""
        path = self.done_path(task_id)
        if os.path.exists(path):
            return path
        flat = self._done + done_name(task_id)
        return flat if not self._migrated() and os.path.exists(flat) else None

    def _is_done(self, task_id: str) -> bool:
        return self._done_record(task_id) is not None

    def _migrated(self) -> bool:
        """Whether this queue holds no first-layout records any more (remembered once seen)."""
        if not self._layout_current:
            self._layout_current = os.path.exists(os.path.join(self.root, LAYOUT_FILE))
        return self._layout_current

    def _relative(self, path: str) -> str:
        """``path`` relative to the queue root (how problem reports name records)."""
        return os.path.relpath(path, self.root)

    def _unreadable(self, relative: str, exc: OSError) -> None:
        """A record this process may not open: left in place, logged once, reported."""
        self._problem_board().report(relative, exc)

    def _problem_board(self) -> ProblemBoard:
        if self._board is None:
            from tracemind.backend.file.problems import ProblemBoard

            self._board = ProblemBoard(self.root, self._tmp)
        return self._board

    def _next_due(self, now_s: float) -> PendingName | None:
        """The next pending name to try, from a listing refreshed when stale or exhausted."""
        head_due = bool(self._candidates) and self._candidates[0].due_ms <= _ms(now_s)
        if not head_due or now_s - self._listed_at_s > self.relist_interval_s:
            self._relist(now_s)
        if self._candidates and self._candidates[0].due_ms <= _ms(now_s):
            return self._candidates.popleft()
        return None

    def _relist(self, now_s: float) -> None:
        # (not readable a moment ago: left alone until their time to try again)
        self._held_back = {n: t for n, t in self._held_back.items() if t > now_s}
        names, self._next_bucket_ms = self.waiting.oldest_due(_ms(now_s), self._held_back)
        self._candidates = deque(names)
        # Stamped after the listing: one that took longer than the interval must not make every
        # following lease list again.
        self._listed_at_s = max(now_s, self.clock())

    def wait_for_work(self, timeout_s: float) -> None:
        if self._watch is None:
            from tracemind.backend.file.watch import DirectoryWatch

            self.prepare()
            self._watch = DirectoryWatch(self._pending)
            return  # look once more: something may have arrived before the watch existed
        now_s = self.clock()
        if self._candidates:  # a delayed task: wake when it falls due
            timeout_s = min(timeout_s, self._candidates[0].due_ms / 1000 - now_s)
        elif self._next_bucket_ms is not None:
            timeout_s = min(timeout_s, self._next_bucket_ms / 1000 - now_s)
        self._watch.wait(timeout_s)

    def renew(self, lease: Lease, lease_s: float) -> None:
        current: InflightName = lease.handle
        renewed = current.with_deadline(_ms(self.clock() + lease_s))
        try:
            os.rename(self._inflight + str(current), self._inflight + str(renewed))
        except FileNotFoundError:
            raise LeaseLost(f"task {lease.task_id}: lease lost (expired and recovered)") from None
        lease.handle = renewed
        lease.deadline_s = renewed.deadline_ms / 1000

    def ack(self, lease: Lease, result: dict[str, Any]) -> None:
        line = dump_json(completion_entry(lease.attempt, lease.token, result, self.clock()))
        source = self._inflight + str(lease.handle)
        target = self.done_path(lease.task_id)
        try:
            _append_line(source, lease.task_id, line)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                self._log.warning(
                    "task acknowledged after its lease was lost", task_id=lease.task_id
                )
            # The done record fences any copy recovery made; the result is kept all the same.
            write_atomic(
                target,
                dump_json(lease.record) + b"\n" + line,
                tmp_dir=self._tmp,
                durable=self.durable,
                remake_parent=ensure_dir,
            )
            self._discard(source, None)
            return
        if not self.durable:
            try:
                rename_into(source, target, ensure_dir)
            except FileNotFoundError as exc:
                if not os.path.exists(target):
                    self._commit_failed(source, exc)
            return
        if self._committer is None:
            from tracemind.backend.file.commit import GroupCommitter

            self._committer = GroupCommitter(self.root, self._commit_failed)
        self._committer.add(source, target)

    def flush(self) -> None:
        if self._committer is not None:
            self._committer.flush()

    def _commit_failed(self, path: str, exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            # Between the append and the move, a recovery took the file (the lease had lapsed):
            # wherever the file went, the next writer to meet its completion line finishes it,
            # unless that recovery dead-lettered it as lost (its last attempt).
            self._log.warning("task acknowledged after its lease was lost", path=path)
            return
        self._log.error(
            "acknowledgement not committed; recovery will finish it", path=path, error=str(exc)
        )

    def _finish_acked(self, path: StrPath, task_id: str) -> bool:
        """Move a task file that carries a completion line into done/ (durable first)."""
        if self.durable:
            with contextlib.suppress(FileNotFoundError):
                fdatasync_file(path)
        try:
            rename_into(path, self.done_path(task_id), ensure_dir)
        except FileNotFoundError:
            return False
        self._log.warning("finished a task whose acknowledgement was interrupted", task_id=task_id)
        return True

    def retry(self, lease: Lease, failure: Failure, delay_s: float) -> None:
        """The record with this failure replaces the leased file's content in one atomic
        exchange, and then that file moves to ``pending/``: a crash in between leaves one copy,
        in flight, which recovery returns (there is never a second copy to look for)."""
        self.renew(lease, FENCE_LEASE_S)  # hold the lease while the record is rewritten
        now_s = self.clock()
        record = with_failure(lease.record, lease.attempt, failure, now_s)
        leased = self._inflight + str(lease.handle)
        lost = LeaseLost(f"task {lease.task_id}: lease lost (expired and recovered)")
        try:
            replace_content(leased, dump_json(record), tmp_dir=self._tmp, durable=self.durable)
        except FileNotFoundError:
            raise lost from None
        target = PendingName(_ms(now_s + delay_s), lease.task_id, lease.attempt)
        if not self.waiting.move_in(leased, target):
            raise lost

    def dead_letter(self, lease: Lease, failure: Failure) -> None:
        self.renew(lease, FENCE_LEASE_S)
        now_s = self.clock()
        entry = dead_entry(lease.record, lease.attempt, lease.token, failure, now_s)
        self.dlq.put(lease.task_id, entry)
        self._discard(self._inflight + str(lease.handle), None)

    def recover(self, dead_consumers: Iterable[str] = ()) -> int:
        self.prepare()
        now_ms = _ms(self.clock())
        dead = tuple(dead_consumers)
        names: list[InflightName] = []
        for entry, regular in scan_entries(self._inflight):
            parsed = InflightName.parse(entry)
            if parsed is not None and regular:
                names.append(parsed)
            elif not is_temporary(entry):
                reason = "not a lease file name" if parsed is None else "not a regular file"
                quarantine(self._inflight + entry, self.root, reason)
        if self._board is not None or os.path.isdir(os.path.join(self.root, "problems")):
            self._problem_board().sweep()
        due = [n for n in names if n.deadline_ms <= now_ms or _matches(n.consumer, dead)]
        return sum(1 for name in due if self._recover_one(name))

    def _recover_one(self, name: InflightName) -> bool:
        path = self._inflight + str(name)
        if self._is_done(name.task_id):
            return self._discard(path, "stale lease of a succeeded task")
        if self.cancel_requested(name.task_id):
            return self._move_to_cancelled(path, name.task_id)
        stale_dead = self.dlq.get(name.task_id)
        if stale_dead is not None and stale_dead.get("lease_token") == name.token:
            return self._discard(path, "stale lease of a dead-lettered task")
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return False
        except DamagedEntry as exc:
            return quarantine(path, self.root, str(exc)) is not None
        except OSError as exc:
            self._unreadable("inflight/" + str(name), exc)
            return False
        try:
            record, completion = parse_task_file(task_bytes(read_fd(fd, path), name.task_id))
        except (OSError, ValueError) as exc:
            return quarantine(path, self.root, f"unreadable task record: {exc}") is not None
        finally:
            os.close(fd)
        if self._board is not None and self._board.reported:
            self._board.resolve("inflight/" + str(name))
        if completion is not None:
            return self._finish_acked(path, name.task_id)
        if name.attempt >= max_attempts_of(record):
            return self._dead_letter_lost(name, record)
        target = PendingName(_ms(self.clock()), name.task_id, name.attempt)
        if not self.waiting.move_in(path, target):
            return False  # the owner renewed or finished in the meantime
        self._log.warning(
            "lease returned to the queue",
            task_id=name.task_id,
            attempt=name.attempt,
            consumer=name.consumer,
        )
        return True

    def _dead_letter_lost(self, name: InflightName, record: dict[str, Any]) -> bool:
        stolen = InflightName(
            name.task_id, name.attempt, "recovery", name.token, _ms(self.clock() + FENCE_LEASE_S)
        )
        try:
            os.rename(self._inflight + str(name), self._inflight + str(stolen))
        except FileNotFoundError:
            return False
        entry = dead_entry(record, name.attempt, name.token, Failure(LOST_ERROR), self.clock())
        self.dlq.put(name.task_id, entry)
        self._discard(self._inflight + str(stolen), None)
        self._log.error("task dead-lettered: its last attempt was lost", task_id=name.task_id)
        return True

    def _discard(self, path: StrPath, reason: str | None) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        if reason:
            self._log.warning("discarded " + reason, path=str(path))
        return True

    # -- readers (never create or modify anything) ----------------------------------------------

    def stats(self) -> QueueStats:
        """Exact counts, at a cost that follows what changed since the last census a writer
        saved (see :mod:`tracemind.backend.file.census`); read-only."""
        from tracemind.backend.file import census

        now_ms = _ms(self.clock())
        cached = census.load(os.fspath(self.root))
        counted, _ = census.count_pending(self.waiting, now_ms, cached, keep=False)
        return self._stats(counted, now_ms)

    def maintain(self) -> None:
        self.refresh_census()
        self.checkpoint()

    def checkpoint(self, limit: int | None = None) -> int:
        """Settle the packs in ``packs/`` (at most ``limit`` of them, the oldest first; a
        bounded number by default), after a reboot first giving back what a power loss took
        (see :func:`tracemind.backend.file.pack_checkpoint.checkpoint`); returns how many tasks came
        back. Writers only."""
        from tracemind.backend.file.pack_checkpoint import CHECKPOINT_PACKS, checkpoint

        _, replayed = checkpoint(
            self._packs, self._replay, limit=CHECKPOINT_PACKS if limit is None else limit
        )
        if replayed:
            self.waiting.ring()
            self._log.warning("tasks given back after a reboot lost them", tasks=replayed)
        return replayed

    def oldest_unsettled_ms(self) -> int | None:
        """See :func:`tracemind.backend.file.pack_checkpoint.oldest_unsettled_ms`; read-only."""
        from tracemind.backend.file.pack_checkpoint import oldest_unsettled_ms

        return oldest_unsettled_ms(self._packs)

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
            due_ms = _ms(float(record.get("due_at") or record["enqueued_at"]))
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

        now_ms = _ms(self.clock())
        root = os.fspath(self.root)
        previous = census.load(root)
        counted, settled = census.count_pending(self.waiting, now_ms, previous)
        _, _, dead_entry = census.count_dead(os.fspath(self.dlq.root), now_ms, previous)
        if dead_entry is not None:
            settled[census.DLQ_KEY] = dead_entry
        if settled != previous:
            with contextlib.suppress(QueueError):  # a read-only volume: readers list instead
                census.save(root, self._tmp, settled)
        return self._stats(counted, now_ms)

    def counts(self) -> tuple[QueueStats, int, int]:
        """(:meth:`stats`, dead-letter entries, damaged dead-letter entries), from one read of
        the census; dead letters are counted by name, and taken from the census while their
        directory is unchanged; read-only."""
        from tracemind.backend.file import census

        now_ms = _ms(self.clock())
        cached = census.load(os.fspath(self.root))
        counted, _ = census.count_pending(self.waiting, now_ms, cached, keep=False)
        dead, damaged, _ = census.count_dead(os.fspath(self.dlq.root), now_ms, cached)
        return self._stats(counted, now_ms), dead, damaged

    def _stats(self, counted: Census, now_ms: int) -> QueueStats:
        inflight = damaged = 0
        for name, regular in scan_entries(self._inflight):
            if regular and InflightName.parse(name) is not None:
                inflight += 1
            elif not is_temporary(name):
                damaged += 1
        oldest = counted.oldest_due_ms
        age = None if oldest is None else max(0.0, (now_ms - oldest) / 1000)
        return QueueStats(
            counted.pending, counted.delayed, inflight, age, counted.damaged + damaged
        )

    def copies_that_may_be_stale(self) -> set[str]:
        """Ids of tasks with a copy that a crash could have left beside a done record: every
        inflight copy, and every pending copy delivered before (a full listing; retention only)."""
        ids = {n.task_id for n in map(InflightName.parse, scan_names(self._inflight)) if n}
        ids.update(name.task_id for name in self.waiting.entries() if name.attempts > 0)
        return ids

    def has_waiting(self) -> bool:
        """Whether any task is pending or delayed (stops at the first one found); read-only."""
        return self.waiting.has_any()

    def finished(self, task_id: str) -> TaskInfo | None:
        """The task's terminal state (succeeded or dead) in O(1); None while it is anywhere else
        (pending, delayed, in flight, staged) or does not exist. Succeeded is looked up first:
        a task that finishes during the call is reported finished or not, never wrongly dead."""
        done = self._done_record(task_id)
        if done is not None:
            entry = succeeded_entry(*_read_or_empty(done, task_id))
            return TaskInfo(
                task_id,
                TaskStatus.SUCCEEDED,
                count_of(entry.get("attempts")),
                entry,
                finished_s=_float_or_none(entry.get("finished_at")),
            )
        cancelled = self.cancelled_path(task_id)
        if os.path.exists(cancelled):
            record, _ = _read_or_empty(cancelled, task_id)
            stamp = _cancel_stamp(cancelled, task_id)
            return TaskInfo(
                task_id,
                TaskStatus.CANCELLED,
                0,
                {key: value for key, value in record.items() if key != "flow"} | stamp,
                finished_s=_float_or_none(stamp.get("cancelled_at")),
            )
        dead = self.dlq.get(task_id)
        if dead is not None:
            return TaskInfo(
                task_id,
                TaskStatus.DEAD,
                count_of(dead.get("attempts")),
                dead,
                finished_s=_float_or_none(dead.get("dead_at")),
            )
        return None

    def waiting_since(self, epoch_s: float) -> int:
        """Tasks enqueued at or after ``epoch_s`` and never delivered yet, read-only."""
        since_ms = int(epoch_s * 1000)
        since = f"{since_ms:012x}"
        names = self.waiting.entries(since_ms)
        return sum(1 for n in names if n.attempts == 0 and n.task_id[:12] >= since)

    def held_by(self, consumer_prefix: str) -> int:
        names = map(InflightName.parse, scan_names(self._inflight))
        return sum(1 for n in names if n is not None and n.consumer.startswith(consumer_prefix))

    def find(self, task_id: str) -> TaskInfo | None:
        """Where the task is now; read-only. A task moves between ``inflight/`` and ``pending/``
        (a lease, a retry, a recovery) by renames that a search of one then the other can miss,
        so "nowhere" is answered only after :data:`FIND_PASSES` searches agree. Buckets of
        ``pending/`` that the census counted, unchanged since, and whose task ids do not
        include this one are not listed, nor is a bucket again that an earlier pass listed and
        that is unchanged and settled (see :class:`tracemind.backend.file.census.BucketSearch`)."""
        from tracemind.backend.file import census

        cached = census.load(os.fspath(self.root))
        search = census.BucketSearch(cached, task_id, _ms(self.clock()))
        for _ in range(FIND_PASSES):
            info = self._find_once(task_id, search)
            if info is not None:
                return info
        return None

    def _find_once(self, task_id: str, search: BucketSearch | None = None) -> TaskInfo | None:
        if self._is_done(task_id):
            return self.finished(task_id)
        leases = [
            n
            for n in map(InflightName.parse, scan_names(self._inflight))
            if n is not None and n.task_id == task_id
        ]
        if leases:
            lease = max(leases, key=lambda n: n.attempt)
            record, _ = _read_or_empty(self._inflight + str(lease), task_id)
            return TaskInfo(task_id, TaskStatus.INFLIGHT, lease.attempt, record)
        copy = self.waiting.find(task_id, search)
        if copy is not None:
            due = copy.due_ms <= _ms(self.clock())
            status = TaskStatus.PENDING if due else TaskStatus.DELAYED
            record, _ = _read_or_empty(self.waiting.path_of(copy), task_id)
            if not record:  # a first-layout file not yet moved into its bucket
                record, _ = _read_or_empty(self._pending + str(copy), task_id)
            return TaskInfo(task_id, status, copy.attempts, record, due_s=copy.due_ms / 1000)
        return self.finished(task_id)


class _SharedJson:
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


def _encode_record(record: dict[str, Any], shared: _SharedJson) -> bytes:
    """``record`` as JSON (its shared values last), those values encoded once for many
    records."""
    own = dict(record)
    tail = b"".join(
        b',"%s":%s' % (field.encode(), shared.of(field, own.pop(field)))
        for field in _SharedJson.SHARED
        if field in own
    )
    head = dump_json(own)[:-1]
    return head + (tail[1:] if head == b"{" else tail) + b"}"


def _matches(consumer: str, dead: tuple[str, ...]) -> bool:
    """A consumer id matches an id exactly, or an id prefix given with a trailing ``-``."""
    return any(consumer == d or (d.endswith("-") and consumer.startswith(d)) for d in dead)


def _read_or_empty(path: StrPath, task_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The task's file (or its part of a pack) for a reader: empty when damaged (absent, torn,
    not a regular file); a :class:`QueueError` naming the fix when this process may not read it
    (that is no damage)."""
    try:
        return parse_task_file(task_bytes(read_regular(path), task_id))
    except PermissionError as exc:
        from tracemind.backend.file.problems import unreadable_error

        raise unreadable_error(path, exc) from exc
    except (OSError, ValueError):
        return {}, None


def _cancel_stamp(path: str, task_id: str) -> dict[str, Any]:
    """The ``{"status": "cancelled", "cancelled_at"}`` line of a cancelled task's file."""
    with contextlib.suppress(OSError, ValueError):
        for line in task_bytes(read_regular(path), task_id).split(b"\n")[1:]:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("status") == "cancelled":
                    return entry
    return {"status": "cancelled"}


def _append_line(path: str, task_id: str, line: bytes) -> None:
    """Append ``line`` for the task to its existing file (or pack) in one write (a crash
    cannot leave half of it without the other; a torn line after a power loss is ignored by
    readers)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        os.write(fd, appended_line(os.pread(fd, len(MAGIC), 0), task_id, line))
    finally:
        os.close(fd)


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _as_path(path: str) -> Path:
    from pathlib import Path

    return Path(path)
