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
import os
from collections import deque

from tracemind.backend.file.dlq import DeadLetterStore
from tracemind.backend.file.pack_reader import PackReader
from tracemind.backend.file.packs import append_line_open, task_bytes
from tracemind.backend.file.pending import INNER_MS
from tracemind.backend.file.quarantine import quarantine
from tracemind.backend.file.queue_reads import epoch_ms
from tracemind.backend.file.queue_writes import QueueWrites
from tracemind.clock import Clock, system_clock
from tracemind.fsutil import (
    DamagedEntry,
    dump_json,
    ensure_dir,
    fdatasync_file,
    open_regular,
    read_fd,
    rename_into,
    replace_content,
    scan_entries,
    write_atomic,
)
from tracemind.queue.names import (
    InflightName,
    PendingName,
    is_temporary,
    new_token,
    share_of,
)
from tracemind.queue.protocol import Failure, Lease, LeaseLost
from tracemind.queue.records import (
    completion_entry,
    dead_entry,
    max_attempts_of,
    parse_task_file,
    with_failure,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from tracemind.backend.file.commit import GroupCommitter
    from tracemind.backend.file.problems import ProblemBoard
    from tracemind.backend.file.watch import DirectoryWatch
    from tracemind.fsutil import StrPath


LOST_ERROR = "the worker died or its lease expired during this attempt"
FENCE_LEASE_S = 60.0
"""How long a writer holds a lease while it moves the task on (retry, dead-letter, recovery)."""
UNREADABLE_RETRY_S = 1.0
"""How long a consumer leaves a pending task it may not read before it tries it again."""
KEY_WAIT_S = 0.05
"""How long a consumer leaves a new keyed task whose submitter is still writing its key record
before it looks again (or until the submitter rings the bell, whichever comes first)."""
PREFETCH_AHEAD = (16, 32, 64, 128)
"""How far ahead in its listing a consumer that met a new pack looks for the next packs to read
ahead: a pack holds up to 64 KiB of records (~90 no-op tasks, half of them in one worker's
share of two), so the first distances find the next pack and the last the one after it."""


class FileQueue(QueueWrites):
    """A :class:`~tracemind.queue.protocol.TaskQueue` on a directory shared by many processes:
    the consumers' verbs (lease, renew, ack, retry, dead-letter, recover) over the writers' (see
    :mod:`.queue_writes`) and the readers' (:mod:`.queue_reads`).

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
        key_names: Callable[[str, str, os.stat_result], bool | None] | None = None,
    ) -> None:
        """``key_owner``: see :class:`~tracemind.backend.file.queue_writes.QueueWrites`;
        ``key_names``: whether an idempotency key's record names a task (see
        :meth:`~tracemind.backend.file.keys.IdempotencyStore.names`), asked before a new keyed
        task is claimed (without it, every task is claimed as it comes)."""
        super().__init__(root, dlq, durable=durable, clock=clock, key_owner=key_owner)
        self.key_names = key_names
        self.relist_interval_s = relist_interval_s
        self._next_bucket_ms: int | None = None
        self._candidates: deque[PendingName] = deque()
        self._share = (0, 1)
        """(this consumer's number, how many were started with it): see :meth:`take_share`."""
        self._listed_at_s = float("-inf")
        self._watch: DirectoryWatch | None = None
        self._committer: GroupCommitter | None = None
        self._board: ProblemBoard | None = None
        self._held_back: dict[PendingName, float] = {}
        """Pending names this process may not read, or not claim yet → when to try again (epoch
        seconds)."""
        self._awaiting_keys: set[PendingName] = set()
        """Those held back until their submitter writes their key records (or rings)."""
        self._reader = PackReader()  # a claim reads its task's lines, not its whole pack

    def cancel_leased(self, lease: Lease) -> None:
        """End a leased task as cancelled (its worker stopped it at a cancel request)."""
        self.renew(lease, FENCE_LEASE_S)
        if not self._move_to_cancelled(self._inflight + str(lease.handle), lease.task_id):
            raise LeaseLost(f"task {lease.task_id}: lease lost (expired and recovered)")

    def lease(self, consumer: str, lease_s: float) -> Lease | None:
        self.prepare()
        if self._committer is not None:
            self._committer.commit_due()  # this thread's acks that were synced meanwhile
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
                self._unreadable(self._relative(source), exc)
                self._held_back[candidate] = now_s + UNREADABLE_RETRY_S
                continue
            packs_read = self._reader.packs_read
            try:
                if self._board is not None and self._board.reported:
                    self._board.resolve(self._relative(source))
                lease = self._claim(candidate, source, fd, consumer, now_s, lease_s)
            finally:
                os.close(fd)
            if self._reader.packs_read != packs_read:  # a pack met for the first time
                self._prefetch_next_packs()
            if lease is not None:
                return lease
        return None

    def _prefetch_next_packs(self) -> None:
        """Have the kernel read ahead the packs of the tasks this consumer tries next (at a few
        distances ahead in its listing: packs hold tens of tasks, fewer when records are big),
        so that a backlog that left the page cache is read while its tasks run, not each pack
        when its first task is claimed (see :meth:`PackReader.prefetch`)."""
        for ahead in PREFETCH_AHEAD:
            if ahead >= len(self._candidates):
                break
            self._reader.prefetch(self.waiting.path_of(self._candidates[ahead]))

    def _claim(
        self,
        candidate: PendingName,
        source: str,
        fd: int,
        consumer: str,
        now_s: float,
        lease_s: float,
    ) -> Lease | None:
        """Rename ``candidate`` (at ``source``, open at ``fd``) into inflight/ and read it;
        None when another consumer was first or the copy is not to be run. A new task is read
        before the rename: a keyed one is claimed only once its key names it
        (:meth:`_may_claim`)."""
        parsed: tuple[dict[str, Any], dict[str, Any] | None] | None = None
        if candidate.attempts == 0:
            with contextlib.suppress(OSError, ValueError):  # (then read, and quarantined, below)
                parsed = parse_task_file(self._reader.task_bytes(fd, source, candidate.task_id))
            if parsed is not None and not self._may_claim(candidate, source, fd, parsed[0]):
                return None
        claim = InflightName(
            candidate.task_id,
            candidate.attempts + 1,
            consumer,
            new_token(),
            epoch_ms(now_s + lease_s),
        )
        claimed = self._inflight + str(claim)
        try:
            os.rename(source, claimed)
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
            record, completion = parsed or parse_task_file(
                self._reader.task_bytes(fd, claimed, candidate.task_id)
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

    def _may_claim(
        self, candidate: PendingName, source: str, fd: int, record: dict[str, Any]
    ) -> bool:
        """Whether the new task ``candidate`` (its ``record``, its file at ``source``, open at
        ``fd``) may be claimed: yes unless it is keyed and its key does not name it (a task
        requeued from the dead letters has a history: its key was settled long ago). While its
        submitter holds the key's lock the task is left for later; once no submitter does, a
        task its key does not name is removed (its submission never finished; see
        :mod:`tracemind.submit`)."""
        key = record.get("idempotency_key")
        if self.key_names is None or not isinstance(key, str) or record.get("history"):
            return True
        names = self.key_names(key, candidate.task_id, os.fstat(fd))
        if names is None:
            self._held_back[candidate] = self.clock() + KEY_WAIT_S
            self._awaiting_keys.add(candidate)
        elif not names:
            self._discard(source, "keyed task whose submission never finished")
        return bool(names)

    def _unreadable(self, relative: str, exc: OSError) -> None:
        """A record this process may not open: left in place, logged once, reported."""
        self._problem_board().report(relative, exc)

    def _problem_board(self) -> ProblemBoard:
        if self._board is None:
            from tracemind.backend.file.problems import ProblemBoard

            self._board = ProblemBoard(self.root, self._tmp)
        return self._board

    def _next_due(self, now_s: float) -> PendingName | None:
        """The next pending name to try, from a listing refreshed when exhausted, or when stale
        while its bucket may still gain tasks."""
        head_due = bool(self._candidates) and self._candidates[0].due_ms <= epoch_ms(now_s)
        stale = now_s - self._listed_at_s > self.relist_interval_s
        if not head_due or (stale and not self._listing_closed(now_s)):
            self._relist(now_s)
        if self._candidates and self._candidates[0].due_ms <= epoch_ms(now_s):
            return self._candidates.popleft()
        return None

    def _listing_closed(self, now_s: float) -> bool:
        """Whether the listed bucket's second ended a second or more ago (the margin
        ``_remove_if_past`` allows for clock steps): every arrival is due now or later, so such
        a bucket only empties and its listing stays complete until drained. (A writer paused
        between reading the clock and linking its task may still land in it; that task is
        found once the listing is drained, as in any older bucket.)"""
        last_due_ms = self._candidates[-1].due_ms
        return (last_due_ms // INNER_MS + 2) * INNER_MS <= epoch_ms(now_s)

    def _relist(self, now_s: float) -> None:
        # (not readable a moment ago: left alone until their time to try again)
        self._held_back = {n: t for n, t in self._held_back.items() if t > now_s}
        names, self._next_bucket_ms = self.waiting.oldest_due(epoch_ms(now_s), self._held_back)
        self._candidates = deque(self._share_of(names, epoch_ms(now_s)))
        # Stamped after the listing: one that took longer than the interval must not make every
        # following lease list again.
        self._listed_at_s = max(now_s, self.clock())

    def take_share(self, index: int, count: int) -> None:
        """Lease from this consumer's share of each bucket first: the due tasks whose ids' random
        digits, modulo ``count``, are ``index`` (see :meth:`_share_of`)."""
        if not 0 <= index < count:
            raise ValueError(f"share {index} of {count}")
        self._share = (index, count)

    def _share_of(self, names: list[str], now_ms: int) -> list[PendingName]:
        """The names of a bucket's listing (sorted pending names, see
        :meth:`~tracemind.backend.file.pending.PendingDir.oldest_due`) this consumer tries,
        parsed: its share of the due ones, or all of them when its share holds none. Consumers
        that list one bucket and try its names in one order would race for the same name at
        every claim (one wins, the others have opened, read and renamed for nothing); with
        shares they rarely meet, and once a consumer's share is drained it takes what is left
        of the others' (theirs may be busy or gone). Only the names tried are parsed."""
        index, count = self._share
        if count > 1:
            names = share_of(names, now_ms, index, count) or names
        return [PendingName.of_matched(name) for name in names]

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
        if self._awaiting_keys:
            timeout_s = min(timeout_s, KEY_WAIT_S)
        self._watch.wait(timeout_s)
        for name in self._awaiting_keys:  # their submitter may have rung: look again
            self._held_back.pop(name, None)
        self._awaiting_keys.clear()

    def renew(self, lease: Lease, lease_s: float) -> None:
        current: InflightName = lease.handle
        renewed = current.with_deadline(epoch_ms(self.clock() + lease_s))
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
            appended = append_line_open(source, lease.task_id, line)
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
            os.close(appended)
            try:
                rename_into(source, target, ensure_dir)
            except FileNotFoundError as exc:
                if not os.path.exists(target):
                    self._commit_failed(source, exc)
            return
        if self._committer is None:
            from tracemind.backend.file.commit import GroupCommitter

            self._committer = GroupCommitter(self._commit_failed)
        self._committer.add(source, target, appended)

    def flush(self) -> None:
        """Finish what this process's calls left for later: acks committed, the bell rung."""
        if self._committer is not None:
            self._committer.flush()
        self.packs.ring_now()

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
        target = PendingName(epoch_ms(now_s + delay_s), lease.task_id, lease.attempt)
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
        now_ms = epoch_ms(self.clock())
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
        target = PendingName(epoch_ms(self.clock()), name.task_id, name.attempt)
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
            name.task_id,
            name.attempt,
            "recovery",
            name.token,
            epoch_ms(self.clock() + FENCE_LEASE_S),
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


def _matches(consumer: str, dead: tuple[str, ...]) -> bool:
    """A consumer id matches an id exactly, or an id prefix given with a trailing ``-``."""
    return any(consumer == d or (d.endswith("-") and consumer.startswith(d)) for d in dead)
