"""Last-resort reading of a message the MIME parser could not handle.

A compliance archive never drops a message, so when parsing raises (or finds nothing that looks
like mail) the headers are recovered with a line-oriented regex scan and the rest is kept as
body text.  Every step is guarded: this module must return something for any bytes.
"""

from __future__ import annotations

import re

from mailvault.parse.charset import decode_text
from mailvault.parse.defects import header_block

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
MAX_FALLBACK_BODY = 4 * 1024 * 1024


def scan_headers(raw: bytes) -> list[tuple[str, str]]:
    """(name, raw value) pairs found in the header block, values as surrogate-escaped str.

    The values are returned the way the stdlib parser would hold them, so the normal header
    decoding applies unchanged.
    """
    head = header_block(raw)
    if head is None:
        head = raw[:65536]
    pairs: list[tuple[str, str]] = []
    for match in _FIELD.finditer(head):
        name = match.group(1).decode("ascii", "replace")
        value = match.group(2).lstrip(b" \t").decode("ascii", "surrogateescape")
        pairs.append((name, value))
    return pairs


def scan_body(raw: bytes) -> str:
    """What follows the header block, decoded best effort (the whole input if no block)."""
    match = re.search(rb"\r?\n\r?\n", raw)
    body = raw[match.end() :] if match is not None else raw
    return decode_text(body[:MAX_FALLBACK_BODY], None).replace("\r\n", "\n")
