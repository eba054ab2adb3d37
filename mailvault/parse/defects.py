"""Defects of the raw bytes that the MIME parser does not report.

The stdlib parser records structural defects per part (``StartBoundaryNotFoundDefect`` and so
on); these byte-level checks add what an auditor also wants to know: line-ending damage, NUL
bytes, raw 8-bit header bytes, a header block that never ends, and leading junk.  Each check is
one C-speed scan, so they cost little on every message.
"""

from __future__ import annotations

import re

BARE_LF = "bytes: bare LF line endings"
BARE_CR = "bytes: bare CR"
NUL = "bytes: NUL"
EIGHT_BIT_HEADER = "header: 8-bit bytes"
NO_SEPARATOR = "header: no blank line before the body"
LEADING_JUNK = "header: blank lines or BOM before the first header"
TRUNCATED = "mime: truncated (multipart boundary never closed)"
EMPTY = "message: empty"

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_block(raw: bytes) -> bytes | None:
    """The bytes before the first blank line, or None when there is no blank line."""
    match = _HEADER_END.search(raw)
    return raw[: match.start()] if match is not None else None


def byte_defects(raw: bytes, junk: int) -> list[str]:
    """Defects visible in the raw bytes (``junk``: length of skipped leading junk)."""
    found: list[str] = []
    if not raw:
        return [EMPTY]
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf:
        found.append(BARE_LF)
    if raw.count(b"\r") != crlf:
        found.append(BARE_CR)
    if b"\x00" in raw:
        found.append(NUL)
    if junk:
        found.append(LEADING_JUNK)
    head = header_block(raw[junk:])
    if head is None:
        found.append(NO_SEPARATOR)
        head = raw[junk:]
    if not head.isascii():
        found.append(EIGHT_BIT_HEADER)
    return found
