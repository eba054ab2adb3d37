"""An in-process, threaded, scriptable POP3 server for fault-injection tests.

Why it exists: mailvault promises never to lose, duplicate or early-delete mail, and those
promises are only tested when the server or the network fails at an *arbitrary byte*.  A
real server cannot be told to cut a RETR at byte 1234; this one can (see :class:`Faults`).

By default it behaves like a real server (RFC 1939, RFC 2449 CAPA / PIPELINING / response
codes, RFC 2595 STLS, RFC 5034 AUTH PLAIN (and XOAUTH2 if listed in
``Faults.sasl``), APOP), so the client can fetch from it end to end:

* Message bytes are stored exactly as given; bare LF is *not* converted.  RETR sends them
  dot-stuffed (a "." is doubled at the start of the message and after every CRLF; a bare LF
  is not a line end, so nothing after it is stuffed); if the message does not end in CRLF a
  CRLF is appended (an empty message is served as one CRLF, as Dovecot does); then ".\\r\\n".
  :func:`served_bytes` returns what a correct client must store, and LIST/STAT/RETR sizes
  are ``len(served_bytes(data))`` (the unstuffed octet count; Dovecot leaves an appended
  CRLF out of its count).
* Deletions are applied only when QUIT completes (UPDATE state).  A cut, reset, timed-out or
  stopped session releases the maildrop lock and applies nothing (unless
  ``Faults.quit_applies_before_cut``).  Only one session holds the maildrop at a time; a
  concurrent login gets ``-ERR [IN-USE] maildrop locked``.
* The lock is released (and deletions applied) *before* the final bytes or the FIN go out,
  so a client that reconnects the moment it sees "+OK" or EOF never races the old session.
* Every close is a FIN after all queued data, followed by draining the client until it
  closes (never an RST, unless ``Faults.broken_capa`` asks for one), so a client receives
  exactly the bytes sent before a cut.
* Commands are read line by line from a buffer and answered in order with ``sendall``, so
  pipelined commands work; ``FakePop3Server.pipelined`` counts the commands that arrived
  behind another one not yet answered (a lock-step client leaves it at 0).  Plaintext bytes
  buffered behind STLS are discarded, as fixed servers do against STARTTLS command injection.

Byte offsets in :class:`Faults` count plaintext bytes (after STLS: bytes inside TLS).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "ENDLESS_LIMIT",
    "GARBAGE_GREETING",
    "GARBAGE_LINE",
    "INJECTED",
    "FakeMessage",
    "FakePop3Server",
    "Faults",
    "dot_stuff",
    "served_bytes",
    "top_bytes",
]

GARBAGE_GREETING = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"
GARBAGE_LINE = b"HTTP/1.1 400 Bad Request\r\n"
INJECTED = b"+OK injected\r\n"
ENDLESS_LIMIT = 64 * 1024 * 1024
MAX_LINE = 8192
DRAIN_SECONDS = 2.0
AUTH_STATE, TRANSACTION_STATE = "AUTHORIZATION", "TRANSACTION"
ANY_STATE = frozenset({AUTH_STATE, TRANSACTION_STATE})


@dataclass
class Faults:
    """Misbehaviour knobs; mutable between (and during) sessions.

    ``in_use_times`` / ``sys_temp_times`` count *down* as they are used, so setting one
    again re-arms it.  Offsets are exact: a cut at offset k delivers k bytes, then EOF.
    """

    cut_at_offset: int | None = None  # whole session's response stream, greeting included
    cut_in_retr: tuple[int, int] | None = None  # (msgno, offset into the RETR response)
    cut_in_dele: int | None = None  # close instead of answering DELE of this msgno
    cut_before_quit_reply: bool = False
    quit_applies_before_cut: bool = False
    in_use_times: int = 0
    sys_temp_times: int = 0
    auth_fail: bool = False
    lie_about_sizes: bool = False  # LIST/STAT/RETR "+OK n octets" count LF, not CRLF
    endless_line_in_retr: int | None = None
    endless_data_in_retr: int | None = None  # RETR of this msgno sends short lines without end
    refuse_retr: int | None = None  # answer RETR of this msgno with -ERR [SYS/PERM], every time
    garbage_greeting: bool = False  # send GARBAGE_GREETING and close
    hang_up_on: tuple[int, ...] = ()  # these connections (1 = the first) close before greeting
    greeting_delay: float = 0.0  # seconds before the greeting (after the implicit TLS handshake)
    garbage_after: str | None = None  # a +OK to this command becomes GARBAGE_LINE (no body)
    stls_inject: bool = False  # INJECTED follows "+OK Begin TLS" in the same write
    slow_bytes_per_sec: int | None = None
    no_uidl: bool = False
    no_pipelining: bool = False
    reuse_uidls: bool = False  # new default UIDLs reuse the lowest "uid-<n>" not in the mailbox
    drop_pipelined: bool = False  # advertise PIPELINING, then drop what follows a command in a read
    login_delay: int | None = None  # advertise LOGIN-DELAY n
    echo_credentials: bool = False  # refuse every login, quoting what the client sent
    no_apop: bool = False  # greet without an APOP timestamp (APOP then fails)
    sasl: tuple[str, ...] = ("PLAIN",)  # mechanisms in CAPA's SASL line (none: no line)
    endless_listing: str | None = None  # "LIST" or "UIDL": its answer goes on for ever
    ignore_deletions: bool = False  # DELE and QUIT say +OK, and the messages stay
    answer_twice: str | None = None  # this command's +OK is sent twice (answers out of step)
    retr_serves: tuple[int, int] | None = None  # (n, m): RETR n answers message m's bytes
    short_retr: tuple[int, int] | None = None  # (n, k): RETR n sends only its first k octets
    no_top: bool = False  # no TOP in CAPA, and TOP refused
    empty_top: bool = False  # TOP answers +OK with no lines at all
    apop_only: bool = False  # an old server: no CAPA, USER refused (APOP works)
    bare_lf_retr: int | None = None  # RETR of this msgno: lines end LF, then LF "." LF
    list_extra: int = 0  # LIST, STAT and RETR's +OK count this many octets more per message
    refuse_stls: str | None = None  # advertise STLS and answer it with this -ERR line
    unlisted_stls: bool = False  # CAPA leaves STLS out; STLS still works (with a tls_context)
    edit_listing: Callable[[str, list[str]], list[str]] | None = None  # (command, lines) -> lines
    # how CAPA is answered by an old server that does not know it, instead of -ERR: "close"
    # (FIN), "reset" (RST), "silence" (nothing, until the client hangs up) or "garbage"
    # (GARBAGE_LINE, then the session goes on)
    broken_capa: str | None = None


@dataclass
class FakeMessage:
    """One message in the server's maildrop; ``uidl`` may be reassigned by tests."""

    uidl: str
    data: bytes


def served_bytes(data: bytes) -> bytes:
    """The message as a correct client must store it: ``data`` plus CRLF if it lacks one."""
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def dot_stuff(served: bytes) -> bytes:
    """Byte-stuff a CRLF-terminated block for a multi-line response (without the ".")."""
    head = b"." if served.startswith(b".") else b""
    return head + served.replace(b"\r\n.", b"\r\n..")


def top_bytes(data: bytes, lines: int) -> bytes:
    """What TOP returns (unstuffed): headers, the blank line, then ``lines`` body lines."""
    served = served_bytes(data)
    if served.startswith(b"\r\n"):
        split = 2
    else:
        end = served.find(b"\r\n\r\n")
        if end < 0:
            return served
        split = end + 4
    body = served[split:].split(b"\r\n")[:-1]
    return served[:split] + b"".join(line + b"\r\n" for line in body[:lines])


class _Close(Exception):
    """Ends a session: EOF, QUIT, a cut or a fatal protocol condition."""


class _Idle(Exception):
    """The client sent nothing for ``idle_timeout`` seconds."""


def _shutdown(sock: socket.socket, how: int) -> None:
    # The base-class method skips SSLSocket.shutdown, which would also drop its SSL
    # object under a thread that may be using it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, how)


class _Session:
    """One connection: a line-oriented state machine that can be told to misbehave."""

    def __init__(self, server: FakePop3Server, conn: socket.socket, number: int) -> None:
        self.server, self.conn, self.number = server, conn, number
        self.buf = b""
        self.sent = 0
        self.tls = False
        self.state = AUTH_STATE
        self.cmd = ""
        self.user: str | None = None
        self.msgs: list[FakeMessage] = []
        self.deleted: set[int] = set()
        # Fixed width, so greetings of one server have equal length (offset sweeps rely on it).
        self.timestamp = f"<{os.getpid()}.{number:06d}.{time.time_ns()}@fakepop>"
        trans = frozenset({TRANSACTION_STATE})
        auth = frozenset({AUTH_STATE})
        self.handlers: dict[str, tuple[frozenset[str], Callable[[str], None]]] = {
            "CAPA": (ANY_STATE, self._capa),
            "QUIT": (ANY_STATE, self._quit),
            "STLS": (auth, self._stls),
            "USER": (auth, self._user),
            "PASS": (auth, self._pass),
            "APOP": (auth, self._apop),
            "AUTH": (auth, self._auth),
            "STAT": (trans, self._stat),
            "LIST": (trans, self._list),
            "UIDL": (trans, self._uidl),
            "RETR": (trans, self._retr),
            "TOP": (trans, self._top),
            "DELE": (trans, self._dele),
            "NOOP": (trans, lambda arg: self._reply("+OK")),
            "RSET": (trans, self._rset),
        }

    @property
    def faults(self) -> Faults:
        return self.server.faults

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> None:
        """Serve until QUIT, EOF, a cut, an error or idle timeout; then release and close."""
        try:
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn.settimeout(self.server.idle_timeout)
            if self.server.implicit_tls:
                self._start_tls()
            if self.server._stopping.wait(self.faults.greeting_delay):
                raise _Close
            if self.number in self.faults.hang_up_on:
                raise _Close
            if self.faults.garbage_greeting:
                self._send(GARBAGE_GREETING)
                raise _Close
            stamp = "" if self.faults.no_apop else f" {self.timestamp}"
            self._reply(f"+OK fakepop POP3 server ready{stamp}")
            while True:
                self._dispatch(self._readline())
        except _Idle:
            with contextlib.suppress(_Close, OSError):
                self._reply("-ERR [SYS/TEMP] idle timeout, closing connection")
        except (_Close, OSError, ValueError):
            pass
        finally:
            self.server._release(self, None)
            self._close()
            self.server._forget(self)

    def abort(self) -> None:
        """Wake the session thread from any blocking call (used by ``stop()``)."""
        _shutdown(self.conn, socket.SHUT_RDWR)

    def _close(self) -> None:
        # FIN after all data, then read until the client closes: closing with unread input
        # would send an RST, which can destroy data the client has not read yet.
        _shutdown(self.conn, socket.SHUT_WR)
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.conn.settimeout(left)
                if not socket.socket.recv(self.conn, 65536):
                    break
        except OSError:
            pass
        self.conn.close()

    def _start_tls(self) -> None:
        ctx = self.server.tls_context
        assert ctx is not None
        self.conn = ctx.wrap_socket(self.conn, server_side=True)
        self.tls = True

    # ----------------------------------------------------------------------- I/O
    def _readline(self) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1 :]
                if b"\n" in self.buf:  # the next command is here before this one's answer
                    self.server._count_pipelined()
                if self.faults.drop_pipelined and self.state == TRANSACTION_STATE:
                    self.buf = b""  # a broken server: only the first command of a read counts
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > MAX_LINE:
                self._reply("-ERR line too long")
                raise _Close
            try:
                chunk = self.conn.recv(65536)
            except TimeoutError:
                raise _Idle from None
            if not chunk:
                raise _Close
            self.buf += chunk

    def _limit(self, cut_at: int | None) -> int | None:
        """How many more bytes may go out before a cut, or None for no cut pending."""
        limits = [] if cut_at is None else [cut_at]
        if (offset := self.faults.cut_at_offset) is not None:
            limits.append(max(0, offset - self.sent))
        return min(limits) if limits else None

    def _send(self, data: bytes, *, cut_at: int | None = None) -> None:
        """Send ``data``; if a cut offset falls inside it or at its end, send up to it and cut."""
        limit = self._limit(cut_at)
        if limit is not None and limit <= len(data):
            self._write(data[:limit])
            raise _Close
        self._write(data)

    def _write(self, data: bytes) -> None:
        rate = self.faults.slow_bytes_per_sec
        step = max(1, rate // 50) if rate else len(data)
        for start in range(0, len(data), step or 1):
            piece = data[start : start + step]
            self.conn.sendall(piece)
            self.sent += len(piece)
            if rate:
                time.sleep(len(piece) / rate)

    def _reply(self, status: str, body: bytes = b"", *, cut_at: int | None = None) -> None:
        """Send a status line (and multi-line body), applying ``garbage_after``."""
        garbage = self.faults.garbage_after
        if garbage and status.startswith("+OK") and self.cmd == garbage.upper():
            line, body = GARBAGE_LINE, b""
        else:
            line = status.encode("utf-8") + b"\r\n"
        if self.faults.answer_twice == self.cmd and status.startswith("+OK") and not body:
            line += line
        limit = self._limit(cut_at)
        if limit is None or limit >= len(line):
            self.server._log("S", line.decode("utf-8", "replace").rstrip("\r\n"))
        self._send(line + body, cut_at=cut_at)

    def _endless(self, status: str) -> None:
        """A listing whose lines never end (numbered past the maildrop, as fast as it goes),
        until ENDLESS_LIMIT bytes or the client hangs up."""
        self._reply(status)
        sent, number = 0, 0
        while sent < ENDLESS_LIMIT:
            batch = "".join(f"{n} uid-{n}\r\n" for n in range(number + 1, number + 2001))
            number += 2000
            self._send(batch.encode())
            sent += len(batch)
        raise _Close

    def _multi(self, status: str, lines: list[str]) -> None:
        self._reply(status, "".join(f"{line}\r\n" for line in lines).encode() + b".\r\n")

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, raw: bytes) -> None:
        line = raw.decode("latin-1")
        verb, _, arg = line.partition(" ")
        self.cmd = verb.upper()
        if self.cmd == "PASS":
            logged = "PASS ***"
        elif self.cmd == "AUTH" and len(arg.split()) > 1:
            logged = f"AUTH {arg.split()[0]} ***"
        else:
            logged = line
        self.server._log("C", logged)
        entry = self.handlers.get(self.cmd)
        if entry is None:
            self._reply("-ERR unknown command")
        elif self.state not in entry[0]:
            self._reply(f"-ERR {self.cmd} not valid in the {self.state} state")
        else:
            entry[1](arg)

    # ------------------------------------------------------------ authorization
    def _capa(self, arg: str) -> None:
        f = self.faults
        if f.broken_capa is not None:
            self._break_capa(f.broken_capa)
            return
        if f.apop_only:
            self._reply("-ERR Protocol error")
            return
        caps = ([] if f.no_top else ["TOP"]) + ["USER", "RESP-CODES", "AUTH-RESP-CODE"]
        caps += [f"SASL {' '.join(f.sasl)}"] if f.sasl else []
        caps += [] if f.no_pipelining else ["PIPELINING"]
        caps += [] if f.no_uidl else ["UIDL"]
        offered = self.server.tls_context or f.refuse_stls
        if offered and not self.tls and self.state == AUTH_STATE and not f.unlisted_stls:
            caps.append("STLS")
        if f.login_delay is not None:
            caps.append(f"LOGIN-DELAY {f.login_delay}")
        caps.append("IMPLEMENTATION mailvault-fakepop")
        self._multi("+OK capability list follows", caps)

    def _break_capa(self, how: str) -> None:
        """Answer CAPA as some old servers do instead of -ERR (``Faults.broken_capa``)."""
        if how == "garbage":
            self.server._log("S", GARBAGE_LINE.decode().rstrip("\r\n"))
            self._send(GARBAGE_LINE)
            return
        if how == "reset":  # SO_LINGER 0: close() sends an RST instead of a FIN
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.conn.close()
        elif how == "silence":
            while True:  # commands are read and never answered, until the client hangs up
                self._readline()
        raise _Close

    def _stls(self, arg: str) -> None:
        if self.faults.refuse_stls is not None:
            self._reply(self.faults.refuse_stls)
            return
        if self.server.tls_context is None or self.tls:
            self._reply("-ERR STLS not available")
            return
        self._reply("+OK Begin TLS negotiation", INJECTED if self.faults.stls_inject else b"")
        self.buf = b""  # discard plaintext pipelined behind STLS (injection defence)
        self._start_tls()
        self.user = None

    def _user(self, arg: str) -> None:
        if self.faults.apop_only:
            self._reply("-ERR USER not supported, use APOP")
            return
        if not arg:
            self._reply("-ERR USER needs a name")
            return
        self.user = arg
        self._reply("+OK send PASS")

    def _pass(self, arg: str) -> None:
        if self.user is None:
            self._reply("-ERR send USER first")
            return
        user, self.user = self.user, None
        if self.faults.echo_credentials:
            self._reply(f"-ERR [AUTH] wrong password: {arg}")
            return
        self._login(user == self.server.user and arg == self.server.password)

    def _apop(self, arg: str) -> None:
        if self.faults.no_apop:
            self._reply("-ERR APOP not supported")
            return
        parts = arg.split()
        if len(parts) != 2:
            self._reply("-ERR usage: APOP name digest")
            return
        secret = (self.timestamp + self.server.password).encode()
        digest = hashlib.md5(secret).hexdigest()
        self._login(parts[0] == self.server.user and parts[1].lower() == digest)

    def _auth(self, arg: str) -> None:
        parts = arg.split()
        if not parts:
            self._multi("+OK SASL mechanisms follow", list(self.faults.sasl))
            return
        mechanism = parts[0].upper()
        if mechanism not in self.faults.sasl:
            self._reply("-ERR unsupported SASL mechanism")
            return
        if mechanism == "XOAUTH2":
            self._xoauth2(parts[1] if len(parts) > 1 else None)
            return
        if len(parts) > 1:
            response = parts[1]
        else:
            self._reply("+ ")
            response = self._readline().decode("latin-1").strip()
            self.server._log("C", "*" if response == "*" else "***")
            if response == "*":
                self._reply("-ERR authentication cancelled")
                return
        if self.faults.echo_credentials:
            with contextlib.suppress(binascii.Error, ValueError):
                response += " = " + base64.b64decode(response).decode("latin-1")
            self._reply(f"-ERR [AUTH] rejected {response}")
            return
        try:
            decoded = b"" if response == "=" else base64.b64decode(response, validate=True)
            authz, authc, password = decoded.decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self._reply("-ERR invalid SASL PLAIN response")
            return
        valid = authz in ("", authc) and authc == self.server.user
        self._login(valid and password == self.server.password)

    def _xoauth2(self, response: str | None) -> None:
        """XOAUTH2 as Office 365 has it: the token (the server's password) after a "+ "."""
        if response is None:
            self._reply("+ ")
            response = self._readline().decode("latin-1").strip()
            self.server._log("C", "***")
        try:
            fields = base64.b64decode(response, validate=True).decode("utf-8").split("\x01")
        except (binascii.Error, UnicodeDecodeError):
            self._reply("-ERR invalid XOAUTH2 response")
            return
        user = fields[0].removeprefix("user=")
        token = fields[1].removeprefix("auth=Bearer ") if len(fields) > 1 else ""
        self._login(user == self.server.user and token == self.server.password)

    def _login(self, credentials_ok: bool) -> None:
        """Check faults, credentials and the maildrop lock, in the order real servers do."""
        srv, f = self.server, self.faults
        with srv._lock:
            if f.in_use_times > 0:
                f.in_use_times -= 1
                error = "-ERR [IN-USE] maildrop in use by another session"
            elif f.sys_temp_times > 0:
                f.sys_temp_times -= 1
                error = "-ERR [SYS/TEMP] temporary failure, try again later"
            elif f.auth_fail or not credentials_ok:
                error = "-ERR [AUTH] invalid credentials"
            elif srv._owner is not None:
                error = "-ERR [IN-USE] maildrop locked"
            else:
                error = ""
                srv._owner = self
                self.msgs = list(srv.mailbox)
                self.deleted = set()
                self.state = TRANSACTION_STATE
        if error:
            self._reply(error)
        else:
            self._reply(f"+OK maildrop locked, {len(self.msgs)} messages")

    # -------------------------------------------------------------- transaction
    def _size(self, msg: FakeMessage) -> int:
        served = served_bytes(msg.data)
        if not self.faults.lie_about_sizes:
            return len(served) + self.faults.list_extra
        lines = served.count(b"\r\n")
        return len(served) - lines if lines else len(served) + 1

    def _live(self) -> list[tuple[int, FakeMessage]]:
        return [(n, m) for n, m in enumerate(self.msgs, 1) if n not in self.deleted]

    def _message(self, arg: str) -> tuple[int, FakeMessage] | None:
        """Parse a message-number argument; answer -ERR and return None if it is bad."""
        word = arg.split()[0] if arg.split() else ""
        if not word.isdigit() or not 1 <= int(word) <= len(self.msgs):
            self._reply(f"-ERR no such message {word}".rstrip())
            return None
        number = int(word)
        if number in self.deleted:
            self._reply(f"-ERR message {number} already deleted")
            return None
        return number, self.msgs[number - 1]

    def _stat(self, arg: str) -> None:
        live = self._live()
        self._reply(f"+OK {len(live)} {sum(self._size(m) for _, m in live)}")

    def _list(self, arg: str) -> None:
        if arg.strip():
            if found := self._message(arg):
                self._reply(f"+OK {found[0]} {self._size(found[1])}")
            return
        if self.faults.endless_listing == "LIST":
            self._endless("+OK listing follows")
        live = self._live()
        total = sum(self._size(m) for _, m in live)
        lines = self._edited("LIST", [f"{n} {self._size(m)}" for n, m in live])
        self._multi(f"+OK {len(live)} messages ({total} octets)", lines)

    def _edited(self, command: str, lines: list[str]) -> list[str]:
        edit = self.faults.edit_listing
        return lines if edit is None else edit(command, lines)

    def _uidl(self, arg: str) -> None:
        if self.faults.no_uidl:
            self._reply("-ERR UIDL not supported")
        elif arg.strip():
            if found := self._message(arg):
                self._reply(f"+OK {found[0]} {found[1].uidl}")
        elif self.faults.endless_listing == "UIDL":
            self._endless("+OK unique-id listing follows")
        else:
            lines = self._edited("UIDL", [f"{n} {m.uidl}" for n, m in self._live()])
            self._multi("+OK unique-id listing follows", lines)

    def _retr(self, arg: str) -> None:
        found = self._message(arg)
        if found is None:
            return
        number, msg = found
        swap = self.faults.retr_serves
        if swap is not None and swap[0] == number:
            msg = self.msgs[swap[1] - 1]
        if self.faults.refuse_retr == number:
            self._reply("-ERR [SYS/PERM] message file is corrupt")
            return
        status = f"+OK {self._size(msg)} octets"
        chunk = b""
        if self.faults.endless_line_in_retr == number:
            chunk = b"x" * 65536  # one line
        elif self.faults.endless_data_in_retr == number:
            chunk = b"x" * 78 + b"\r\n"
            chunk *= 65536 // len(chunk)
        if chunk:
            self._reply(status)
            for _ in range(ENDLESS_LIMIT // len(chunk)):
                self._send(chunk)
            raise _Close
        if self.faults.bare_lf_retr == number:  # a broken server: never a CRLF "." CRLF
            lf = dot_stuff(served_bytes(msg.data)).replace(b"\r\n", b"\n")
            self._reply(status, lf + b".\n")
            return
        cut = self.faults.cut_in_retr
        cut_at = cut[1] if cut is not None and cut[0] == number else None
        served = served_bytes(msg.data)
        short = self.faults.short_retr
        if short is not None and short[0] == number:  # cut short, properly ended
            served = served[: short[1]].rsplit(b"\r\n", 1)[0] + b"\r\n"
        self._reply(status, dot_stuff(served) + b".\r\n", cut_at=cut_at)

    def _top(self, arg: str) -> None:
        if self.faults.no_top:
            self._reply("-ERR TOP not supported")
            return
        words = arg.split()
        if len(words) != 2 or not words[1].isdigit():
            self._reply("-ERR usage: TOP msg lines")
            return
        if found := self._message(words[0]):
            body = (
                b"" if self.faults.empty_top else dot_stuff(top_bytes(found[1].data, int(words[1])))
            )
            self._reply("+OK top of message follows", body + b".\r\n")

    def _dele(self, arg: str) -> None:
        found = self._message(arg)
        if found is None:
            return
        if self.faults.cut_in_dele == found[0]:
            raise _Close
        self.deleted.add(found[0])
        self._reply(f"+OK message {found[0]} deleted")

    def _rset(self, arg: str) -> None:
        self.deleted.clear()
        self._reply(f"+OK maildrop has {len(self.msgs)} messages")

    def _quit(self, arg: str) -> None:
        f = self.faults
        doomed = [self.msgs[n - 1] for n in sorted(self.deleted)]
        if f.ignore_deletions:
            doomed = []
        if f.cut_before_quit_reply:
            if f.quit_applies_before_cut and self.state == TRANSACTION_STATE:
                self.server._release(self, doomed)
            raise _Close
        if self.state == TRANSACTION_STATE:
            self.server._release(self, doomed)
            self._reply(f"+OK bye ({len(doomed)} messages deleted)")
        else:
            self._reply("+OK bye")
        raise _Close


class FakePop3Server:
    """The server: owns the maildrop, the lock, the log, and one thread per connection."""

    host = "127.0.0.1"

    def __init__(
        self,
        messages: list[bytes] | None = None,
        *,
        user: str = "alice",
        password: str = "alice-secret",
        uidls: list[str] | None = None,
        faults: Faults | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        idle_timeout: float = 30.0,
    ) -> None:
        messages = messages or []
        if uidls is not None and len(uidls) != len(messages):
            raise ValueError("uidls must have one entry per message")
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.user, self.password = user, password
        self.faults = faults or Faults()
        self.tls_context, self.implicit_tls = tls_context, implicit_tls
        self.idle_timeout = idle_timeout
        self.port = 0
        self.sessions = 0
        self.pipelined = 0  # commands that arrived behind one not yet answered
        self.mailbox: list[FakeMessage] = []
        self.deleted_uidls: list[str] = []
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._owner: _Session | None = None
        self._live: set[_Session] = set()
        self._threads: list[threading.Thread] = []
        self._uid_counter = 0
        self._used_uidls: set[str] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        for i, data in enumerate(messages):
            self.add_message(data, None if uidls is None else uidls[i])

    def add_message(self, data: bytes, uidl: str | None = None) -> None:
        """Append a message; a default UIDL is "uid-<n>", unique unless ``reuse_uidls``."""
        with self._lock:
            if uidl is None:
                uidl = self._new_uidl()
            self._used_uidls.add(uidl)
            self.mailbox.append(FakeMessage(uidl, data))

    def _new_uidl(self) -> str:
        if self.faults.reuse_uidls:
            present = {m.uidl for m in self.mailbox}
            n = 1
            while f"uid-{n}" in present:
                n += 1
            return f"uid-{n}"
        while True:
            self._uid_counter += 1
            if (uidl := f"uid-{self._uid_counter}") not in self._used_uidls:
                return uidl

    @property
    def locked(self) -> bool:
        """Whether a session currently holds the maildrop (is in TRANSACTION state)."""
        return self._owner is not None

    def wait_unlocked(self, timeout: float = 5.0) -> bool:
        """Wait until no session holds the maildrop, e.g. after the client dropped a session."""
        deadline = time.monotonic() + timeout
        while self._owner is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakePop3Server:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.settimeout(0.5)  # fallback wake-up where shutdown() does not interrupt accept
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="fakepop-accept")
        self._acceptor.daemon = True
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection (no deletions applied), join threads."""
        self._stopping.set()
        if self._listener is not None:
            _shutdown(self._listener, socket.SHUT_RDWR)
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
        with self._lock:
            live = list(self._live)
        for session in live:
            session.abort()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> FakePop3Server:
        return self if self._listener is not None else self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self.sessions += 1
                session = _Session(self, conn, self.sessions)
                self._live.add(session)
            thread = threading.Thread(target=session.run, name=f"fakepop-{session.number}")
            thread.daemon = True
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    # ------------------------------------------------------------ session hooks
    def _release(self, session: _Session, doomed: list[FakeMessage] | None) -> None:
        """Drop the maildrop lock held by ``session``; apply ``doomed`` deletions if given."""
        with self._lock:
            if self._owner is not session:
                return
            if doomed:
                ids = {id(m) for m in doomed}
                self.mailbox[:] = [m for m in self.mailbox if id(m) not in ids]
                self.deleted_uidls.extend(m.uidl for m in doomed)
            self._owner = None

    def _forget(self, session: _Session) -> None:
        with self._lock:
            self._live.discard(session)

    def _count_pipelined(self) -> None:
        with self._lock:
            self.pipelined += 1

    def _log(self, direction: str, text: str) -> None:
        with self._lock:
            self.log.append((direction, text))
