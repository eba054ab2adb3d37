"""Durability primitives shared by the store, the index and the exporters (stdlib only)."""

from __future__ import annotations

import os
from functools import cache

# Neither `typing` nor `pathlib` is imported at run time: they are a few ms of every `mailvault
# search` start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


@cache
def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


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
