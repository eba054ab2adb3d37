"""The content-addressed object store: each message once, named by the sha256 of its bytes.

Layout: ``objects/ab/<64 hex>`` (uncompressed) or ``objects/ab/<64 hex>.zst``; the digest
is always over the exact bytes as received, never over the compressed form, so a blob can be
checked with ``zstd -dc FILE | sha256sum``.

Durability is done in batches because one fsync per message is what makes archivers slow:
``BlobWriter`` streams a message to ``tmp/`` (hashing and compressing as it goes, so memory stays
flat for any size), and ``BlobStore.publish`` makes a batch durable with one ``syncfs`` for the
data, renames every file into place, and a second ``syncfs`` for the directory entries.  Only then
may the catalog say the message is stored, and only after that may the server delete it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import zstandard

from mailvault._fs import sync_filesystem, write_all
from mailvault.errors import StoreError, disk_error

_DIGEST = re.compile(r"[0-9a-f]{64}")
ZSTD_SUFFIX = ".zst"
READ_CHUNK = 1024 * 1024


def valid_digest(digest: str) -> bool:
    """A digest is exactly 64 lower-case hex digits; anything else never becomes a path."""
    return _DIGEST.fullmatch(digest) is not None


_FANOUT = re.compile(r"[0-9a-f]{2}")


def _require_digest(digest: str) -> None:
    if not valid_digest(digest):
        raise StoreError(f"invalid blob name {digest!r}: expected 64 lower-case hex digits")


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A message written to tmp/ whose digest is known but which is not yet durable."""

    digest: str
    size: int
    tmp_name: str  # a str, not a Path: fetch stages thousands of these a second

    @property
    def tmp_path(self) -> Path:
        return Path(self.tmp_name)


class Hash(Protocol):
    """What ``BlobStore.iter_hashed`` feeds (a ``hashlib`` object)."""

    def update(self, data: bytes, /) -> None: ...


class BlobWriter:
    """Streams one message into tmp/, hashing (and compressing) as bytes arrive."""

    def __init__(self, tmp_name: str, compressor: zstandard.ZstdCompressor | None) -> None:
        self._name = tmp_name
        try:
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise disk_error(exc, "creating", self._path) from None
        self._fd = fd
        self._hash = hashlib.sha256()
        self._size = 0
        # One compression context per store, reused message after message: allocating a fresh
        # one per message costs more than compressing a typical message.
        self._compressor = compressor.compressobj(size=-1) if compressor is not None else None

    @property
    def _path(self) -> Path:
        return Path(self._name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._size += len(data)
        try:
            self._write_all(self._compressor.compress(data) if self._compressor else data)
        except OSError as exc:
            self.abort()
            raise disk_error(exc, "writing", self._path) from None

    def finish(self) -> StagedBlob:
        """Close the temp file (not yet fsynced: ``publish`` does that for a whole batch)."""
        try:
            if self._compressor is not None:
                self._write_all(self._compressor.flush())
            os.close(self._fd)
            self._fd = -1
        except OSError as exc:
            self.abort()
            raise disk_error(exc, "writing", self._path) from None
        return StagedBlob(self._hash.hexdigest(), self._size, self._name)

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        write_all(self._fd, data)

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self._name)


class BlobStore:
    """Reads and writes blobs under ``objects/``; writes go through ``tmp/``."""

    def __init__(self, root: Path, *, compress: bool = True) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.compress = compress
        self._known_dirs: set[str] = set()
        # level 1: twice the speed of level 3 for 1-2 % more space on mail
        self._compressor = zstandard.ZstdCompressor(level=1) if compress else None
        # Temp names: a random part per store, then a counter (one getrandom per message was
        # a measurable share of fetch's time); O_EXCL still refuses any clash.
        self._tmp_prefix = f"{self.tmp}/in-{os.getpid()}-{secrets.token_hex(6)}-"
        self._tmp_seq = itertools.count()

    def writer(self) -> BlobWriter:
        """A writer for one message; one thread writes (``writer``, ``stage``), one at a time.

        ``sync`` and ``link`` may run on another thread (fetch commits on its own): they share
        nothing with the writing side but the file system.
        """
        return BlobWriter(f"{self._tmp_prefix}{next(self._tmp_seq)}", self._compressor)

    def stage(self, data: bytes) -> StagedBlob:
        """Write one whole, in-memory message to tmp/: what ``writer()`` does, in one go.

        For the common small message: one-shot hashing and compression skip the streaming
        context and its calls, about a fifth of the cost of staging a typical message.
        """
        name = f"{self._tmp_prefix}{next(self._tmp_seq)}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise disk_error(exc, "creating", Path(name)) from None
        try:
            try:
                write_all(fd, self._compressor.compress(data) if self._compressor else data)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise disk_error(exc, "writing", Path(name)) from None
        return StagedBlob(hashlib.sha256(data).hexdigest(), len(data), name)

    def _dir(self, digest: str) -> Path:
        _require_digest(digest)
        return self.objects / digest[:2]

    def find(self, digest: str) -> Path | None:
        """Return the blob's path, whichever form it was stored in, or None."""
        base = self._dir(digest) / digest
        for candidate in (base.with_name(digest + ZSTD_SUFFIX), base):
            if candidate.exists():
                return candidate
        return None

    def contains(self, digest: str) -> bool:
        return self.find(digest) is not None

    def publish(self, staged: Iterable[StagedBlob]) -> list[bool]:
        """Make a batch of staged blobs durable; return, per blob, whether it was new.

        Order matters for crash safety: data first (syncfs), then names (link), then the names
        durable (syncfs again).  A file at a final name is therefore always complete, so finding
        one means the content is already stored and the staged copy can be dropped.
        """
        batch = list(staged)
        if not batch:
            return []
        self.sync()
        results = self.link(batch)
        self.sync()
        return results

    def sync(self) -> None:
        """Make everything written to the vault's filesystem so far durable (one ``syncfs``).

        ``publish`` is ``sync``, ``link``, ``sync``.  A caller that pipelines batches may let
        one call do two jobs -- the names of one batch and the data of the next, provided every
        file of the next batch was completely written and closed before the call -- which is
        what fetch does while it is behind.
        """
        sync_filesystem(self.tmp)

    def link(self, batch: list[StagedBlob]) -> list[bool]:
        """Give staged blobs whose data is durable (``sync``) their content address; drop
        duplicates.  Per blob: whether it was new.  The names are durable after the next
        ``sync``; nothing may claim the blobs are stored before that.
        """
        results: list[bool] = []
        suffix, other = (ZSTD_SUFFIX, "") if self.compress else ("", ZSTD_SUFFIX)
        objects = str(self.objects)
        try:
            for blob in batch:
                digest = blob.digest
                _require_digest(digest)
                target_dir = f"{objects}/{digest[:2]}"
                if target_dir not in self._known_dirs:
                    self.objects.mkdir(exist_ok=True, mode=0o700)
                    os.makedirs(target_dir, mode=0o700, exist_ok=True)
                    self._known_dirs.add(target_dir)
                base = f"{target_dir}/{digest}"
                # link() never replaces: EEXIST is the duplicate check, one syscall instead of
                # stat + rename; the other storage form is looked for only in mixed vaults.
                try:
                    if other and os.path.exists(base + other):
                        raise FileExistsError
                    os.link(blob.tmp_name, base + suffix)
                    results.append(True)
                except FileExistsError:
                    results.append(False)
                os.unlink(blob.tmp_name)
        except OSError as exc:
            raise disk_error(exc, "storing a blob in", self.objects) from None
        return results

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for reading its original (decompressed) bytes as a stream."""
        path = self.find(digest)
        if path is None:
            raise StoreError(
                f"blob {digest} is missing from {self.objects}; run `mailvault verify` "
                "to see what else is affected"
            )
        return open_file(path)

    def read_bytes(self, digest: str) -> bytes:
        """Whole blob in memory: only for callers that need it (parsing); export streams."""
        with self.open(digest) as stream:
            return stream.read()

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        with self.open(digest) as stream:
            while chunk := stream.read(READ_CHUNK):
                yield chunk

    def iter_hashed(self, digest: str, hashing: Hash) -> Iterator[bytes]:
        """``iter_chunks``, feeding ``hashing`` on the way (``read_hashed``)."""
        yield from read_hashed(self.open(digest), hashing)

    def iter_verified(self, digest: str) -> Iterator[bytes]:
        """``iter_chunks``, hashing as it goes: past the last chunk, a ``StoreError`` if the
        content no longer hashes to its name (or cannot be read).  For every reader that hands
        a message on or derives what protects or dates it (export, show, indexing, retention):
        an edited blob must not be read as the message."""
        hashing = hashlib.sha256()
        try:
            yield from self.iter_hashed(digest, hashing)
        except (OSError, zstandard.ZstdError) as exc:
            raise StoreError(
                f"blob {digest} cannot be read ({exc}); restore it from a backup, `mailvault "
                "verify` lists every damaged blob"
            ) from None
        actual = hashing.hexdigest()
        if actual != digest:
            raise StoreError(
                f"blob {digest} is corrupt: its content hashes to {actual} (changed since it "
                "was stored); restore it from a backup, `mailvault verify` lists every damaged "
                "blob"
            )

    def rehash(self, digest: str) -> str:
        """sha256 of the stored content, for verification."""
        hashing = hashlib.sha256()
        for _ in self.iter_hashed(digest, hashing):
            pass
        return hashing.hexdigest()

    def iter_digests(self) -> Iterator[str]:
        """Every blob name on disk."""
        for _, digest in self.entries():
            if digest is not None:
                yield digest

    def entries(self) -> Iterator[tuple[Path, str | None]]:
        """Everything under objects/, in one pass (for verify): each blob's path and digest,
        and with None whatever is not a blob (an editor's swap file, a note someone left)."""
        if not self.objects.exists():
            return
        for fanout in sorted(os.scandir(self.objects), key=lambda e: e.name):
            if not fanout.is_dir(follow_symlinks=False) or not _FANOUT.fullmatch(fanout.name):
                yield Path(fanout.path), None
                continue
            for blob in sorted(os.scandir(fanout.path), key=lambda e: e.name):
                digest = blob.name.removesuffix(ZSTD_SUFFIX)
                ok = valid_digest(digest) and digest[:2] == fanout.name
                yield (
                    Path(blob.path),
                    digest if ok and blob.is_file(follow_symlinks=False) else None,
                )

    def remove_own_tmp(self) -> None:
        """Remove the temp files this store object wrote that were never linked into place.

        For the end of a fetch session that failed or was interrupted: Ctrl-C can arrive
        between creating a temp file and recording it anywhere, so the batches alone do not
        know every file.  Only this object writes names with its prefix, so nothing another
        writer (a ``--jobs`` neighbour) is working on is touched; call once its commits are done.
        """
        directory, prefix = os.path.split(self._tmp_prefix)
        try:
            names = os.listdir(directory)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes; call only under the vault's write lock."""
        removed = 0
        if self.tmp.exists():
            for leftover in self.tmp.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed += 1
        return removed


def read_hashed(stream: BinaryIO, hashing: Hash) -> Iterator[bytes]:
    """An open blob's chunks, feeding ``hashing`` on the way, then closed: the one place a
    reader hashes the content it reads, so checking a blob never costs a second read."""
    with stream:
        while chunk := stream.read(READ_CHUNK):
            hashing.update(chunk)
            yield chunk


def open_file(path: Path) -> BinaryIO:
    """One blob file's original (decompressed) bytes as a stream: a ``.zst`` file decompressed,
    another as it is.  ``BlobStore.open`` picks the file for a digest; verify reads each file
    it walks, so that a second copy of a blob (compressed and not) is checked too."""
    raw = path.open("rb")
    if path.suffix == ZSTD_SUFFIX:
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw
