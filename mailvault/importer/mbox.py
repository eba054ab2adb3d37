"""Read an mbox file (mboxrd, mboxo, Content-Length variants) with flat memory.

The file is read with ``pread`` through a 1 MiB window, never mapped or loaded whole, so a
damaged disk gives an ``OSError`` (reported) rather than a SIGBUS, and memory stays flat for
any file size.  Where a message ends is decided in this order:

1. **The export manifest.**  Beside an mbox written by ``mailvault export`` lie
   ``<mbox>.manifest.json(l)`` with each message's exact offset and length and its sha256.  The
   reader follows them in step with the file (flat memory) and takes exactly those bytes if
   they hash to the manifest's value.  If they do not (a message was deleted or edited, and
   another one now starts at that offset), the message is split as below, and the import then
   either finds it listed elsewhere in the manifest or rejects it as damaged.  The manifest also
   restores messages that did not end with a line break, which plain mbox cannot represent,
   wherever an edit moved them.
2. **Content-Length.**  If the header block has ``Content-Length: N`` and the body start plus N
   lands exactly on a boundary (end of file, a ``From `` line, or a blank line then a ``From ``
   line), that is the end (Netscape, Solaris mail and mboxcl files rely on it).  Otherwise the
   header is ignored, with a warning.
3. **The next From_ line.**  ``From <sender> <date>`` (a time ``hh:mm`` and a four-digit year
   after the sender) and ``From <sender>`` alone (``From -``, ``From 1844@xxx``) separate
   messages wherever they start a line; a bare ``From`` separates only at the start of the file
   or after a blank line; anything else (``From Russia with love``) is body text of an unquoted
   mboxo file.  The blank line before a separator belongs to the mbox, not to the message: one
   LF (or one CRLF after a CRLF blank line) is removed.

Quoting: with ``variant="mboxrd"`` (the default) every ``>+From `` line loses one ``>``; with
``"mboxo"`` the bytes are stored as they are (mboxo quoting cannot be undone reliably: a
``>From `` line may have been ``From `` or ``>From `` before).  The variant cannot be read off a
file; an mbox with a mailvault manifest always uses the manifest's.

Damage is reported, and the rest of the file still imported: bytes before the first From_ line
(rejected with their offset and length), a From_ line with nothing after it, a message that does
not match its manifest entry, and manifest entries the file no longer has at their offset
(``Missed``: the importer rejects them unless the same content was found elsewhere in the file).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from mailvault.export.manifest import MboxEntry, MboxManifestCursor, read_summary
from mailvault.export.transform import HEADER_CAP, MboxrdUnquoter
from mailvault.importer._model import Event, Found, Missed, Rejected, Warned
from mailvault.store import READ_CHUNK

BLOCK = 1024 * 1024
BOM = b"\xef\xbb\xbf"
VARIANTS = ("mboxrd", "mboxo")

_SEPARATOR = re.compile(rb"\nFrom ")
_NEWLINE = re.compile(rb"\n")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_BLANK_THEN_FROM = re.compile(rb"\n\r?\nFrom ")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d{1,15})[ \t]*\r?$")
_TIME = re.compile(rb"\b\d{1,2}:\d\d\b")
_YEAR = re.compile(rb"\b\d{4}\b")

NOT_A_SEPARATOR, WEAK, SEPARATOR = 0, 1, 2


def classify(line: bytes) -> int:
    """Whether a line starting with ``From `` separates messages (see the module docstring)."""
    if not line.startswith(b"From "):
        return NOT_A_SEPARATOR
    parts = line[5:].rstrip(b"\r\n").split(None, 1)
    if not parts:
        return WEAK
    if len(parts) == 1:
        return SEPARATOR
    rest = parts[1]
    return SEPARATOR if _TIME.search(rest) and _YEAR.search(rest) else NOT_A_SEPARATOR


def looks_like_mbox(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head.removeprefix(BOM).startswith(b"From ")


class _Window:
    """Random access to a file through one cached block, read with pread."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._base = 0
        self._block = b""

    def _pread(self, start: int, end: int) -> bytes:
        parts: list[bytes] = []
        pos = start
        while pos < end:
            data = os.pread(self.fd, end - pos, pos)
            if not data:
                break
            parts.append(data)
            pos += len(data)
        return b"".join(parts)

    def _load(self, start: int) -> None:
        self._base = start
        self._block = self._pread(start, min(self.size, start + BLOCK))

    def read(self, start: int, end: int) -> bytes:
        start, end = max(start, 0), min(end, self.size)
        if start >= end:
            return b""
        base = self._base
        if base <= start and end <= base + len(self._block):
            return self._block[start - base : end - base]
        if end - start > BLOCK:
            return self._pread(start, end)
        self._load(start)
        return self._block[: end - start]

    def find(
        self, pattern: re.Pattern[bytes], start: int, overlap: int, limit: int | None = None
    ) -> int | None:
        """Position of the first match at or after ``start`` and before ``limit``.

        Matches must be shorter than ``overlap`` bytes (blocks overlap by that much).
        """
        pos = max(start, 0)
        stop = self.size if limit is None else min(limit, self.size)
        while pos < stop:
            if not (self._base <= pos < self._base + len(self._block)):
                self._load(pos)
            match = pattern.search(self._block, pos - self._base)
            if match:
                found = self._base + match.start()
                return found if found < stop else None
            end = self._base + len(self._block)
            if end >= stop:
                return None
            pos = max(pos + 1, end - overlap)
            self._load(pos)
        return None

    def pieces(self, start: int, end: int, unquote: bool) -> Iterator[bytes]:
        unquoter = MboxrdUnquoter() if unquote else None
        for pos in range(start, end, READ_CHUNK):
            data = self.read(pos, min(end, pos + READ_CHUNK))
            if unquoter is not None:
                data = unquoter.feed(data)
            if data:
                yield data
        if unquoter is not None:
            tail = unquoter.flush()
            if tail:
                yield tail


class _Reader:
    def __init__(self, path: Path, fd: int, variant: str) -> None:
        self.path = path
        self.f = _Window(fd, os.fstat(fd).st_size)
        self.variant = variant
        self.cursor: MboxManifestCursor | None = None
        self.data_start = 0

    # -- separators ---------------------------------------------------------------------------
    def _is_separator(self, q: int) -> bool:
        line = self.f.read(q, q + 1024)
        nl = line.find(b"\n")
        kind = classify(line[:nl] if nl >= 0 else line)
        if kind == SEPARATOR:
            return True
        if kind == WEAK:
            before = self.f.read(q - 3, q)
            return q == self.data_start or before.endswith(b"\n\n") or before == b"\n\r\n"
        return False

    def _next_separator(self, start: int) -> int:
        """Start of the next From_ line at or after ``start`` (file size if none)."""
        pos = start - 1
        while True:
            hit = self.f.find(_SEPARATOR, pos, overlap=len(_SEPARATOR.pattern))
            if hit is None:
                return self.f.size
            if self._is_separator(hit + 1):
                return hit + 1
            pos = hit + 1

    def _boundary(self, end: int) -> int | None:
        """Where the next From_ line starts if a message ends at ``end``; None if none does."""
        size = self.f.size
        if end == size:
            return size
        peek = self.f.read(end, end + 7)
        if peek.startswith(b"From "):
            return end
        if peek.startswith(b"\nFrom "):
            return end + 1
        if peek.startswith(b"\r\nFrom "):
            return end + 2
        if end + len(peek) == size and peek in (b"\n", b"\r\n"):
            return size
        return None

    # -- where a message ends -------------------------------------------------------------------
    def _by_manifest(self, start: int, entry: MboxEntry) -> tuple[int, int] | None:
        end = start + entry.length
        if end > self.f.size:
            return None
        after = self.f.read(end, end + 2)
        for skip in (1, 2):
            if after[:skip] == b"\n" * skip:
                nxt = end + skip
                if nxt == self.f.size or self.f.read(nxt, nxt + 5) == b"From ":
                    return end, nxt
        return end, end  # whatever follows is checked as the next entry

    def _by_content_length(self, start: int) -> tuple[int, int] | Warned | None:
        if self.f.read(start, start + 2).startswith((b"\n", b"\r\n")):
            return None  # empty header block
        blank = self.f.find(_BLANK_LINE, start - 1, overlap=3, limit=start + HEADER_CAP)
        if blank is None:
            return None
        header = self.f.read(start, blank + 1)
        match = _CONTENT_LENGTH.search(header)
        if match is None:
            return None
        body = blank + (2 if self.f.read(blank, blank + 2) == b"\n\n" else 3)
        length = int(match.group(1))
        nxt = self._boundary(body + length) if body + length <= self.f.size else None
        if nxt is None:
            return Warned(
                self.path,
                start,
                f"Content-Length: {length} does not end at a message boundary; "
                "split at the next From_ line instead",
            )
        inside = self._dated_separator(body, body + length)
        if inside is not None and self._stale_length(body, inside, length):
            # The Content-Length counts the body with CRLF line ends, and the file has LF ones
            # (an mbox converted, or exported with --line-endings lf): it runs past this
            # message into the next ones, and ending there by chance must not merge them.
            return Warned(
                self.path,
                start,
                f"Content-Length: {length} counts the body with CRLF line ends but the file "
                f"has LF ones, so it runs past the From_ line at offset {inside}; split at "
                "the From_ line instead",
            )
        return body + length, nxt

    def _dated_separator(self, start: int, end: int) -> int | None:
        """The first From_ line with an address and a date after a blank line in [start, end):
        what separates messages in any mbox, whichever Content-Length says otherwise."""
        pos = start
        while (hit := self.f.find(_BLANK_THEN_FROM, pos, overlap=8, limit=end)) is not None:
            line_start = hit + (2 if self.f.read(hit, hit + 2) == b"\n\n" else 3)
            if line_start >= end:
                return None
            line = self.f.read(line_start, line_start + 1024).split(b"\n", 1)[0]
            parts = line[5:].rstrip(b"\r").split(None, 1)
            if len(parts) == 2 and _TIME.search(parts[1]) and _YEAR.search(parts[1]):
                return line_start
            pos = hit + 1
        return None

    def _stale_length(self, body: int, separator: int, length: int) -> bool:
        """Whether ``length`` is the CRLF size of the LF-only text from ``body`` to the From_
        line at ``separator`` (give or take the blank line before it)."""
        lf = crlf = 0
        for pos in range(body, separator, READ_CHUNK):
            piece = self.f.read(pos, min(separator, pos + READ_CHUNK))
            crlf += piece.count(b"\r\n")
            lf += piece.count(b"\n")
        return crlf == 0 and 0 <= (separator - body) + lf - length <= 4

    def _by_separator(self, start: int) -> tuple[int, int]:
        nxt = self._next_separator(start)
        end = nxt
        if nxt - start >= 2 and self.f.read(nxt - 2, nxt) == b"\n\n":
            end = nxt - 1
        elif nxt - start >= 4 and self.f.read(nxt - 4, nxt) == b"\r\n\r\n":
            end = nxt - 2
        return end, nxt

    def _digests(self, start: int, end: int) -> tuple[str, str | None]:
        """sha256 of the message in bytes [start, end) as it would be stored, and of the same
        without its last byte if that is a line feed (one pass)."""
        h = hashlib.sha256()
        last = b""
        for piece in self.f.pieces(start, end, unquote=self.variant == "mboxrd"):
            if last:
                h.update(last)
            last = piece
        short = None
        if last.endswith(b"\n"):
            h.update(last[:-1])
            short = h.copy()
            h.update(b"\n")
        else:
            h.update(last)
        return h.hexdigest(), short.hexdigest() if short is not None else None

    def _listed_end(self, start: int, end: int) -> tuple[int, bool]:
        """Where a message found away from its manifest offset ends, and whether the manifest
        lists it: it ends one byte earlier if only that form is in the manifest.  A message
        exported without a final line break is written with two LFs after it, and splitting at
        the next From_ line takes only one of them away; the manifest, which knows its exact
        bytes, decides."""
        assert self.cursor is not None
        full, short = self._digests(start, end)
        if self.cursor.lists(full):
            return end, True
        if short is not None and self.cursor.lists(short):
            return end - 1, True
        return end, False

    # -- the file -----------------------------------------------------------------------------
    def _missed(self) -> Iterator[Event]:
        if self.cursor is not None:
            for entry in self.cursor.take_missed():
                yield Missed(self.path, entry.offset, entry.length, entry.hashes)

    def events(self) -> Iterator[Event]:
        f, path = self.f, self.path
        pos = 0
        if f.read(0, 3) == BOM:
            yield Warned(path, 0, "skipped a UTF-8 byte-order mark before the first From_ line")
            pos = self.data_start = 3
        while pos < f.size:
            if f.read(pos, pos + 5) != b"From ":
                nxt = self._next_separator(pos + 1)
                what = "are not part of any message" if nxt < f.size else "hold no From_ line"
                yield Rejected(
                    path, pos, f"{nxt - pos} bytes {what} (damaged, or not an mbox)", nxt - pos
                )
                pos = nxt
                continue
            eol = f.find(_NEWLINE, pos, overlap=1)
            if eol is None:
                yield Rejected(path, pos, "a From_ line with no message after it", f.size - pos)
                break
            start = eol + 1
            entry = self.cursor.at(start) if self.cursor is not None else None
            yield from self._missed()
            span: tuple[int, int] | None = None
            if entry is not None:  # its hash is checked even if the file ends too early
                span = self._by_manifest(start, entry)
                if span is not None and self._digests(start, span[0])[0] not in entry.hashes:
                    # Another message sits where the manifest places this one: deleting a
                    # message moves the next one to exactly its offset.  Split it as if there
                    # were no manifest; the import then finds it listed elsewhere, or rejects it.
                    span = None
            guided = span is not None
            if span is None:
                found = self._by_content_length(start)
                if isinstance(found, Warned):
                    yield found
                else:
                    span = found
            if span is None:
                span = self._by_separator(start)
            end, nxt = span
            if not guided and self.cursor is not None and end > start:
                end, listed = self._listed_end(start, end)
                if not listed:
                    yield Warned(
                        path,
                        start,
                        "a message the export manifest does not list (mail another program "
                        "added, or a listed message edited since): imported as found",
                    )
            if end == start and entry is None:
                yield Rejected(path, start, "an empty message (a From_ line and nothing else)", 0)
            else:
                yield Found(
                    path,
                    "mbox",
                    start,
                    f.pieces(start, end, unquote=self.variant == "mboxrd"),
                    expect=entry.hashes if entry is not None else frozenset(),
                    allow_empty=entry is not None,
                    listed_elsewhere=self.cursor.lists if self.cursor is not None else None,
                )
            pos = max(nxt, start)
        if self.cursor is not None:
            self.cursor.at(1 << 62)  # every entry left over was never matched
            yield from self._missed()


LOCK_WAIT = 10.0  # seconds to wait for a writer's flock on an mbox


def _shared_lock(fd: int) -> bool:
    """A shared ``flock`` on the mbox, as mutt, Dovecot and procmail take an exclusive one to
    write it: reading while they append would store their half-written message."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        except OSError:  # a filesystem without flock: read it as it is
            return True


def read_mbox(path: Path, variant: str = "mboxrd") -> Iterator[Event]:
    """Every message of one mbox file, in file order."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        yield Rejected(path, None, f"cannot open: {exc.strerror}")
        return
    try:
        if not _shared_lock(fd):
            yield Rejected(
                path,
                None,
                f"locked by another program for {LOCK_WAIT:.0f} s (a delivery, or a mail client "
                "writing it); import it again when it is done",
            )
            return
        reader = _Reader(path, fd, variant)
        yield from _with_manifest(reader, path, variant)
    except OSError as exc:
        yield Rejected(path, None, f"read error, the rest of this file was not imported: {exc}")
    finally:
        os.close(fd)


def _with_manifest(reader: _Reader, path: Path, variant: str) -> Iterator[Event]:
    summary_path = path.with_name(path.name + ".manifest.json")
    entries_path = path.with_name(path.name + ".manifest.jsonl")
    summary = read_summary(summary_path) if summary_path.is_file() else {"format": "mbox"}
    if summary is None and entries_path.is_file():
        yield Warned(
            path,
            None,
            f"{summary_path.name} is unreadable or not a mailvault export manifest (not UTF-8 "
            "JSON of its schema); the manifest was ignored and the file read by its From_ lines",
        )
    if summary is not None and summary.get("format") == "mbox" and entries_path.is_file():
        reader.cursor = MboxManifestCursor(entries_path)
        if not summary_path.is_file():
            yield Warned(
                path,
                None,
                f"{summary_path.name} is missing; following {entries_path.name} alone "
                "(as written by mailvault export: mboxrd)",
            )
        quoting = str(summary.get("mbox_variant", "mboxrd"))
        if quoting != variant:
            yield Warned(
                path,
                None,
                f"{summary_path.name} says this file is {quoting}-quoted; read it as {quoting}",
            )
            reader.variant = quoting
    try:
        for event in reader.events():
            yield event
            if reader.cursor is not None and reader.cursor.broken:
                yield Warned(path, None, f"{entries_path.name}: {reader.cursor.broken}")
                reader.cursor.broken = None
    finally:
        if reader.cursor is not None:
            reader.cursor.close()
