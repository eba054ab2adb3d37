"""RFC 2047 encoded words (``=?charset?Q|B?text?=``), decoded leniently.

The stdlib's ``email.header.decode_header`` raises on bad base64 and hands back a mix of str and
bytes; this decoder never raises, joins adjacent encoded words (whitespace between them is not
text, and a multi-byte character may be split across two of them), accepts encoded words glued
to ordinary text, and sends every charset through ``decode_text``'s mislabel handling.
"""

from __future__ import annotations

import binascii
import re

from mailvault.parse.charset import decode_text, header_bytes_to_str

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?]*?)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_LINEBREAK = re.compile(r"[\r\n]+")


def _b_decode(text: str) -> bytes | None:
    """Base64 with missing padding tolerated; None when it is not base64 at all."""
    cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned.encode("ascii"))
    except (binascii.Error, ValueError):
        return None


def _q_decode(text: str) -> bytes:
    return binascii.a2b_qp(text.encode("utf-8", "surrogateescape"), header=True)


def decode_words(value: str) -> str:
    """Decode every encoded word in an (unfolded) header value; plain text passes through."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: bytes = b""  # bytes of adjacent encoded words in one charset, decoded together
    pending_charset = ""
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending_charset:
            out.append(decode_text(pending, pending_charset))
        pending, pending_charset = b"", ""

    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        charset, kind, payload = match.group(1), match.group(2).lower(), match.group(3)
        decoded = _b_decode(payload) if kind == "b" else _q_decode(payload)
        if decoded is None:  # not really an encoded word: keep it as written
            flush()
            out.append(between + match.group(0))
            pos = match.end()
            continue
        # Whitespace between two encoded words is not part of the text (RFC 2047 section 6.2).
        if between and not (pending_charset and between.isspace()):
            flush()
            out.append(between)
        label = charset.split("*", 1)[0].lower()
        if pending_charset and label != pending_charset:
            flush()
        pending += decoded
        pending_charset = label
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def unfold(value: str) -> str:
    """Join folded header lines (RFC 5322 2.2.3) and turn any stray line break into a space."""
    return _LINEBREAK.sub(" ", _FOLD.sub("", value))


def header_text(raw_value: str) -> str:
    """A raw header value as the parser holds it (maybe 8-bit, folded, encoded) to clean text."""
    return decode_words(unfold(header_bytes_to_str(raw_value))).strip()
