"""Reading blobs for export, re-hashed on the way: whole for small messages, streamed for big ones.

Almost every message is small (the 10,000-message benchmark corpus: 24 KB on average), and for
those the per-message overhead of a streaming reader (a new decompression context, a reader
object, 1 MiB read buffers, a generator per chunk) costs more than the decompression itself.
``BlobReader.whole`` therefore reads the compressed file in one ``read``, decompresses it in one
call with a decompression context reused for every message, and hashes the result in one
``update``.  The catalog's ``size`` bounds the output, so memory per message stays at most
``WHOLE_MAX``; anything bigger, and anything unusual on the way (a missing or damaged blob, an
output that does not match the catalog), is left to ``stream_verified``, which stays flat for any
size and is the one place that turns a bad blob into an error message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Generator

import zstandard

from mailvault.errors import ExportError, MailvaultError, StoreError
from mailvault.export.transform import to_lf
from mailvault.store import ZSTD_SUFFIX, BlobStore, valid_digest

WHOLE_MAX = 4 * 1024 * 1024  # bytes; bigger messages are streamed (flat memory)


class BlobReader:
    """One store's blobs for one process: a single decompression context, reused."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._objects = str(store.objects)
        self._zstd = zstandard.ZstdDecompressor()

    def whole(self, digest: str, size: int) -> bytes | None:
        """The blob's verified bytes if it is small and sound; None: stream it instead."""
        if not 0 < size <= WHOLE_MAX or not valid_digest(digest):
            return None
        base = f"{self._objects}/{digest[:2]}/{digest}"
        packed = _read_small(base + ZSTD_SUFFIX)
        raw: bytes | None
        if packed is not None:
            try:
                raw = self._zstd.decompress(packed, max_output_size=size)
            except zstandard.ZstdError:
                return None
        else:
            raw = _read_small(base)
        if raw is None or len(raw) != size or hashlib.sha256(raw).hexdigest() != digest:
            return None
        return raw


def _read_small(path: str) -> bytes | None:
    """The whole file if it exists and is no bigger than WHOLE_MAX, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        length = os.fstat(fd).st_size
        if length > WHOLE_MAX:
            return None
        data = os.read(fd, length)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == length else None


def stream_verified(store: BlobStore, digest: str) -> Generator[bytes, None, None]:
    """The blob's bytes in chunks; raises at the end if they do not hash to the blob's name."""
    try:
        yield from store.iter_verified(digest)
    except StoreError as exc:
        raise ExportError(f"the export stopped without writing message {digest}: {exc}") from None


def lf_digest(store: BlobStore, digest: str, whole: bytes | None = None) -> str:
    """sha256 of a stored message with every CRLF turned into LF, as ``export --line-endings
    lf`` writes it (from ``whole``, the message's bytes, when the caller has them); raises
    the store's error when the blob cannot be read or is damaged."""
    h = hashlib.sha256()
    for chunk in to_lf([whole] if whole is not None else stream_verified(store, digest)):
        h.update(chunk)
    return h.hexdigest()


def lf_sha256(reader: BlobReader, digest: str, size: int) -> str | None:
    """``lf_digest``, or None if the blob cannot be read or is damaged: what an import
    compares a file named after a message with, to tell that message's lf export from other
    mail."""
    whole = reader.whole(digest, size)
    try:
        return lf_digest(reader.store, digest, whole)
    except MailvaultError:
        return None
