"""What every export target (Maildir, mbox, EML directory) offers the export loop.

Durability, the same idea as the object store's ``publish``: a target writes each message to a
temporary name, and a batch of them becomes visible with one ``syncfs`` for the data, then the
renames, then an fsync of the directories.  A file at a final name is therefore always complete;
an error or a crash leaves at most temporary files, and the error path removes those too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mailvault._fs import IOV_BATCH, fsync_dir, sync_filesystem, write_all, writev_all
from mailvault.export._errors import ExportError, target_error
from mailvault.export.manifest import read_summary
from mailvault.export.transform import MessageMeta

_SYNC_FILE_RANGE_WRITE = 2

BATCH_MESSAGES = 1024  # a syncfs (a journal commit) per batch: fewer, bigger batches cost less
BATCH_BYTES = 32 * 1024 * 1024
WRITE_BYTES = 1024 * 1024  # a new file's chunks are written once this much has come
COPY_BYTES = 1024 * 1024  # read at a time by copy_range where sendfile refuses the pair
FILE_MODE = 0o600
DIR_MODE = 0o700
LOCK_NAME = ".mailvault-export.lock"  # inside a Maildir or EML target


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one message went: a file (relative path) or a byte range of the mbox."""

    size: int
    path: str | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Staged:
    """A whole message written to a temporary file (perhaps by a worker), not yet in place."""

    tmp: str  # absolute path of the temporary file
    relative: str  # its final name, relative to the target
    size: int


class TargetLock:
    """The exclusive ``flock`` an export holds on its target from ``open`` to its end.

    Two exports into one target would each find the other's messages missing and write them
    all.  The kernel drops the lock when its holder dies, however it dies; the file says who
    holds it (pid, since when), for the refusal.  The file is removed when the lock is
    released (while still held), so a taker checks the file it locked is still the one at the
    path: one that opened it just before the removal would otherwise lock an orphaned inode.
    """

    def __init__(self, path: Path, out: Path) -> None:
        self.path = path
        self.out = out
        self.fd = -1

    def acquire(self) -> None:
        while self.fd < 0:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            except OSError as exc:
                raise target_error("locking", self.path, exc) from None
            try:
                self._lock(fd)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.fd = fd
            except FileNotFoundError:
                pass  # released and removed by its holder meanwhile: take the next one
            except OSError as exc:
                os.close(fd)
                raise target_error("locking", self.path, exc) from None
            finally:
                if self.fd != fd:
                    os.close(fd)
        from mailvault.vault import write_holder

        write_holder(self.fd, "export")

    def _lock(self, fd: int) -> None:
        from mailvault.vault import try_lock

        who = try_lock(fd)
        if who is not None:
            raise ExportError(
                f"{self.out} is being exported to by {who}; wait for it to finish or choose "
                "another --out (the lock is released automatically if that process dies)"
            )

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = -1


class Target(ABC):
    """One export destination.

    Two ways in: ``write`` streams one message (any size, main process only); for a small
    message prepared whole, ``stage`` writes it to a temporary file (in a worker process, for
    targets that can: ``in_order`` is False) and ``place_staged`` schedules its rename, or, for
    a target that must be written in order (mbox, ``in_order`` True), ``stage_run`` writes a
    run of them to a temporary file (in a worker) and ``place_record`` copies each into place.
    """

    in_order = False
    lock: TargetLock | None = None

    @abstractmethod
    def open(self) -> None:
        """Check the destination is of the right kind, lock it (``take_lock``, before writing
        or trusting anything there) and prepare it; refuse anything else."""

    def take_lock(self, path: Path, out: Path) -> None:
        self.lock = TargetLock(path, out)
        self.lock.acquire()

    def unlock(self) -> None:
        """The export is over (manifest included, or failed): let the next one in."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def find(self, digest: str) -> list[str]:
        """Files already holding this message (relative paths), for idempotent re-export."""
        return []

    def resolve(self, relative: str) -> Path:
        raise NotImplementedError

    def changed_copy(self, relative: str) -> str:
        """What becomes of a copy in the target whose content no longer matches its message
        (``write`` is then given it as ``replaces``), for the warning that names it."""
        return "wrote a fresh copy beside it"

    def held(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` messages the target held when opened: (sha256, relative path)."""
        return []

    @abstractmethod
    def write(
        self, digest: str, meta: MessageMeta, chunks: Iterable[bytes], replaces: str | None
    ) -> Placed:
        """Write one message; the bytes become durable and visible at the next batch or close."""

    def stage(self, digest: str, chunks: Iterable[bytes]) -> Staged:
        """Write one message to a temporary file, not yet in place (``write`` is this and
        ``place_staged``); may run in a worker process, with the message whole."""
        raise NotImplementedError

    def place_staged(self, digest: str, tmp: str, relative: str, size: int) -> None:
        """Schedule a staged file's rename into place (with the next batch)."""
        raise NotImplementedError

    def stage_run(self, records: list[bytes]) -> str:
        """Write a run of prepared records to a temporary file (may run in a worker); its path."""
        raise NotImplementedError

    def place_record(self, run_fd: int, start: int, end: int, from_len: int) -> int:
        """Append bytes [start, end) of a staged run (From_ line, message, separator); the
        message's offset."""
        raise NotImplementedError

    def end_run(self) -> None:
        """The staged run whose records were placed is about to be closed and removed: copy
        whatever of it is still pending."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None:
        """Make everything written durable and visible."""

    @abstractmethod
    def abort(self) -> None:
        """Remove whatever this export left half-done; never raises."""


@cache
def _sync_file_range() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):  # not Linux/glibc: the final sync does all the work
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Have the kernel start writing these bytes to disk now, without waiting for it.

    Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; length 0 means to the end of the file.
    Only a head start, never a durability promise (the later fsync or syncfs is that): without
    it every byte of the export waits in the page cache for the final sync, so the disk idles
    while the CPU works and the CPU idles while the disk writes.
    """
    function = _sync_file_range()
    if function is not None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def write_new_file(path: str | Path, chunks: Iterable[bytes]) -> int:
    """Create ``path`` (which must not exist) from ``chunks``; on any failure remove it again.

    OS errors on the target become ``ExportError``; errors raised while producing the chunks
    (a damaged blob, say) propagate as they are.  Returns the number of bytes written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise target_error("creating", Path(path), exc) from None
    size = 0
    batch: list[bytes] = []  # written together (one writev) up to IOV_BATCH or WRITE_BYTES
    batch_bytes = 0
    try:
        for chunk in chunks:
            batch.append(chunk)
            batch_bytes += len(chunk)
            if len(batch) >= IOV_BATCH or batch_bytes >= WRITE_BYTES:
                _write_batch(fd, path, batch)
                size += batch_bytes
                batch, batch_bytes = [], 0
        _write_batch(fd, path, batch)
        size += batch_bytes
        try:
            os.close(fd)
        finally:
            fd = -1
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return size


def _write_batch(fd: int, path: str | Path, batch: list[bytes]) -> None:
    if batch:
        try:
            writev_all(fd, batch)
        except OSError as exc:
            raise target_error("writing", Path(path), exc) from None


def copy_range(source: int, target: int, start: int, length: int) -> None:
    """Write ``length`` bytes from ``start`` of ``source`` at ``target``'s file position.

    By ``sendfile``: page cache to page cache inside the kernel, as fast here as a write
    from a mapping of the source was, but a source shrunk under the copy (another program
    truncating an mbox) is "shorter than its records" instead of EFAULT ("Bad address").  By
    ``pread`` and ``write`` where ``sendfile`` refuses the pair (an ``O_APPEND`` target, a
    file system without it).  The mbox writer copies staged runs with it, and its journal the bytes of a
    killed append it sets aside.
    """
    if os.fstat(source).st_size < start + length:
        raise OSError(errno.EIO, "the staged run is shorter than its records")
    at, end = start, start + length
    while at < end:
        try:
            sent = os.sendfile(target, source, at, end - at)
        except OSError as exc:
            if at != start or exc.errno not in _NO_SENDFILE:
                raise
            break
        if not sent:
            raise OSError(errno.EIO, "the staged run is shorter than its records")
        at += sent
    while at < end:
        data = os.pread(source, min(end - at, COPY_BYTES), at)
        if not data:
            raise OSError(errno.EIO, "the staged run is shorter than its records")
        write_all(target, data)
        at += len(data)


_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class DirBatch:
    """Temp files waiting for one syncfs, then their renames, then one fsync per directory.

    A full batch is finished by a background thread while the export goes on writing the next
    one: ``syncfs`` waits for the disk, and in the main thread that wait would stall everything
    else.  Batches are finished one at a time, in order, each exactly as before (data durable,
    then the renames, then the directories), so a file at a final name is still always
    complete.  ``flush`` waits until every batch is finished; an error of the thread surfaces at
    the next ``add`` or ``flush``; ``abort`` waits for the thread, then removes every temp file
    not renamed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pending: list[tuple[str, str, str | None]] = []
        self.bytes = 0
        self._handed: list[list[tuple[str, str, str | None]]] = []  # given to the thread
        self._queue: queue.Queue[list[tuple[str, str, str | None]] | None] = queue.Queue(1)
        self._thread: threading.Thread | None = None
        self._error: ExportError | None = None

    def add(self, tmp: str | Path, final: str | Path, replaced: Path | None, size: int) -> None:
        self._raise_error()
        self.pending.append((str(tmp), str(final), None if replaced is None else str(replaced)))
        self.bytes += size
        if len(self.pending) >= BATCH_MESSAGES or self.bytes >= BATCH_BYTES:
            self._hand_over()

    def _hand_over(self) -> None:
        batch, self.pending, self.bytes = self.pending, [], 0
        self._handed.append(batch)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="export-batches", daemon=True)
            self._thread.start()
        self._queue.put(batch)  # waits while another batch is already queued

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is not None:
                continue  # left for abort() to remove
            try:
                self._finish(batch)
            except OSError as exc:
                self._error = target_error("finishing files in", self.root, exc)
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                self._error = ExportError(f"finishing files in {self.root} failed: {exc}")

    def _finish(self, batch: list[tuple[str, str, str | None]]) -> None:
        sync_filesystem(self.root)
        dirs: set[str] = set()
        while batch:
            tmp, final, replaced = batch[0]
            os.rename(tmp, final)
            batch.pop(0)
            if replaced is not None and replaced != final:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(replaced)
            dirs.add(os.path.dirname(final))
        for directory in sorted(dirs):
            fsync_dir(Path(directory))

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def flush(self) -> None:
        """Every file added so far durable and in place when this returns."""
        if self.pending:
            self._hand_over()
        self._stop()
        self._raise_error()
        self._handed.clear()

    def abort(self) -> None:
        self._stop()
        for batch in [*self._handed, self.pending]:
            for tmp, _, _ in batch:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._handed.clear()
        self.pending = []
        self.bytes = 0


def make_dirs(path: Path) -> None:
    """mkdir -p with the export's modes; OS errors become one-line ExportErrors."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    except FileExistsError:  # exist_ok covers directories only: a file is in the way
        raise target_error("creating", path, NotADirectoryError(errno.ENOTDIR, "")) from None
    except OSError as exc:
        raise target_error("creating", path, exc) from None


def refuse_dangling_link(out: Path) -> None:
    """A symbolic link is followed to the file or directory it names (for every format); one
    that names nothing is refused in one line saying so: no target is created through a link
    (the mbox failed with "Too many levels of symbolic links", a Maildir with "is a file")."""
    if out.is_symlink() and not out.exists():
        try:
            dest = os.readlink(out)
        except OSError:  # replaced meanwhile: what follows will say what it is now
            return
        raise ExportError(
            f"{out} is a symbolic link to {dest}, which does not exist, and no export is "
            "created through a link; give --out that path instead, or remove the link"
        )


def existing_entries(out: Path, fmt: str, wanted: str) -> list[str] | None:
    """What an existing directory target holds (None: there is none yet); a file is refused.

    ``wanted`` says which directories will do, for the message.
    """
    refuse_dangling_link(out)
    if not (out.is_symlink() or out.exists()):
        return None
    if not out.is_dir():
        raise ExportError(f"{out} is a file; --format {fmt} needs a directory ({wanted})")
    try:
        return os.listdir(out)
    except OSError as exc:
        raise target_error("reading", out, exc) from None


def check_previous_export(out: Path, fmt: str, line_endings: str, *, unlike: str = "") -> None:
    """Refuse to add to an earlier export of another format or with other line endings."""
    previous = read_summary(out / "manifest.json")
    if previous is None:
        return
    if previous.get("format") != fmt:
        raise ExportError(
            f"{out} holds a {previous.get('format')} export{unlike}; choose another --out"
        )
    if previous.get("line_endings") != line_endings:
        raise ExportError(
            f"{out} was exported with --line-endings {previous.get('line_endings')}; "
            f"rerun with that, or export {line_endings} into a new directory"
        )
