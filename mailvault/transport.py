"""The socket and TLS half of the POP3 client: the only module that touches ``socket``/``ssl``.

It turns the many ways a network can fail into the two or three errors the retry policy cares
about: ``TransportError`` (retry), ``TLSError`` (do not: a bad certificate will still be bad).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import time
from pathlib import Path

from mailvault.config import AccountConfig
from mailvault.errors import ConfigError, Stalled, TLSError, TransportError

RECV_SIZE = 256 * 1024
PROBE_TIMEOUT = 5.0  # seconds at most for the second connection that explains a failure
# Seconds without a greeting byte before asking whether the port speaks implicit TLS: long
# enough that a responsive server has greeted, short enough not to wait a whole `timeout`.
GREETING_GRACE = 5.0


def normalise_fingerprint(value: str) -> str:
    return value.lower().removeprefix("sha256:").replace(":", "")


def unverified_context() -> ssl.SSLContext:
    """A context that accepts any certificate: for a pinned fingerprint (checked after the
    handshake, ``Pop3Session._check_pin``), and for probes that only ask which protocol a
    port speaks or what certificate it shows (``check``, which then verifies properly)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_context(account: AccountConfig) -> ssl.SSLContext:
    """Verification on by default; a pinned fingerprint replaces CA trust, as in mpop."""
    if account.tls_fingerprint:
        ctx = unverified_context()
    else:
        ctx = ssl.create_default_context()
        if account.ca_file:
            path = Path(account.ca_file).expanduser()
            if account.config_path and not path.is_absolute():
                path = account.config_path.parent / path
            try:
                ctx.load_verify_locations(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                where = f"{account.config_path}: " if account.config_path else ""
                raise ConfigError(
                    f"{where}accounts.{account.name}.ca_file: {path} is not a readable PEM CA "
                    f"bundle ({exc}); point ca_file at the PEM file of the CA that issued the "
                    "server's certificate"
                ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _tls_failure(exc: ssl.SSLError, host: str) -> TLSError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = (exc.verify_message or str(exc)).rstrip(".")
        hint = "set ca_file to the CA that issued it, or pin it with tls_fingerprint"
        if "hostname" in reason.lower() or "IP address mismatch" in reason:
            hint = "the certificate is for another name: connect with the name it was issued for"
        elif "expired" in reason.lower():
            hint = "the certificate has expired (or this machine's clock is wrong)"
        return TLSError(f"TLS certificate of {host} rejected: {reason}; {hint}")
    return TLSError(f"TLS handshake with {host} failed: {exc.reason or exc}")


def _greets_in_plain_text(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` greets in POP3 plain text: asked after an implicit TLS handshake
    failed without a certificate in question (OpenSSL read "+OK" as a TLS record)."""
    head = b""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, PROBE_TIMEOUT)) as sock:
            while len(head) < 3 and (chunk := sock.recv(3 - len(head))):
                head += chunk
    except OSError:
        return False
    return head in (b"+OK", b"-ER")


def _completes_tls_handshake(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` answers a TLS ClientHello.  Verification is off: the question is
    only which protocol the port speaks (the certificate is checked when it is used)."""
    try:
        with (
            socket.create_connection((host, port), timeout=min(timeout, PROBE_TIMEOUT)) as raw,
            unverified_context().wrap_socket(raw, server_hostname=host),
        ):
            return True
    except OSError:  # ssl.SSLError included
        return False


def implicit_tls_instead(account: AccountConfig, waited: float) -> TLSError | None:
    """After a server sent no greeting for ``waited`` seconds on a connection without TLS: if
    its port speaks implicit TLS (client and server were each waiting for the other), the
    error that says so; else None (a slow or stalled server)."""
    if not _completes_tls_handshake(account.host, account.port, account.timeout):
        return None
    other = "starttls" if account.tls == "starttls" else "plain text"
    return TLSError(
        f"{account.host}:{account.port} sent no greeting in {waited:g} s but answers "
        "a TLS handshake",
        hint=f'port {account.port} speaks implicit TLS; set tls = "implicit" '
        f"(or use port 110 for {other})",
        account=account.name,
    )


class SocketStream:
    """A connected TCP (optionally TLS) stream with a per-operation timeout."""

    def __init__(self, sock: socket.socket, host: str, timeout: float) -> None:
        self.sock = sock
        self.host = host
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self._handshake_fd = -1  # the connection's fd while a TLS handshake runs on it

    @classmethod
    def connect(
        cls, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None
    ) -> SocketStream:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise TransportError(
                f"connecting to {host}:{port} timed out after {timeout:g} s"
            ) from None
        except socket.gaierror as exc:
            raise TransportError(
                f"cannot resolve {host}: {exc.strerror}; check the host name"
            ) from None
        except OSError as exc:
            raise TransportError(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}; check host, port and firewall"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = cls(sock, host, timeout)
        if tls is not None:
            stream.start_tls(tls, implicit_port=port)
        return stream

    def await_greeting(self, account: AccountConfig) -> None:
        """Before the greeting is read on a connection without TLS: return once its first
        byte (or EOF) is there.  A POP3S port never greets (it waits for a ClientHello), so
        when nothing came within the grace period a second connection asks whether the port
        completes a TLS handshake, and if so this fails at once instead of after `timeout`;
        if not, the server may just be slow, and the wait goes on until `timeout` (counted
        from the start).  (The caller keeps the stream before this: ``interrupt`` must reach
        a wait for a server that never greets.)"""
        started = time.monotonic()
        grace = min(account.timeout, GREETING_GRACE)
        if self.wait_readable(grace):
            return
        if (mismatch := implicit_tls_instead(account, grace)) is not None:
            self.close()
            raise mismatch
        if not self.wait_readable(account.timeout - (time.monotonic() - started)):
            self.close()
            raise self.stalled()

    def start_tls(self, ctx: ssl.SSLContext, *, implicit_port: int | None = None) -> None:
        """Handshake now; ``implicit_port``: TLS from the first byte (not after STLS), so a
        failed handshake may mean the port speaks plain text, which the error then says."""
        # wrap_socket detaches the plain socket object at once: interrupt() reaches the
        # connection through its fd while the handshake waits for the server
        self._handshake_fd = self.sock.fileno()
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            # The peer closed the connection mid-handshake: a dropped connection (retried),
            # not a TLS failure.  A plain-text port greets before it closes, so no probe.
            self.close()
            raise TransportError(
                f"connection to {self.host} closed during the TLS handshake ({exc.reason or exc})"
            ) from None
        except ssl.SSLError as exc:
            self.close()
            if (
                implicit_port is not None
                and not isinstance(exc, ssl.SSLCertVerificationError)
                and "ALERT" not in str(exc.reason)  # the server answered in TLS
                and _greets_in_plain_text(self.host, implicit_port, self.timeout)
            ):
                raise TLSError(
                    f"TLS handshake with {self.host}:{implicit_port} failed: {exc.reason or exc}",
                    hint='the server greeted in plain text; set tls = "starttls" or "none" '
                    "or use port 995",
                ) from None
            raise _tls_failure(exc, self.host) from None
        except TimeoutError:
            self.close()
            raise TransportError(f"TLS handshake with {self.host} timed out") from None
        except OSError as exc:
            self.close()
            raise TransportError(
                f"connection to {self.host} lost during the TLS handshake: {exc}"
            ) from None
        finally:
            self._handshake_fd = -1

    def stalled(self) -> Stalled:
        return Stalled(
            f"{self.host} sent nothing for {self.timeout:g} s; the server or network stalled "
            "(rerun later, or raise the account's `timeout` for a slow server)"
        )

    def wait_readable(self, seconds: float) -> bool:
        """Whether data (or EOF, or an error the next read reports) is there within
        ``seconds``, without consuming it.  Only before TLS: MSG_PEEK is plain-socket only."""
        self.sock.settimeout(max(seconds, 0.0))  # 0: only look (non-blocking)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.timeout)
        return True

    def read(self) -> bytes:
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise self.stalled() from None
        except ssl.SSLError as exc:
            raise TransportError(
                f"TLS error reading from {self.host}: {exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise TransportError(f"connection to {self.host} lost: {exc.strerror or exc}") from None

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise TransportError(f"sending to {self.host} timed out") from None
        except OSError as exc:
            raise TransportError(f"connection to {self.host} lost: {exc.strerror or exc}") from None

    @property
    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def peer_cert_der(self) -> bytes | None:
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.getpeercert(binary_form=True)
        return None

    def peer_cert_sha256(self) -> str | None:
        der = self.peer_cert_der()
        return hashlib.sha256(der).hexdigest() if der else None

    def interrupt(self) -> None:
        """From another thread: wake a blocked read (it then fails as a lost connection);
        closing the socket would not wake it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        fd = self._handshake_fd
        if fd >= 0:  # a handshake in progress: its socket object is not self.sock yet
            with contextlib.suppress(OSError):
                twin = socket.socket(fileno=os.dup(fd))
                try:
                    twin.shutdown(socket.SHUT_RDWR)
                finally:
                    twin.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
