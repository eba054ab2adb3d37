"""POP3 commands as immutable values that know their own wire form.

Keeping the wire form next to the command (rather than in the connection) means the
connection only has to care about *ordering* (the FIFO of outstanding commands and the
barrier rules), and ``redacted`` can render the same bytes with secrets masked for traces.
Arguments are validated on construction so that no caller can smuggle a CRLF into the
command stream (command injection) or send a message number the server cannot parse.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from ._errors import LocalProtocolError

_MASK = "****"


class Body(enum.Enum):
    """What follows a +OK to a command: nothing, a listing of lines, or message data."""

    NONE = enum.auto()
    LINES = enum.auto()
    DATA = enum.auto()


def _check_text(what: str, value: str, *, spaces: bool, empty: bool = False) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be a str, not {type(value).__name__}")
    if not value and not empty:
        raise LocalProtocolError(f"{what} must not be empty")
    if "\r" in value or "\n" in value or "\0" in value:
        raise LocalProtocolError(f"{what} must not contain CR, LF or NUL")
    if not spaces and any(c.isspace() for c in value):
        raise LocalProtocolError(f"{what} must not contain whitespace")


def _check_number(what: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LocalProtocolError(f"{what} must be an int >= {minimum}, got {value!r}")


class Command:
    """Base class of every POP3 command.

    ``barrier`` commands change the session state (TLS, authentication, QUIT), so RFC 2449's
    PIPELINING does not allow anything to be in flight alongside them.
    """

    __slots__ = ()
    barrier: ClassVar[bool] = False

    def words(self, redact: bool = False) -> tuple[str, ...]:
        """The keyword and arguments; secrets replaced by ``****`` when ``redact``."""
        raise NotImplementedError

    def body(self) -> Body:
        """What a +OK to this command is followed by."""
        return Body.NONE

    def wire(self) -> bytes:
        """The command exactly as sent: words joined by single spaces, then CRLF."""
        return " ".join(self.words()).encode("utf-8") + b"\r\n"


def redacted(command: Command) -> bytes:
    """The wire form of ``command`` with passwords, digests and SASL data masked, for traces."""
    return " ".join(command.words(redact=True)).encode("utf-8") + b"\r\n"


@dataclass(frozen=True, slots=True)
class Capa(Command):
    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("CAPA",)

    def body(self) -> Body:
        return Body.LINES


@dataclass(frozen=True, slots=True)
class Stls(Command):
    barrier: ClassVar[bool] = True

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("STLS",)


@dataclass(frozen=True, slots=True)
class User(Command):
    name: str
    barrier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_text("USER name", self.name, spaces=True)

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("USER", self.name)


@dataclass(frozen=True, slots=True, repr=False)
class Pass(Command):
    """PASS; RFC 1939 lets the password contain spaces (the whole rest of the line)."""

    password: str
    barrier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_text("PASS password", self.password, spaces=True, empty=True)

    def __repr__(self) -> str:
        return "Pass(password='****')"

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("PASS", _MASK if redact else self.password)


@dataclass(frozen=True, slots=True)
class Apop(Command):
    name: str
    digest: str
    barrier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_text("APOP name", self.name, spaces=False)
        _check_text("APOP digest", self.digest, spaces=False)

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("APOP", self.name, _MASK if redact else self.digest)


@dataclass(frozen=True, slots=True, repr=False)
class Auth(Command):
    """AUTH (RFC 5034).  ``initial_response`` is already base64; "" is sent as "=" (empty)."""

    mechanism: str
    initial_response: str | None = None
    barrier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_text("AUTH mechanism", self.mechanism, spaces=False)
        if self.initial_response is not None:
            _check_text("AUTH initial response", self.initial_response, spaces=False, empty=True)

    def __repr__(self) -> str:
        shown = None if self.initial_response is None else _MASK
        return f"Auth(mechanism={self.mechanism!r}, initial_response={shown!r})"

    def words(self, redact: bool = False) -> tuple[str, ...]:
        if self.initial_response is None:
            return ("AUTH", self.mechanism)
        return ("AUTH", self.mechanism, _MASK if redact else (self.initial_response or "="))


@dataclass(frozen=True, slots=True, repr=False)
class AuthContinue(Command):
    """A client line in a SASL exchange: base64 data, "" (empty response) or "*" (cancel)."""

    data: str
    barrier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_text("SASL response", self.data, spaces=False, empty=True)

    def __repr__(self) -> str:
        return "AuthContinue(data='****')"

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return (_MASK if redact else self.data,)


@dataclass(frozen=True, slots=True)
class Stat(Command):
    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("STAT",)


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST; without ``msg`` the +OK is followed by a scan listing."""

    msg: int | None = None

    def __post_init__(self) -> None:
        if self.msg is not None:
            _check_number("LIST message number", self.msg, minimum=1)

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("LIST",) if self.msg is None else ("LIST", str(self.msg))

    def body(self) -> Body:
        return Body.LINES if self.msg is None else Body.NONE


@dataclass(frozen=True, slots=True)
class Uidl(Command):
    """UIDL; without ``msg`` the +OK is followed by a unique-id listing."""

    msg: int | None = None

    def __post_init__(self) -> None:
        if self.msg is not None:
            _check_number("UIDL message number", self.msg, minimum=1)

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("UIDL",) if self.msg is None else ("UIDL", str(self.msg))

    def body(self) -> Body:
        return Body.LINES if self.msg is None else Body.NONE


@dataclass(frozen=True, slots=True)
class Retr(Command):
    """``max_line``: a longer line bound for this message's data than the connection's (a
    client that knows the message's size from LIST may allow a line that long: mail
    without line breaks exists, and the data is streamed, never held as one line)."""

    msg: int
    max_line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        _check_number("RETR message number", self.msg, minimum=1)
        _check_number("RETR max_line", self.max_line, minimum=0)

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("RETR", str(self.msg))

    def body(self) -> Body:
        return Body.DATA


@dataclass(frozen=True, slots=True)
class Top(Command):
    msg: int
    lines: int

    def __post_init__(self) -> None:
        _check_number("TOP message number", self.msg, minimum=1)
        _check_number("TOP line count", self.lines, minimum=0)

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("TOP", str(self.msg), str(self.lines))

    def body(self) -> Body:
        return Body.DATA


@dataclass(frozen=True, slots=True)
class Dele(Command):
    msg: int

    def __post_init__(self) -> None:
        _check_number("DELE message number", self.msg, minimum=1)

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("DELE", str(self.msg))


@dataclass(frozen=True, slots=True)
class Noop(Command):
    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("NOOP",)


@dataclass(frozen=True, slots=True)
class Rset(Command):
    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("RSET",)


@dataclass(frozen=True, slots=True)
class Quit(Command):
    barrier: ClassVar[bool] = True

    def words(self, redact: bool = False) -> tuple[str, ...]:
        return ("QUIT",)
