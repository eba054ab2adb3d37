"""``parse_message``: raw bytes to a ``ParsedMessage``, for any input, without raising.

The normal path parses the MIME tree with the stdlib (compat32) and decodes headers and bodies
with this package's lenient decoders.  If that raises, or finds no header at all, the message is
marked unreadable and whatever a regex scan recovers is kept, so it is still listed, searchable
and exportable.  Each header field is decoded under its own guard so one broken field does not
cost the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from mailvault.parse import defects as bytecheck
from mailvault.parse.content import MAX_BODY_TEXT_BYTES, Content, extract
from mailvault.parse.encoded_words import header_text
from mailvault.parse.fallback import scan_body, scan_headers
from mailvault.parse.headers import (
    ADDRESS_FIELDS,
    addresses,
    list_id,
    message_id,
    message_ids,
    parse_date,
)
from mailvault.parse.mime import leading_junk, parse_tree
from mailvault.parse.model import Address, ParsedMessage

T = TypeVar("T")
HeaderMap = dict[str, list[str]]


def _header_map(items: Iterable[tuple[str, Any]]) -> HeaderMap:
    found: HeaderMap = {}
    for name, value in items:
        found.setdefault(str(name).strip().lower(), []).append(str(value))
    return found


def _guard(defects: list[str], label: str, default: T, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except Exception as exc:
        defects.append(f"{label}: {type(exc).__name__}")
        return default


def _build(
    raw: bytes,
    sha256: str,
    headers: HeaderMap,
    content: Content,
    defects: list[str],
    unreadable: bool,
    ingest_time: datetime,
) -> ParsedMessage:
    def first(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values else None

    no_addresses: tuple[Address, ...] = ()
    fields: dict[str, Any] = {}
    for header, attr in ADDRESS_FIELDS.items():
        read = partial(addresses, headers.get(header, []))
        fields[attr] = _guard(defects, header, no_addresses, read)
    date, date_raw, fell_back, date_defect = _guard(
        defects,
        "date",
        (ingest_time, "", True, "date: unparsable"),
        lambda: parse_date(first("date"), ingest_time),
    )
    if date_defect:
        defects.append(date_defect)
    own_id = _guard(defects, "message-id", "", lambda: message_id(first("message-id") or ""))
    reply_to_id = _guard(defects, "in-reply-to", "", lambda: message_id(first("in-reply-to") or ""))
    no_ids: tuple[str, ...] = ()
    references = _guard(
        defects, "references", no_ids, lambda: message_ids(" ".join(headers.get("references", [])))
    )
    return ParsedMessage(
        sha256=sha256,
        size=len(raw),
        message_id=own_id,
        subject=_guard(defects, "subject", "", lambda: header_text(first("subject") or "")),
        date=date,
        date_raw=date_raw,
        date_fallback=fell_back,
        in_reply_to=reply_to_id,
        references=references,
        list_id=_guard(defects, "list-id", "", lambda: list_id(first("list-id") or "")),
        thread_id=(references[0] if references else "") or reply_to_id or own_id,
        body_text=content.body_text,
        attachments=tuple(content.attachments),
        defects=tuple(dict.fromkeys(defects)),
        unreadable=unreadable,
        **fields,
    )


def _parse(raw: bytes, sha256: str, ingest_time: datetime, body_limit: int) -> ParsedMessage:
    junk = leading_junk(raw)
    defects = bytecheck.byte_defects(raw, junk)
    msg, repairs = parse_tree(raw)
    defects.extend(repairs)
    headers = _header_map(msg.raw_items())
    content = extract(msg, raw, body_limit=body_limit)
    defects.extend(content.defects)
    if "CloseBoundaryNotFoundDefect" in content.defects:
        defects.append(bytecheck.TRUNCATED)
    # Readable means: empty header block and a body, or at least one header field.  No field
    # and a first line that is not one either (random bytes, a stray document) is unreadable.
    unreadable = not raw or (
        not headers
        and any(type(d).__name__ == "MissingHeaderBodySeparatorDefect" for d in msg.defects)
    )
    if unreadable:
        defects.append("unreadable: no header fields")
    return _build(raw, sha256, headers, content, defects, unreadable, ingest_time)


def _fallback(raw: bytes, sha256: str, ingest_time: datetime, reason: str) -> ParsedMessage:
    defects = [f"unreadable: {reason}"]
    empty: HeaderMap = {}
    headers = _guard(defects, "header scan", empty, lambda: _header_map(scan_headers(raw)))
    body = _guard(defects, "body scan", "", lambda: scan_body(raw))
    return _build(raw, sha256, headers, Content(body_text=body), defects, True, ingest_time)


def parse_message(
    raw: bytes, sha256: str, *, ingest_time: datetime, body_limit: int = MAX_BODY_TEXT_BYTES
) -> ParsedMessage:
    """Everything the catalog and index need from one message; never raises.

    ``body_limit``: bytes of body text read, all body parts together (``content.extract``)."""
    if ingest_time.tzinfo is None:
        ingest_time = ingest_time.replace(tzinfo=UTC)
    else:
        ingest_time = ingest_time.astimezone(UTC)
    try:
        return _parse(raw, sha256, ingest_time, body_limit)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:200]
    try:
        return _fallback(raw, sha256, ingest_time, reason)
    except Exception as exc:
        return ParsedMessage(
            sha256=sha256,
            size=len(raw),
            message_id="",
            subject="",
            date=ingest_time,
            date_fallback=True,
            defects=(f"unreadable: {reason}", f"fallback: {type(exc).__name__}"),
            unreadable=True,
        )
