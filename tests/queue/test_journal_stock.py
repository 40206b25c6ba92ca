"""Journals of the packs a writer makes ahead, taken from a run of unnamed files
(tracemind.backend.file.journal_stock).

What must hold: a pack made ahead gets a journal made in a run before it (so the two inodes lie
apart), named after the pack and holding its room; a run gives first the journals of one whole
block of the inode table where the file system numbers new inodes one after another, then every
other file it made (none is closed), and the last made first otherwise; the run's other
journals are this process's alone (a forked child makes its own) and go when the writer is
closed; where unnamed files cannot be made or named, each journal is made beside its pack and
every task is still enqueued.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tm_testing import FakeClock, make_task
from tracemind.backend.file import journal_stock, packs
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs

LEASE_S = 30.0


def _unnamed_in(folder: Path) -> dict[int, int]:
    """This process's unnamed files in ``folder``: inode by descriptor."""
    real = os.path.realpath(folder)
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # (the listing's own descriptor, closed by now)
            continue
        if target.startswith(real + "/") and (st := os.fstat(int(name))).st_nlink == 0:
            found[int(name)] = st.st_ino
    return found


def _unnamed_journals(stores: Stores) -> dict[int, int]:
    """This process's unnamed files in ``packs/`` (the stock): inode by descriptor."""
    return _unnamed_in(Path(stores.queue.root) / "packs")


def _journals_by_pack(stores: Stores) -> dict[str, int]:
    """Each pack in ``packs/`` (by path) and its journal's inode."""
    folder = Path(stores.queue.root) / "packs"
    return {
        str(folder / name): os.stat(packs.journal_path(str(folder / name))).st_ino
        for name in os.listdir(folder)
        if name.endswith(packs.SUFFIX)
    }


def _one_per_call_until_made_ahead(
    stores: Stores, clock: FakeClock, first: int = 0, at_least: int = 1
) -> tuple[str, int]:
    """Enqueue one task per call (inputs ``{"n": first}``, then on), at least ``at_least``,
    until a pack is made ahead of the current one: its path, and the next ``n``."""
    for n in range(first, first + 10 * packs.PACK_TASKS):
        stores.queue.enqueue([make_task(clock, inputs={"n": n})])
        ahead = stores.queue.packs.next_pack()
        if ahead is not None and n + 1 - first >= at_least:
            return ahead, n + 1
    raise AssertionError("no pack was made ahead")


def _every_task_runs_once(stores: Stores, count: int) -> None:
    ran = []
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        ran.append(lease.record["input"]["n"])
        stores.queue.ack(lease, {})
    stores.queue.flush()  # (a durable queue commits acks in groups, on a thread)
    assert sorted(ran) == list(range(count))


def test_a_pack_made_ahead_takes_a_journal_made_in_a_run_that_closing_lets_go(
    dirs: DataDirs, clock: FakeClock
) -> None:
    stores = open_stores(dirs, durable=True, clock=clock)
    # Given a writer, one task per call, with a pack made ahead
    first, count = _one_per_call_until_made_ahead(stores, clock)
    # Then the rest of a run of journals waits, unnamed, in this process: one block of the
    # inode table's worth at least, less the journal of the pack made ahead and that of the
    # writer's second pack (the first of many calls)
    stock = _unnamed_journals(stores)
    assert journal_stock.SLOTS - 2 <= len(stock) <= journal_stock.MADE_MAX - 2
    # And the pack made ahead has a journal named after it, holding the pack's room
    journal = Path(packs.journal_path(first))
    assert journal.read_bytes() == Path(first).read_bytes()
    assert os.stat(journal).st_nlink == 1
    # When the writer goes on until the next pack is made ahead
    following, count = _one_per_call_until_made_ahead(stores, clock, count, packs.PACK_TASKS + 1)
    # Then that pack's journal is one of the run's, now named, and no longer in the stock
    assert following != first
    assert _journals_by_pack(stores)[following] in set(stock.values())
    assert len(_unnamed_journals(stores)) < len(stock)
    # When the writer is closed, the run's journals left go with the pack made ahead
    stores.queue.packs.close()
    assert _unnamed_journals(stores) == {}
    assert not os.path.exists(following)
    assert not os.path.exists(packs.journal_path(following))
    # And every task runs once
    _every_task_runs_once(stores, count)


ROOM = b"TMPACK 1 room\n" + bytes(4096 - 14)


def _taken(folder: Path, count: int) -> list[int]:
    """The first ``count`` journals taken from a stock made in ``folder`` (an empty
    directory), in the order taken."""
    stock = journal_stock.JournalStock(str(folder))
    taken = [stock.take(ROOM) for _ in range(count)]
    assert None not in taken
    return [fd for fd in taken if fd is not None]


def _holding_room(unnamed: dict[int, int]) -> list[int]:
    """The inode numbers of ``unnamed`` (see :func:`_unnamed_in`), each checked to hold the
    room."""
    for fd in unnamed:
        assert os.pread(fd, len(ROOM), 0) == ROOM
    return list(unnamed.values())


def test_a_run_of_journals_gives_one_block_of_the_inode_table_first(tmp_path: Path) -> None:
    # Given a directory on a file system that numbers new inodes one after another (ext4 and
    # tmpfs do; a new inode takes the lowest free slot of its group, so 1,000 files take those
    # that older files left between used ones), with a file made just before (a pack, a bucket
    # directory: whatever is made meanwhile lands next)
    folder = tmp_path / "packs"
    folder.mkdir()
    for n in range(1_000):
        (folder / f"older-{n}").touch()
    (folder / "made-before").touch()
    # When the first 16 journals of a stock are taken
    taken = _taken(folder, journal_stock.SLOTS)
    # Then they are the 16 inodes of one block of the inode table
    inodes = sorted(os.fstat(fd).st_ino for fd in taken)
    first = (inodes[0] - 1) // journal_stock.SLOTS * journal_stock.SLOTS + 1
    assert inodes == list(range(first, first + journal_stock.SLOTS))
    # And the run's other files wait in the stock, all holding the room (none made is wasted)
    made = _holding_room(_unnamed_in(folder))
    assert set(inodes) <= set(made)
    assert len(made) <= journal_stock.MADE_MAX


def _numbered(monkeypatch: pytest.MonkeyPatch, numbers: list[int]) -> dict[int, int]:
    """Make the stock see ``numbers`` as the inode numbers of the files it makes, in order (a
    file system that numbers them so; none here does); returns the numbers it saw by real
    inode number, filled as files are made."""
    real_fstat = os.fstat
    seen: dict[int, int] = {}

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        fields = list(st)
        fields[1] = seen.setdefault(st.st_ino, numbers[len(seen)])
        return os.stat_result(fields)

    monkeypatch.setattr(journal_stock.os, "fstat", fstat)
    return seen


def _seen_order(seen: dict[int, int], taken: list[int]) -> list[int]:
    """The numbers the stock saw for ``taken``, in the order taken."""
    return [seen[os.fstat(fd).st_ino] for fd in taken]


def test_a_run_fills_the_free_slots_before_a_whole_block_and_uses_them_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a group whose lowest free slots are scattered (3, 7, 20), then free from 30 on
    seen = _numbered(monkeypatch, [3, 7, 20, *range(30, 30 + journal_stock.MADE_MAX)])
    folder = tmp_path / "packs"
    folder.mkdir()
    # When a stock's first 22 journals are taken
    taken = _taken(folder, 22)
    monkeypatch.undo()
    # Then the run stopped at the first whole block (33 to 48): its journals came first, then
    # the others as made, and every file made was taken
    assert _seen_order(seen, taken) == [*range(33, 49), 3, 7, 20, 30, 31, 32]
    assert len(seen) == 22
    assert len(_holding_room(_unnamed_in(folder))) == 22  # (none closed)


def test_where_new_inodes_are_not_numbered_in_order_a_run_gives_the_last_made_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file system whose new inodes are numbered far apart (XFS, for one)
    numbers = [1_000 * n for n in range(1, journal_stock.MADE_MAX + 1)]
    seen = _numbered(monkeypatch, numbers)
    folder = tmp_path / "packs"
    folder.mkdir()
    # When a stock's first three journals are taken
    taken = _taken(folder, 3)
    monkeypatch.undo()
    # Then it made MADE_MAX files and gives the last made first, then the others as made
    assert len(seen) == journal_stock.MADE_MAX
    assert _seen_order(seen, taken) == [numbers[-1], numbers[0], numbers[1]]
    assert len(_holding_room(_unnamed_in(folder))) == journal_stock.MADE_MAX


def test_a_child_forked_by_a_writer_makes_journals_of_its_own(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a writer with a pack made ahead and the rest of its run of journals
    stores = open_stores(dirs, durable=True, clock=clock)
    _one_per_call_until_made_ahead(stores, clock)
    parents = set(_unnamed_journals(stores).values())
    assert parents
    # When it forks a child that enqueues three packs' worth, one task per call
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for n in range(3 * packs.PACK_TASKS):
                stores.queue.enqueue([make_task(clock, inputs={"by": "child", "n": n})])
            stores.queue.packs.next_pack()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Then none of the child's journals is one of its parent's run, which is left whole
    childs = [
        inode for path, inode in _journals_by_pack(stores).items() if f"-{pid}-" in Path(path).name
    ]
    assert len(childs) >= 3
    assert not parents & set(childs)
    assert set(_unnamed_journals(stores).values()) == parents


def test_where_unnamed_files_cannot_be_made_each_journal_is_made_beside_its_pack(
    dirs: DataDirs, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file system that makes no unnamed file (O_TMPFILE: EOPNOTSUPP; none here does)
    real_open = os.open

    def no_tmpfile(path: str, flags: int, *args: int) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(journal_stock.os, "open", no_tmpfile)
    stores = open_stores(dirs, durable=True, clock=clock)
    # When a writer enqueues one task per call over several packs made ahead
    count = 4 * packs.PACK_TASKS
    for n in range(count):
        stores.queue.enqueue([make_task(clock, inputs={"n": n})])
    assert stores.queue.packs.next_pack() is not None
    monkeypatch.undo()
    # Then every pack has its journal, and every task runs once
    assert len(_journals_by_pack(stores)) >= 4
    assert _unnamed_journals(stores) == {}
    _every_task_runs_once(stores, count)


WRITER_WITHOUT_PROC = textwrap.dedent(
    """
    import os
    import sys

    from tm_testing import FakeClock, make_task
    from tracemind.backend.file.stores import open_stores
    from tracemind.config import DataDirs

    assert not os.path.exists("/proc/self/fd")  # (a tmpfs over /proc)
    clock = FakeClock()
    stores = open_stores(DataDirs.of(*sys.argv[1:4]), durable=True, clock=clock)
    for n in range(int(sys.argv[4])):
        stores.queue.enqueue([make_task(clock, inputs={"n": n})])
    assert stores.queue.packs.next_pack() is not None
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="hiding /proc takes a mount namespace (root, unshare)",
)
def test_where_proc_is_hidden_each_journal_is_made_beside_its_pack(
    dirs: DataDirs, clock: FakeClock, tmp_path: Path
) -> None:
    # Given a writer that cannot name an unnamed file (no /proc/self/fd to link from)
    script = tmp_path / "writer.py"
    script.write_text(WRITER_WITHOUT_PROC)
    count = 4 * packs.PACK_TASKS
    hide_proc = ["sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh"]
    writer = [sys.executable, str(script), *map(str, (dirs.queue, dirs.idempotency, dirs.dlq))]
    # When it enqueues one task per call over several packs made ahead
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *hide_proc, *writer, str(count)],
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    # Then every pack has its journal, and every task runs once
    stores = open_stores(dirs, durable=True, clock=clock)
    assert len(_journals_by_pack(stores)) >= 4
    _every_task_runs_once(stores, count)
