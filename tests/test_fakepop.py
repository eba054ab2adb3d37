"""Tests of the fake POP3 server and the delay proxy, driven by stdlib poplib and raw sockets.

The fault tests show each misbehaviour on the wire, so client tests can rely on it.
"""

from __future__ import annotations

import base64
import hashlib
import poplib
import re
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
import trustme

from mailvault.testkit.fakepop import (
    GARBAGE_GREETING,
    GARBAGE_LINE,
    INJECTED,
    FakeMessage,
    FakePop3Server,
    Faults,
    dot_stuff,
    served_bytes,
    top_bytes,
)
from mailvault.testkit.proxy import DelayProxy

M1 = b"From: a@example.com\r\nSubject: one\r\n\r\nHello\r\n.\r\n..two dots\r\n.leading\r\n"
M2 = b"Subject: two\r\n\r\nno trailing crlf"
M3 = b".starts with a dot\r\n\r\nbody 1\r\nbody 2\r\n"
MESSAGES = [M1, M2, M3]
LOGIN = b"USER alice\r\nPASS alice-secret\r\n"


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(list(MESSAGES)) as srv:
        yield srv


def pop(srv: FakePop3Server | DelayProxy, login: bool = True) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", srv.port, timeout=5)
    if login:
        client.user("alice")
        client.pass_("alice-secret")
    return client


def raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_until(sock: socket.socket, marker: bytes, buf: bytes = b"") -> bytes:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}; got {buf!r}")
        buf += chunk
    return buf


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def session(port: int, script: bytes) -> bytes:
    """Pipeline a whole script in one write and return everything until the server closes."""
    sock = raw(port)
    sock.sendall(script)
    return read_to_eof(sock)


def mask(data: bytes) -> bytes:
    """Blank out the APOP timestamp, the only part of a transcript that differs per session."""
    return re.sub(rb"<[^>]*>?", lambda m: b"#" * len(m.group()), data)


def retr_wire(data: bytes) -> bytes:
    return b"+OK %d octets\r\n" % len(served_bytes(data)) + dot_stuff(served_bytes(data)) + b".\r\n"


# --------------------------------------------------------------------------- framing helpers
def test_served_bytes_and_stuffing() -> None:
    assert served_bytes(M2) == M2 + b"\r\n"
    assert served_bytes(M1) == M1
    assert served_bytes(b"") == b"\r\n"
    assert served_bytes(b"bare\n") == b"bare\n\r\n"
    assert dot_stuff(M1).endswith(b"Hello\r\n..\r\n...two dots\r\n..leading\r\n")
    assert dot_stuff(M3).startswith(b"..starts")
    assert dot_stuff(b"a\n.b\r\n") == b"a\n.b\r\n"  # bare LF is no line end
    assert top_bytes(M3, 1) == b".starts with a dot\r\n\r\nbody 1\r\n"
    assert top_bytes(M3, 0) == b".starts with a dot\r\n\r\n"
    assert top_bytes(b"no body", 5) == b"no body\r\n"


# ----------------------------------------------------------------------------- happy path
def test_full_poplib_session(server: FakePop3Server) -> None:
    client = pop(server)
    assert client.stat() == (3, sum(len(served_bytes(m)) for m in MESSAGES))
    _, listing, _ = client.list()
    assert listing == [b"%d %d" % (i, len(served_bytes(m))) for i, m in enumerate(MESSAGES, 1)]
    _, uidls, _ = client.uidl()
    assert uidls == [b"1 uid-1", b"2 uid-2", b"3 uid-3"]
    for number, message in enumerate(MESSAGES, 1):
        _, lines, _ = client.retr(number)
        assert b"".join(line + b"\r\n" for line in lines) == served_bytes(message)
    _, lines, _ = client.top(3, 1)
    assert lines == [b".starts with a dot", b"", b"body 1"]
    client.dele(2)
    with pytest.raises(poplib.error_proto, match="already deleted"):
        client.retr(2)
    assert client.stat()[0] == 2
    assert len(server.mailbox) == 3  # nothing is deleted before QUIT
    assert client.quit().startswith(b"+OK")
    assert [m.uidl for m in server.mailbox] == ["uid-1", "uid-3"]
    assert server.deleted_uidls == ["uid-2"]
    assert ("C", "PASS ***") in server.log and ("C", "DELE 2") in server.log
    assert not any("alice-secret" in text for _, text in server.log)
    assert server.sessions == 1


def test_retr_wire_bytes_are_dot_stuffed(server: FakePop3Server) -> None:
    out = session(server.port, LOGIN + b"RETR 1\r\nRETR 2\r\nQUIT\r\n")
    assert retr_wire(M1) + retr_wire(M2) in out
    assert b"Hello\r\n..\r\n...two dots\r\n..leading\r\n.\r\n" in out


def test_pipelined_commands_answered_in_order(server: FakePop3Server) -> None:
    script = LOGIN + b"STAT\r\nNOOP\r\nLIST 3\r\nUIDL 1\r\nFOO\r\nDELE 9\r\nRSET\r\nQUIT\r\n"
    lines = session(server.port, script).split(b"\r\n")
    statuses = [line.split(b" ")[0] for line in lines[1:-1]]
    assert statuses == [b"+OK"] * 6 + [b"-ERR"] * 2 + [b"+OK"] * 2
    assert lines[5] == b"+OK 3 %d" % len(M3) and lines[6] == b"+OK 1 uid-1"
    assert lines[7] == b"-ERR unknown command"


def test_state_checks_and_bad_arguments(server: FakePop3Server) -> None:
    out = session(server.port, b"STAT\r\nPASS x\r\n" + LOGIN + b"RETR 0\r\nRETR x\r\nQUIT\r\n")
    lines = out.split(b"\r\n")
    assert b"not valid in the AUTHORIZATION state" in lines[1]
    assert lines[2] == b"-ERR send USER first"
    assert lines[5].startswith(b"-ERR no such message") and lines[6].startswith(b"-ERR no such")


def test_apop_and_auth_plain(server: FakePop3Server) -> None:
    client = poplib.POP3("127.0.0.1", server.port, timeout=5)
    client.apop("alice", "alice-secret")
    client.quit()
    token = base64.b64encode(b"\0alice\0alice-secret")
    out = session(server.port, b"AUTH PLAIN " + token + b"\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1].startswith(b"+OK maildrop locked")
    sock = raw(server.port)
    read_until(sock, b"\r\n")
    sock.sendall(b"AUTH PLAIN\r\n")
    assert read_until(sock, b"\r\n") == b"+ \r\n"
    sock.sendall(token + b"\r\nQUIT\r\n")
    assert read_to_eof(sock).startswith(b"+OK maildrop locked")
    bad = base64.b64encode(b"\0alice\0nope")
    assert b"-ERR [AUTH]" in session(server.port, b"AUTH PLAIN " + bad + b"\r\nQUIT\r\n")
    assert ("C", "AUTH PLAIN ***") in server.log and ("C", "***") in server.log


def test_apop_digest_uses_greeting_timestamp(server: FakePop3Server) -> None:
    sock = raw(server.port)
    greeting = read_until(sock, b"\r\n")
    stamp = re.search(rb"<[^>]+>", greeting)
    assert stamp is not None
    digest = hashlib.md5(stamp.group() + b"alice-secret").hexdigest().encode()
    sock.sendall(b"APOP alice " + digest + b"\r\nQUIT\r\n")
    assert read_to_eof(sock).startswith(b"+OK")


# ------------------------------------------------------------------------- locking, cuts
def test_concurrent_login_gets_in_use(server: FakePop3Server) -> None:
    first = pop(server)
    second = pop(server, login=False)
    second.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\] maildrop locked"):
        second.pass_("alice-secret")
    first.quit()
    second.user("alice")
    second.pass_("alice-secret")
    second.quit()


def test_dropped_session_releases_lock_without_deleting(server: FakePop3Server) -> None:
    sock = raw(server.port)
    sock.sendall(LOGIN + b"DELE 1\r\nDELE 2\r\n")
    read_until(sock, b"message 2 deleted\r\n")
    sock.close()
    assert server.wait_unlocked()
    assert len(server.mailbox) == 3 and server.deleted_uidls == []
    pop(server).quit()


def test_cut_at_offset_is_exact_for_every_offset(server: FakePop3Server) -> None:
    server.mailbox[:] = [FakeMessage("u", b"S: x\r\n\r\n.\r\n")]
    script = LOGIN + b"RETR 1\r\nQUIT\r\n"

    full = session(server.port, script)
    assert full.endswith(b".\r\n+OK bye (0 messages deleted)\r\n")
    for offset in range(len(full) + 1):
        server.faults.cut_at_offset = offset
        got = session(server.port, script)
        assert len(got) == offset and mask(got) == mask(full)[:offset], offset
    assert len(server.mailbox) == 1


def test_cut_in_retr_sweep_never_deletes(server: FakePop3Server) -> None:
    wire = retr_wire(M2)
    for offset in range(len(wire) + 1):
        server.faults.cut_in_retr = (2, offset)
        out = session(server.port, LOGIN + b"DELE 1\r\nRETR 2\r\nQUIT\r\n")
        assert out.endswith(b"+OK message 1 deleted\r\n" + wire[:offset]), offset
    assert len(server.mailbox) == 3 and server.deleted_uidls == []


def test_cut_in_dele(server: FakePop3Server) -> None:
    server.faults.cut_in_dele = 2
    out = session(server.port, LOGIN + b"DELE 1\r\nDELE 2\r\nQUIT\r\n")
    assert out.endswith(b"+OK message 1 deleted\r\n")
    assert len(server.mailbox) == 3


@pytest.mark.parametrize("applied", [False, True])
def test_cut_before_quit_reply(server: FakePop3Server, applied: bool) -> None:
    server.faults = Faults(cut_before_quit_reply=True, quit_applies_before_cut=applied)
    out = session(server.port, LOGIN + b"DELE 1\r\nQUIT\r\n")
    assert out.endswith(b"+OK message 1 deleted\r\n")
    assert len(server.mailbox) == (2 if applied else 3)
    assert server.deleted_uidls == (["uid-1"] if applied else [])


# ---------------------------------------------------------------------- login faults
@pytest.mark.parametrize(
    ("knob", "code"), [("in_use_times", "[IN-USE]"), ("sys_temp_times", "[SYS/TEMP]")]
)
def test_temporary_login_failures(server: FakePop3Server, knob: str, code: str) -> None:
    setattr(server.faults, knob, 2)
    client = pop(server, login=False)
    for _ in range(2):
        client.user("alice")
        with pytest.raises(poplib.error_proto, match=re.escape(code)):
            client.pass_("alice-secret")
    client.user("alice")
    client.pass_("alice-secret")
    client.quit()
    assert getattr(server.faults, knob) == 0


def test_auth_fail_and_wrong_password(server: FakePop3Server) -> None:
    client = pop(server, login=False)
    client.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] invalid credentials"):
        client.pass_("wrong")
    server.faults.auth_fail = True
    client.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("alice-secret")


# ---------------------------------------------------------------------- content faults
def test_lie_about_sizes(server: FakePop3Server) -> None:
    server.faults.lie_about_sizes = True
    client = pop(server)
    _, listing, _ = client.list()
    _, lines, _ = client.retr(1)
    received = b"".join(line + b"\r\n" for line in lines)
    assert int(listing[0].split()[1]) != len(received) == len(served_bytes(M1))
    client.quit()


def test_endless_line_in_retr(server: FakePop3Server) -> None:
    server.faults.endless_line_in_retr = 1
    sock = raw(server.port)
    sock.sendall(LOGIN + b"RETR 1\r\n")
    buf = read_until(sock, b"octets\r\n")
    body = buf.split(b"octets\r\n", 1)[1]
    while len(body) < 1 << 20:
        body += sock.recv(65536)
    assert b"\n" not in body
    sock.close()
    assert server.wait_unlocked()
    assert len(server.mailbox) == 3


def test_garbage_greeting(server: FakePop3Server) -> None:
    server.faults.garbage_greeting = True
    with pytest.raises(poplib.error_proto):
        poplib.POP3("127.0.0.1", server.port, timeout=5)
    assert session(server.port, b"") == GARBAGE_GREETING


def test_garbage_after_command(server: FakePop3Server) -> None:
    server.faults.garbage_after = "RETR"
    client = pop(server)
    with pytest.raises(poplib.error_proto):
        client.retr(1)
    assert client.noop().startswith(b"+OK")  # only that reply is garbage; session goes on
    client.quit()
    assert ("S", GARBAGE_LINE.decode().strip()) in server.log


def test_slow_bytes_per_sec(server: FakePop3Server) -> None:
    server.mailbox[:] = [FakeMessage("u", b"x" * 1000 + b"\r\n")]
    client = pop(server)
    server.faults.slow_bytes_per_sec = 4000
    started = time.monotonic()
    client.retr(1)
    assert time.monotonic() - started >= 0.2
    client.quit()


def test_capabilities_and_their_faults(server: FakePop3Server) -> None:
    client = pop(server, login=False)
    caps = client.capa()
    assert {"PIPELINING", "UIDL", "TOP", "USER", "RESP-CODES", "SASL"} <= caps.keys()
    assert "STLS" not in caps
    server.faults = Faults(no_uidl=True, no_pipelining=True, login_delay=900)
    caps = client.capa()
    assert "PIPELINING" not in caps and "UIDL" not in caps and caps["LOGIN-DELAY"] == ["900"]
    client.user("alice")
    client.pass_("alice-secret")
    with pytest.raises(poplib.error_proto, match="not supported"):
        client.uidl()
    client.quit()


@pytest.mark.parametrize("how", ["close", "reset", "silence", "garbage"])
def test_broken_capa(server: FakePop3Server, how: str) -> None:
    """An old server that does not know CAPA and, instead of -ERR, hangs up, resets the
    connection, says nothing, or sends a line that is not POP3 (then goes on)."""
    server.faults.broken_capa = how
    sock = raw(server.port)
    read_until(sock, b"\r\n")
    sock.sendall(b"CAPA\r\n")
    if how == "close":
        assert read_to_eof(sock) == b""
    elif how == "reset":
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)
        sock.close()
    elif how == "silence":
        sock.sendall(b"NOOP\r\n")  # nor is anything after it answered
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        sock.close()
    else:
        assert read_until(sock, b"\r\n") == GARBAGE_LINE
        sock.sendall(LOGIN + b"QUIT\r\n")
        assert read_to_eof(sock).endswith(b"+OK bye (0 messages deleted)\r\n")
    server.faults.broken_capa = None
    client = pop(server)
    assert client.capa() and client.stat()[0] == 3
    client.quit()


def test_pipelined_commands_are_counted(server: FakePop3Server) -> None:
    """``pipelined`` counts commands that arrived behind one not yet answered: poplib waits
    for each answer (0); a script in one write pipelines all but its last command."""
    client = pop(server)
    client.stat()
    client.quit()
    assert server.pipelined == 0
    session(server.port, LOGIN + b"STAT\r\nQUIT\r\n")
    assert server.pipelined == 3


def test_uidls_settable_and_reusable() -> None:
    with FakePop3Server([M1, M2], uidls=["a", "b"], faults=Faults(reuse_uidls=True)) as srv:
        client = pop(srv)
        assert client.uidl()[1] == [b"1 a", b"2 b"]
        client.quit()
        srv.mailbox[0].uidl = "uid-1"
        client = pop(srv)
        client.dele(1)
        client.quit()
        srv.add_message(M3)  # reuse_uidls: the deleted message's UIDL comes back
        assert [m.uidl for m in srv.mailbox] == ["b", "uid-1"]
        srv.faults.reuse_uidls = False
        srv.add_message(M3)
        assert srv.mailbox[-1].uidl not in {"b", "uid-1"}


def test_idle_timeout_and_stop() -> None:
    with FakePop3Server([M1], idle_timeout=0.2) as srv:
        out = session(srv.port, LOGIN)
        assert out.endswith(b"-ERR [SYS/TEMP] idle timeout, closing connection\r\n")
    srv = FakePop3Server([M1]).start()
    sock = raw(srv.port)
    read_until(sock, b"\r\n")
    started = time.monotonic()
    srv.stop()
    assert read_to_eof(sock) == b"" and time.monotonic() - started < 3


# ---------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


def test_stls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    with FakePop3Server([M1], tls_context=tls[0]) as srv:
        client = pop(srv, login=False)
        assert "STLS" in client.capa()
        client.stls(context=tls[1])
        assert "STLS" not in client.capa()
        client.user("alice")
        client.pass_("alice-secret")
        assert b"".join(x + b"\r\n" for x in client.retr(1)[1]) == M1
        client.quit()


def test_implicit_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    with FakePop3Server([M1], tls_context=tls[0], implicit_tls=True) as srv:
        client = poplib.POP3_SSL("127.0.0.1", srv.port, context=tls[1], timeout=5)
        client.user("alice")
        client.pass_("alice-secret")
        assert client.stat()[0] == 1
        client.quit()


def test_stls_injection(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    with FakePop3Server([M1], tls_context=tls[0], faults=Faults(stls_inject=True)) as srv:
        sock = raw(srv.port)
        read_until(sock, b"\r\n")
        sock.sendall(b"STLS\r\n")
        assert read_until(sock, INJECTED) == b"+OK Begin TLS negotiation\r\n" + INJECTED
        wrapped = tls[1].wrap_socket(sock, server_hostname="127.0.0.1")  # buffer discarded
        wrapped.sendall(b"NOOP\r\n")
        assert read_until(wrapped, b"\r\n").startswith(b"-ERR NOOP not valid")
        wrapped.close()
        naive = raw(srv.port)  # a client that hands the injected bytes to TLS fails
        read_until(naive, b"\r\n")
        naive.sendall(b"STLS\r\n")
        line = b""
        while not line.endswith(b"\n"):
            line += naive.recv(1)
        with pytest.raises(ssl.SSLError):
            tls[1].wrap_socket(naive, server_hostname="127.0.0.1")
        naive.close()


# ---------------------------------------------------------------------------------- proxy
def test_proxy_delay_rtt_and_throughput(server: FakePop3Server) -> None:
    big = b"".join(b"%075d\r\n" % i for i in range(40_000))  # ~3 MiB
    server.add_message(big)
    with DelayProxy("127.0.0.1", server.port, one_way_delay=0.010) as proxy:
        client = pop(proxy)
        rtts = []
        for _ in range(5):
            started = time.monotonic()
            client.noop()
            rtts.append(time.monotonic() - started)
        # the delay is there; the upper bounds only catch a proxy that stalls (loose: CI load)
        assert min(rtts) >= 0.019 and statistics.median(rtts) < 0.25, rtts
        started = time.monotonic()
        _, lines, _ = client.retr(4)
        assert time.monotonic() - started < 5 and len(lines) == 40_000
        client.dele(1)
        client.quit()
    assert len(server.mailbox) == 3


def test_proxy_cuts_after_server_bytes(server: FakePop3Server) -> None:
    script = LOGIN + b"DELE 1\r\nRETR 2\r\nRSET\r\nQUIT\r\n"
    full = session(server.port, script)
    with DelayProxy("127.0.0.1", server.port, cut_after_server_bytes=0) as proxy:
        for cut in (0, 1, 40, 100, len(full) - 1):
            proxy.cut_after_server_bytes = cut
            got = session(proxy.port, script)
            assert len(got) == cut and mask(got) == mask(full)[:cut], cut
            assert server.wait_unlocked()
        proxy.cut_after_server_bytes = None
        client = pop(proxy)
        client.dele(1)
        client.quit()
    assert server.deleted_uidls == ["uid-1"]


def test_servers_threads_do_not_leak() -> None:
    before = threading.active_count()
    with FakePop3Server([M1]) as srv, DelayProxy("127.0.0.1", srv.port) as proxy:
        pop(proxy).quit()
    assert threading.active_count() <= before
