"""Byte transforms on chunked message streams, shared by export and import.

Every transform here keeps memory flat: it sees a message as a sequence of chunks whose
boundaries may fall anywhere, including between the CR and LF of a line break, or inside a
``>>From `` prefix that decides whether a line is quoted.  Each transform holds back just the
bytes it cannot decide yet and releases them with the next chunk or at ``flush()``.

mboxrd (the quoting used by mutt, getmail6, mpop and notmuch ``show --format=mbox``): on
writing, every line that matches ``^>*From `` gains one leading ``>``; on reading, every line
that matches ``^>+From `` loses one.  Unlike mboxo (which only quotes ``From `` and so cannot
tell an original ``>From `` from a quoted ``From ``) this is exactly reversible.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from mailvault.maildate import MONTHS, parse_date

HEADER_CAP = 1024 * 1024  # read at most this much of a message to find its header block

# A line start that mboxrd quoting touches, and the longest partial line that might still turn
# into one once more bytes arrive (so it must be held back until they do).
_QUOTE = re.compile(rb"^(?=>*From )", re.MULTILINE)
_UNQUOTE = re.compile(rb"^>(?=>*From )", re.MULTILINE)
_UNDECIDED = re.compile(rb">*(?:F(?:r(?:o(?:m)?)?)?)?")


class LineEndingsToLf:
    """CRLF -> LF; a bare CR (not followed by LF) is content and stays."""

    def __init__(self) -> None:
        self._cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            self._cr = True
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        out, self._cr = (b"\r" if self._cr else b""), False
        return out


class _LineStartRewriter:
    """Apply a substitution at line starts of a chunked stream (the mboxrd (un)quoting)."""

    def __init__(self, pattern: re.Pattern[bytes], replacement: bytes) -> None:
        self._pattern = pattern
        self._replacement = replacement
        self._held = b""
        self._line_start = True  # the next byte fed begins a line

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        self._held = b""
        if not data:
            return b""
        first_at_line_start = self._line_start
        last_nl = data.rfind(b"\n")
        tail = data[last_nl + 1 :]
        tail_at_line_start = last_nl >= 0 or first_at_line_start
        if tail and tail_at_line_start and _UNDECIDED.fullmatch(tail):
            self._held = tail
            data = data[: last_nl + 1]
            self._line_start = True
        else:
            self._line_start = data.endswith(b"\n")
        return self._rewrite(data, first_at_line_start)

    def flush(self) -> bytes:
        """The held-back tail: a prefix that never completed, so it is left as it is."""
        out, self._held = self._held, b""
        self._line_start = True
        return out

    def _rewrite(self, data: bytes, at_line_start: bool) -> bytes:
        if at_line_start:
            return self._pattern.sub(self._replacement, data)
        nl = data.find(b"\n")
        if nl < 0:
            return data
        return data[: nl + 1] + self._pattern.sub(self._replacement, data[nl + 1 :])


class MboxrdQuoter(_LineStartRewriter):
    """``>*From `` at a line start gains one ``>``."""

    def __init__(self) -> None:
        super().__init__(_QUOTE, b">")


class MboxrdUnquoter(_LineStartRewriter):
    """``>+From `` at a line start loses one ``>``."""

    def __init__(self) -> None:
        super().__init__(_UNQUOTE, b"")


_QUOTE_AFTER_NL = re.compile(rb"\n(?=>*From )")
_QUOTE_AT_START = re.compile(rb">*From ")


def quote_mboxrd(data: bytes) -> bytes:
    """mboxrd quoting of a whole message held in memory (what ``MboxrdQuoter`` does in chunks).

    Most messages contain no ``From `` at all, and a substring test is far cheaper than the
    line-start regex over every byte; when there is one, the pattern is anchored on the ``\n``
    before the line, which the regex engine finds with a fast literal search.
    """
    if b"From " not in data:
        return data
    quoted = _QUOTE_AFTER_NL.sub(b"\n>", data)
    return b">" + quoted if _QUOTE_AT_START.match(data) else quoted


def to_lf(chunks: Iterable[bytes]) -> Iterator[bytes]:
    conv = LineEndingsToLf()
    for chunk in chunks:
        out = conv.feed(chunk)
        if out:
            yield out
    tail = conv.flush()
    if tail:
        yield tail


# -- the header block --------------------------------------------------------------------------
_BLANK_LINE = re.compile(rb"\n\r?\n")


def header_end(data: bytes) -> int | None:
    """Length of the header block (up to and including the last header line), if complete."""
    if data.startswith((b"\n", b"\r\n")):
        return 0
    match = _BLANK_LINE.search(data)
    return match.start() + 1 if match else None


def header_block(data: bytes) -> bytes:
    """The header block of a whole message, as ``peek_header`` finds it in the same bytes."""
    head = data[:HEADER_CAP]  # the whole of a smaller message, without a copy
    end = header_end(head)
    return head[:end] if end is not None else head


def peek_header(chunks: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """Read just enough chunks to see the header block (capped at HEADER_CAP).

    Returns the header bytes and an iterator that yields the whole message again, starting with
    the chunks already read, so the caller can stream the message in one pass.
    """
    buffered: list[bytes] = []
    size = 0
    header: bytes | None = None
    for chunk in chunks:
        buffered.append(chunk)
        size += len(chunk)
        joined = b"".join(buffered) if len(buffered) > 1 else chunk
        end = header_end(joined)
        if end is not None:
            header = joined[:end]
            break
        if size >= HEADER_CAP:
            header = joined[:HEADER_CAP]
            break
    if header is None:
        header = b"".join(buffered)[:HEADER_CAP]

    def replay() -> Iterator[bytes]:
        yield from buffered
        yield from chunks

    return header, replay()


def header_fields(header: bytes, wanted: frozenset[str]) -> dict[str, str]:
    """The first value of each wanted field (lower-case names), unfolded and decoded leniently.

    Hand-rolled rather than ``email.parser`` so that raw 8-bit bytes, a leading mbox From_ line
    or a broken header cannot raise, and so that only the header bytes are ever touched.  Each
    name is looked for as ``\n<name>`` in a lower-cased copy (a ``\n`` is put before the first
    line) by ``bytes.find``, a fast literal search: a case-insensitive regex cannot use one and
    cost three times as much per message.  A value runs on over continuation lines (those
    starting with a space or tab).
    """
    lines = b"\n" + header
    lowered = lines.lower()  # ASCII only, so every offset stays where it was
    found: dict[str, str] = {}
    for name in wanted:
        needle = _NEEDLES.get(name)
        if needle is None:
            needle = _NEEDLES[name] = b"\n" + name.encode("ascii")
        at = lowered.find(needle)
        while at >= 0:
            colon = _COLON.match(lowered, at + len(needle))
            if colon is not None:
                value = _FIELD_VALUE.match(lines, colon.end())
                assert value is not None  # the pattern matches the empty string too
                text = value.group()
                if b"\n" in text:
                    text = _UNFOLD.sub(b" ", text)
                found[name] = text.strip().decode("utf-8", "replace")
                break
            at = lowered.find(needle, at + 1)
    return found


_NEEDLES: dict[str, bytes] = {}
_COLON = re.compile(rb"[ \t]*:")
_FIELD_VALUE = re.compile(rb"[^\n]*(?:\n[ \t][^\n]*)*")
_UNFOLD = re.compile(rb"[ \t]*\r?\n[ \t]+")


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """What export needs to know about a message besides its bytes."""

    message_id: str | None
    date: datetime  # aware, UTC
    date_from_header: bool
    envelope_sender: str  # for the mbox From_ line


META_FIELDS = frozenset({"message-id", "date", "return-path", "from"})
_ID_DATE_FIELDS = frozenset({"message-id", "date"})


_ANGLE_ADDR = re.compile(r"<([^<>\s]*)>")
_PRINTABLE = re.compile(r"[!-~]+")


def _safe_addr(value: str) -> str | None:
    """The address of a mailbox header, if it can stand in a From_ line (printable ASCII)."""
    match = _ANGLE_ADDR.search(value)
    addr = match.group(1) if match else email.utils.parseaddr(value)[1]
    return addr if addr and _PRINTABLE.fullmatch(addr) else None


def message_meta(header: bytes, fallback_date: datetime, *, envelope: bool = True) -> MessageMeta:
    """Message-ID, date (Date header, else ``fallback_date``) and envelope sender of a message.

    ``envelope=False`` (every format but mbox) skips the sender, left as "MAILER-DAEMON".
    """
    fields = header_fields(header, META_FIELDS if envelope else _ID_DATE_FIELDS)
    message_id = fields.get("message-id", "").strip().strip("<>").strip() or None
    date = parse_date(fields["date"]) if "date" in fields else None
    from_header = date is not None
    if date is None:
        date = fallback_date if fallback_date.tzinfo else fallback_date.replace(tzinfo=UTC)
        date = date.astimezone(UTC)
    sender = None
    if envelope and "return-path" in fields:
        path = fields["return-path"].strip()
        # <> is the null sender of a bounce: MAILER-DAEMON; one that cannot stand in a From_
        # line (a quoted local part with a space) leaves the choice to From, as documented
        sender = "MAILER-DAEMON" if path.replace(" ", "") == "<>" else _safe_addr(path)
    if envelope and sender is None and "from" in fields:
        sender = _safe_addr(fields["from"])
    return MessageMeta(message_id, date, from_header, sender or "MAILER-DAEMON")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def asctime(moment: datetime) -> str:
    """C asctime() form in UTC, independent of the locale: ``Fri Jul  8 12:08:34 2011``.  The
    year has four digits (``0999``): an mbox reader takes a From line for a separator only
    with a year of four (importer.mbox.classify), and would join a message dated 999 to the
    one before it."""
    t = moment.astimezone(UTC)
    return (
        f"{_DAYS[t.weekday()]} {MONTHS[t.month - 1]} {t.day:2d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} {t.year:04d}"
    )


def from_line(meta: MessageMeta) -> bytes:
    """The mbox separator line for a message, with its LF."""
    return f"From {meta.envelope_sender} {asctime(meta.date)}\n".encode("ascii")
