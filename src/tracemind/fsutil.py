"""Small file-system primitives shared by the stores: atomic writes, durable syncs, shared modes.

Everything on the shared data directory is written through :func:`write_atomic`: a temporary file
in a ``tmp/`` directory on the same file system, given its final mode (:data:`FILE_MODE`) *before*
it becomes visible, then renamed into place. A reader therefore sees either the old file or the whole new one, never a
torn one. ``durable=True`` adds the syncs that make the result survive a power loss (the file's
data before the rename, the directory entry after it).

Paths are strings or ``pathlib.Path`` objects alike: everything here goes through ``os`` and
``os.path``, so ``tm enqueue`` can start without importing pathlib.

Modes: whatever the caller's umask, files created on the data directory are :data:`FILE_MODE`
(``0660``) and directories :data:`DIR_MODE` (``2770``, setgid so entries inherit the directory's
group): the owner and the data's group read and write, nobody else can read, traverse or lock
anything. Every TraceMind process sets the umask :data:`PROCESS_UMASK` at start
(:func:`share_with_group`), so creating with an explicit mode costs nothing more; a program that
imports tracemind under a stricter umask (077, 022) pays one ``fchmod`` per created file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat

from tracemind.encoders import reusing_encoder
from tracemind.errors import QueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import Any

    StrPath = str | os.PathLike[str]

FILE_MODE = 0o660
"""Mode of every file created on the data directory: owner and group read+write, others nothing."""
DIR_MODE = 0o2770
"""Mode of every directory created there: setgid, owner and group rwx, others nothing."""
PROCESS_UMASK = 0o007
"""The umask every TraceMind process runs with: keeps the group's bits, clears the others'."""

_umask_cache: list[int] = []


def current_umask() -> int:
    """The process umask (read once; :func:`share_with_group` sets it at start-up)."""
    if not _umask_cache:
        mask = os.umask(0o022)
        os.umask(mask)
        _umask_cache.append(mask)
    return _umask_cache[0]


def share_with_group() -> None:
    """Set the process umask to :data:`PROCESS_UMASK` (007): what this process creates is
    readable and writable by the data's group — a host user and a container user sharing a group
    use each other's files — and by nobody else, whatever umask the process was started with."""
    os.umask(PROCESS_UMASK)
    _umask_cache[:] = [PROCESS_UMASK]


def file_mode() -> int:
    """The mode to create data files and lock files with (:data:`FILE_MODE`)."""
    return FILE_MODE


def umask_strips_file_mode() -> bool:
    """Whether the umask would take bits from :data:`FILE_MODE` (an ``fchmod`` must follow a
    create); False under :data:`PROCESS_UMASK`, so TraceMind's own processes never pay it."""
    return bool(current_umask() & FILE_MODE)


def create_exclusive(path: StrPath, flags: int) -> int:
    """Create ``path`` (it must not exist: ``O_CREAT | O_EXCL`` are added to ``flags``) with mode
    :data:`FILE_MODE` whatever the umask; returns the open descriptor. Raises ``OSError``
    (``FileExistsError`` when it exists)."""
    return create_with_mode(path, flags | os.O_CREAT | os.O_EXCL)


def create_with_mode(path: StrPath, flags: int) -> int:
    """Open a file that this call creates (``flags`` hold ``O_CREAT | O_EXCL``, or
    ``O_TMPFILE`` with ``path`` its directory) with mode :data:`FILE_MODE` whatever the umask;
    returns the open descriptor. Raises ``OSError``."""
    fd = os.open(path, flags, FILE_MODE)
    if umask_strips_file_mode():
        try:
            os.fchmod(fd, FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
    return fd


def open_or_create(path: StrPath, flags: int) -> int:
    """Open ``path`` with ``flags`` (without ``O_CREAT``), first creating it with mode
    :data:`FILE_MODE` if it does not exist (a file someone else created keeps its mode: it may
    not be ours to change). For lock files and other files that are never removed. Raises
    ``OSError``; ``FileNotFoundError`` for a dangling symlink (it is never followed to create)."""
    for _ in range(3):
        try:
            return create_exclusive(path, flags)
        except FileExistsError:
            pass
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            continue  # removed between the two opens: create it again
    raise FileNotFoundError(errno.ENOENT, "exists but cannot be opened (a dangling symlink?)", path)


def ensure_dir(path: StrPath) -> str:
    """Create ``path`` (and parents) with mode :data:`DIR_MODE` (setgid, group rwx, nothing for
    others); leave existing ones as they are. Returns ``path`` as a string."""
    missing: list[str] = []
    probe = os.fspath(path).rstrip(os.sep) or os.sep
    while not os.path.exists(probe):
        missing.append(probe)
        parent = _parent(probe)
        if parent == probe:
            break
        probe = parent
    try:
        for directory in reversed(missing):  # outermost first
            try:
                os.mkdir(directory, 0o770)  # no access for others, even before the chmod
            except FileExistsError:
                continue  # made by another process just now (maybe another uid: not ours to chmod)
            # setgid: files made inside inherit the directory's group, whichever side made them;
            # chmod, not mkdir's mode, which the umask would filter.
            os.chmod(directory, DIR_MODE)
    except NotADirectoryError as exc:
        raise QueueError(f"{path}: a path component is not a directory") from exc
    except PermissionError as exc:
        raise QueueError(f"{path}: cannot create directory (permission denied)") from exc
    except OSError as exc:
        raise QueueError(f"{path}: cannot create directory ({exc.strerror})") from exc
    if not os.path.isdir(path):
        raise QueueError(f"{path}: not a directory")
    return os.fspath(path)


def _parent(path: StrPath) -> str:
    """The directory ``path`` is in (``.`` for a bare name), as ``Path.parent`` would say."""
    return os.path.dirname(path) or os.curdir


def fsync_dir(path: StrPath) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fdatasync_file(path: StrPath) -> None:
    """Make the data of the file at ``path`` durable (whoever wrote it, through any descriptor)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # never blocks on a FIFO
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _write_tmp(tmp_dir: StrPath, stem: str, data: bytes, *, sync: bool) -> str:
    tmp = os.path.join(tmp_dir, f"{stem}.{os.urandom(4).hex()}.tmp")
    # Created with its final mode (FILE_MODE: the data's group reads and writes it, nobody else
    # can), not mkstemp's 0600, which would lock the other side of the group out; it is
    # invisible to readers in tmp/ until the rename either way.
    fd = create_exclusive(tmp, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def write_at(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``pwrite``, again after a short write).
    Raises ``OSError``."""
    written = os.pwrite(fd, data, offset)
    if written < len(data):  # (a short write: the rest follows)
        view = memoryview(data)[written:]
        offset += written
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written


def write_error(path: StrPath, exc: OSError) -> QueueError:
    """The one-line error for a write the file system refused (permission, full disk, ...)."""
    return QueueError(f"{path}: cannot write ({exc.strerror or exc})")


def write_atomic(
    target: StrPath,
    data: bytes,
    *,
    tmp_dir: StrPath,
    durable: bool,
    remake_parent: Callable[[str], object] | None = None,
) -> None:
    """Make ``target`` hold exactly ``data`` (replacing any old file) in one atomic rename;
    :class:`QueueError` when the file system refuses the write. ``remake_parent`` is for
    directories that other processes may remove: see :func:`rename_into`."""
    try:
        tmp = _write_tmp(tmp_dir, os.path.basename(target), data, sync=durable)
    except OSError as exc:
        raise write_error(tmp_dir, exc) from exc
    try:
        rename_into(tmp, target, remake_parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(target, exc) from exc
        raise
    if durable:
        fsync_dir(_parent(target))


def write_many_atomic(
    items: Iterable[tuple[StrPath, bytes]],
    *,
    tmp_dir: StrPath,
    durable: bool,
    remake_parent: Callable[[str], object] | None = None,
) -> list[StrPath]:
    """Write several files with one sync for the whole batch; returns the targets written.

    All temporary files are written first, then one ``syncfs`` (falling back to per-file
    ``fdatasync``) makes their data durable, then each is renamed into place, then each target
    directory is synced once. A crash part-way leaves some targets written and others absent,
    never a torn file; a write the file system refuses raises :class:`QueueError` (targets
    renamed before it stay written).
    """
    staged: list[tuple[StrPath, str]] = []
    try:
        for target, data in items:
            staged.append((target, _write_tmp(tmp_dir, os.path.basename(target), data, sync=False)))
        if durable and staged and not sync_filesystem(tmp_dir):
            for _, tmp in staged:
                fdatasync_file(tmp)
        for target, tmp in staged:
            rename_into(tmp, target, remake_parent)
    except OSError as exc:
        for _, tmp in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # those already renamed are gone from tmp/ and stay written
        raise write_error(tmp_dir, exc) from exc
    if durable:
        for directory in {_parent(target) for target, _ in staged}:
            fsync_dir(directory)
    return [target for target, _ in staged]


def create_many(items: Sequence[tuple[str, bytes]], *, durable: bool) -> None:
    """Create each new file in place (``O_EXCL``: never over an existing one) and write it, with
    one sync for the whole batch: no temporary file and no rename.

    Only for a directory that nobody trusts before a later step says a file is complete (the
    keyed submission's ``staging/``, see :mod:`tracemind.submit`): a crash part-way leaves the
    file being written torn or empty. With ``durable``, every file's data and entry are durable
    when this returns. Raises :class:`QueueError` (files already created stay; the caller rolls
    back).
    """
    directories: set[str] = set()
    try:
        for path, data in items:
            fd = create_exclusive(path, os.O_WRONLY)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            directories.add(_parent(path))
        if durable and directories:
            if not sync_filesystem(next(iter(directories))):
                for path, _ in items:
                    fdatasync_file(path)
            for directory in directories:
                fsync_dir(directory)
    except OSError as exc:
        raise write_error(exc.filename or "", exc) from exc


def link_many(items: Iterable[tuple[str, str]], *, tmp_dir: StrPath, durable: bool) -> None:
    """Give each existing file (``source``) a second name (``target``), with one sync for the
    whole batch: ``[(source, target), ...]``.

    A hard link is one directory entry: no inode, no data, no temporary file, and never torn.
    A target that exists already is replaced atomically (a link made in ``tmp_dir``, renamed
    over it). Where the two are on different file systems the target is written as a copy
    instead (whole, by :func:`write_atomic`). With ``durable``, every target is durable when
    this returns (the sources' data must be already). Raises :class:`QueueError`.
    """
    directories: set[str] = set()
    try:
        for source, target in items:
            try:
                os.link(source, target)
            except FileExistsError:
                tmp = os.path.join(tmp_dir, f"{os.path.basename(target)}.{os.urandom(4).hex()}.tmp")
                os.link(source, tmp)
                try:
                    os.rename(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                write_atomic(target, read_regular(source), tmp_dir=tmp_dir, durable=durable)
            directories.add(_parent(target))
        if durable and directories:
            sync_filesystem(next(iter(directories)))
            for directory in directories:
                fsync_dir(directory)
    except OSError as exc:
        raise write_error(exc.filename or "", exc) from exc


def replace_content(target: StrPath, data: bytes, *, tmp_dir: StrPath, durable: bool) -> None:
    """Make the existing file ``target`` hold ``data``, atomically, never creating it: raises
    ``FileNotFoundError`` when ``target`` is gone (another process moved or removed it), so a
    writer whose claim on the file was lost cannot bring it back. Without ``renameat2``'s
    exchange, falls back to a plain rename over ``target`` after checking that it exists."""
    from tracemind.libc import exchange

    try:
        tmp = _write_tmp(tmp_dir, os.path.basename(target), data, sync=durable)
    except OSError as exc:
        raise write_error(tmp_dir, exc) from exc
    try:
        if not exchange(tmp, os.fspath(target)):
            os.stat(target)  # FileNotFoundError when it is gone
            os.rename(tmp, target)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(target, exc) from exc
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # after an exchange: the old content


REMAKE_ATTEMPTS = 5


def rename_into(
    source: StrPath, target: StrPath, remake_parent: Callable[[str], object] | None
) -> None:
    """``rename(source, target)``; when the target's directory is missing and ``remake_parent``
    is given, call it with that directory and try again (a few times: a directory that other
    processes remove when empty can vanish between the two calls)."""
    for attempt in range(REMAKE_ATTEMPTS):
        try:
            os.rename(source, target)
            return
        except FileNotFoundError:
            if remake_parent is None or attempt == REMAKE_ATTEMPTS - 1:
                raise
            if not os.path.lexists(source):
                raise
            remake_parent(_parent(target))


def sync_filesystem(any_path: StrPath) -> bool:
    """``syncfs(2)`` the file system holding ``any_path``; False where the call is unavailable."""
    from tracemind.libc import libc

    syncfs = getattr(libc(), "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(any_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return int(syncfs(fd)) == 0
    finally:
        os.close(fd)


MAX_RECORD_BYTES = 64 * 1024 * 1024
"""The largest record any store reads (64 MiB, far above any legitimate task, result or entry):
a larger file is damage, and is never read into memory."""

_READ_FLAGS = (
    os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
)
_DAMAGE_ERRNOS = frozenset({errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP})
"""``open`` errors that mean the entry is not a regular file: a symlink (``O_NOFOLLOW``), a
socket or a device without a driver."""


class DamagedEntry(ValueError):
    """A store entry that is not a regular file (FIFO, socket, device, directory, symlink) or
    is larger than :data:`MAX_RECORD_BYTES`: damage, like a torn record (hence a ``ValueError``)."""


def open_regular(path: StrPath) -> int:
    """Open a store entry for reading without ever blocking or following a symlink; returns the
    descriptor of a regular file.

    Raises :class:`DamagedEntry` for anything else (closing what was opened), and ``OSError``
    when the entry cannot be opened: ``FileNotFoundError`` (gone), ``PermissionError`` (EACCES,
    EPERM: not damage — the caller leaves it where it is)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno in _DAMAGE_ERRNOS:
            raise DamagedEntry(f"{path}: not a regular file ({exc.strerror})") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DamagedEntry(f"{path}: not a regular file ({_kind(mode)})")
    return fd


def open_append_regular(path: StrPath) -> int:
    """Open (creating it, mode :data:`FILE_MODE`) a log-like file for appending, without ever
    blocking or following a symlink: a FIFO, socket, directory or symlink at ``path`` raises
    :class:`DamagedEntry` instead of hanging the writer. Returns a blocking descriptor."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno in _DAMAGE_ERRNOS or exc.errno in (errno.ENXIO, errno.EISDIR):
            raise DamagedEntry(f"{path}: not a regular file ({exc.strerror})") from exc
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DamagedEntry(f"{path}: not a regular file ({_kind(mode)})")
    os.set_blocking(fd, True)
    return fd


def read_fd(fd: int, path: StrPath, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """The whole contents of the regular file open at ``fd`` (left open), from its start
    whatever was read from it before; :class:`DamagedEntry` when it holds more than
    ``max_bytes`` (checked before reading, and again while reading a file that grows)."""
    size = os.fstat(fd).st_size
    if size > max_bytes:
        raise DamagedEntry(f"{path}: {size} bytes, more than the {max_bytes} a record may hold")
    chunks = []
    total = 0
    wanted = max(size, 4096) + 1
    while chunk := os.pread(fd, wanted, total):
        total += len(chunk)
        if total > max_bytes:
            raise DamagedEntry(f"{path}: more than the {max_bytes} bytes a record may hold")
        chunks.append(chunk)
        if len(chunk) < wanted:  # a regular file reads short only at its end
            break
    return b"".join(chunks)


def read_regular(path: StrPath, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """The contents of the regular file at ``path``, read without blocking (see
    :func:`open_regular` for what it raises, plus :class:`DamagedEntry` past ``max_bytes``)."""
    fd = open_regular(path)
    try:
        return read_fd(fd, path, max_bytes)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return f"mode {stat.S_IFMT(mode):o}"


def read_json(path: StrPath) -> Any:
    """Parse a JSON store entry (read with :func:`read_regular`); raises ``ValueError`` for a
    torn, corrupt or non-regular one (:class:`DamagedEntry` is one), ``OSError`` if unreadable."""
    return json.loads(read_regular(path))


_encode_record = reusing_encoder(
    json.JSONEncoder(
        separators=(",", ":"), ensure_ascii=False, sort_keys=True, check_circular=False
    )
)
"""One encoder for every record (``json.dumps`` with options builds one per call)."""


def dump_json(obj: Any) -> bytes:
    return _encode_record(obj).encode()


def scan_names(directory: StrPath) -> Iterator[str]:
    """File names in ``directory`` (nothing if it does not exist); never creates anything, never
    looks at what an entry is (see :func:`scan_entries`)."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                yield entry.name
    except FileNotFoundError:
        return
    except PermissionError as exc:
        raise QueueError(f"{directory}: cannot list (permission denied)") from exc
    except NotADirectoryError as exc:
        raise QueueError(f"{directory}: a path component is not a directory") from exc


def scan_entries(directory: StrPath) -> Iterator[tuple[str, bool]]:
    """``(name, is_regular)`` for each entry of ``directory`` (nothing if it does not exist).
    ``is_regular`` comes from the directory listing itself, never following a symlink and never
    opening anything (one ``lstat`` only where the file system does not report entry types)."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    regular = entry.is_file(follow_symlinks=False)
                except OSError:  # removed since the listing: whatever it was, not a record now
                    regular = False
                yield entry.name, regular
    except FileNotFoundError:
        return
    except PermissionError as exc:
        raise QueueError(f"{directory}: cannot list (permission denied)") from exc
    except NotADirectoryError as exc:
        raise QueueError(f"{directory}: a path component is not a directory") from exc


def not_writable(path: StrPath, exc: BaseException) -> QueueError:
    """The one-line error for a path this process cannot write, with the fix in a container."""
    why = getattr(exc.__cause__, "strerror", None) or getattr(exc, "strerror", None)
    why = why[:1].lower() + why[1:] if why else str(exc)  # "(read-only file system)"
    return QueueError(
        f"{os.fspath(path)}: not writable by uid {os.getuid()} gid {os.getgid()} "
        f"({why}); in a container set TM_UID/TM_GID in .env to the data "
        "directory's owner"
    )


def check_dirs_writable(*directories: StrPath) -> None:
    """Raise :func:`not_writable`'s error for the first of ``directories`` (each created when
    missing) this process cannot write, found by really creating and removing a probe file:
    permission bits alone do not tell (root, a read-only mount)."""
    for directory in directories:
        probe = os.path.join(directory, f".probe-{os.getpid()}")
        try:
            ensure_dir(directory)  # inside the try: an uncreatable directory needs the hint too
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except (OSError, QueueError) as exc:
            raise not_writable(directory, exc) from None


def first_unwritable(directories: Iterable[StrPath]) -> QueueError | None:
    """The error for the first of ``directories`` this process may not write now, without
    writing anything (``access(2)``: permissions, and a read-only mount for root too); a
    missing directory is judged by the nearest existing parent, where it would be created."""
    for directory in directories:
        path = os.fspath(directory)
        while not os.path.lexists(path) and path != os.path.dirname(path):
            path = os.path.dirname(path)
        if not os.access(path, os.W_OK | os.X_OK):
            code = errno.EROFS if os.access(path, os.R_OK) else errno.EACCES
            return not_writable(directory, OSError(code, os.strerror(code)))
    return None
