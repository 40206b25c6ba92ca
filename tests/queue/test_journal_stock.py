"""Journals of the packs a writer makes ahead, taken from a run of unnamed files
(tracemind.backend.file.journal_stock).

What must hold: a pack made ahead gets a journal made in a run before it (so the two inodes lie
apart), named after the pack and holding its room; a run's journals fill one block of the inode
table where the file system numbers new inodes one after another (the files made for it and
not kept are closed), and are the last made otherwise; the run's other journals are this
process's alone (a forked child makes its own) and go when the writer is closed; where unnamed
files cannot be made or named, each journal is made beside its pack and every task is still
enqueued.
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


def _unnamed_journals(stores: Stores) -> dict[int, int]:
    """This process's unnamed files in ``packs/`` (the stock): inode by descriptor."""
    folder = os.path.realpath(Path(stores.queue.root) / "packs")
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # (the listing's own descriptor, closed by now)
            continue
        if target.startswith(folder + "/") and (st := os.fstat(int(name))).st_nlink == 0:
            found[int(name)] = st.st_ino
    return found


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
    # Then the rest of a run of journals waits, unnamed, in this process (the writer's second
    # pack, the first of many calls, took one of the run too)
    stock = _unnamed_journals(stores)
    assert len(stock) == journal_stock.RUN - 2
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


def _one_run(folder: Path) -> list[int]:
    """The journals of one run made in ``folder`` (an empty directory), all taken."""
    stock = journal_stock.JournalStock(str(folder))
    room = b"TMPACK 1 room\n" + bytes(4096 - 14)
    taken = [stock.take(room) for _ in range(journal_stock.RUN)]
    assert None not in taken
    return [fd for fd in taken if fd is not None]


def _unnamed_in(folder: Path) -> int:
    """How many unnamed files in ``folder`` this process holds open."""
    real = os.path.realpath(folder)
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue
        count += target.startswith(real + "/") and os.fstat(int(name)).st_nlink == 0
    return count


def test_a_run_of_journals_fills_one_block_of_the_inode_table(tmp_path: Path) -> None:
    # Given a directory on a file system that numbers new inodes one after another (ext4 and
    # tmpfs do; a new inode takes the lowest free slot of its group, so 1,000 files take those
    # that older files left between used ones), with a file made just before (a pack, a bucket
    # directory: whatever is made meanwhile lands next)
    folder = tmp_path / "packs"
    folder.mkdir()
    for n in range(1_000):
        (folder / f"older-{n}").touch()
    (folder / "made-before").touch()
    # When a run of journals is made
    run = _one_run(folder)
    # Then it is the 16 inodes of one block of the inode table, every one holding the room
    inodes = sorted(os.fstat(fd).st_ino for fd in run)
    first = (inodes[0] - 1) // journal_stock.SLOTS * journal_stock.SLOTS + 1
    assert inodes == list(range(first, first + journal_stock.SLOTS))
    assert all(os.fstat(fd).st_size == 4096 for fd in run)
    # And the files made for it but not kept are closed (their inodes free for the next packs)
    assert _unnamed_in(folder) == journal_stock.RUN


def _numbered(monkeypatch: pytest.MonkeyPatch, numbers: list[int]) -> list[int]:
    """Make the stock see ``numbers`` as the inode numbers of the files it makes, in order (a
    file system that numbers them so; none here does); returns the list of the real inode
    numbers of the files made, filled as they are made."""
    real_fstat = os.fstat
    made: list[int] = []
    seen: dict[int, int] = {}

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if st.st_ino not in seen:
            seen[st.st_ino] = numbers[len(made)]
            made.append(st.st_ino)
        fields = list(st)
        fields[1] = seen[st.st_ino]
        return os.stat_result(fields)

    monkeypatch.setattr(journal_stock.os, "fstat", fstat)
    return made


def test_a_run_skips_free_slots_between_used_ones_for_a_whole_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a group whose lowest free slots are scattered (3, 7, 20), then free from 30 on
    numbers = [3, 7, 20, *range(30, 30 + journal_stock.MADE_MAX)]
    made = _numbered(monkeypatch, numbers)
    folder = tmp_path / "packs"
    folder.mkdir()
    # When a run of journals is made
    run = _one_run(folder)
    monkeypatch.undo()
    # Then it is the first whole block, numbers 33 to 48, and nothing more was made
    in_block = [made[numbers.index(number)] for number in range(33, 49)]
    assert sorted(os.fstat(fd).st_ino for fd in run) == sorted(in_block)
    assert len(made) == numbers.index(48) + 1
    assert _unnamed_in(folder) == journal_stock.RUN


def test_where_new_inodes_are_not_numbered_in_order_a_run_keeps_the_last_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file system whose new inodes are numbered far apart (XFS, for one)
    numbers = [1_000 * n for n in range(1, journal_stock.MADE_MAX + 1)]
    made = _numbered(monkeypatch, numbers)
    folder = tmp_path / "packs"
    folder.mkdir()
    # When a run of journals is made
    run = _one_run(folder)
    monkeypatch.undo()
    # Then it gave up after MADE_MAX files and kept the last RUN made, the others closed
    assert len(made) == journal_stock.MADE_MAX
    assert sorted(os.fstat(fd).st_ino for fd in run) == sorted(made[-journal_stock.RUN :])
    assert _unnamed_in(folder) == journal_stock.RUN


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
