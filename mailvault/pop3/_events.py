"""The events ``Connection.next_event`` returns, one per protocol element the server sent.

Response events carry the command they answer, so a driver that pipelines never has to
keep its own queue to know which RETR a ``Data`` chunk belongs to.  Message data is handed
out in large chunks (``Data``) rather than lines because an archiver stores bytes, and
per-line events would cost a Python call per line.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._commands import Command


class NeedData(enum.Enum):
    """Returned by ``next_event`` when the buffered bytes do not complete an event."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's +OK greeting; ``apop_timestamp`` includes the angle brackets."""

    text: str
    apop_timestamp: str | None


@dataclass(frozen=True, slots=True)
class Ok:
    """A +OK status line.  ``text`` is everything after "+OK ", response code included."""

    command: Command
    text: str
    code: str | None


@dataclass(frozen=True, slots=True)
class Err:
    """A -ERR status line; ``command`` is None when the greeting itself was -ERR."""

    command: Command | None
    text: str
    code: str | None


@dataclass(frozen=True, slots=True)
class Continuation:
    """A "+ <base64>" SASL challenge; answer it with ``AuthContinue``."""

    command: Command
    data: str


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a CAPA/LIST/UIDL listing, dot-unstuffed, without CRLF."""

    command: Command
    line: bytes


@dataclass(frozen=True, slots=True)
class Data:
    """A chunk of RETR/TOP message bytes, dot-unstuffed, line ends exactly as sent."""

    command: Command
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The "." terminator of a multi-line response."""

    command: Command


@dataclass(frozen=True, slots=True)
class Closed:
    """The server closed the connection after answering QUIT (or after a -ERR greeting)."""


Event = Greeting | Ok | Err | Continuation | Line | Data | End | Closed
