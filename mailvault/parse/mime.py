"""The MIME tree: how raw bytes become a ``Message``, how parts are numbered, what a part holds.

Everything that must agree between parse, ``show --part N`` and export lives here: the parser
settings, the leading junk that is skipped, the depth-first numbering (the order of
``Message.walk()``, root = 0) and the decoded bytes of one part.  The compat32 policy is used
because it is the most forgiving and by far the fastest; header decoding is done by this package.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.feedparser import BytesFeedParser
from email.message import Message
from email.policy import compat32

from mailvault.parse._boundary import install as install_boundary_matcher

# A UTF-8 BOM and lines of only spaces before the first header (an empty line is not junk: it
# is an empty header block).
_LEADING_JUNK = re.compile(rb"\A(?:\xef\xbb\xbf)?(?:[ \t]+\r?\n)*")
# RFC 5322 4.5 obsolete syntax "Subject  : text" (space before the colon).
OBS_COLON = re.compile(rb"^([!-9;-~]+)[ \t]+:", re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
FEED_CHUNK = 8192  # what email.parser.Parser reads at a time
install_boundary_matcher()  # see _boundary.py: a quarter of parsing a multipart message
OBSOLETE_COLON = "header: obsolete space before a colon"


def leading_junk(raw: bytes) -> int:
    """Length of a UTF-8 BOM and all-space lines before the first header."""
    match = _LEADING_JUNK.match(raw)
    return match.end() if match is not None else 0


def fix_obsolete_colons(raw: bytes) -> bytes | None:
    """``raw`` with "Name  :" made "Name:" in the header block, or None if there is none."""
    end = _HEADER_END.search(raw)
    cut = end.start() if end is not None else len(raw)
    fixed, count = OBS_COLON.subn(rb"\1:", raw[:cut])
    return fixed + raw[cut:] if count else None


def parse_tree(raw: bytes) -> tuple[Message, list[str]]:
    """The compat32 tree of ``raw`` and defects of the repairs made; may raise on bad input.

    Leading junk is skipped, and a header block in obsolete syntax is repaired and parsed again
    (the stdlib would otherwise take it for body text).
    """
    data = raw[leading_junk(raw) :]
    msg = _parse_bytes(data)
    if any(type(d).__name__ == "MissingHeaderBodySeparatorDefect" for d in msg.defects):
        fixed = fix_obsolete_colons(data)
        if fixed is not None:
            return _parse_bytes(fixed), [OBSOLETE_COLON]
    return msg, []


def _parse_bytes(data: bytes) -> Message:
    """``BytesParser(policy=compat32).parsebytes(data)``, the same tree, in a third of the memory.

    ``parsebytes`` decodes the whole message to one str and wraps it in a ``StringIO``, which
    holds it again as four bytes per character: 40 MB on top of an 8 MB message before the
    parser has read a line.  Feeding the feed parser slices of the bytes, as ``Parser`` feeds
    it slices of that str, gives the same tree without either copy.
    """
    parser = BytesFeedParser(policy=compat32)
    view = memoryview(data)
    for start in range(0, len(data), FEED_CHUNK):
        parser.feed(bytes(view[start : start + FEED_CHUNK]))
    return parser.close()


def parse_bytes(raw: bytes) -> Message:
    """The message tree exactly as ``parse_message`` numbers its parts (for show/export)."""
    return parse_tree(raw)[0]


def walk(msg: Message) -> Iterator[tuple[int, int, Message]]:
    """(index, depth, part) in ``Message.walk()`` order, without recursion (mail nests deep)."""
    stack: list[tuple[int, Message]] = [(0, msg)]
    index = 0
    while stack:
        depth, part = stack.pop()
        yield index, depth, part
        index += 1
        if part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (depth + 1, child) for child in reversed(children) if isinstance(child, Message)
                )


def part_at(msg: Message, index: int) -> Message | None:
    """The part numbered ``index`` (as in ``walk``), or None."""
    for i, _depth, part in walk(msg):
        if i == index:
            return part
    return None


def payload_bytes(part: Message) -> bytes:
    """The decoded content of a part: transfer encoding undone; an enclosed message as bytes.
    Empty if it cannot be had (parse goes on without it); ``content_bytes`` raises instead."""
    try:
        return content_bytes(part)
    except Exception:
        return b""


def content_bytes(part: Message) -> bytes:
    """``payload_bytes``, raising what stops it: writing out an enclosed message nested a few
    hundred levels deep exceeds Python's recursion limit (``RecursionError``), and `show --part`
    must say so, not write an empty file."""
    if part.is_multipart():
        if part.get_content_maintype() == "message":
            inner = part.get_payload(0)
            return inner.as_bytes() if isinstance(inner, Message) else b""
        return b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""
