"""Drive the sans-I/O POP3 core over a socket: connect, TLS, authenticate, and pump commands.

The session knows POP3 *procedures* (login, listing, quitting) but no archiving policy: which
messages to fetch or delete, and when, is ``fetch.py``'s business.  It exposes ``send`` and
``next_event`` so the fetch loop can keep a window of RETR and DELE commands in flight.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailvault import pop3
from mailvault.config import AccountConfig
from mailvault.errors import (
    AuthenticationError,
    ProtocolError,
    ServerError,
    Stalled,
    TLSError,
    TransportError,
    server_error_for,
)
from mailvault.redact import WITHHELD, may_quote, register_secret
from mailvault.transport import (
    SocketStream,
    normalise_fingerprint,
    tls_context,
)

log = logging.getLogger(__name__)

Trace = Callable[[str], None]
PIPELINE_WINDOW = 512  # commands in flight; RFC 2449 pipelining, refilled when half empty
_BROKEN_SERVER = (
    "the server broke RFC 1939 and nothing was fetched in this session: report it to the "
    "server's operator"
)


def _out_of_step(line: bytes) -> str:
    """For a listing line that is a status line: the server answered a command more than
    once (or an earlier answer ran over), so its answers no longer match the commands."""
    if line.startswith((b"+OK", b"-ERR")):
        return " (a status line: the server's answers are out of step with the commands)"
    return ""


LISTING_SLACK = 1000  # LIST/UIDL lines allowed beyond STAT's count
MAX_LISTING = 5_000_000  # lines of a LIST or UIDL answer, whatever STAT says (~1 GB listed)


def _screened(event: pop3.Event) -> pop3.Event:
    """A reply to a command that carried a secret, its text withheld if it may quote one."""
    if isinstance(event, pop3.Ok | pop3.Err) and may_quote(event.text):
        code = f"[{event.code}] " if event.code else ""  # the response code stays: it is ours
        return dataclasses.replace(event, text=code + WITHHELD)
    if isinstance(event, pop3.Line) and may_quote(event.line.decode("latin-1")):
        return dataclasses.replace(event, line=WITHHELD.encode())
    return event


def _either(values: list[str]) -> str:
    """'"a"', '"a" or "b"', '"a", "b" or "c"'."""
    quoted = [f'"{v}"' for v in values]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


@dataclass
class ListedMessage:
    msgno: int
    size: int
    uidl: str | None

    @property
    def label(self) -> str:
        """How messages are named to the user: "message 3 (UIDL abc)", "message 3"."""
        return f"message {self.msgno}" + (f" (UIDL {self.uidl})" if self.uidl is not None else "")


@dataclass
class SessionFacts:
    """Provenance of one session, stored in the catalog's sessions table."""

    host: str
    port: int
    tls: str
    greeting: str = ""
    capabilities: list[str] = field(default_factory=list)
    tls_version: str | None = None
    tls_cert_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Pop3Session:
    """One POP3 connection for one account."""

    def __init__(
        self,
        account: AccountConfig,
        secret: Callable[[], str],
        trace: Trace | None = None,
        *,
        capa_failure: str | None = None,
    ):
        self.account = account
        self._secret = secret
        self._trace = trace
        self.conn = pop3.Connection()
        self.stream: SocketStream | None = None
        self.facts = SessionFacts(host=account.host, port=account.port, tls=account.tls)
        self.capabilities: dict[str, str] = {}
        self.apop_timestamp: str | None = None
        self.login_delay: int | None = None
        self._guarded = False  # answers to a command carrying a secret are being read
        # how CAPA failed, in this session or earlier in the run (then it is not asked)
        self.capa_failure = capa_failure
        self._interrupted = False  # interrupt() was called: a failed read is not the server's

    # -- plumbing -------------------------------------------------------------------------------
    def send(self, command: pop3.Command) -> None:
        self.send_many([command])

    def send_many(self, commands: list[pop3.Command]) -> None:
        """Send several (pipelined) commands in one write: one syscall, one TCP segment."""
        wire = b"".join([self.conn.send(command) for command in commands])
        if self._trace:
            for command in commands:
                self._trace(
                    "C: " + pop3.redacted(command).decode("ascii", "replace").rstrip("\r\n")
                )
        assert self.stream is not None
        self.stream.write(wire)

    def next_event(self) -> pop3.Event:
        """The next protocol event, reading from the socket as needed."""
        assert self.stream is not None
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                if self._guarded and may_quote(str(exc.args[0]) if exc.args else ""):
                    raise ProtocolError(
                        f"{self.account.host}: the answer to the login is not POP3 {WITHHELD}",
                        account=self.account.name,
                    ) from None
                raise
            if event is not pop3.NEED_DATA:
                if self._guarded:
                    event = _screened(event)
                if self._trace and not isinstance(event, pop3.Data):
                    self._trace_event(event)
                return event
            self.conn.receive_data(self.stream.read())

    def _trace_event(self, event: Any) -> None:
        assert self._trace is not None
        if isinstance(event, pop3.Ok | pop3.Err):
            tag = "+OK" if isinstance(event, pop3.Ok) else "-ERR"
            code = f"[{event.code}] " if event.code and event.code not in event.text else ""
            self._trace(f"S: {tag} {code}{event.text}".rstrip())
        elif isinstance(event, pop3.Line):
            self._trace("S: " + event.line.decode("ascii", "replace"))
        elif isinstance(event, pop3.End):
            self._trace("S: .")
        elif isinstance(event, pop3.Greeting):
            self._trace(f"S: +OK {event.text}")
        elif isinstance(event, pop3.Continuation):
            self._trace("S: + ****")

    def _status(self, command: pop3.Command) -> pop3.Ok:
        """Send a single-line command and wait for its answer; -ERR raises."""
        self.send(command)
        return self._answer(command)

    def _answer(self, command: pop3.Command) -> pop3.Ok:
        """Wait for the status line answering ``command``; -ERR raises."""
        event = self.next_event()
        if isinstance(event, pop3.Err):
            raise self._server_error(command, event)
        if not isinstance(event, pop3.Ok):
            raise ProtocolError(
                f"{self.account.host}: unexpected answer {event!r}", account=self.account.name
            )
        return event

    def _server_error(self, command: pop3.Command, event: pop3.Err) -> ServerError:
        name = type(command).__name__.upper()
        return server_error_for(
            event.code,
            f"{self.account.host} answered {name} with -ERR {event.text}",
            account=self.account.name,
        )

    def _multiline(
        self, command: pop3.Command, *, sent: bool = False, limit: int | None = None
    ) -> list[bytes]:
        """A listing's lines; ``sent``: the command went out already (pipelined); more than
        ``limit`` lines is an error (``_too_long``)."""
        if sent:
            self._answer(command)
        else:
            self._status(command)
        lines: list[bytes] = []
        while True:
            event = self.next_event()
            if isinstance(event, pop3.End):
                return lines
            if isinstance(event, pop3.Line):
                lines.append(event.line)
                if limit is not None and len(lines) > limit:
                    raise self._too_long(command, limit)

    def _too_long(self, command: pop3.Command, limit: int) -> ProtocolError:
        """A listing longer than the maildrop STAT counted: a server that never ends its
        answer would otherwise fill memory and keep a nightly run going for ever."""
        name = type(command).__name__.upper()
        return ProtocolError(
            f"{self.account.host} sent more than {limit:,} lines in answer to {name}, more "
            "than its STAT counted messages: a broken server; nothing was fetched in this "
            "session (its operator must fix the maildrop; `mailvault check` shows STAT)",
            account=self.account.name,
        )

    # -- procedures -----------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, greet, CAPA (and STLS as configured).  A server that fails CAPA instead of
        answering -ERR (it closes or resets the connection, says nothing until the timeout,
        or answers a line that is not POP3: old and embedded servers) is connected to once
        more and used as a server older than RFC 2449, as fetchmail does; how it failed is
        ``capa_failure``.  Once set, CAPA is not asked again, so this cannot loop."""
        if self._open():
            return
        note = f"CAPA failed ({self.capa_failure}); connecting again without it"
        log.debug("%s: %s", self.account.host, note)  # fetch warns once per run
        if self._trace:
            self._trace(f"# {note}")
        self.close()
        self.conn = pop3.Connection()
        self._open()

    def probe_capa(self) -> str | None:
        """How CAPA fails on a new connection, asked before STLS as ``connect`` asks it (None
        if it answers): ``check`` asks it first for a starttls account, to tell fetch's story
        in fetch's order.  No STLS, no reconnect; the connection is closed after it."""
        assert self.account.tls != "implicit"  # there CAPA is only ever asked inside TLS
        try:
            self._greet()
            self._probe()
        finally:
            self.close()
        return self.capa_failure

    def _open(self) -> bool:
        """One connection up to login; False if CAPA failed on it (it is then of no use)."""
        acct = self.account
        self._greet()
        if not self._probe():
            return False
        if acct.tls == "starttls":
            self._starttls()
            if not self._probe():
                return False
        assert self.stream is not None
        self.facts.tls_version = self.stream.tls_version
        self.facts.tls_cert_sha256 = self.stream.peer_cert_sha256()
        return True

    def _greet(self) -> None:
        """Connect (with TLS from the first byte if implicit) and read the greeting."""
        acct = self.account
        implicit = tls_context(acct) if acct.tls == "implicit" else None
        # The stream is kept before any wait on the server (the TLS handshake, the greeting):
        # interrupt() (Ctrl-C with --jobs) must reach a server that never answers.
        self.stream = SocketStream.connect(acct.host, acct.port, acct.timeout)
        if self._interrupted:  # interrupt() came while there was no stream to shut down
            raise TransportError(f"connection to {acct.host} interrupted", account=acct.name)
        if implicit is not None:
            self.stream.start_tls(implicit, implicit_port=acct.port)
            self._check_pin()
        else:
            self.stream.await_greeting(acct)
        event = self.next_event()
        if isinstance(event, pop3.Err):
            raise server_error_for(
                event.code,
                f"{acct.host} refused the connection: -ERR {event.text}",
                account=acct.name,
            )
        assert isinstance(event, pop3.Greeting)
        self.facts.greeting = event.text
        self.apop_timestamp = event.apop_timestamp

    def _probe(self) -> bool:
        """CAPA, unless it failed earlier in the run or session; False if it fails now."""
        if self.capa_failure is not None:
            self._no_capabilities()
            return True
        try:
            self.capa()
        except (TransportError, ProtocolError) as exc:
            if self._interrupted:  # Ctrl-C broke the read, not the server
                raise
            self.capa_failure = (
                f"no answer in {self.account.timeout:g} s"
                if isinstance(exc, Stalled)
                else exc.cause
            )
            return False
        return True

    def _starttls(self) -> None:
        """STLS, then TLS on the same connection.  Asked unless a capability list says the
        server lacks it: without one (CAPA answered -ERR, or failed) it cannot be known, and
        RFC 2595 lets a client try; a refusal is an error, never a fall-back to plain text."""
        acct = self.account
        assert self.stream is not None
        if (unlisted := self.stls_unlisted()) is not None:
            raise unlisted
        try:
            self._status(pop3.Stls())
        except ServerError as exc:  # [SYS/PERM] "a lasting fault with the mailbox" misled
            raise TLSError(
                f"{acct.host} refused STLS ({exc.cause})",
                hint='tls = "starttls" never falls back to plain text; use tls = "implicit" '
                "(port 995) if the server offers it",
                account=acct.name,
            ) from None
        self.stream.start_tls(tls_context(acct))
        self.conn.start_tls_done()
        self._check_pin()

    def stls_unlisted(self) -> TLSError | None:
        """The error for a capability list that leaves STLS out (None if it lists it, or if
        there is no list): such a server is taken at its word and STLS is not asked.  One
        place for fetch's refusal and ``check``'s tls step, so both name the same cause."""
        if not self.capabilities or "STLS" in self.capabilities:
            return None
        return TLSError(
            f"{self.account.host} does not offer STLS (its CAPA does not list it)",
            hint='tls = "starttls" never falls back to plain text: enable STLS on the server, '
            'or use tls = "implicit" (port 995) if the server offers it',
            account=self.account.name,
        )

    def capa_warning(self) -> str | None:
        """What fetch warns and check reports when CAPA failed (None if it did not)."""
        if self.capa_failure is None:
            return None
        blind = "; STLS asked without a listing" if self.account.tls == "starttls" else ""
        return (
            f"{self.account.host} failed CAPA ({self.capa_failure}): used without it from a new "
            "connection, as a POP3 server older than RFC 2449 (no capability list, so no "
            f"pipelining{blind}); CAPA is not asked again in this run"
        )

    def _check_pin(self) -> None:
        pin = self.account.tls_fingerprint
        assert self.stream is not None
        if pin and normalise_fingerprint(pin) != self.stream.peer_cert_sha256():
            raise TLSError(
                f"TLS certificate of {self.account.host} has sha256 fingerprint "
                f"{self.stream.peer_cert_sha256()}, not the pinned {pin}; if the server changed "
                "its certificate on purpose, update tls_fingerprint",
                account=self.account.name,
            )

    def _no_capabilities(self) -> None:
        """A server older than RFC 2449: nothing known, so no pipelining, no LOGIN-DELAY."""
        self.capabilities = {}
        self.facts.capabilities = []
        self.conn.pipelining = False
        self.login_delay = None

    def capa(self) -> None:
        self.send(pop3.Capa())
        event = self.next_event()
        self.capabilities = {}
        if isinstance(event, pop3.Err):  # pre-RFC 2449 server: no capabilities known
            self._no_capabilities()
            return
        while not isinstance(event := self.next_event(), pop3.End):
            if isinstance(event, pop3.Line):
                text = event.line.decode("ascii", "replace").strip()
                name, _, arg = text.partition(" ")
                self.capabilities[name.upper()] = arg
        self.facts.capabilities = [f"{k} {v}".strip() for k, v in self.capabilities.items()]
        self.conn.pipelining = (
            "PIPELINING" in self.capabilities and self.account.pipelining != "off"
        )
        delay = self.capabilities.get("LOGIN-DELAY", "").split(" ")[0]
        self.login_delay = int(delay) if delay.isdigit() else None

    def login(self) -> None:
        mode = self.account.auth
        user = self.account.user
        if mode == "auto":
            sasl = self.capabilities.get("SASL", "").upper().split()
            if "USER" in self.capabilities or not self.capabilities:
                mode = "user"
            elif "PLAIN" in sasl:
                mode = "plain"
            elif self.apop_timestamp:
                mode = "apop"
            else:
                mode = "user"
        if (refusal := self._not_offered(mode)) is not None:
            raise refusal
        secret = self._secret()
        register_secret(secret)  # a test or another caller may not use resolve_secret
        try:
            self._guarded = True  # the server may quote what it is sent (mailvault.redact)
            if mode == "user":
                self._status(pop3.User(user))
                self._status(pop3.Pass(secret))
            elif mode == "apop":
                assert self.apop_timestamp is not None  # _not_offered() saw to it
                digest = hashlib.md5((self.apop_timestamp + secret).encode()).hexdigest()
                self._status(pop3.Apop(user, digest))
            elif mode == "plain":
                token = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
                register_secret(token)
                self._sasl("PLAIN", token)
            elif mode == "xoauth2":
                token = base64.b64encode(
                    f"user={user}\x01auth=Bearer {secret}\x01\x01".encode()
                ).decode()
                register_secret(token)
                self._sasl("XOAUTH2", token, two_step=True)
        except ServerError as exc:
            # a bare -ERR to a login command means bad credentials, as [AUTH] says
            if type(exc) in (ServerError, AuthenticationError) and not exc.hint:
                hint = (
                    f"check user and the password source of accounts.{self.account.name} "
                    "(password_env, password_file or password_command)"
                )
                # auto picks USER when no CAPA lists the methods; an APOP-only server refuses
                if mode == "user" and self.apop_timestamp and "USER" not in self.capabilities:
                    hint += '; its greeting offers APOP, which auth = "apop" uses'
                raise AuthenticationError(
                    exc.cause,
                    hint=hint,
                    code=exc.code,
                    account=self.account.name,
                ) from None
            raise
        finally:
            self._guarded = False

    def _not_offered(self, mode: str) -> AuthenticationError | None:
        """The error for an auth method the server said it lacks (APOP without a timestamp in
        the greeting, a mechanism CAPA's SASL line does not list), naming what it offers and
        the auth values that fit; None if the method may work.  Asked before the secret is
        resolved or sent.  Without CAPA nothing is known, so the login is tried."""
        sasl = self.capabilities.get("SASL", "").upper().split()
        host = self.account.host
        if mode == "apop" and not self.apop_timestamp:
            cause = f"{host} offers no APOP timestamp in its greeting"
        elif mode in ("plain", "xoauth2") and self.capabilities and mode.upper() not in sasl:
            listed = f"SASL {' '.join(sasl)}" if sasl else "no SASL line"
            cause = f"{host} does not offer AUTH {mode.upper()} (its CAPA lists {listed})"
        else:
            return None
        offers = (["USER"] if "USER" in self.capabilities else []) + (
            [f"SASL {' '.join(sasl)}"] if sasl else []
        )
        offers += ["APOP"] if self.apop_timestamp else []
        fits = [m for m in ("user", "plain", "xoauth2") if m.upper() in [*self.capabilities, *sasl]]
        fits += ["apop"] if self.apop_timestamp else []
        hint = (
            f"the server offers {', '.join(offers)}; set auth = {_either(fits)}"
            if fits
            else f"the server offers {', '.join(offers) or 'no login method'}, none of which "
            "mailvault speaks"
        )
        return AuthenticationError(cause, hint=hint, account=self.account.name)

    def _sasl(self, mechanism: str, token: str, *, two_step: bool = False) -> None:
        """RFC 5034: send the initial response inline unless the line would pass 255 octets."""
        inline = not two_step and len(mechanism) + len(token) + 7 <= 255
        self.send(pop3.Auth(mechanism, token if inline else None))
        event = self.next_event()
        if isinstance(event, pop3.Continuation):
            self.send(pop3.AuthContinue(token))
            event = self.next_event()
            if isinstance(event, pop3.Continuation):  # XOAUTH2 error details: answer empty
                self.send(pop3.AuthContinue(""))
                event = self.next_event()
        if isinstance(event, pop3.Err):
            raise self._server_error(pop3.Auth(mechanism, None), event)

    def listing(self) -> tuple[list[ListedMessage], bool, str | None]:
        """LIST and UIDL (pipelined when allowed); returns the messages, whether UIDL worked
        and a warning if UIDL did not list the messages LIST did."""
        sizes: dict[int, int] = {}
        pipelined = self.conn.pipelining  # all at once: one round trip instead of three
        if pipelined:
            self.send_many([pop3.Stat(), pop3.List(None), pop3.Uidl(None)])
        limit = self._listing_limit(sent=pipelined)
        for raw in self._multiline(pop3.List(None), sent=pipelined, limit=limit):
            parts = raw.split()
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                if int(parts[0]) in sizes:
                    raise self._listed_twice(pop3.List(None), int(parts[0]))
                sizes[int(parts[0])] = int(parts[1])
            else:
                raise ProtocolError(
                    f"{self.account.host}: malformed LIST line {raw[:60]!r}{_out_of_step(raw)}",
                    hint=_BROKEN_SERVER,
                    account=self.account.name,
                )
        uidls: dict[int, str] = {}
        has_uidl = True
        if not pipelined:
            self.send(pop3.Uidl(None))
        event = self.next_event()
        if isinstance(event, pop3.Err):
            has_uidl = False
        else:
            seen: set[str] = set()
            while not isinstance(event := self.next_event(), pop3.End):
                if not isinstance(event, pop3.Line):
                    continue
                if len(seen) >= limit:
                    raise self._too_long(pop3.Uidl(None), limit)
                parts = event.line.split(maxsplit=1)
                if len(parts) != 2 or not parts[0].isdigit():
                    raise ProtocolError(
                        f"{self.account.host}: malformed UIDL line {event.line[:60]!r}"
                        f"{_out_of_step(event.line)}",
                        hint=_BROKEN_SERVER,
                        account=self.account.name,
                    )
                # RFC 1939 allows 0x21-0x7E only; other bytes are kept one for one (latin-1
                # maps each byte to one character), never replaced: two UIDLs that differ in
                # a non-ASCII byte must stay two UIDLs, or new mail passes for committed mail
                uidl = parts[1].strip().decode("latin-1")
                if uidl in seen:
                    raise ProtocolError(
                        f"{self.account.host} listed UIDL {uidl!r} twice in one session (its "
                        "UIDLs cannot tell new mail from archived mail)",
                        hint=_BROKEN_SERVER,
                        account=self.account.name,
                    )
                if int(parts[0]) in uidls:
                    raise self._listed_twice(pop3.Uidl(None), int(parts[0]))
                seen.add(uidl)
                uidls[int(parts[0])] = uidl
        listed = [ListedMessage(n, size, uidls.get(n)) for n, size in sorted(sizes.items())]
        return listed, has_uidl, self._mismatch(sizes, uidls) if has_uidl else None

    def _listed_twice(self, command: pop3.Command, msgno: int) -> ProtocolError:
        return ProtocolError(
            f"{self.account.host} listed message {msgno} twice in one {command.words()[0]} answer",
            hint=_BROKEN_SERVER,
            account=self.account.name,
        )

    def _mismatch(self, sizes: dict[int, int], uidls: dict[int, str]) -> str | None:
        """A warning when LIST and UIDL do not list the same messages (RFC 1939: both list
        every message of the maildrop).  LIST decides what exists; a message without a UIDL
        is handled like mail from a server without UIDL."""
        missing = sorted(set(sizes) - set(uidls))
        extra = sorted(set(uidls) - set(sizes))
        if not missing and not extra:
            return None
        found = []
        if missing:
            found.append(f"UIDL left out {_numbers(missing)} of LIST's {len(sizes)}")
        if extra:
            found.append(f"UIDL named {_numbers(extra)}, which LIST does not list")
        consequence = (
            ": those without a UIDL are downloaded each run and de-duplicated by content hash"
            if missing
            else ": what LIST does not list is not fetched"
        )
        return f"{self.account.host}: {'; '.join(found)}{consequence} (check the server)"

    def _listing_limit(self, *, sent: bool) -> int:
        """How many lines a LIST or UIDL answer may have: STAT's count (the maildrop is fixed
        for the session, RFC 1939) and some slack for a server that counts loosely."""
        ok = self._answer(pop3.Stat()) if sent else self._status(pop3.Stat())
        words = ok.text.split()
        count = int(words[0]) if words and words[0].isdigit() else MAX_LISTING
        return min(count + LISTING_SLACK, MAX_LISTING)

    def stat(self) -> tuple[int, int]:
        ok = self._status(pop3.Stat())
        count, size = ok.text.split()[:2]
        return int(count), int(size)

    def quit(self) -> bool:
        """QUIT and report whether the server confirmed it (deletions applied)."""
        try:
            self.send(pop3.Quit())
            event = self.next_event()
            return isinstance(event, pop3.Ok)
        finally:
            self.close()

    def interrupt(self) -> None:
        """From another thread (Ctrl-C with --jobs): make a blocked read fail now."""
        self._interrupted = True
        stream = self.stream
        if stream is not None:
            stream.interrupt()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def _numbers(msgnos: list[int]) -> str:
    """Message numbers for a one-line warning: a few, then how many more."""
    shown = ", ".join(str(n) for n in msgnos[:5])
    more = f" and {len(msgnos) - 5} more" if len(msgnos) > 5 else ""
    noun = "message" if len(msgnos) == 1 else "messages"
    return f"{noun} {shown}{more}"
