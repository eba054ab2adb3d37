"""What every export target (Maildir, mbox, EML directory) offers the export loop.

Durability, the same idea as the object store's ``publish``: a target writes each message to a
temporary name, and a batch of them becomes visible with one ``syncfs`` for the data, then the
renames, then an fsync of the directories.  A file at a final name is therefore always complete;
an error or a crash leaves at most temporary files, and the error path removes those too.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailvault._fs import fsync_dir, sync_filesystem
from mailvault.export._errors import target_error
from mailvault.export.transform import MessageMeta

BATCH_MESSAGES = 256
BATCH_BYTES = 32 * 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one message went: a file (relative path) or a byte range of the mbox."""

    size: int
    path: str | None = None
    offset: int | None = None


class Target(ABC):
    """One export destination."""

    @abstractmethod
    def open(self) -> None:
        """Check the destination is of the right kind and prepare it; refuse anything else."""

    def find(self, digest: str) -> list[str]:
        """Files already holding this message (relative paths), for idempotent re-export."""
        return []

    def resolve(self, relative: str) -> Path:
        raise NotImplementedError

    @abstractmethod
    def write(
        self, digest: str, meta: MessageMeta, chunks: Iterable[bytes], replaces: str | None
    ) -> Placed:
        """Write one message; the bytes become durable and visible at the next batch or close."""

    @abstractmethod
    def close(self) -> None:
        """Make everything written durable and visible."""

    @abstractmethod
    def abort(self) -> None:
        """Remove whatever this export left half-done; never raises."""


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_new_file(path: Path, chunks: Iterable[bytes]) -> int:
    """Create ``path`` (which must not exist) from ``chunks``; on any failure remove it again.

    OS errors on the target become ``ExportError``; errors raised while producing the chunks
    (a damaged blob, say) propagate as they are.  Returns the number of bytes written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise target_error("creating", path, exc) from None
    size = 0
    try:
        for chunk in chunks:
            try:
                write_all(fd, chunk)
            except OSError as exc:
                raise target_error("writing", path, exc) from None
            size += len(chunk)
        try:
            os.close(fd)
        finally:
            fd = -1
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return size


class DirBatch:
    """Temp files waiting for one syncfs, then their renames, then one fsync per directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pending: list[tuple[Path, Path, Path | None]] = []
        self.bytes = 0

    def add(self, tmp: Path, final: Path, replaced: Path | None, size: int) -> None:
        self.pending.append((tmp, final, replaced))
        self.bytes += size
        if len(self.pending) >= BATCH_MESSAGES or self.bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            sync_filesystem(self.root)
            dirs: set[Path] = set()
            while self.pending:
                tmp, final, replaced = self.pending[0]
                os.rename(tmp, final)
                self.pending.pop(0)
                if replaced is not None and replaced != final:
                    replaced.unlink(missing_ok=True)
                dirs.add(final.parent)
            for directory in sorted(dirs):
                fsync_dir(directory)
        except OSError as exc:
            raise target_error("finishing files in", self.root, exc) from None
        self.bytes = 0

    def abort(self) -> None:
        for tmp, _, _ in self.pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.pending.clear()
        self.bytes = 0


def make_dirs(path: Path) -> None:
    """mkdir -p with the export's modes; OS errors become one-line ExportErrors."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    except OSError as exc:
        raise target_error("creating", path, exc) from None
