"""What a source reader yields: a message to store, or a note about something it did not store.

Readers are generators.  A ``Found`` carries its bytes as an iterator of chunks that the caller
must consume completely before asking the reader for the next item (the mbox reader walks one
file from front to back).  Nothing a reader sees is dropped silently: what is not a ``Found`` is
a ``Rejected`` (damaged or unreadable: the import exits 1), a ``Skipped`` (not a message by the
source format's own rules, such as a file in a Maildir's tmp/), a ``Warned`` note, or a
``Missed`` manifest entry that the importer settles once it has read the whole file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailvault.store import READ_CHUNK


@dataclass(frozen=True, slots=True)
class Found:
    path: Path
    kind: str  # maildir | mbox | eml
    offset: int | None  # mbox: first byte of the message, after its From_ line
    chunks: Iterator[bytes]
    expect: frozenset[str] = field(default_factory=frozenset)  # acceptable sha256s, if known
    allow_empty: bool = False
    listed_elsewhere: Callable[[str], bool] | None = None  # the manifest lists it at another offset

    @property
    def location(self) -> str:
        return f"{self.path}@{self.offset}" if self.offset is not None else str(self.path)


@dataclass(frozen=True, slots=True)
class Rejected:
    path: Path
    offset: int | None
    reason: str
    length: int | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class Warned:
    path: Path
    offset: int | None
    message: str


@dataclass(frozen=True, slots=True)
class Missed:
    """An export manifest's entry with no message at its offset.  Rejected, unless content with
    one of its hashes turns up elsewhere in the same file (an edit before it shifted it)."""

    path: Path
    offset: int
    length: int | None
    hashes: frozenset[str]


Event = Found | Rejected | Skipped | Warned | Missed


def file_chunks(path: Path) -> Iterator[bytes]:
    """A whole file in READ_CHUNK pieces (OSError propagates to the consumer).

    A file that changes while it is read (a mail client saving it, a copy still running) would
    be stored as a mix of old and new bytes that matches neither, so its size and mtime are
    compared before and after, and a change is an error: the consumer rejects the message, and
    the next import reads it whole."""
    with path.open("rb") as f:
        before = os.fstat(f.fileno())
        read = 0
        while chunk := f.read(READ_CHUNK):
            read += len(chunk)
            yield chunk
        after = os.fstat(f.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
        read != after.st_size
    ):
        raise OSError(errno.EAGAIN, "the file changed while it was read; import it again")
