"""`mailvault show ID`: find one message by sha256, unique prefix or Message-ID, and render it.

Identifiers are resolved against the catalog with plain ``sqlite3`` (no sqlite-utils); the message
itself is re-parsed from its blob, so ``--part N`` numbers parts exactly as the parser did
(``mailvault.parse.mime``: depth-first, root = 0).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

from mailvault._text import UNSAFE_RANGES, shown
from mailvault.errors import CatalogError, StoreError, UsageError
from mailvault.parse.model import Address, ParsedMessage
from mailvault.store import BlobStore
from mailvault.vault import read_only_uri

MIN_PREFIX = 8
MAX_CANDIDATES = 20
HEX = re.compile(r"^[0-9a-fA-F]+$")
# What search masks too (mailvault._text.UNSAFE_RANGES) except tab and newline, which a body
# keeps: a hostile message must not drive the terminal or disguise what it says.
UNSAFE = re.compile(
    r"(?![\t\n])[" + "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in UNSAFE_RANGES) + "]"
)


@dataclass(frozen=True)
class Candidate:
    sha256: str
    date: str
    from_addr: str
    subject: str

    def line(self) -> str:
        sender = one_line(self.from_addr)
        return f"{self.sha256}  {self.date[:16]:16}  {sender:30.30}  {one_line(self.subject)}"


class AmbiguousId(UsageError):
    """The identifier matches more than one message; ``candidates`` lists them."""

    def __init__(self, message: str, candidates: list[Candidate]) -> None:
        super().__init__(message)
        self.candidates = candidates


class MessageNotFound(UsageError):
    """No message has this sha256, prefix or Message-ID."""


class PartUnavailable(UsageError):
    """The parser cannot take this part out of its message (its parts nest too deep to
    follow); ``--raw`` still has the whole message's bytes."""


def safe(text: str) -> str:
    return UNSAFE.sub("?", text)


def one_line(text: str) -> str:
    """``safe``, and every line break (LF, U+2028, ...) and run of white space one space: for
    a field shown on one line, which must not start lines of its own (a file name holding
    "\n  [3] invoice.pdf" listed an attachment that is not there)."""
    return safe(" ".join(text.split()))


def _connect(catalog_path: Path) -> sqlite3.Connection:
    if not catalog_path.exists():
        raise CatalogError(f"no catalog at {catalog_path}")
    try:  # only read through (the audit entry is written by mailvault.audit)
        return sqlite3.connect(read_only_uri(catalog_path), uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise CatalogError(f"cannot open the catalog {catalog_path}: {exc}") from None


def _has_meta(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='message_meta'"
    ).fetchone()
    return row is not None


def _candidates(conn: sqlite3.Connection, digests: list[str]) -> list[Candidate]:
    out = []
    meta = _has_meta(conn)
    for digest in digests:
        row = (
            conn.execute(
                "SELECT date, from_addr, subject FROM message_meta WHERE sha256=?", (digest,)
            ).fetchone()
            if meta
            else None
        )
        out.append(Candidate(digest, *(row or ("", "", ""))))
    return out


def resolve(catalog_path: Path, ident: str) -> str:
    """The sha256 that ``ident`` names: a sha256, a unique prefix (>= 8 hex), or a Message-ID."""
    ident = ident.strip()
    if not ident:
        raise UsageError("give a message id: a sha256, a prefix of 8+ hex digits or a Message-ID")
    conn = _connect(catalog_path)
    try:
        if HEX.match(ident) and len(ident) <= 64:
            digest = ident.lower()
            if len(digest) < MIN_PREFIX:
                raise UsageError(
                    f"{ident!r} is too short: give at least {MIN_PREFIX} hex digits of the sha256"
                )
            rows = conn.execute(
                "SELECT sha256 FROM messages WHERE sha256 >= ? AND sha256 < ? "
                "ORDER BY sha256 LIMIT ?",
                (digest, digest + "g", MAX_CANDIDATES + 1),
            ).fetchall()
            if len(rows) == 1:
                return str(rows[0][0])
            if len(rows) > 1:
                raise AmbiguousId(
                    f"{ident!r} matches {'more than ' if len(rows) > MAX_CANDIDATES else ''}"
                    f"{min(len(rows), MAX_CANDIDATES)} messages; give more digits",
                    _candidates(conn, [r[0] for r in rows[:MAX_CANDIDATES]]),
                )
        mid = " ".join(ident.removeprefix("<").removesuffix(">").split())  # as parse stores it
        if not mid:  # `<>` would list every message without a Message-ID as sharing one
            raise UsageError(
                f"{ident!r} is an empty Message-ID: give the id inside the brackets "
                "(<abc@example.com>), a sha256 or a prefix of 8+ hex digits"
            )
        rows = (
            conn.execute(
                "SELECT sha256 FROM message_meta WHERE message_id = ? ORDER BY date, sha256 "
                "LIMIT ?",
                (mid, MAX_CANDIDATES + 1),
            ).fetchall()
            if _has_meta(conn)
            else []
        )
        if len(rows) == 1:
            return str(rows[0][0])
        if len(rows) > 1:
            raise AmbiguousId(
                f"Message-ID <{mid}> is shared by {len(rows)} different messages; "
                "pick one by its sha256",
                _candidates(conn, [r[0] for r in rows[:MAX_CANDIDATES]]),
            )
        raise MessageNotFound(
            f"no message with sha256, prefix or Message-ID {ident!r}{_hint(conn, mid)}"
        )
    except sqlite3.Error as exc:
        raise CatalogError(f"cannot read the catalog {catalog_path}: {exc}") from None
    finally:
        conn.close()


def _hint(conn: sqlite3.Connection, mid: str) -> str:
    """Why a Message-ID may not be found, and the one command that helps."""
    if " " in mid and _has_meta(conn):
        # a parse before ids with spaces were kept whole stored <abc def@x> as "<abc"
        cut = mid.split(" ", 1)[0]
        sql = "SELECT 1 FROM message_meta WHERE message_id IN (?, ?) LIMIT 1"
        if conn.execute(sql, (cut, "<" + cut)).fetchone():
            return (
                f" (an older mailvault stored such ids cut at the first space, {cut!r}: "
                "run `mailvault reindex` once to parse them again)"
            )
    return " (messages not yet parsed are found by sha256 only; run `mailvault index`)"


def _damaged(digest: str) -> StoreError:
    return StoreError(
        f"blob {digest} no longer matches its sha256: the stored copy is damaged, so it is not "
        "shown; run `mailvault verify` and restore the vault from a backup"
    )


def verified_bytes(store: BlobStore, digest: str) -> bytes:
    """The message's stored bytes, checked against their name before anything is shown: an
    investigator must never pass on an altered copy as the archived message."""
    import hashlib

    import zstandard

    try:
        data = store.read_bytes(digest)
    except (OSError, zstandard.ZstdError) as exc:
        raise StoreError(f"blob {digest} cannot be read ({exc}); run `mailvault verify`") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise _damaged(digest)
    return data


def verified_chunks(store: BlobStore, digest: str) -> Iterator[bytes]:
    """The message's stored bytes in chunks (flat memory for any size), checked in a first pass
    before the first byte is given out, and again on the way (raises if it changed since)."""
    import zstandard

    try:
        matches = store.rehash(digest) == digest
    except (OSError, zstandard.ZstdError) as exc:
        raise StoreError(f"blob {digest} cannot be read ({exc}); run `mailvault verify`") from None
    if not matches:
        raise _damaged(digest)
    yield from store.iter_verified(digest)


def require_not_purged(catalog_path: Path, digest: str) -> None:
    """A purged message has only its tombstone left: say so, not "blob missing"."""
    conn = _connect(catalog_path)
    try:
        row = conn.execute("SELECT purged_at FROM messages WHERE sha256=?", (digest,)).fetchone()
    finally:
        conn.close()
    if row is not None and row[0]:
        raise MessageNotFound(
            f"message {digest} is marked purged (at {row[0]}): retention removed it, and only "
            "its tombstone remains; run `mailvault verify` if that is unexpected"
        )


def first_ingest(catalog_path: Path, digest: str) -> datetime:
    """When the vault first stored the message: what parse falls back to without a Date."""
    conn = _connect(catalog_path)
    try:
        row = conn.execute(
            "SELECT first_ingest_at FROM messages WHERE sha256=?", (digest,)
        ).fetchone()
    finally:
        conn.close()
    try:
        moment = datetime.fromisoformat(row[0]) if row else datetime.now(UTC)
    except ValueError:
        moment = datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- rendering ---------------------------------------------------------------------------------


def _utc(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS UTC``; not strftime, whose %Y writes the year 1 as "1" on glibc."""
    return f"{moment.year:04d}-{moment:%m-%d %H:%M:%S} UTC"


def _addrs(addrs: tuple[Address, ...]) -> str:
    return ", ".join(a.mailbox() for a in addrs)


def render_text(msg: ParsedMessage) -> Iterator[str]:
    """Headers, a blank line, the text body, and the attachment list."""
    date = _utc(msg.date) if msg.date else ""
    if msg.date_fallback:
        date += f"  (no usable Date header: {msg.date_raw!r}; ingest time shown)"
    elif msg.date_raw:
        date += f"  ({msg.date_raw})"
    rows = [
        ("From", _addrs(msg.from_)),
        ("To", _addrs(msg.to)),
        ("Cc", _addrs(msg.cc)),
        ("Bcc", _addrs(msg.bcc)),
        ("Date", date),
        ("Subject", msg.subject),
        ("Message-ID", f"<{msg.message_id}>" if msg.message_id else ""),
        ("SHA256", msg.sha256),
    ]
    for name, value in rows:
        if value or name in ("From", "To", "Date", "Subject"):
            yield f"{name + ':':12}{one_line(value)}"
    if msg.unreadable:
        yield f"{'Warning:':12}the parser could not read this message; shown is what it recovered"
    if msg.defects:
        yield f"{'Defects:':12}{one_line('; '.join(msg.defects))}"
    yield ""
    yield from _lines(safe(msg.body_text.replace("\r\n", "\n")).rstrip("\n"))
    if msg.attachments:
        yield ""
        yield "Attachments (save one with --part N --out FILE):"
        for att in msg.attachments:
            name = one_line(att.filename) or "(no name)"
            yield f"  [{att.index}] {name}  {one_line(att.content_type)}  {att.size:,} bytes"


def _lines(text: str) -> Iterator[str]:
    """``text.split("\n")``, one line at a time: a 16 MiB body is not copied into a list of
    lines next to itself (nor is the text copied at all when nothing in it needs changing)."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def as_json(msg: ParsedMessage) -> dict[str, Any]:
    def addrs(items: tuple[Address, ...]) -> list[dict[str, str]]:
        return [{"name": a.name, "addr": a.addr} for a in items]

    return {
        "id": msg.sha256,
        "message_id": msg.message_id,
        "date": msg.date.isoformat() if msg.date else None,
        "date_raw": msg.date_raw,
        "date_fallback": msg.date_fallback,
        "from": addrs(msg.from_),
        "to": addrs(msg.to),
        "cc": addrs(msg.cc),
        "bcc": addrs(msg.bcc),
        "reply_to": addrs(msg.reply_to),
        "subject": msg.subject,
        "size": msg.size,
        "in_reply_to": msg.in_reply_to,
        "references": list(msg.references),
        "list_id": msg.list_id,
        "thread_id": msg.thread_id,
        "body": msg.body_text,
        "attachments": [
            {
                "index": a.index,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
            }
            for a in msg.attachments
        ],
        "unreadable": msg.unreadable,
        "defects": list(msg.defects),
    }


def write_part(
    store: BlobStore,
    digest: str,
    index: int,
    write: Callable[[bytes], object],
    warn: Callable[[str], object] | None = None,
) -> int:
    """Write the decoded content of part ``index`` with ``write``; returns its size.

    A message whose parts nest deeper than the stdlib's recursive parser and generator can go
    (thousands of multiparts, or hundreds of enclosed messages) is a ``PartUnavailable``
    naming ``--raw``: it printed a RecursionError traceback, or wrote an empty part.
    """
    try:
        return _write_part(store, digest, index, write, warn)
    except RecursionError:
        raise PartUnavailable(
            f"part {index} cannot be taken out of this message: its MIME parts nest too deep "
            f"for the parser to follow; `mailvault show {digest} --raw` writes the whole "
            "message's exact bytes"
        ) from None


def _write_part(
    store: BlobStore,
    digest: str,
    index: int,
    write: Callable[[bytes], object],
    warn: Callable[[str], object] | None,
) -> int:
    """``write_part``, which may raise RecursionError.

    A message over ``skeleton.WHOLE_MAX`` is not held in memory: the part is decoded as the
    message streams by into a temporary file (nothing reaches ``write`` before the part is
    known to be the one asked for), and the message's skeleton tells which part that is.
    """
    import tempfile

    from mailvault.parse import skeleton
    from mailvault.parse.mime import parse_bytes

    head, rest = skeleton.read_head(verified_chunks(store, digest))
    if rest is None:
        payload = part_bytes(b"".join(head), index)
        write(payload)
        return len(payload)
    with tempfile.TemporaryFile() as spool:
        walker = skeleton.Skeleton(extract=index, sink=spool.write)
        for chunk in head:
            walker.feed(chunk)
        head.clear()
        for chunk in rest:
            walker.feed(chunk)
        tree = parse_bytes(walker.finish())
        _content_part(tree, index)  # no such part, or a container: a usage error
        got = walker.extracted
        if got is None or index in walker.undecoded or index not in walker.verify(tree):
            # uuencode the stdlib keeps as text, or a structure this walk does not follow:
            # the whole-message way
            payload = part_bytes(verified_bytes(store, digest), index)
            write(payload)
            return len(payload)
        if not got.exact and warn is not None:
            warn(
                f"part {index}'s base64 is damaged: it was decoded "
                "leniently, as it streamed by; `mailvault show --raw` has the exact bytes"
            )
        spool.seek(0)
        while block := spool.read(1024 * 1024):
            write(block)
        return got.size


def save_part(
    store: BlobStore,
    digest: str,
    index: int,
    out: Path,
    warn: Callable[[str], object] | None = None,
) -> int:
    """``write_part`` into the file ``out``, which appears (or is replaced) only once the part
    is whole: no half-written part, and a wrong part number leaves an existing file alone.
    Something that is not a regular file (/dev/null, a FIFO) is written into as it is."""
    import os

    from mailvault._tempfiles import temp_path

    if out.exists() and not out.is_file():
        with out.open("wb") as sink:
            return write_part(store, digest, index, sink.write, warn)
    if not out.parent.is_dir():
        raise UsageError(
            f"--out {shown(str(out))}: directory {shown(str(out.parent))} does not exist; "
            "create it first"
        )
    spool = Path(temp_path(out.parent, out.name))
    try:
        with spool.open("xb") as sink:
            size = write_part(store, digest, index, sink.write, warn)
        os.replace(spool, out)
    except OSError as exc:
        spool.unlink(missing_ok=True)
        raise StoreError(
            f"cannot write --out {shown(str(out))}: {exc.strerror or exc}; choose another path "
            "(the part was not written)"
        ) from None
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    return size


def _content_part(tree: Message, index: int) -> Message:
    """Part ``index`` of a parsed message, as ``show`` numbers them; a usage error if there is
    none, or if it is a multipart container (whose content is its parts)."""
    from mailvault.parse.mime import part_at, walk

    part = part_at(tree, index)
    if part is None:
        count = sum(1 for _ in walk(tree))
        raise UsageError(f"this message has parts 0 to {count - 1}; there is no part {index}")
    if part.is_multipart() and part.get_content_maintype() != "message":
        raise UsageError(f"part {index} is a multipart container, not content; pick another part")
    return part


def part_bytes(raw: bytes, index: int) -> bytes:
    """The decoded content of part ``index`` (numbered as ``show`` lists them); of an attached
    message, its bytes as the message stores them (the parser would write them out anew).
    Raises RecursionError for a message nested too deep to parse or write out."""
    from mailvault.parse.mime import content_bytes, parse_bytes
    from mailvault.parse.skeleton import enclosed_messages

    tree = parse_bytes(raw)
    part = _content_part(tree, index)
    if part.get_content_maintype() == "message" and part.is_multipart():
        pieces: list[bytes] = []
        if index in enclosed_messages(raw, tree, index, pieces.append):
            return b"".join(pieces)
    return content_bytes(part)
