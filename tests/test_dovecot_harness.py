"""The private Dovecot harness, and the facts about Dovecot's bytes that other tests rely on."""

from __future__ import annotations

import base64
import contextlib
import os
import poplib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailvault.testkit.dovecot import Dovecot, retr_payload, served_bytes
from tests import conftest
from tests.conftest import DOVECOT_PASSWORD, DOVECOT_USER

pytestmark = pytest.mark.dovecot

MESSAGES = [
    b"From: a@example.org\nSubject: LF only\n\nline one\n.starts with a dot\n..two dots\n",
    b"From: b@example.org\r\nSubject: CRLF\r\n\r\nFrom the start of a line\r\n.\r\nend\r\n",
    b"From: c@example.org\nSubject: no final newline\n\nlast line without newline",
    b"From: d@example.org\r\nSubject: mixed\r\n\nbare\rCR, CR-CR-LF\r\r\nand 8-bit \xe4\xf6\xfc\x00\n",
    b"From: e@example.org\nSubject: big\n\n" + b"x" * 998 + b"\n" * 3 + b"y\n" * 5000,
]


def login(server: Dovecot, *, port: int | None = None) -> poplib.POP3:
    client = poplib.POP3(server.host, port or server.port, timeout=10)
    client.user(DOVECOT_USER)
    client.pass_(DOVECOT_PASSWORD)
    return client


def retr(client: poplib.POP3, which: int) -> tuple[int, bytes]:
    """(octet count from the status line, payload as a lossless client reassembles it)."""
    resp, lines, _ = client.retr(which)
    match = re.match(rb"\+OK (\d+) octets", resp)
    assert match, resp
    return int(match.group(1)), b"".join(line + b"\r\n" for line in lines)


# -- served_bytes / retr_payload: pure functions ----------------------------------------


@pytest.mark.parametrize(
    ("raw", "served", "payload"),
    [
        (b"a\nb\n", b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\r\nb", b"a\r\r\nb\r\n"),
        (b"a\n\rb\r", b"a\r\n\rb\r", b"a\r\n\rb\r\r\n"),
        (b"", b"", b"\r\n"),
    ],
)
def test_served_bytes_rules(raw: bytes, served: bytes, payload: bytes) -> None:
    assert served_bytes(raw) == served
    assert retr_payload(raw) == payload


# -- the plain port ---------------------------------------------------------------------


def test_user_pass_stat_uidl_retr(dovecot: Dovecot) -> None:
    dovecot.add_messages(DOVECOT_USER, MESSAGES)
    assert dovecot.mailbox_count(DOVECOT_USER) == len(MESSAGES)

    client = login(dovecot)
    count, size = client.stat()
    assert count == len(MESSAGES)
    assert size == sum(len(served_bytes(raw)) for raw in MESSAGES)

    _, listing, _ = client.list()
    assert [int(line.split()[1]) for line in listing] == [len(served_bytes(m)) for m in MESSAGES]

    _, uidl_lines, _ = client.uidl()
    uidls = [line.split()[1].decode() for line in uidl_lines]
    assert len(set(uidls)) == len(MESSAGES)
    assert all(re.fullmatch(r"[0-9a-f]{16}", uidl) for uidl in uidls), uidls

    for number, raw in enumerate(MESSAGES, start=1):
        octets, payload = retr(client, number)
        assert octets == len(served_bytes(raw))
        assert payload == retr_payload(raw)
        if raw.endswith(b"\n"):
            assert payload == served_bytes(raw)
    client.quit()

    # UIDLs are stable across sessions; RETR moved the files to cur/ without losing any.
    client = login(dovecot)
    assert [line.split()[1].decode() for line in client.uidl()[1]] == uidls
    client.quit()
    assert dovecot.mailbox_count(DOVECOT_USER) == len(MESSAGES)


def test_capa_lists_pipelining_and_stls(dovecot: Dovecot) -> None:
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    capa = client.capa()
    assert {"PIPELINING", "STLS", "USER", "UIDL", "TOP"} <= set(capa)
    client.quit()


def test_pipelined_commands_are_answered_in_order(dovecot: Dovecot) -> None:
    dovecot.add_messages(DOVECOT_USER, MESSAGES[:2])
    with socket.create_connection((dovecot.host, dovecot.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {DOVECOT_USER}\r\nPASS {DOVECOT_PASSWORD}\r\nSTAT\r\nQUIT\r\n".encode())
        replies = [reader.readline() for _ in range(4)]
    assert all(reply.startswith(b"+OK") for reply in replies), replies
    assert replies[2].startswith(b"+OK 2 ")


def test_dele_quit_removes_files(dovecot: Dovecot) -> None:
    dovecot.add_messages(DOVECOT_USER, MESSAGES[:3])
    client = login(dovecot)
    client.dele(2)
    client.quit()
    assert dovecot.mailbox_count(DOVECOT_USER) == 2


def test_failed_logins_do_not_slow_down(dovecot: Dovecot) -> None:
    """Dovecot answers each failure after ~0.5 s; its growing per-IP penalty is off."""
    for _ in range(3):
        client = poplib.POP3(dovecot.host, dovecot.port, timeout=5)
        assert not client.getwelcome().startswith(b"+OK ["), "no response code in greeting"
        client.user(DOVECOT_USER)
        start = time.monotonic()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_("wrong")
        assert time.monotonic() - start < 1.5
        client.close()
    start = time.monotonic()
    login(dovecot).quit()
    assert time.monotonic() - start < 1.0


def test_add_user_after_start(dovecot: Dovecot) -> None:
    dovecot.add_user("bob", "pa:ss wörd")
    dovecot.add_messages("bob", [MESSAGES[0]])
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    client.user("bob")
    client.pass_("pa:ss wörd")
    assert client.stat() == (1, len(served_bytes(MESSAGES[0])))
    client.quit()
    assert dovecot.mailbox_count(DOVECOT_USER) == 0


# -- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_pop3s_port(dovecot: Dovecot, host: str) -> None:
    dovecot.add_messages(DOVECOT_USER, MESSAGES[:1])
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    client = poplib.POP3_SSL(host, dovecot.tls_port, context=context, timeout=10)
    assert "STLS" not in client.capa()
    client.user(DOVECOT_USER)
    client.pass_(DOVECOT_PASSWORD)
    assert retr(client, 1)[1] == retr_payload(MESSAGES[0])
    client.quit()


def test_stls_on_plain_port(dovecot: Dovecot) -> None:
    dovecot.add_messages(DOVECOT_USER, MESSAGES[:1])
    client = poplib.POP3("localhost", dovecot.port, timeout=10)
    client.stls(dovecot.ssl_context())
    assert isinstance(client.sock, ssl.SSLSocket)
    client.user(DOVECOT_USER)
    client.pass_(DOVECOT_PASSWORD)
    assert client.stat()[0] == 1
    client.quit()


def test_certificate_is_not_trusted_without_the_ca(dovecot: Dovecot) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL("localhost", dovecot.tls_port, context=ssl.create_default_context())


def test_certificate_for_the_wrong_host(dovecot_factory: Callable[..., Dovecot]) -> None:
    server = dovecot_factory({DOVECOT_USER: DOVECOT_PASSWORD}, cert_hostnames=["wrong.example"])
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        poplib.POP3_SSL("localhost", server.tls_port, context=server.ssl_context())


# -- pipelining=False: the relay ------------------------------------------------------------


def test_without_pipelining(dovecot_factory: Callable[..., Dovecot]) -> None:
    server = dovecot_factory({DOVECOT_USER: DOVECOT_PASSWORD}, pipelining=False)
    server.add_messages(DOVECOT_USER, MESSAGES)

    client = poplib.POP3(server.host, server.port, timeout=10)
    capa = client.capa()
    assert "PIPELINING" not in capa
    assert "STLS" in capa
    client.user(DOVECOT_USER)
    client.pass_(DOVECOT_PASSWORD)
    for number, raw in enumerate(MESSAGES, start=1):
        assert retr(client, number) == (len(served_bytes(raw)), retr_payload(raw))
    assert len(client.uidl()[1]) == len(MESSAGES)
    client.quit()

    client = poplib.POP3("localhost", server.port, timeout=10)
    client.stls(server.ssl_context())
    assert set(client.capa()).isdisjoint({"PIPELINING", "STLS"})
    client.user(DOVECOT_USER)
    client.pass_(DOVECOT_PASSWORD)
    assert client.stat()[0] == len(MESSAGES)
    client.quit()

    client = poplib.POP3_SSL("localhost", server.tls_port, context=server.ssl_context())
    assert set(client.capa()).isdisjoint({"PIPELINING", "STLS"})
    client.user(DOVECOT_USER)
    client.pass_(DOVECOT_PASSWORD)
    assert retr(client, 4)[1] == retr_payload(MESSAGES[3])
    client.quit()

    # SASL through the relay, with a continuation, and commands sent in one go anyway.
    token = base64.b64encode(f"\0{DOVECOT_USER}\0{DOVECOT_PASSWORD}".encode())
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"AUTH PLAIN\r\n")
        assert reader.readline().startswith(b"+")
        sock.sendall(token + b"\r\nSTAT\r\nLIST 2\r\nQUIT\r\n")
        replies = [reader.readline() for _ in range(4)]
    assert all(reply.startswith(b"+OK") for reply in replies), replies
    assert replies[2] == f"+OK 2 {len(served_bytes(MESSAGES[1]))}\r\n".encode()


# -- lifecycle ----------------------------------------------------------------------------


def test_instances_run_side_by_side_and_stop_cleanly(
    dovecot_factory: Callable[..., Dovecot],
) -> None:
    first = dovecot_factory({DOVECOT_USER: DOVECOT_PASSWORD})
    second = dovecot_factory({DOVECOT_USER: DOVECOT_PASSWORD})
    assert len({first.port, first.tls_port, second.port, second.tls_port}) == 4
    second.add_messages(DOVECOT_USER, MESSAGES[:2])
    assert login(first).stat()[0] == 0
    assert login(second).stat()[0] == 2

    assert first._proc is not None
    master = first._proc.pid
    first.stop()
    assert not first.running
    assert not Path(f"/proc/{master}").exists() or "Z" in Path(f"/proc/{master}/stat").read_text()
    with pytest.raises(OSError):
        socket.create_connection((first.host, first.port), timeout=2)
    assert login(second).stat()[0] == 2

    # A stopped instance starts again with its mail intact (new ports).
    first.add_messages(DOVECOT_USER, MESSAGES[:1])
    first.start()
    assert login(first).stat()[0] == 1


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    conftest.require_dovecot()
    server = Dovecot(tmp_path / "bad", {DOVECOT_USER: DOVECOT_PASSWORD}, extra_config="no_such")
    with pytest.raises(RuntimeError, match="Error in configuration file"):
        server.start()
    assert not server.running


def test_missing_dovecot_fails_never_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "dovecot_binary", lambda: None)
    for ci in ("true", ""):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match="apt-get install dovecot"):
            conftest.require_dovecot()


def test_maildir_files_belong_to_the_mail_user(dovecot: Dovecot) -> None:
    (path,) = dovecot.add_messages(DOVECOT_USER, [MESSAGES[0]])
    assert path.parent.name == "new"
    assert path.read_bytes() == MESSAGES[0]
    if os.geteuid() == 0:
        assert path.stat().st_uid != 0


def test_generated_mail_is_served_byte_for_byte(dovecot: Dovecot) -> None:
    from mailvault.testkit.generator import generate

    generated = [gm.raw for gm in generate(40, seed=21)]
    dovecot.add_messages(DOVECOT_USER, generated)
    client = login(dovecot)
    assert client.stat() == (len(generated), sum(len(raw) for raw in generated))
    for number, raw in enumerate(generated, start=1):
        assert retr(client, number) == (len(raw), raw)  # CRLF mail is served unchanged
    client.quit()


def test_works_under_a_private_umask(dovecot_factory: Callable[..., Dovecot]) -> None:
    """The mailvault CLI sets umask 077 in-process; the harness must not depend on umask."""
    old = os.umask(0o077)
    try:
        server = dovecot_factory({DOVECOT_USER: DOVECOT_PASSWORD})
        server.add_messages(DOVECOT_USER, MESSAGES[:2])
        server.add_user("carol", "carol-secret")
    finally:
        os.umask(old)
    client = login(server)
    assert client.stat()[0] == 2
    client.quit()


def test_private_ancestors_are_fine_and_left_alone(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot]
) -> None:
    """pytest's temp dirs are 0700 (and pytest resets them so at every session start)."""
    os.chmod(tmp_path, 0o700)
    server = dovecot_factory({DOVECOT_USER: DOVECOT_PASSWORD})
    server.add_messages(DOVECOT_USER, MESSAGES[:3])
    client = login(server)
    assert retr(client, 3)[1] == retr_payload(MESSAGES[2])
    client.quit()
    assert tmp_path.stat().st_mode & 0o777 == 0o700


def test_a_stale_instance_on_the_same_base_dir_is_replaced(tmp_path: Path) -> None:
    conftest.require_dovecot()
    base = tmp_path / "stale"
    crashed = Dovecot(base, {DOVECOT_USER: DOVECOT_PASSWORD}).start()
    assert crashed._proc is not None and crashed._runtime is not None
    old_pid, old_runtime = crashed._proc.pid, crashed._runtime
    crashed._proc = None  # forget it, as a crashed test run would
    crashed._runtime = None
    fresh = Dovecot(base, {DOVECOT_USER: DOVECOT_PASSWORD})
    try:
        fresh.start()
        assert login(fresh).stat() == (0, 0)
        assert not old_runtime.exists()
        with pytest.raises(OSError):
            os.kill(old_pid, 0)  # gone (reaped below if it is our zombie)
    finally:
        fresh.stop()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(old_pid, os.WNOHANG)


def test_dovecot_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    conftest.require_dovecot()
    code = (
        "import sys, os; from pathlib import Path;"
        "from mailvault.testkit.dovecot import Dovecot;"
        f"d = Dovecot(Path({str(tmp_path / 'orphan')!r})).start();"
        "print(d._proc.pid, flush=True); os._exit(0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, "dovecot outlived the process that started it"
        time.sleep(0.05)
    # What the crash left behind (the runtime dir in /tmp) goes at the next start or here.
    shutil.rmtree((tmp_path / "orphan" / "run").resolve().parent, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
