"""`mailvault check`: the steps a person would otherwise do with nc and openssl s_client.

Each step gets a verdict and, when it fails, the likely cause and the fix; later steps are
skipped once one fails, because they could only fail for the same reason.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from mailvault.config import AccountConfig
from mailvault.errors import (
    ConfigError,
    LoginDelay,
    MailboxInUse,
    MailvaultError,
    PermanentServerError,
    RemoteError,
    ServerError,
    Stalled,
    TemporaryServerError,
    TLSError,
)
from mailvault.pop3 import LocalProtocolError
from mailvault.redact import redact
from mailvault.secrets import resolve_secret
from mailvault.session import Pop3Session
from mailvault.transport import (
    SocketStream,
    normalise_fingerprint,
    tls_context,
    unverified_context,
)


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    # the failure is the configuration's (a password source, a CA file): `check` then exits 2,
    # as `fetch` does for the same cause
    config: bool = False
    # the step failed but was worked around, as fetch does (a server that fails CAPA): ok,
    # for nothing needs fixing, and marked so the person reading knows what fetch warns
    warning: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "step": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "hint": self.hint,
            "warning": self.warning,
        }


def _tcp(account: AccountConfig) -> Step:
    started = time.monotonic()
    try:
        with socket.create_connection((account.host, account.port), timeout=account.timeout):
            pass
    except socket.gaierror as exc:
        return Step(
            "tcp",
            False,
            f"cannot resolve {account.host}: {exc.strerror}",
            "check the host name and this machine's DNS",
        )
    except TimeoutError:
        return Step(
            "tcp",
            False,
            f"no answer from {account.host}:{account.port} in {account.timeout:g} s",
            "a firewall may drop the traffic, or the port is wrong",
        )
    except OSError as exc:
        return Step(
            "tcp",
            False,
            f"{account.host}:{account.port}: {exc.strerror or exc}",
            "check the port (995 for implicit TLS, 110 for STLS/plain)",
        )
    ms = (time.monotonic() - started) * 1000
    return Step("tcp", True, f"connected to {account.host}:{account.port} in {ms:.0f} ms")


def _handshake(account: AccountConfig, ctx: ssl.SSLContext) -> SocketStream:
    """Connect and complete TLS (directly, or after a minimal STLS exchange)."""
    if account.tls == "implicit":
        return SocketStream.connect(account.host, account.port, account.timeout, ctx)
    stream = SocketStream.connect(account.host, account.port, account.timeout)
    stream.await_greeting(account)
    buf = b""
    try:
        while buf.count(b"\r\n") < 1:
            buf += stream.read() or b"\r\n"
    except Stalled:
        stream.close()
        raise
    stream.write(b"STLS\r\n")
    while buf.count(b"\r\n") < 2:
        buf += stream.read() or b"\r\n"
    if b"\r\n+OK" not in buf:
        stream.close()
        reply = buf.splitlines()[-1][:80].decode("ascii", "replace")
        reply = "".join(c if c.isprintable() else "?" for c in reply)
        raise TLSError(
            f"{account.host} refused STLS ({reply})",
            hint='tls = "starttls" never falls back to plain text; use tls = "implicit" '
            "(port 995) if the server offers it",
            account=account.name,
        )
    stream.start_tls(ctx)
    return stream


def _split(exc: MailvaultError, hint: str = "") -> tuple[str, str]:
    """An error as a step's detail and hint: the fix the error names, else ``hint``."""
    if isinstance(exc, RemoteError) and exc.hint:
        return redact(exc.cause), redact(exc.hint)
    return str(exc), hint


def _login_hint(exc: MailvaultError) -> str:
    """The likely cause of a refused login, from the RFC 2449/3206 response code."""
    if isinstance(exc, MailboxInUse):
        return (
            "another client (a mail program, or an earlier fetch still running) holds the "
            "mailbox; close it, or wait: fetch retries [IN-USE] by itself"
        )
    if isinstance(exc, LoginDelay):
        return "the server limits how often you may log in; wait, then try again"
    if isinstance(exc, (TemporaryServerError, PermanentServerError)):
        return "the server reports a problem on its side; try later or ask its administrator"
    if isinstance(exc, ServerError) and exc.code is None:
        return (
            "the server refused without saying why: check user, the password source, and the "
            "auth method (auth = ...), and whether the mailbox is open in another client"
        )
    return "check user and the password source (password_env, password_file, password_command)"


def _tls_failed(exc: MailvaultError) -> Step:
    return Step("tls", False, *_split(exc, "the server may not speak TLS on this port"))


def _certificate(account: AccountConfig) -> Step:
    """Look at the certificate with verification off, so we can explain what verification says."""
    if account.tls == "none":
        return Step("tls", True, 'tls = "none": no TLS (the password travels in clear text)')
    try:
        stream = _handshake(account, unverified_context())
    except MailvaultError as exc:
        return _tls_failed(exc)
    der, version = stream.peer_cert_der(), stream.tls_version
    stream.close()
    if not der:
        return Step("tls", False, "the server sent no certificate")
    info = _describe(der)
    try:
        _handshake(account, tls_context(account)).close()
        verdict, hint = "trusted (chain and host name verified)", ""
        if account.tls_fingerprint:  # the pin replaces CA and host-name checks (see transport)
            verdict = "trusted (pinned: its fingerprint matches tls_fingerprint)"
    except TLSError as exc:
        verdict, hint = "NOT trusted", str(exc)
    except ConfigError as exc:  # ca_file unreadable
        return Step("tls", False, f"{version}; {info['summary']}; could not verify", str(exc), True)
    except MailvaultError as exc:
        verdict, hint = "could not verify", str(exc)
    if account.tls_fingerprint and info.get("sha256") != normalise_fingerprint(
        account.tls_fingerprint
    ):
        verdict = "NOT trusted"
        hint = f"its fingerprint sha256:{info.get('sha256')} differs from tls_fingerprint"
    not_before = info.get("not_before")
    if isinstance(not_before, datetime) and not_before > datetime.now(UTC):
        hint += " The certificate is not valid yet: is this machine's clock behind?"
    ok = verdict.startswith("trusted")
    return Step("tls", ok, f"{version}; {info['summary']}; {verdict}", hint.strip())


def _describe(der: bytes) -> dict[str, datetime | str]:
    """Decode the fields a person checks: names, issuer, validity, fingerprint."""
    pem = ssl.DER_cert_to_PEM_cert(der)
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as handle:
        handle.write(pem)
        handle.flush()
        try:
            decoded = ssl._ssl._test_decode_cert(handle.name)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a certificate we cannot decode is still reported
            return {"summary": "certificate could not be decoded"}
    subject = dict(x[0] for x in decoded.get("subject", ()))
    issuer = dict(x[0] for x in decoded.get("issuer", ()))
    names = [v for _, v in decoded.get("subjectAltName", ())]
    not_after = datetime.strptime(decoded["notAfter"], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    not_before = datetime.strptime(decoded["notBefore"], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    days = (not_after - datetime.now(UTC)).days
    summary = (
        f"subject {subject.get('commonName', '?')}, names {', '.join(names) or '-'}, "
        f"issuer {issuer.get('organizationName') or issuer.get('commonName', '?')}, "
        f"expires {not_after:%Y-%m-%d} ({days} days)"
    )
    return {
        "summary": summary,
        "not_before": not_before,
        "not_after": not_after,
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def _capa(session: Pop3Session) -> Step:
    """CAPA's step; failed (session.connect then connected again without it) is a warning
    with the words fetch warns in, for fetch works around it the same way."""
    warning = session.capa_warning()
    if warning is not None:
        return Step("capa", True, warning, warning=True)
    caps = ", ".join(session.facts.capabilities) or "none (CAPA not supported)"
    return Step("capa", True, caps)


def _capa_before_stls(account: AccountConfig) -> tuple[list[Step], str | None]:
    """For tls = "starttls": CAPA asked in plain text first, as fetch asks it; the steps it
    decides (none if it lists STLS) and how it failed (None if it answered).  A server that
    fails it gets its warning as the step before tls, whose STLS (asked without CAPA) is then
    fetch's blind STLS after its reconnect: a refusal is read beside its cause.  A listing
    without STLS is the capa step, then the tls step failing with fetch's error: fetch does
    not ask STLS then, and asking it here would name another cause, or pass where fetch
    fails.  Any other failure is the tls step's, as the tls step would have met it."""
    probe = Pop3Session(account, lambda: resolve_secret(account))
    try:
        failure = probe.probe_capa()
    except MailvaultError as exc:
        return [_tls_failed(exc)], None
    if failure is not None:
        return [_capa(probe)], failure
    unlisted = probe.stls_unlisted()
    return ([] if unlisted is None else [_capa(probe), _tls_failed(unlisted)]), None


def run_check(account: AccountConfig) -> Iterator[Step]:
    step = _tcp(account)
    yield step
    if not step.ok:
        return
    early, failed = _capa_before_stls(account) if account.tls == "starttls" else ([], None)
    for step in early:
        yield step
        if not step.ok:
            return
    step = _certificate(account)
    yield step
    if not step.ok:
        return
    # CAPA that failed is not asked again, as in fetch's next sessions: no second wait
    session = Pop3Session(account, lambda: resolve_secret(account), capa_failure=failed)
    try:
        try:
            session.connect()
        except MailvaultError as exc:
            if session.capa_failure is not None and failed is None:  # the reconnect failed
                yield _capa(session)
            yield Step("pop3", False, *_split(exc), config=isinstance(exc, ConfigError))
            return
        yield Step("greeting", True, session.facts.greeting)
        if failed is None:  # else said before tls
            yield _capa(session)
        try:
            session.login()
        except ConfigError as exc:  # the password source, before anything was sent
            yield Step("login", False, str(exc), config=True)
            return
        except MailvaultError as exc:
            yield Step("login", False, *_split(exc, _login_hint(exc)))
            return
        except LocalProtocolError as exc:  # the user or password cannot form a command
            yield Step(
                "login",
                False,
                f"the user name or the password cannot be sent in a POP3 command ({exc})",
                "check user and the password source (a line break, or a space with APOP?)",
                config=True,  # as fetch: exit 2
            )
            return
        yield Step("login", True, f"logged in as {account.user} ({account.auth})")
        try:
            count, size = session.stat()
        except MailvaultError as exc:
            yield Step(
                "stat",
                False,
                str(exc),
                "logged in, but the server cannot open the mailbox (locked by another client, "
                "or damaged on the server: ask its admin)",
            )
            return
        except ValueError:
            yield Step(
                "stat",
                False,
                "the server's STAT reply does not give a message count and size",
                "a broken POP3 server; fetch may still work (it lists with UIDL and LIST)",
            )
            return
        yield Step("stat", True, f"{count} messages, {size:,} bytes on the server")
        try:
            confirmed = session.quit()
        except MailvaultError as exc:
            confirmed, why = False, str(exc)
        else:
            why = "the server did not answer QUIT with +OK"
        if not confirmed:
            yield Step(
                "quit",
                False,
                why,
                "fetch needs QUIT confirmed before the server applies deletions: with "
                'delete = "after-commit" nothing would be deleted (mail is still archived)',
            )
    finally:
        session.close()
