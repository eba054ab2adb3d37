"""Tests for the sans-I/O POP3 core (mailvault.pop3).

The core is fed bytes exactly as a server would send them, so every framing rule --
dot-stuffing, the CRLF.CRLF terminator, pipelined response matching, the STARTTLS
injection guard -- is checked without sockets.  The Hypothesis tests cut the wire bytes at
arbitrary points (down to single bytes) because chunk boundaries are where incremental
parsers break.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailvault.errors import ProtocolError, TransportError
from mailvault.pop3 import (
    NEED_DATA,
    Apop,
    Auth,
    AuthContinue,
    Capa,
    Closed,
    Command,
    Connection,
    Continuation,
    Data,
    Dele,
    End,
    Err,
    Event,
    Greeting,
    Line,
    List,
    LocalProtocolError,
    Noop,
    Ok,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
    _body,
    redacted,
)

# -- helpers -------------------------------------------------------------------------------


def drain(conn: Connection) -> list[Event]:
    """All events the buffered bytes complete."""
    out: list[Event] = []
    for _ in range(100_000):
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        assert not isinstance(event, type(NEED_DATA))
        out.append(event)
        if isinstance(event, Closed):
            return out
    raise AssertionError("next_event never asked for more data")


def feed(conn: Connection, *chunks: bytes) -> list[Event]:
    out: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        out.extend(drain(conn))
    return out


def greeted(**kwargs: int) -> Connection:
    conn = Connection(**kwargs)
    assert feed(conn, b"+OK POP3 ready\r\n") == [Greeting("POP3 ready", None)]
    return conn


def stuff(body: bytes) -> bytes:
    """Dot-stuff a message the way RFC 1939 servers do: lines are CRLF-delimited."""
    return b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in body.split(b"\r\n"))


def lax_stuff(body: bytes) -> bytes:
    """Dot-stuff only the lines a client could not tell from stuffed ones or the terminator
    (".." and "."), as Dovecot 2.3 does for a message's first line."""
    return b"\r\n".join(
        b"." + ln if ln == b"." or ln.startswith(b"..") else ln for ln in body.split(b"\r\n")
    )


def retr_response(body: bytes) -> bytes:
    return b"+OK message follows\r\n" + stuff(body) + b".\r\n"


def data_of(events: list[Event], command: Command) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data) and e.command == command)


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(wire)]
    return [wire[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


# -- greeting ------------------------------------------------------------------------------


def test_greeting_without_apop_timestamp() -> None:
    conn = Connection()
    assert conn.next_event() is NEED_DATA
    assert feed(conn, b"+OK Dovecot ready.\r\n") == [Greeting("Dovecot ready.", None)]
    assert conn.outstanding == 0


def test_greeting_with_apop_timestamp() -> None:
    conn = Connection()
    events = feed(conn, b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n")
    assert events == [
        Greeting(
            "POP3 server ready <1896.697170952@dbc.mtview.ca.us>",
            "<1896.697170952@dbc.mtview.ca.us>",
        )
    ]


def test_greeting_split_into_single_bytes() -> None:
    conn = Connection()
    wire = b"+OK hi <a@b>\r\n"
    events = feed(conn, *[wire[i : i + 1] for i in range(len(wire))])
    assert events == [Greeting("hi <a@b>", "<a@b>")]


def test_err_greeting_with_code_then_close() -> None:
    conn = Connection()
    events = feed(conn, b"-ERR [SYS/TEMP] too many connections\r\n")
    assert events == [Err(None, "[SYS/TEMP] too many connections", "SYS/TEMP")]
    with pytest.raises(LocalProtocolError):
        conn.send(Capa())
    assert feed(conn, b"") == [Closed()]


@pytest.mark.parametrize("wire", [b"HTTP/1.1 400 Bad Request\r\n", b"+ abc\r\n", b"+OKAY\r\n"])
def test_garbage_greeting_is_protocol_error(wire: bytes) -> None:
    conn = Connection()
    conn.receive_data(wire)
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_eof_before_greeting_is_transport_error() -> None:
    conn = Connection()
    conn.receive_data(b"+OK hal")
    conn.receive_data(b"")
    with pytest.raises(TransportError, match="greeting"):
        conn.next_event()


def test_send_before_greeting_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Connection().send(Capa())


# -- status lines --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "text", "code"),
    [
        (b"-ERR [IN-USE] maildrop locked", "[IN-USE] maildrop locked", "IN-USE"),
        (b"-ERR [AUTH] bad password", "[AUTH] bad password", "AUTH"),
        (b"-ERR [LOGIN-DELAY] wait 900s", "[LOGIN-DELAY] wait 900s", "LOGIN-DELAY"),
        (b"-ERR [SYS/TEMP] disk hiccup", "[SYS/TEMP] disk hiccup", "SYS/TEMP"),
        (b"-ERR [SYS/PERM] gone", "[SYS/PERM] gone", "SYS/PERM"),
        (b"-ERR no such user", "no such user", None),
        (b"-ERR [bad code", "[bad code", None),
        (b"-ERR", "", None),
    ],
)
def test_err_with_response_codes(line: bytes, text: str, code: str | None) -> None:
    conn = greeted()
    conn.send(User("alice"))
    assert feed(conn, line + b"\r\n") == [Err(User("alice"), text, code)]
    assert conn.outstanding == 0


def test_ok_without_text_and_with_code() -> None:
    conn = greeted()
    conn.send(Noop())
    assert feed(conn, b"+OK\r\n") == [Ok(Noop(), "", None)]
    conn.send(Stat())
    assert feed(conn, b"+OK 2 320\r\n") == [Ok(Stat(), "2 320", None)]


def test_garbage_status_is_protocol_error_quoting_40_bytes() -> None:
    conn = greeted()
    conn.send(Stat())
    garbage = b"* OK IMAP4rev1 server ready and this is a long line\r\n"
    conn.receive_data(garbage)
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert repr(garbage[:40]) in str(info.value)
    with pytest.raises(ProtocolError):  # the error is sticky
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())


def test_bare_lf_status_line_is_protocol_error() -> None:
    conn = greeted()
    conn.send(Stat())
    conn.receive_data(b"+OK 1 2\n")
    with pytest.raises(ProtocolError, match="bare LF"):
        conn.next_event()


def test_over_long_status_line_is_protocol_error() -> None:
    conn = greeted(max_line=64)
    conn.send(Noop())
    conn.receive_data(b"+OK " + b"x" * 100)  # no line end yet
    with pytest.raises(ProtocolError, match="longer than 64 bytes"):
        conn.next_event()


def test_over_long_complete_status_line_is_protocol_error() -> None:
    conn = greeted(max_line=64)
    conn.send(Noop())
    conn.receive_data(b"+OK " + b"x" * 59 + b"\r\n")  # 65 bytes with CRLF
    with pytest.raises(ProtocolError, match="longer than 64 bytes"):
        conn.next_event()


def test_status_line_at_the_limit_is_fine() -> None:
    conn = greeted(max_line=64)
    conn.send(Noop())
    assert feed(conn, b"+OK " + b"x" * 58 + b"\r\n") == [Ok(Noop(), "x" * 58, None)]


def test_unexpected_bytes_when_nothing_outstanding() -> None:
    conn = greeted()
    conn.receive_data(b"+OK surprise\r\n")
    with pytest.raises(ProtocolError, match="unexpected bytes from server"):
        conn.next_event()


# -- listings ------------------------------------------------------------------------------


def test_capa_listing() -> None:
    conn = greeted()
    conn.send(Capa())
    wire = (
        b"+OK Capability list follows\r\n"
        b"TOP\r\nUSER\r\nSASL PLAIN XOAUTH2\r\nRESP-CODES\r\nPIPELINING\r\nUIDL\r\n.\r\n"
    )
    events = feed(conn, wire)
    assert events[0] == Ok(Capa(), "Capability list follows", None)
    assert [e.line for e in events[1:-1] if isinstance(e, Line)] == [
        b"TOP",
        b"USER",
        b"SASL PLAIN XOAUTH2",
        b"RESP-CODES",
        b"PIPELINING",
        b"UIDL",
    ]
    assert events[-1] == End(Capa())
    assert conn.outstanding == 0


def test_capa_err_is_single_line() -> None:
    conn = greeted()
    conn.send(Capa())
    assert feed(conn, b"-ERR unknown command\r\n") == [Err(Capa(), "unknown command", None)]
    assert conn.outstanding == 0


def test_uidl_and_list_listings() -> None:
    conn = greeted()
    conn.send(Uidl())
    events = feed(conn, b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n")
    assert events == [
        Ok(Uidl(), "", None),
        Line(Uidl(), b"1 whqtswO00WBw418f9t5JxYwZ"),
        Line(Uidl(), b"2 QhdPYR:00WBw1Ph7x7"),
        End(Uidl()),
    ]
    conn.send(List())
    events = feed(conn, b"+OK 2 messages (320 octets)\r\n1 120\r\n", b"2 200\r\n.\r\n")
    assert events == [
        Ok(List(), "2 messages (320 octets)", None),
        Line(List(), b"1 120"),
        Line(List(), b"2 200"),
        End(List()),
    ]


def test_uidl_and_list_with_argument_are_single_line() -> None:
    conn = greeted()
    conn.send(Uidl(1))
    assert feed(conn, b"+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n") == [
        Ok(Uidl(1), "1 whqtswO00WBw418f9t5JxYwZ", None)
    ]
    conn.send(List(2))
    assert feed(conn, b"+OK 2 200\r\n") == [Ok(List(2), "2 200", None)]
    assert conn.outstanding == 0


def test_listing_line_is_dot_unstuffed_and_limited() -> None:
    conn = greeted(max_line=64)
    conn.send(Uidl())
    assert feed(conn, b"+OK\r\n..weird\r\n") == [Ok(Uidl(), "", None), Line(Uidl(), b".weird")]
    conn.receive_data(b"3 " + b"u" * 100 + b"\r\n")
    with pytest.raises(ProtocolError, match="longer than 64"):
        conn.next_event()


# -- message data --------------------------------------------------------------------------


def test_retr_dot_stuffing_crlf_and_bare_lf() -> None:
    conn = greeted()
    conn.send(Retr(1))
    wire = (
        b"+OK 120 octets\r\n"
        b"..first line starts with a dot\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"..\r\n"  # a line that was just "."
        b"...\r\n"  # a line that was ".."
        b"bare LF line\n"
        b".after bare LF is not at a line start\r\n"
        b"trailing CR\r\r\n"
        b"last\r\n"
        b".\r\n"
    )
    expected = (
        b".first line starts with a dot\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b".\r\n"
        b"..\r\n"
        b"bare LF line\n"
        b".after bare LF is not at a line start\r\n"
        b"trailing CR\r\r\n"
        b"last\r\n"
    )
    events = feed(conn, wire)
    assert events[0] == Ok(Retr(1), "120 octets", None)
    assert events[1:] == [Data(Retr(1), expected), End(Retr(1))]  # one chunk, not per line
    assert conn.outstanding == 0


def test_a_dotted_line_the_server_did_not_stuff_keeps_its_dot() -> None:
    """Only ".." is a stuffing dot: Dovecot 2.3 sends a first line ".From: x" unstuffed, and
    stripping its dot stored the message one byte short."""
    body = b".From: x\r\n.\tb\r\n.\rc\r\n..d\r\n"
    wire = b"+OK\r\n.From: x\r\n.\tb\r\n.\rc\r\n...d\r\n.\r\n"
    for size in range(1, len(wire) + 1):
        conn = greeted()
        conn.send(Retr(1))
        events = feed(conn, *[wire[i : i + size] for i in range(0, len(wire), size)])
        assert data_of(events, Retr(1)) == body, size
        assert events[-1] == End(Retr(1))


def test_retr_byte_by_byte() -> None:
    body = b".a\r\n..\r\n.\r\nx\ny\r\n\r\n.\r\n"
    conn = greeted()
    conn.send(Retr(3))
    wire = retr_response(body)
    events = feed(conn, *[wire[i : i + 1] for i in range(len(wire))])
    assert data_of(events, Retr(3)) == body
    assert events[-1] == End(Retr(3))
    assert all(e.data for e in events if isinstance(e, Data))


def test_many_dotted_lines_at_any_chunk_size() -> None:
    lines = [b"." * (i % 4) + b"line %d" % i for i in range(300)] + [b".", b"..", b""]
    body = b"\r\n".join(lines) + b"\r\n"
    wire = retr_response(body) + b"+OK done\r\n"
    for size in (1, 2, 3, 4, 5, 7, 64, 1000, len(wire)):
        conn = greeted()
        conn.pipelining = True
        conn.send(Retr(1))
        conn.send(Noop())
        events = feed(conn, *[wire[i : i + size] for i in range(0, len(wire), size)])
        assert data_of(events, Retr(1)) == body, size
        assert events[-2:] == [End(Retr(1)), Ok(Noop(), "done", None)]


def test_dense_dots_with_every_two_chunk_split() -> None:
    """Many dotted lines switch the decoder to bytes.replace; cut it at every byte."""
    body = b"".join(b".%d\r\n..\r\n.\r\n" % i for i in range(30)) + b"end\r\n\r\n"
    wire = retr_response(body)
    for cut in range(1, len(wire)):
        conn = greeted()
        conn.send(Retr(1))
        events = feed(conn, wire[:cut], wire[cut:])
        assert data_of(events, Retr(1)) == body, cut
        assert events[-1] == End(Retr(1))


def test_empty_message() -> None:
    conn = greeted()
    conn.send(Retr(1))
    assert feed(conn, b"+OK\r\n.\r\n") == [Ok(Retr(1), "", None), End(Retr(1))]


def test_retr_err_is_single_line() -> None:
    conn = greeted()
    conn.send(Retr(9))
    assert feed(conn, b"-ERR no such message\r\n") == [Err(Retr(9), "no such message", None)]


def test_top() -> None:
    conn = greeted()
    conn.send(Top(1, 0))
    events = feed(conn, b"+OK\r\nFrom: a@example.org\r\nSubject: x\r\n\r\n.\r\n")
    assert events == [
        Ok(Top(1, 0), "", None),
        Data(Top(1, 0), b"From: a@example.org\r\nSubject: x\r\n\r\n"),
        End(Top(1, 0)),
    ]


def test_endless_data_line_is_protocol_error() -> None:
    conn = greeted(max_data_line=1024)
    conn.send(Retr(1))
    conn.receive_data(b"+OK\r\nSubject: x\r\n")
    drain(conn)
    with pytest.raises(ProtocolError, match="longer than 1024"):
        for _ in range(20):
            feed(conn, b"x" * 100)


def test_a_retr_may_allow_longer_lines_than_the_connection() -> None:
    """A client that knows a message's size from LIST allows a line that long for its RETR
    (mail without line breaks exists); the next RETR has the connection's bound again."""
    conn = greeted(max_data_line=1024)
    conn.pipelining = True
    conn.send(Retr(1, max_line=4096))
    conn.send(Retr(2))
    line = b"y" * 3000 + b"\r\n"
    events = feed(conn, b"+OK\r\n" + line + b".\r\n")
    assert data_of(events, Retr(1)) == line and events[-1] == End(Retr(1))
    with pytest.raises(ProtocolError, match="longer than 1024"):
        feed(conn, b"+OK\r\n" + line + b".\r\n")


def test_long_data_line_inside_one_big_chunk_is_protocol_error() -> None:
    conn = greeted(max_data_line=1024)
    conn.send(Retr(1))
    conn.receive_data(b"+OK\r\n" + b"short\r\n" * 500 + b"y" * 5000 + b"\r\n" + b"short\r\n" * 500)
    with pytest.raises(ProtocolError, match="longer than 1024"):
        drain(conn)


@pytest.mark.parametrize(("length", "ok"), [(1024, True), (1025, False)])
def test_data_line_limit_boundary(length: int, ok: bool) -> None:
    conn = greeted(max_data_line=1024)
    conn.send(Retr(1))
    line = b"z" * (length - 2) + b"\r\n"
    wire = retr_response(b"a\r\n" + line + b"b\r\n")
    if ok:
        assert data_of(feed(conn, wire), Retr(1)) == b"a\r\n" + line + b"b\r\n"
    else:
        with pytest.raises(ProtocolError):
            feed(conn, wire)


def test_eof_in_the_middle_of_retr_is_transport_error() -> None:
    conn = greeted()
    conn.send(Retr(1))
    events = feed(conn, b"+OK\r\nSubject: cut\r\n")
    assert data_of(events, Retr(1)) == b"Subject: cut\r\n"
    conn.receive_data(b"")
    with pytest.raises(TransportError, match="RETR 1"):
        conn.next_event()
    with pytest.raises(TransportError):
        conn.next_event()


def test_eof_while_idle_is_transport_error() -> None:
    conn = greeted()
    conn.receive_data(b"")
    with pytest.raises(TransportError):
        conn.next_event()


# -- pipelining and ordering ---------------------------------------------------------------


def test_pipelined_retr_dele_matched_in_order() -> None:
    conn = greeted()
    conn.pipelining = True
    commands: list[Command] = [Retr(1), Dele(1), Retr(2), Dele(2), Stat()]
    wires = [conn.send(c) for c in commands]
    assert wires == [b"RETR 1\r\n", b"DELE 1\r\n", b"RETR 2\r\n", b"DELE 2\r\n", b"STAT\r\n"]
    assert conn.outstanding == 5
    wire = (
        retr_response(b"one\r\n")
        + b"+OK message 1 deleted\r\n"
        + retr_response(b".two\r\n")
        + b"-ERR [SYS/TEMP] cannot delete\r\n"
        + b"+OK 0 0\r\n"
    )
    for size in (len(wire), 7, 1):
        conn2 = greeted()
        conn2.pipelining = True
        for c in commands:
            conn2.send(c)
        events = feed(conn2, *[wire[i : i + size] for i in range(0, len(wire), size)])
        assert data_of(events, Retr(1)) == b"one\r\n"
        assert data_of(events, Retr(2)) == b".two\r\n"
        summary = [(type(e).__name__, e.command) for e in events if isinstance(e, Ok | Err | End)]
        assert summary == [
            ("Ok", Retr(1)),
            ("End", Retr(1)),
            ("Ok", Dele(1)),
            ("Ok", Retr(2)),
            ("End", Retr(2)),
            ("Err", Dele(2)),
            ("Ok", Stat()),
        ]
        assert conn2.outstanding == 0


def test_second_command_without_pipelining_is_local_error() -> None:
    conn = greeted()
    conn.send(Stat())
    with pytest.raises(LocalProtocolError, match="pipelining"):
        conn.send(Noop())
    feed(conn, b"+OK 0 0\r\n")
    conn.send(Noop())  # fine once answered


def test_barrier_commands() -> None:
    conn = greeted()
    conn.pipelining = True
    conn.send(Stat())
    with pytest.raises(LocalProtocolError):
        conn.send(User("alice"))
    feed(conn, b"+OK 0 0\r\n")
    conn.send(User("alice"))
    with pytest.raises(LocalProtocolError):
        conn.send(Stat())
    feed(conn, b"+OK\r\n")
    conn.send(Pass("secret"))
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())


# -- STLS ----------------------------------------------------------------------------------


def test_stls_then_tls() -> None:
    conn = greeted()
    conn.pipelining = True
    conn.send(Stls())
    assert feed(conn, b"+OK Begin TLS negotiation\r\n") == [
        Ok(Stls(), "Begin TLS negotiation", None)
    ]
    assert conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.send(Capa())
    conn.start_tls_done()
    assert conn.pipelining is False  # plaintext capabilities are forgotten
    assert conn.send(Capa()) == b"CAPA\r\n"


def test_stls_with_injected_bytes_in_same_packet() -> None:
    conn = greeted()
    conn.send(Stls())
    conn.receive_data(b"+OK Begin TLS\r\n+OK injected\r\n")
    with pytest.raises(ProtocolError, match="STARTTLS"):
        conn.next_event()


def test_stls_with_bytes_before_handshake() -> None:
    conn = greeted()
    conn.send(Stls())
    assert feed(conn, b"+OK\r\n") == [Ok(Stls(), "", None)]
    conn.receive_data(b"-ERR evil\r\n")
    with pytest.raises(ProtocolError, match="STARTTLS"):
        conn.next_event()


def test_stls_bytes_caught_by_start_tls_done() -> None:
    conn = greeted()
    conn.send(Stls())
    feed(conn, b"+OK\r\n")
    conn.receive_data(b"x")
    with pytest.raises(ProtocolError):
        conn.start_tls_done()


def test_stls_err_stays_plaintext() -> None:
    conn = greeted()
    conn.send(Stls())
    assert feed(conn, b"-ERR not now\r\n") == [Err(Stls(), "not now", None)]
    with pytest.raises(LocalProtocolError):
        conn.start_tls_done()
    conn.send(Capa())


# -- QUIT ----------------------------------------------------------------------------------


def test_closed_after_quit() -> None:
    conn = greeted()
    conn.send(Quit())
    assert feed(conn, b"+OK bye\r\n") == [Ok(Quit(), "bye", None)]
    assert conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())
    assert feed(conn, b"") == [Closed()]
    assert conn.next_event() == Closed()


def test_bytes_after_quit_answer_are_protocol_error() -> None:
    conn = greeted()
    conn.send(Quit())
    conn.receive_data(b"+OK bye\r\n+OK more\r\n")
    assert conn.next_event() == Ok(Quit(), "bye", None)
    with pytest.raises(ProtocolError, match="unexpected bytes"):
        conn.next_event()


def test_eof_before_quit_answer_is_transport_error() -> None:
    conn = greeted()
    conn.send(Quit())
    conn.receive_data(b"")
    with pytest.raises(TransportError):
        conn.next_event()


# -- SASL ----------------------------------------------------------------------------------


def test_auth_plain_with_initial_response() -> None:
    conn = greeted()
    ir = base64.b64encode(b"\0alice\0secret").decode()
    assert conn.send(Auth("PLAIN", ir)) == f"AUTH PLAIN {ir}\r\n".encode()
    assert feed(conn, b"+OK Logged in.\r\n") == [Ok(Auth("PLAIN", ir), "Logged in.", None)]


@pytest.mark.parametrize("challenge", [b"+ \r\n", b"+\r\n"])
def test_auth_plain_after_empty_challenge(challenge: bytes) -> None:
    conn = greeted()
    conn.send(Auth("PLAIN"))
    assert feed(conn, challenge) == [Continuation(Auth("PLAIN"), "")]
    assert conn.outstanding == 0
    ir = base64.b64encode(b"\0alice\0secret").decode()
    assert conn.send(AuthContinue(ir)) == ir.encode() + b"\r\n"
    assert feed(conn, b"+OK\r\n") == [Ok(AuthContinue(ir), "", None)]


def test_xoauth2_error_challenge_flow() -> None:
    conn = greeted()
    token = base64.b64encode(b"user=a@b\x01auth=Bearer t\x01\x01").decode()
    conn.send(Auth("XOAUTH2", token))
    err = base64.b64encode(b'{"status":"401"}').decode()
    assert feed(conn, f"+ {err}\r\n".encode()) == [Continuation(Auth("XOAUTH2", token), err)]
    with pytest.raises(LocalProtocolError, match="SASL"):
        conn.send(Noop())
    assert conn.send(AuthContinue("")) == b"\r\n"
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())
    assert feed(conn, b"-ERR [AUTH] Invalid credentials\r\n") == [
        Err(AuthContinue(""), "[AUTH] Invalid credentials", "AUTH")
    ]
    with pytest.raises(LocalProtocolError):
        conn.send(AuthContinue(""))


def test_continuation_to_non_auth_command_is_protocol_error() -> None:
    conn = greeted()
    conn.send(Stat())
    conn.receive_data(b"+ abc\r\n")
    with pytest.raises(ProtocolError):
        conn.next_event()


# -- commands and redaction ----------------------------------------------------------------


def test_wire_forms() -> None:
    cases: list[tuple[Command, bytes]] = [
        (Capa(), b"CAPA\r\n"),
        (Stls(), b"STLS\r\n"),
        (User("alice"), b"USER alice\r\n"),
        (Pass("pass with spaces"), b"PASS pass with spaces\r\n"),
        (
            Apop("mrose", "c4c9334bac560ecc979e58001b3e22fb"),
            b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
        ),
        (Auth("PLAIN"), b"AUTH PLAIN\r\n"),
        (Auth("EXTERNAL", ""), b"AUTH EXTERNAL =\r\n"),
        (AuthContinue("*"), b"*\r\n"),
        (Stat(), b"STAT\r\n"),
        (List(), b"LIST\r\n"),
        (List(3), b"LIST 3\r\n"),
        (Uidl(), b"UIDL\r\n"),
        (Uidl(4), b"UIDL 4\r\n"),
        (Retr(5), b"RETR 5\r\n"),
        (Top(6, 10), b"TOP 6 10\r\n"),
        (Dele(7), b"DELE 7\r\n"),
        (Noop(), b"NOOP\r\n"),
        (Rset(), b"RSET\r\n"),
        (Quit(), b"QUIT\r\n"),
    ]
    for command, wire in cases:
        assert command.wire() == wire


def test_redaction() -> None:
    assert redacted(Pass("hunter2")) == b"PASS ****\r\n"
    assert redacted(Apop("mrose", "c4c9334b")) == b"APOP mrose ****\r\n"
    assert redacted(Auth("PLAIN", "AGFsaWNlAHNlY3JldA==")) == b"AUTH PLAIN ****\r\n"
    assert redacted(Auth("PLAIN")) == b"AUTH PLAIN\r\n"
    assert redacted(AuthContinue("dG9rZW4=")) == b"****\r\n"
    assert redacted(User("alice")) == b"USER alice\r\n"
    assert redacted(Retr(1)) == b"RETR 1\r\n"
    assert "hunter2" not in repr(Pass("hunter2"))
    assert "dG9rZW4" not in repr(AuthContinue("dG9rZW4="))


def test_error_messages_do_not_leak_secrets() -> None:
    conn = greeted()
    conn.send(User("alice"))
    feed(conn, b"+OK\r\n")
    conn.send(Pass("hunter2"))
    conn.receive_data(b"")
    with pytest.raises(TransportError) as info:
        conn.next_event()
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: User("alice\r\nDELE 1"),
        lambda: User(""),
        lambda: Pass("a\nb"),
        lambda: Apop("two words", "d"),
        lambda: Auth("PLAIN X"),
        lambda: AuthContinue("a\r\n"),
        lambda: Retr(0),
        lambda: Dele(-1),
        lambda: Top(1, -1),
        lambda: List(True),
    ],
)
def test_invalid_command_arguments(make: object) -> None:
    with pytest.raises(LocalProtocolError):
        make()  # type: ignore[operator]


# -- property-based ------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [b".", b"..", b"\r\n", b"\n", b"\r", b"a", b" ", b".\r\n", b"\r\n.\r\n", b"\r\n..", b"\xff"]
)
_BODIES = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=200).map(b"".join)).map(
    lambda b: b if b == b"" or b.endswith(b"\r\n") else b + b"\r\n"
)


@given(
    first=_BODIES,
    second=_BODIES,
    dense=st.sampled_from([8, 0]),
    stuffing=st.sampled_from([stuff, lax_stuff]),
    data=st.data(),
)
def test_retr_roundtrip_at_any_chunking(
    first: bytes,
    second: bytes,
    dense: int,
    stuffing: Callable[[bytes], bytes],
    data: st.DataObject,
) -> None:
    wire = b"".join(b"+OK\r\n" + stuffing(body) + b".\r\n" for body in (first, second))
    if data.draw(st.booleans(), label="one byte at a time"):
        chunks = [wire[i : i + 1] for i in range(len(wire))]
    else:
        chunks = split(wire, data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    conn = greeted()
    conn.pipelining = True
    conn.send(Retr(1))
    conn.send(Top(2, 5))
    with mock.patch.object(_body, "_DENSE", dense):  # 0: always take the bytes.replace path
        events = feed(conn, *chunks)
    assert data_of(events, Retr(1)) == first
    assert data_of(events, Top(2, 5)) == second
    assert all(e.data for e in events if isinstance(e, Data))
    ends = [e for e in events if isinstance(e, End)]
    assert ends == [End(Retr(1)), End(Top(2, 5))]
    assert events[-1] == End(Top(2, 5))
    assert conn.outstanding == 0


_LISTING_LINES = st.lists(
    st.one_of(st.binary(max_size=30), st.sampled_from([b".", b"..", b".x", b""])).map(
        lambda ln: ln.replace(b"\n", b"")
    ),
    max_size=20,
)


@given(lines=_LISTING_LINES, data=st.data())
def test_listing_roundtrip_at_any_chunking(lines: list[bytes], data: st.DataObject) -> None:
    wire = b"+OK\r\n" + b"".join(stuff(ln) + b"\r\n" for ln in lines) + b".\r\n"
    chunks = split(wire, data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    conn = greeted()
    conn.send(Uidl())
    events = feed(conn, *chunks)
    assert events[0] == Ok(Uidl(), "", None)
    assert [e.line for e in events if isinstance(e, Line)] == lines
    assert events[-1] == End(Uidl())
    assert conn.outstanding == 0


_FUZZ_CHUNKS = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.sampled_from([b"+OK\r\n", b"-ERR x\r\n", b".\r\n", b"\r\n", b"..", b"+ x\r\n", b"\n"]),
    ),
    max_size=30,
)


@given(chunks=_FUZZ_CHUNKS, eof=st.booleans(), small=st.booleans())
def test_fuzz_only_remote_errors(chunks: list[bytes], eof: bool, small: bool) -> None:
    limits = {"max_line": 16, "max_data_line": 16} if small else {}
    conn = greeted(**limits)
    conn.pipelining = True
    conn.send(Retr(1))
    conn.send(Uidl())
    with contextlib.suppress(ProtocolError, TransportError):
        feed(conn, *chunks, *([b""] if eof else []))
