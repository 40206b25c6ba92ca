"""Striped cross-process locks on one file: byte ``n`` of ``stripes.lock`` is stripe ``n``.

Each stripe is an open-file-description lock (``F_OFD_SETLK``, Linux) on one byte of one lock
file. Such a lock belongs to the open file, like ``flock``: two threads of one process that open
the file separately exclude each other, closing the file releases everything it held, and a
process that dies releases its locks with its last descriptor. Taking all 256 stripes (a big
keyed batch) is one ``open`` and 256 ``fcntl`` calls — not 256 lock files to create, open and
``flock``. Like ``flock``, these locks hold between a container and its host on one kernel.

Where ``F_OFD_SETLK`` is missing (not Linux), each stripe is a ``flock`` on a file of its own,
``{stripe}.lock``, through the ``filelock`` package.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from contextlib import ExitStack, contextmanager

from tracemind.errors import LockTimeout, QueueError
from tracemind.fsutil import ensure_dir, file_mode, open_or_create

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

LOCK_FILE = "stripes.lock"
POLL_S = 0.01
"""How often a busy stripe is tried again, at first (doubling up to :data:`MAX_POLL_S`)."""
MAX_POLL_S = 0.05


@contextmanager
def held(lock_dir: str, stripes: Sequence[int], wait_s: float) -> Iterator[None]:
    """Hold the stripes (numbers 0 to 255, taken in increasing order, so two holders never
    deadlock); :class:`LockTimeout` when one is not acquired within ``wait_s``."""
    import fcntl

    ensure_dir(lock_dir)
    if not hasattr(fcntl, "F_OFD_SETLK"):
        with _held_by_flock(lock_dir, stripes, wait_s):
            yield
        return
    path = os.path.join(lock_dir, LOCK_FILE)
    try:
        fd = open_or_create(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise QueueError(f"{path}: cannot open the lock ({exc.strerror})") from exc
    try:
        deadline = time.monotonic() + wait_s
        for stripe in sorted(set(stripes)):
            _lock_byte(fd, stripe, deadline, path, wait_s)
        yield
    finally:
        os.close(fd)  # releases every stripe this descriptor holds


def _lock_byte(fd: int, offset: int, deadline: float, path: str, wait_s: float) -> None:
    import fcntl

    # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
    request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    pause_s = POLL_S
    while True:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise QueueError(f"{path}: cannot lock ({exc.strerror})") from exc
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise LockTimeout(
                f"idempotency key lock {path} (stripe {offset:02x}) not acquired within "
                f"{wait_s:g} s (another process holds it, or is paused)"
            )
        time.sleep(min(pause_s, left_s))
        pause_s = min(2 * pause_s, MAX_POLL_S)


@contextmanager
def _held_by_flock(lock_dir: str, stripes: Sequence[int], wait_s: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    with ExitStack() as stack:
        for stripe in sorted(set(stripes)):
            lock = FileLock(
                os.path.join(lock_dir, f"{stripe:02x}.lock"),
                timeout=wait_s,
                mode=file_mode(),
                thread_local=False,
            )
            try:
                lock.acquire()
            except Timeout:
                raise LockTimeout(
                    f"idempotency key lock {lock.lock_file} not acquired within "
                    f"{wait_s:g} s (another process holds it, or is paused)"
                ) from None
            except OSError as exc:  # after Timeout, which is an OSError too
                raise QueueError(
                    f"{lock.lock_file}: cannot open the lock ({exc.strerror})"
                ) from exc
            stack.callback(lock.release)
        yield
