"""Writing packs: one process's :class:`PackWriter` per queue (the format and what a pack's
names and locks mean: :mod:`tracemind.backend.file.packs`)."""

from __future__ import annotations

import _thread
import contextlib
import os
import time

from tracemind.backend.file.journal_stock import JournalStock
from tracemind.backend.file.packs import (
    JOURNAL_SUFFIX,
    LINK_ATTEMPTS,
    MAGIC,
    NO_KEY,
    PACK_AGE_S,
    PACK_BYTES,
    PACK_TASKS,
    SUFFIX,
    WRITING_BYTE,
    boot_id,
    lock_alive,
    retire,
    set_lock,
)
from tracemind.fsutil import (
    create_exclusive,
    ensure_dir,
    fsync_dir,
    sync_filesystem,
    write_at,
    write_error,
)
from tracemind.process import current_pid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tracemind.threads import JobThread


NEXT_PACK_THREAD = "tracemind-next-pack"
"""The name of the helper thread that makes a writer's next pack ahead."""

LATER_THREAD = "tracemind-writer-later"
"""The name of the helper thread that rings the bell and lets the writing lock go for a writer
of many calls."""

RING_GAP_S = 0.005
"""A writer of many calls rings the bell at most this often: one ring on every call costs
~10% of a call of one task (docs/benchmarks.md). A consumer waiting for work then wakes at most
this late: the ring a call leaves is rung by a helper thread once this has passed since the
last one."""

WRITING_HELD_S = 0.5
"""A writer of many calls keeps its current pack's writing lock from one call to the next,
and a helper thread lets it go once the writer has made no call for this long: taking and
releasing it costs two system calls a call. While it is held a checkpoint does not settle the
pack, as during a call (:func:`~tracemind.backend.file.pack_checkpoint.checkpoint`)."""

RECORD_LINE = b"\nR %s %s %s\n"
"""A record's line in a pack: the task id, its key's digest (or :data:`NO_KEY`), the record's
JSON (see :mod:`tracemind.backend.file.packs`)."""

NO_KEY_BYTES = NO_KEY.encode()

RETIRE_MAX = 1_000
"""Most filled packs a writer keeps to retire itself: a writer that never syncs the file system
again (one task per call) leaves the older ones to the checkpoint."""


class PackWriter:
    """One process's packs of one queue: writes records, makes them durable, links them.

    A pack is created with its room already written (zeros, up to :data:`PACK_BYTES`; a first
    pack only as much as its first call needs, rounded up to a block, so that a one-task
    command does not leave a big file behind). Records are then written into that room at
    known offsets, so that the ``fdatasync`` after each one flushes data only: the file's size
    and blocks do not change, where an append would make every flush write the inode too.
    Lines appended for a task (acks, stamps) go after the room.

    A writer that fills its packs over many calls (one task per call) has its next pack made
    ahead by a helper thread while it waits for its flushes (:meth:`_make_spare`): such a
    writer starts a pack every ~64 tasks, and creating it and its journal (two inodes, their
    blocks, the ``packs/`` names made durable) costs 3 to 4 ms where the disk just did other work,
    ~50 µs a task. So a second, empty pack of such a writer sits in ``packs/`` (locked, as its
    current one) until it is used; :meth:`close` removes it.

    Thread-safe; a child process made by ``fork`` starts packs of its own (it never writes
    to its parent's, nor takes its parent's next one)."""

    def __init__(self, packs_dir: str, tmp_dir: str, *, durable: bool) -> None:
        self.packs_dir = packs_dir
        self.tmp_dir = tmp_dir
        self.durable = durable
        self._mutex = _thread.allocate_lock()
        self._fd = -1
        self._path = ""
        self._journal = -1
        """The current pack's journal (a durable queue only), or -1."""
        self._pid = 0
        self._tasks = 0
        self._at = 0
        """Where the next record goes (bytes from the start) ..."""
        self._room_end = 0
        """... and where the pack's room ends."""
        self._opened_s = 0.0
        self._opened_any = False
        self._calls = 0
        """Calls that wrote into the current pack."""
        self._spare: _Spare | None = None
        """The next pack, made ahead by a helper thread (see :meth:`_make_spare`)."""
        self._journals = JournalStock(packs_dir)
        """Journals for the packs of a writer of many calls, made in runs (used by one thread
        at a time: the helper thread, or the writer when no pack was made ahead)."""
        self._locked_fds: list[int] = []
        self._digests: set[str] = set()
        """The key digests of the current pack's records: a key has at most one record in a
        pack, so that its key record (a link to the pack) names one task."""
        self._later: JobThread | None = None
        """The helper thread that rings the bell late (see :meth:`ring_soon`) and lets the
        kept writing lock go (see :data:`WRITING_HELD_S`): made once this writer has started
        a second pack over several calls (a writer of many calls)."""
        self._rang_s = 0.0
        """When this writer last rang the bell (``time.monotonic``)."""
        self._ring_left_by = 0
        """The process whose helper thread is to ring a ring a call left (see
        :meth:`ring_soon`; not a parent's, inherited through ``fork``), or 0."""
        self._kept = -1
        """The current pack, while this writer of many calls keeps its writing lock between
        calls (see :data:`WRITING_HELD_S`); else -1."""
        self._last_call_s = 0.0
        """When this writer's last call ended (``time.monotonic``)."""
        self._letting_go = False
        """Whether the helper thread is to look at the kept lock (see :meth:`_let_go_when_idle`)."""
        self._to_retire: list[str] = []
        """Packs earlier calls filled that hold no keyed record (a key's record is linked after
        the call), every link made: the next sync of the file system
        makes their links durable, after which this writer retires them itself (after a
        million-task outage the daemon would otherwise spend its first seconds on them)."""

    def add(
        self,
        items: Sequence[tuple[str, str | None, bytes, str]],
        remake_parent: Callable[[str], object],
        on_linked: Callable[[int, str], object] | None = None,
    ) -> None:
        """For each ``(task id, idempotency key digest or None, record JSON, target)``: write
        the record into a pack, then (all records durable first, with a durable queue) make
        ``target`` a hard link to that pack, and call ``on_linked(index, target)`` once it is
        made. ``remake_parent`` makes a target's directory again when another process removed
        it. Raises :class:`QueueError` (or what interrupted it); a target already linked stays
        (the caller rolls back what it must), and the records of the others are voided (zeroed
        in the pack and its journal), so that no replay after a reboot brings back a task
        whose enqueue failed."""
        if not items:
            return
        lines = [
            RECORD_LINE % (task_id.encode(), (digest or NO_KEY).encode(), record)
            for task_id, digest, record, _ in items
        ]
        with self._mutex:
            self._lock_writing()
            self._calls += 1
            placed: list[tuple[str, str]] = []  # (pack path, target)
            touched: dict[str, int] = {}  # pack path → the descriptor to sync (its journal's)
            full: list[int] = []  # packs this call filled: closed once their links are made
            filled: list[str] = []  # ... those of them without keyed records, by path
            made_pack = False
            left_bytes = sum(map(len, lines))
            written: list[tuple[int, int, int, int]] = []  # (pack, journal or -1, offset, size)
            linked = 0
            try:
                for line, (_, digest, _, target) in zip(lines, items, strict=True):
                    made_pack |= self._room_for(len(line), left_bytes, full, filled, digest)
                    if digest is not None:
                        self._digests.add(digest)
                    written.append((self._fd, self._journal, self._at, len(line)))
                    write_at(self._fd, line, self._at)
                    if self._journal >= 0:
                        write_at(self._journal, line, self._at)
                    self._at += len(line)
                    self._tasks += 1
                    left_bytes -= len(line)
                    touched[self._path] = self._journal
                    placed.append((self._path, target))
                self._make_durable(touched, made_pack)
                for pack, target in placed:
                    _link(pack, target, remake_parent)
                    linked += 1
                    if on_linked is not None:
                        on_linked(linked - 1, target)
                self._to_retire += filled
                del self._to_retire[:-RETIRE_MAX]  # (the checkpoint retires any it forgets)
            except OSError as exc:
                self._void(written[linked:])
                raise write_error(exc.filename or self.packs_dir, exc) from exc
            except BaseException:  # (an interrupt: its caller is told the call failed too)
                self._void(written[linked:])
                raise
            finally:
                self._unlock_writing(full)
                for fd in full:
                    os.close(fd)  # releases its alive lock: the next checkpoint retires it

    def add_one(
        self, task_id: str, record: bytes, target: str, remake_parent: Callable[[str], object]
    ) -> None:
        """:meth:`add` for one task without an idempotency key: the short way for the common
        call of a process that submits one task at a time."""
        line = RECORD_LINE % (task_id.encode(), NO_KEY_BYTES, record)
        with self._mutex:
            if self._add_one(line, target, remake_parent):
                return
        self.add([(task_id, None, record, target)], remake_parent)

    def _add_one(self, line: bytes, target: str, remake_parent: Callable[[str], object]) -> bool:
        """(Holding the mutex.) What :meth:`add` does for the call of a writer of many calls
        that writes one unkeyed record ``line`` into its durable current pack, with room for it
        and the writing lock kept from the last call — without a batch's bookkeeping (the
        common call of a process that submits one task at a time). False, having done
        nothing, for any other call."""
        at, fd, journal = self._at, self._fd, self._journal
        if not (
            journal >= 0
            and 0 <= fd == self._kept
            and self._pid == current_pid()
            and self._tasks < PACK_TASKS
            and at + len(line) <= self._room_end
            and time.monotonic() - self._opened_s < PACK_AGE_S
        ):
            return False
        self._calls += 1
        self._at += len(line)
        self._tasks += 1
        try:
            write_at(fd, line, at)
            write_at(journal, line, at)
            os.fdatasync(journal)
            _link(self._path, target, remake_parent)
        except OSError as exc:
            self._void([(fd, journal, at, len(line))])
            raise write_error(exc.filename or self.packs_dir, exc) from exc
        except BaseException:  # (an interrupt: its caller is told the call failed too)
            self._void([(fd, journal, at, len(line))])
            raise
        finally:
            self._called()
        return True

    def ring_soon(self, ring: Callable[[], object]) -> None:
        """Have ``ring`` (the bell for the tasks this writer just named) called now, or, for a
        writer of many calls that rang less than :data:`RING_GAP_S` ago, by a helper thread
        once that much has passed since (one ring for every call in between)."""
        now_s = time.monotonic()
        later = self._later
        if later is None or now_s - self._rang_s >= RING_GAP_S:
            self._rang_s = now_s
            ring()
        elif self._ring_left_by != current_pid():  # (else an earlier call's ring covers this)
            self._ring_left_by = current_pid()  # (before the job exists: its reset comes after)
            if not later.at("ring", self._rang_s + RING_GAP_S, lambda: self._ring_late(ring)):
                self._ring_left_by = 0
                self._rang_s = now_s  # (no helper thread may start: rung now, as before)
                ring()

    def ring_now(self) -> None:
        """Ring the bell now if a call left its ring for later (see :meth:`ring_soon`)."""
        if self._later is not None:
            self._later.run_now("ring")

    def _ring_late(self, ring: Callable[[], object]) -> None:
        self._ring_left_by = 0
        self._rang_s = time.monotonic()
        ring()

    def _void(self, written: list[tuple[int, int, int, int]]) -> None:
        """Zero records this call wrote but did not link (best effort: the disk may be what
        failed), durably where their journal was flushed."""
        journals = set()
        for pack, journal, offset, size in written:
            for fd in (pack, journal):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        write_at(fd, bytes(size), offset)
            journals.add(journal)
        for journal in journals - {-1}:
            with contextlib.suppress(OSError):
                os.fdatasync(journal)

    def next_pack(self) -> str | None:
        """The ``packs/`` path of the pack made ahead for this writer's next one, once made
        (this waits for it), or None when there is none."""
        with self._mutex:
            spare = self._own_spare()
            if spare is None:
                return None
            spare.wait()
            return spare.pack.path if spare.pack is not None else None

    def _own_spare(self) -> _Spare | None:
        """The pack made ahead for this process (not one inherited through ``fork``), if any."""
        spare = self._spare
        return spare if spare is not None and spare.pid == current_pid() else None

    def _lock_writing(self) -> None:
        """Take the current pack's writing lock (unless kept from the last call), held until
        the call's last link is made (a pack the call starts is locked as it is made)."""
        self._locked_fds = []
        if self._fd >= 0 and self._pid == current_pid():
            if self._kept != self._fd:
                set_lock(self._fd, WRITING_BYTE, True)
            self._locked_fds.append(self._fd)

    def _unlock_writing(self, closing: list[int]) -> None:
        """Let the call's writing locks go — but the current pack's, for a writer of many
        calls, which its helper thread lets go once the writer is idle."""
        keep = self._fd if self._later is not None and self._pid == current_pid() else -1
        for fd in self._locked_fds:
            if fd != keep and fd not in closing:  # (closing it releases it)
                set_lock(fd, WRITING_BYTE, False)
        self._locked_fds = []
        self._kept = keep
        if keep >= 0:
            self._called()

    def _called(self) -> None:
        """(Holding the mutex.) A call that keeps the writing lock ends: the helper thread is
        to let it go once no call has come for :data:`WRITING_HELD_S`."""
        self._last_call_s = time.monotonic()
        if not self._letting_go:
            self._letting_go = self._let_go_at(self._last_call_s + WRITING_HELD_S)

    def let_go(self) -> None:
        """Let the writing lock kept from the last call go now: a checkpoint of this process
        is about to look at this writer's pack, and no call of the writer is under way (the
        mutex says so), so the checkpoint may settle it."""
        with self._mutex:
            self._release_kept()

    def _release_kept(self) -> None:
        """(Holding the mutex.) Let the kept writing lock go, if it is still this process's
        lock on its current pack."""
        if 0 <= self._kept == self._fd and self._pid == current_pid():
            set_lock(self._kept, WRITING_BYTE, False)
        self._kept = -1

    def _let_go_at(self, due_s: float) -> bool:
        """(Holding the mutex.) Have the helper thread look at the kept lock at ``due_s``;
        when no thread may start, let it go now (False)."""
        assert self._later is not None
        if self._later.at("let go", due_s, self._let_go_when_idle):
            return True
        self._release_kept()
        return False

    def _let_go_when_idle(self) -> None:
        """(The helper thread's job.) Let the kept writing lock go if the writer has made no
        call for :data:`WRITING_HELD_S`; else look again then."""
        with self._mutex:
            self._letting_go = False
            due_s = self._last_call_s + WRITING_HELD_S
            if self._kept >= 0 and time.monotonic() < due_s:
                self._letting_go = self._let_go_at(due_s)
            else:
                self._release_kept()

    def close(self) -> None:
        """Let the current pack go (its ``packs/`` name then goes at the next checkpoint), and
        remove the next one if it was made ahead (it holds nothing)."""
        self.ring_now()
        with self._mutex:
            if self._fd >= 0 and self._pid == current_pid():
                os.close(self._fd)  # releases the alive lock
                if self._journal >= 0:
                    os.close(self._journal)
            self._fd, self._path, self._journal, self._kept = -1, "", -1, -1
            spare, self._spare = self._own_spare(), None
            if spare is not None:
                spare.wait()
                if spare.pack is not None:
                    retire(spare.pack.path)
                    spare.pack.close()
            self._journals.close()

    def _room_for(
        self,
        line_bytes: int,
        left_bytes: int,
        full: list[int],
        filled: list[str],
        digest: str | None,
    ) -> bool:
        """Make sure the current pack has room for one more record of ``line_bytes`` with key
        ``digest`` (this call has ``left_bytes`` more to write, this one included); True when
        this started a new pack (the descriptor of the one it replaces goes to ``full``, and
        its path to ``filled`` when it holds no keyed record)."""
        ours = self._fd >= 0 and self._pid == current_pid()
        if (
            ours
            and self._tasks < PACK_TASKS
            and self._at + line_bytes <= self._room_end
            and time.monotonic() - self._opened_s < PACK_AGE_S
            and digest not in self._digests
        ):
            return False
        many_calls = ours and self._calls > 1
        if ours:
            full.append(self._fd)
            if self._journal >= 0:
                full.append(self._journal)
                if not self._digests:
                    filled.append(self._path)
        self._fd, self._path, self._journal = -1, "", -1
        header_bytes = len(MAGIC) + 36 + 10  # the boot id, the room's size and the separators
        wanted = left_bytes if not self._opened_any else PACK_BYTES
        room = max(
            _blocks(header_bytes + line_bytes),
            min(PACK_BYTES, _blocks(header_bytes + wanted)),
        )
        pack = self._take_spare(room)
        made = pack is None
        if pack is None:  # (a writer of many calls: its journal from the stock, as a spare's)
            stock = many_calls and room == PACK_BYTES
            pack = self._create(room, self._journals if stock else None)
        self._use(pack)
        if many_calls and self._spare is None:
            self._make_spare()
        return made

    def _create(self, room_bytes: int, journals: JournalStock | None = None) -> _Pack:
        """A new pack of ``room_bytes``: made in ``tmp/``, locked, written (its header, then
        zeros), then named in ``packs/`` (so a checkpoint never sees it unlocked while its
        writer lives); with a durable queue, its journal too (named after it; taken from
        ``journals`` when given)."""
        ensure_dir(self.packs_dir)
        header = MAGIC + b"%s %d\n" % (boot_id().encode(), room_bytes)
        name = f"{int(time.time() * 1000):013d}-{current_pid()}-{os.urandom(6).hex()}"
        room = header + bytes(room_bytes - len(header))
        fd = self._make(name + SUFFIX, room, lock=True)
        journal = -1
        if self.durable:
            try:
                journal = self._name_journal(name + JOURNAL_SUFFIX, room, journals)
            except BaseException:
                os.close(fd)
                raise
        path = os.path.join(self.packs_dir, name + SUFFIX)
        return _Pack(fd, journal, path, len(header), room_bytes)

    def _name_journal(self, name: str, room: bytes, journals: JournalStock | None) -> int:
        """The journal ``packs/name`` holding ``room``: one of ``journals`` if there are, named
        (see :mod:`~tracemind.backend.file.journal_stock`), else made."""
        if journals is not None:
            fd = journals.take(room)
            if fd is not None and journals.name(fd, os.path.join(self.packs_dir, name)):
                return fd
        return self._make(name, room, lock=False)

    def _use(self, pack: _Pack) -> None:
        """Make ``pack`` the one records go into (its writing lock, taken as it was made, is
        released at the end of this call)."""
        self._locked_fds.append(pack.fd)
        self._fd, self._path, self._journal = pack.fd, pack.path, pack.journal
        self._pid = current_pid()
        self._tasks, self._at, self._room_end = 0, pack.header_bytes, pack.room_bytes
        self._digests = set()
        self._opened_s, self._opened_any = time.monotonic(), True
        self._calls = 1

    def _make_spare(self) -> None:
        """Have a helper thread make the next pack now, while this writer waits for its
        flushes — its journal's blocks and its ``packs/`` names made durable too — so that the
        call that needs it finds it ready. (Only for a writer that fills packs over many
        calls: a batch that spans packs would leave one made for nothing.)"""
        from tracemind.threads import (  # (not on a one-call `tm enqueue`'s path)
            JobThread,
            start_helper_thread,
        )

        if self._later is None:
            self._later = JobThread(LATER_THREAD)

        spare = _Spare(current_pid())
        try:
            start_helper_thread(lambda: self._fill(spare), NEXT_PACK_THREAD)
        except RuntimeError:  # no thread may start (RLIMIT_NPROC): made when needed, then
            return
        self._spare = spare

    def _fill(self, spare: _Spare) -> None:
        try:
            pack = self._create(PACK_BYTES, self._journals)
            try:
                if self.durable:
                    os.fdatasync(pack.journal)
                    fsync_dir(self.packs_dir)
            except BaseException:
                pack.close()  # (its names go at the next checkpoint: it holds nothing)
                raise
            spare.pack = pack
        except OSError:
            pass  # the writer makes its next pack itself, and meets the error there
        finally:
            spare.ready.release()

    def _take_spare(self, room_bytes: int) -> _Pack | None:
        """The pack made ahead, if it is this process's and has ``room_bytes``."""
        spare = self._own_spare()
        if spare is None:
            self._spare = None  # (or a parent's, inherited through fork: never ours to use)
            return None
        spare.wait()  # (it began a pack ago: done long since, unless the disk stalls)
        if spare.pack is not None and spare.pack.room_bytes < room_bytes:
            return None  # (a record bigger than a pack: it gets a pack of its own)
        self._spare = None
        return spare.pack

    def _make(self, name: str, content: bytes, *, lock: bool) -> int:
        """Create ``packs/name`` holding ``content`` (made in ``tmp/`` and renamed, locked
        first when ``lock``); its open descriptor."""
        tmp = os.path.join(self.tmp_dir, name + ".tmp")
        fd = create_exclusive(tmp, os.O_RDWR | os.O_CLOEXEC)
        try:
            if lock:
                lock_alive(fd)
                set_lock(fd, WRITING_BYTE, True)
            write_at(fd, content, 0)
            os.rename(tmp, os.path.join(self.packs_dir, name))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd

    def _make_durable(self, touched: dict[str, int], made_pack: bool) -> None:
        if not self.durable:
            return
        if len(touched) == 1:
            os.fdatasync(next(iter(touched.values())))
            if made_pack:
                fsync_dir(self.packs_dir)
            return
        settled, self._to_retire = self._to_retire, []  # (all linked before this sync began)
        if sync_filesystem(self.packs_dir):
            for path in settled:
                retire(path)
            return
        self._to_retire = settled + self._to_retire
        for fd in touched.values():
            os.fdatasync(fd)
        fsync_dir(self.packs_dir)


class _Pack:
    """A pack made and named in ``packs/``, locked, not yet used."""

    __slots__ = ("fd", "header_bytes", "journal", "path", "room_bytes")

    def __init__(
        self, fd: int, journal: int, path: str, header_bytes: int, room_bytes: int
    ) -> None:
        self.fd = fd
        self.journal = journal
        """Its journal's descriptor (a durable queue), or -1."""
        self.path = path
        self.header_bytes = header_bytes
        self.room_bytes = room_bytes

    def close(self) -> None:
        os.close(self.fd)  # (releases its locks)
        if self.journal >= 0:
            os.close(self.journal)


class _Spare:
    """The next pack of a writer, made by a helper thread; ``pack`` is None when that failed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        """The process it was made for (a child made by ``fork`` inherits it, never uses it)."""
        self.pack: _Pack | None = None
        self.ready = _thread.allocate_lock()
        self.ready.acquire()  # (released by the helper thread once it is done)

    def wait(self) -> None:
        self.ready.acquire()
        self.ready.release()


def _blocks(size: int) -> int:
    """``size`` rounded up to whole 4 KiB blocks."""
    return -(-size // 4096) * 4096


def _link(source: str, target: str, remake_parent: Callable[[str], object]) -> None:
    for attempt in range(LINK_ATTEMPTS):
        try:
            os.link(source, target)
            return
        except FileNotFoundError:
            if attempt == LINK_ATTEMPTS - 1 or not os.path.exists(source):
                raise
            remake_parent(os.path.dirname(target))
