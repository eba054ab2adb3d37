"""Parsing of status lines: +OK / -ERR / "+ " continuations, RFC 2449 codes, APOP stamps.

Kept apart from the connection so the grammar (which is small but fiddly) can be read and
tested on its own.
"""

from __future__ import annotations

import enum
import re

# RFC 2449 section 8: resp-code = "[" resp-level *("/" resp-level) "]",
# resp-level = 1*rchar, rchar = %x21-2E / %x30-5C / %x5E-7F (no "/", no "]").
_RCHAR = rb"[\x21-\x2e\x30-\x5c\x5e-\x7f]+"
_CODE = re.compile(rb"\[(" + _RCHAR + rb"(?:/" + _RCHAR + rb")*)\]")
# RFC 1939 section 7: the APOP timestamp is an RFC 822 msg-id,
# such as <1896.697170952@dbc.mtview.ca.us>.
_ATOMS = rb"[\x21-\x3b\x3d\x3f-\x7e]+"
_TIMESTAMP = re.compile(rb"<" + _ATOMS + rb"@" + _ATOMS + rb">")


class Kind(enum.Enum):
    OK = enum.auto()
    ERR = enum.auto()
    CONTINUATION = enum.auto()


def classify(line: bytes) -> tuple[Kind, bytes] | None:
    """Split a status line into its kind and the rest after the indicator and one space."""
    if line.startswith(b"+OK") and (len(line) == 3 or line[3] == 0x20):
        return Kind.OK, line[4:]
    if line.startswith(b"-ERR") and (len(line) == 4 or line[4] == 0x20):
        return Kind.ERR, line[5:]
    if line == b"+" or line.startswith(b"+ "):
        return Kind.CONTINUATION, line[2:]
    return None


def text_and_code(rest: bytes) -> tuple[str, str | None]:
    """The human-readable text and the bracketed response code at its start, if any."""
    match = _CODE.match(rest)
    code = match.group(1).decode("ascii") if match else None
    return rest.decode("utf-8", "replace"), code


def apop_timestamp(rest: bytes) -> str | None:
    """The ``<...@...>`` timestamp of an APOP-capable greeting, angle brackets included."""
    match = _TIMESTAMP.search(rest)
    return match.group(0).decode("ascii") if match else None
