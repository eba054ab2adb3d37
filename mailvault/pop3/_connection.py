"""The sans-I/O POP3 client state machine: bytes in, events out, wire bytes for commands.

It owns the FIFO of outstanding commands, because in POP3 the *command* decides how a
response is framed (a +OK to RETR is followed by data, a +OK to DELE is not) and matching
responses to that FIFO in order is what makes RFC 2449 PIPELINING safe.  It owns no
socket, clock or TLS context, so the same code is driven by the real client and by tests
that feed it hostile bytes.

Errors: a server that breaks the protocol raises ``ProtocolError``; a server that closes
the connection before answering raises ``TransportError``.  Both are sticky -- every later
``next_event`` raises the same error -- because the byte stream can no longer be trusted.
A caller that breaks the rules gets ``LocalProtocolError``.
"""

from __future__ import annotations

import enum
from collections import deque

from mailvault.errors import ProtocolError, RemoteError, TransportError

from ._body import DataDecoder
from ._commands import Auth, AuthContinue, Body, Command, Quit, Retr, Stls, redacted
from ._errors import LocalProtocolError
from ._events import (
    NEED_DATA,
    Closed,
    Continuation,
    Data,
    End,
    Err,
    Event,
    Greeting,
    Line,
    NeedData,
    Ok,
)
from ._reader import ReceiveBuffer
from ._status import Kind, apop_timestamp, classify, text_and_code


class _Phase(enum.Enum):
    GREETING = enum.auto()  # waiting for the server's first line
    COMMANDS = enum.auto()  # normal command/response traffic
    TLS = enum.auto()  # +OK to STLS seen; nothing may arrive until start_tls_done()
    CLOSING = enum.auto()  # QUIT answered (or -ERR greeting); only EOF may follow
    CLOSED = enum.auto()  # EOF seen while CLOSING


class _Reading(enum.Enum):
    STATUS = enum.auto()  # next line is the status line for the head of the FIFO
    LINES = enum.auto()  # inside a listing (CAPA, LIST, UIDL)
    DATA = enum.auto()  # inside message data (RETR, TOP)
    END = enum.auto()  # data terminator consumed, End not yet returned


def _describe(command: Command) -> str:
    """Name a command in a message without leaking secrets."""
    if isinstance(command, AuthContinue):
        return "the SASL response"
    return redacted(command)[:-2].decode("utf-8", "replace")


class Connection:
    """One POP3 client session, from the greeting to the server's close.

    ``pipelining`` may be set by the driver once CAPA advertised PIPELINING; while it is
    False, ``send`` refuses a command while another is outstanding.
    """

    def __init__(self, *, max_line: int = 8192, max_data_line: int = 8 * 1024 * 1024) -> None:
        if max_line < 8 or max_data_line < 8:
            raise ValueError("max_line and max_data_line must be at least 8")
        self.pipelining = False
        self._max_line = max_line
        self._max_data_line = max_data_line
        self._buf = ReceiveBuffer()
        self._queue: deque[Command] = deque()
        self._phase = _Phase.GREETING
        self._reading = _Reading.STATUS
        self._decoder: DataDecoder | None = None
        self._challenged = False  # a SASL Continuation awaits our AuthContinue
        self._eof = False
        self._error: RemoteError | None = None

    @property
    def outstanding(self) -> int:
        """Commands sent whose response has not been completely returned by next_event."""
        return len(self._queue)

    # -- sending ---------------------------------------------------------------------------

    def send(self, command: Command) -> bytes:
        """Check that ``command`` may be sent now, queue it, and return its wire bytes."""
        if not isinstance(command, Command):
            raise LocalProtocolError(f"not a POP3 command: {command!r}")
        self._check_can_send(command)
        self._queue.append(command)
        self._challenged = False
        return command.wire()

    def _check_can_send(self, command: Command) -> None:
        problem = self._send_problem(command)
        if problem is not None:
            head = _describe(self._queue[0]) if self._queue else ""
            raise LocalProtocolError(problem.format(name=_describe(command), head=head))

    def _send_problem(self, command: Command) -> str | None:
        """Why ``command`` may not be sent now (a template naming ``{name}`` and the oldest
        outstanding command ``{head}``), or None if it may.

        The command's description is only rendered for the error: a pipelined fetch sends
        thousands of commands, and rendering one per send was a measurable cost.
        """
        if self._error is not None:
            return "cannot send {name}: the connection failed earlier"
        if self._phase is _Phase.GREETING:
            return "cannot send {name} before the server's greeting"
        if self._phase is _Phase.TLS:
            return "cannot send {name} before start_tls_done()"
        if self._phase is not _Phase.COMMANDS:
            return "cannot send {name}: the session is over"
        if self._challenged and not isinstance(command, AuthContinue):
            return "cannot send {name}: answer the SASL challenge first"
        if not self._challenged and isinstance(command, AuthContinue):
            return "AuthContinue is only allowed after a SASL Continuation"
        if self._queue:
            head = self._queue[0]
            if head.barrier:
                return "cannot send {name} while {head} is outstanding"
            if command.barrier:
                return "cannot send {name} while other commands are outstanding"
            if not self.pipelining:
                return "cannot send {name} while {head} is outstanding: pipelining is off"
        return None

    def start_tls_done(self) -> None:
        """Resume after the TLS handshake that followed +OK to STLS.

        Resets ``pipelining``: capabilities learnt in plaintext must not be trusted, so the
        driver has to issue CAPA again (RFC 2595 section 4).
        """
        if self._phase is not _Phase.TLS or self._error is not None:
            raise LocalProtocolError("start_tls_done() is only valid after +OK to STLS")
        if self._buf:
            self._error = ProtocolError(self._injection_message())
            raise self._error
        self._phase = _Phase.COMMANDS
        self.pipelining = False

    # -- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the server; ``b""`` means the server closed (EOF)."""
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() with data after EOF")
            return
        if data:
            self._buf.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """Return the next event, or NEED_DATA until more bytes are received."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except (ProtocolError, TransportError) as exc:
            self._error = exc
            raise

    def _next_event(self) -> Event | NeedData:
        if self._phase is _Phase.COMMANDS:
            reading = self._reading
            if reading is _Reading.DATA:
                return self._read_data()
            if reading is _Reading.LINES:
                return self._read_listing_line()
            if reading is _Reading.END:
                return self._finish()
            return self._read_status()
        if self._phase is _Phase.GREETING:
            return self._read_greeting()
        if self._phase is _Phase.TLS:
            if self._buf:
                raise ProtocolError(self._injection_message())
            return self._need_data("the TLS handshake after STLS")
        if self._phase is _Phase.CLOSING:
            if self._buf:
                raise ProtocolError(
                    f"unexpected bytes from server after the session ended: {self._buf.head()!r}"
                )
            if not self._eof:
                return NEED_DATA
            self._phase = _Phase.CLOSED
        return Closed()

    def _need_data(self, what: str) -> NeedData:
        if self._eof:
            raise TransportError(f"connection closed by server in the middle of {what}")
        return NEED_DATA

    def _injection_message(self) -> str:
        return (
            "server sent bytes after +OK to STLS before the TLS handshake "
            f"(STARTTLS command injection?): {self._buf.head()!r}"
        )

    def _read_greeting(self) -> Event | NeedData:
        line = self._buf.read_line(self._max_line)
        if line is None:
            return self._need_data("the greeting")
        parsed = classify(line)
        if parsed is None or parsed[0] is Kind.CONTINUATION:
            raise ProtocolError(f"expected a +OK or -ERR greeting, got {line[:40]!r}")
        kind, rest = parsed
        text, code = text_and_code(rest)
        if kind is Kind.ERR:
            self._phase = _Phase.CLOSING
            return Err(None, text, code)
        self._phase = _Phase.COMMANDS
        return Greeting(text, apop_timestamp(rest))

    def _read_status(self) -> Event | NeedData:
        if not self._queue:
            if self._buf:
                raise ProtocolError(f"unexpected bytes from server: {self._buf.head()!r}")
            if self._eof:
                raise TransportError("connection closed by server unexpectedly")
            return NEED_DATA
        command = self._queue[0]
        line = self._buf.read_line(self._max_line)
        if line is None:
            return self._need_data(f"the response to {_describe(command)}")
        parsed = classify(line)
        sasl = isinstance(command, Auth | AuthContinue)
        if parsed is None or (parsed[0] is Kind.CONTINUATION and not sasl):
            raise ProtocolError(
                f"expected a status line answering {_describe(command)}, got {line[:40]!r}"
            )
        kind, rest = parsed
        if kind is Kind.CONTINUATION:
            self._queue.popleft()
            self._challenged = True
            return Continuation(command, rest.decode("ascii", "replace"))
        text, code = text_and_code(rest)
        if kind is Kind.ERR:
            self._queue.popleft()
            if isinstance(command, Quit):
                self._phase = _Phase.CLOSING
            return Err(command, text, code)
        body = command.body()
        if body is Body.LINES:
            self._reading = _Reading.LINES
        elif body is Body.DATA:
            self._reading = _Reading.DATA
            longest = command.max_line if isinstance(command, Retr) else 0
            self._decoder = DataDecoder(max(self._max_data_line, longest))
        else:
            self._queue.popleft()
        if isinstance(command, Stls):
            if self._buf:
                raise ProtocolError(self._injection_message())
            self._phase = _Phase.TLS
        elif isinstance(command, Quit):
            self._phase = _Phase.CLOSING
        return Ok(command, text, code)

    def _read_listing_line(self) -> Event | NeedData:
        command = self._queue[0]
        line = self._buf.read_line(self._max_line)
        if line is None:
            return self._need_data(f"the response to {_describe(command)}")
        if line.startswith(b"."):
            if line == b".":
                return self._finish()
            line = line[1:]
        return Line(command, line)

    def _read_data(self) -> Event | NeedData:
        command = self._queue[0]
        assert self._decoder is not None
        chunk, done = self._decoder.read(self._buf)
        if done:
            self._reading = _Reading.END
        if chunk:
            return Data(command, chunk)
        if done:
            return self._finish()
        return self._need_data(f"the response to {_describe(command)}")

    def _finish(self) -> End:
        self._reading = _Reading.STATUS
        self._decoder = None
        return End(self._queue.popleft())
