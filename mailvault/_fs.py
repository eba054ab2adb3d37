"""Durability primitives shared by the store, the index and the exporters (stdlib only)."""

from __future__ import annotations

import os
from functools import cache

# Neither `typing` nor `pathlib` is imported at run time: they are a few ms of every `mailvault
# search` start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

IOV_BATCH = 512  # buffers per writev: below Linux's IOV_MAX (1024)
LOW_SPACE = 4 * 1024 * 1024  # bytes free under which a filesystem counts as full


@cache
def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data``; a short write (rare) goes on where it stopped."""
    written = os.write(fd, data)
    if written < len(data):  # only then pay for a view
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def writev_all(fd: int, parts: Sequence[bytes]) -> None:
    """Write ``parts`` (at most ``IOV_BATCH``) with one ``writev``, without joining them."""
    written = os.writev(fd, parts)
    if written < sum(map(len, parts)):  # a short write: the rest the slow way
        write_all(fd, memoryview(b"".join(parts))[written:])


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the filesystem holding ``path`` in one call (Linux syncfs).

    One call for a whole batch of new files is what makes group commit cheap; a per-file
    fsync costs a journal commit each.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = _libc()
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def nearly_full(directory: str | os.PathLike[str]) -> bool:
    """Whether the filesystem holding ``directory`` has (next to) no space or inodes left.

    SQLite says "disk I/O error" or "unable to open database file" when it cannot create a
    catalog's ``-wal`` or ``-shm`` file, as on a full disk: asked before such an error is
    called damage (whose fix, restoring a backup, would lose what was committed since)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE or (st.f_files > 0 and st.f_favail == 0)


def unwritable(directory: str | os.PathLike[str]) -> str | None:
    """Why this process cannot write in ``directory`` (a read-only mount or snapshot; a
    directory without write permission), or None: asked before a failure to open or write
    the catalog there is called damage, whose fix (restoring a backup) loses what was
    committed since."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "its filesystem is mounted read-only"
    except OSError:
        return None
    if not os.access(directory, os.W_OK):
        return "its directory is not writable by this user"
    return None
