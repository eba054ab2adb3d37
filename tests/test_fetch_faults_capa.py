"""Servers that fail CAPA instead of answering -ERR (old and embedded POP3 servers).

Such a server hangs up, resets the connection, says nothing until the timeout, or answers a
line that is not POP3 when it receives CAPA.  Every run failed the account.  Now the session
connects once more and goes on as with a server older than RFC 2449 (no capability list:
lock-step, USER/PASS or APOP as ``auth`` says), with one warning per run; ``check`` reports
the CAPA step as worked around with the same words.  With tls = "starttls", what CAPA says
of STLS (failed, no listing, a listing without it) gives ``check`` and ``fetch`` one story.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trustme

from mailvault.testkit.fakepop import FakePop3Server, Faults, served_bytes
from tests.test_fetch_faults import check_invariants, corpus, vault_for
from tests.vaults import assert_vault_exact, fetch_json, run_cli, sha256s

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"

# how each failure is named in the warning, between "failed CAPA (" and ")"
HOW = {
    "close": "connection closed by server in the middle of the response to CAPA",
    "reset": "connection to 127.0.0.1 lost: Connection reset by peer",
    "silence": "no answer in 1 s",
    "garbage": "expected a status line answering CAPA, got b'HTTP/1.1 400 Bad Request'",
}


def warning_for(how: str, stls: str = "") -> str:
    return (
        f"127.0.0.1 failed CAPA ({HOW[how]}): used without it from a new connection, as a "
        f"POP3 server older than RFC 2449 (no capability list, so no pipelining{stls}); CAPA "
        "is not asked again in this run"
    )


def capa_asked(server: FakePop3Server) -> int:
    return sum(1 for direction, text in server.log if (direction, text) == ("C", "CAPA"))


def broken_vault(tmp_path: Path, server: FakePop3Server, **keys: Any) -> Path:
    """An account with no retries (the reconnect is not one) and a short timeout (silence)."""
    return vault_for(tmp_path, server, retries=0, timeout=1, **keys)


@pytest.mark.parametrize("how", sorted(HOW))
def test_a_server_failing_capa_is_archived_lock_step_after_one_reconnect(
    tmp_path: Path, how: str
) -> None:
    """Each way of failing CAPA: one more connection, every message stored and only then
    deleted, in lock-step, one warning naming host and cause; a rerun fetches nothing."""
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(broken_capa=how)) as server:
        vault = broken_vault(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0, report
        assert (acct["fetched"], acct["deleted"], acct["retries"]) == (6, 6, 0), acct
        assert (acct["sessions"], server.sessions, capa_asked(server)) == (1, 2, 1)
        assert acct["warnings"] == [warning_for(how)]
        assert server.pipelined == 0  # lock-step: each command waited for its answer
        assert server.mailbox == []
        check_invariants(vault, server, messages)
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
        server.add_message(b"Subject: later\r\n\r\nnew mail\r\n")
        server.wait_unlocked()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and (acct["fetched"], acct["deleted"]) == (1, 1), report
        assert acct["warnings"] == [warning_for(how)]  # a new run asks CAPA again
        server.wait_unlocked()
        code, report = fetch_json(vault)
        assert code == 0 and report["accounts"][0]["fetched"] == 0, report


def test_a_kept_mailbox_is_not_deleted_and_not_fetched_twice(tmp_path: Path) -> None:
    """delete = "keep" (the default) is honoured without CAPA: UIDL, asked blind, recognises
    the archived messages on the rerun."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(broken_capa="close")) as server:
        vault = broken_vault(tmp_path, server)
        code, report = fetch_json(vault)
        assert code == 0 and report["accounts"][0]["fetched"] == 3, report
        assert len(server.mailbox) == 3 and server.deleted_uidls == []
        server.wait_unlocked()
        code, report = fetch_json(vault)
        assert code == 0 and report["accounts"][0]["fetched"] == 0, report
        assert "DELE" not in {text.split()[0] for direction, text in server.log if direction == "C"}


def test_a_normal_server_is_not_connected_to_twice(tmp_path: Path) -> None:
    with FakePop3Server(corpus()) as server:
        vault = broken_vault(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and acct["fetched"] == 6 and acct["warnings"] == [], report
        assert (server.sessions, capa_asked(server)) == (1, 1)
        assert server.pipelined > 0  # it lists PIPELINING, and is used so


def test_later_sessions_of_the_run_do_not_ask_capa(tmp_path: Path) -> None:
    """A capped run's next sessions know CAPA fails: no CAPA, no second connection each."""
    messages = corpus(5)
    with FakePop3Server(messages, faults=Faults(broken_capa="garbage")) as server:
        vault = broken_vault(tmp_path, server, delete="after-commit", max_messages_per_session=2)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and acct["fetched"] == 5 and acct["sessions"] == 3, report
        assert (server.sessions, capa_asked(server)) == (4, 1)
        assert acct["warnings"] == [warning_for("garbage")]
        assert server.mailbox == [] and server.pipelined == 0


@pytest.mark.parametrize("retries", [0, 1])
def test_the_reconnect_does_not_spend_a_retry(tmp_path: Path, retries: int) -> None:
    """The reconnect is part of the session: a [SYS/TEMP] after it is retried exactly as it
    would be on a server that answers CAPA (once with retries = 1, not at all with 0), and
    the retry does not ask CAPA again."""
    faults = Faults(broken_capa="close", sys_temp_times=1)
    with FakePop3Server(corpus(2), faults=faults) as server:
        vault = vault_for(tmp_path, server, retries=retries, timeout=1)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert acct["retries"] == retries and acct["warnings"] == [warning_for("close")]
        assert capa_asked(server) == 1
        if retries:
            assert code == 0 and acct["fetched"] == 2 and server.sessions == 3, report
        else:
            assert code == 1 and "[SYS/TEMP]" in acct["errors"][0] and server.sessions == 2


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _tls(ca: trustme.CA, tmp_path: Path) -> tuple[Any, Path]:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return ctx, cafile


def test_starttls_is_asked_without_capa_and_works(tmp_path: Path, ca: trustme.CA) -> None:
    """tls = "starttls" cannot learn from CAPA that STLS is there: it is asked (RFC 2595
    allows it), and TLS is used; CAPA is not asked again inside TLS."""
    ctx, cafile = _tls(ca, tmp_path)
    with FakePop3Server(corpus(2), tls_context=ctx, faults=Faults(broken_capa="reset")) as server:
        vault = broken_vault(tmp_path, server, tls="starttls", ca_file=str(cafile))
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and acct["fetched"] == 2, report
        assert acct["warnings"] == [warning_for("reset", "; STLS asked without a listing")]
        assert (server.sessions, capa_asked(server)) == (2, 1)
        assert [t for d, t in server.log if d == "C"][:3] == ["CAPA", "STLS", "USER alice"]


def test_starttls_refused_without_capa_gives_the_stls_error(tmp_path: Path) -> None:
    """A server without STLS refuses it: the existing error, no fall-back to plain text."""
    with FakePop3Server(corpus(1), faults=Faults(broken_capa="close")) as server:
        vault = broken_vault(tmp_path, server, tls="starttls")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        (error,) = acct["errors"]
        assert code == 1 and "127.0.0.1 refused STLS (" in error, error
        assert 'tls = "starttls" never falls back to plain text' in error
        assert "USER alice" not in [t for d, t in server.log if d == "C"]


def test_starttls_is_asked_of_a_server_answering_capa_with_err(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """The same rule for a server that answers CAPA -ERR (RFC 2449's way of not having it):
    it was refused as "does not offer STLS" without being asked."""
    ctx, cafile = _tls(ca, tmp_path)
    with FakePop3Server(corpus(2), tls_context=ctx, faults=Faults(apop_only=True)) as server:
        vault = broken_vault(tmp_path, server, tls="starttls", ca_file=str(cafile), auth="apop")
        code, report = fetch_json(vault)
        assert code == 0 and report["accounts"][0]["fetched"] == 2, report
        assert report["accounts"][0]["warnings"] == []
        server.wait_unlocked()
        result, data = run_check(vault, server)  # no listing says STLS is missing: as before
    assert result.exit_code == 0, result.output
    assert marks(data) == ["ok tcp", "ok tls", "ok greeting", "ok capa", "ok login", "ok stat"]


def run_check(vault: Path, server: FakePop3Server) -> tuple[Any, dict[str, Any]]:
    """`check acct` as text, then as JSON (validated against its schema)."""
    result = run_cli(vault, "check", "acct")
    server.wait_unlocked()
    as_json = run_cli(vault, "check", "acct", "--json")
    assert as_json.exit_code == result.exit_code, (result.output, as_json.output)
    data = json.loads(as_json.stdout)
    jsonschema.validate(data, json.loads((SCHEMAS / "check.schema.json").read_text()))
    return result, data


def marks(data: dict[str, Any]) -> list[str]:
    """Each step as check prints its mark and name: "ok tcp", "warn capa", "FAIL tls"."""
    return [
        f"{('warn' if s['warning'] else 'ok') if s['ok'] else 'FAIL'} {s['step']}"
        for s in data["steps"]
    ]


@pytest.mark.parametrize("how", sorted(HOW))
def test_check_reports_capa_as_worked_around(tmp_path: Path, how: str) -> None:
    """check says what fetch warns, marked "warn", and goes on to log in (exit 0); with
    tls = "none" the capa step stays after the greeting."""
    with FakePop3Server(corpus(2), faults=Faults(broken_capa=how)) as server:
        vault = broken_vault(tmp_path, server)
        result, data = run_check(vault, server)
    assert result.exit_code == 0, result.output
    assert f"[warn] capa     {warning_for(how)}\n" in result.output
    assert "[ok  ] login" in result.output and "[ok  ] stat     2 messages" in result.output
    assert marks(data) == ["ok tcp", "ok tls", "ok greeting", "warn capa", "ok login", "ok stat"]
    steps = {step["step"]: step for step in data["steps"]}
    assert steps["capa"] == {
        "step": "capa",
        "ok": True,
        "detail": warning_for(how),
        "hint": "",
        "warning": True,
    }
    assert data["ok"] is True and steps["login"]["warning"] is False


def test_capa_failure_is_reported_when_the_reconnect_fails(tmp_path: Path) -> None:
    """A server that closes on CAPA and then cannot be reached: fetch still warns how CAPA
    failed beside its error, and check shows the CAPA step before the failed connection."""
    import socket
    import threading

    def serve(listener: socket.socket, probed: bool) -> None:
        if probed:  # check's TCP step connects and hangs up
            listener.accept()[0].close()
        conn, _ = listener.accept()  # one POP3 connection; the reconnect finds no one
        listener.close()
        conn.sendall(b"+OK old server\r\n")
        conn.recv(100)  # CAPA
        conn.close()

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.listen(1)
    vault = vault_for(tmp_path, FakePop3Server(), port=port, retries=0, timeout=1)
    thread = threading.Thread(target=serve, args=(listener, False), daemon=True)
    thread.start()
    code, report = fetch_json(vault)
    thread.join(5)
    acct = report["accounts"][0]
    assert code == 1 and acct["warnings"] == [warning_for("close")], acct
    assert "cannot connect to 127.0.0.1" in acct["errors"][0]
    listener = socket.create_server(("127.0.0.1", port))
    thread = threading.Thread(target=serve, args=(listener, True), daemon=True)
    thread.start()
    result = run_cli(vault, "check", "acct")
    thread.join(5)
    assert result.exit_code == 1, result.output
    lines = [line[:14] for line in result.output.splitlines()]
    assert lines[-2:] == ["[warn] capa   ", "[FAIL] pop3   "], result.output
    assert warning_for("close") in result.output


STLS_BLIND = "; STLS asked without a listing"


@pytest.mark.parametrize("how", sorted(HOW))
def test_check_with_starttls_warns_of_capa_before_the_blind_stls(
    tmp_path: Path, ca: trustme.CA, how: str
) -> None:
    """tls = "starttls" on a server failing CAPA: check tells fetch's story in its order,
    the capa warning (how the server failed) and then the tls step, whose STLS was asked
    without a listing and worked; login and stat as usual.  The check showed the tls step
    alone, without the cause."""
    ctx, cafile = _tls(ca, tmp_path)
    with FakePop3Server(corpus(2), tls_context=ctx, faults=Faults(broken_capa=how)) as server:
        vault = broken_vault(tmp_path, server, tls="starttls", ca_file=str(cafile))
        result, data = run_check(vault, server)
        asked = [t for d, t in server.log if d == "C"]
    assert result.exit_code == 0 and data["ok"] is True, result.output
    assert marks(data) == ["ok tcp", "warn capa", "ok tls", "ok greeting", "ok login", "ok stat"]
    assert f"[warn] capa     {warning_for(how, STLS_BLIND)}\n" in result.output
    assert "trusted (chain and host name verified)" in data["steps"][2]["detail"]
    assert asked.count("CAPA") == 2  # once a check, in plain text before any STLS
    assert asked.index("CAPA") < asked.index("STLS")


@pytest.mark.parametrize("how", sorted(HOW))
def test_check_with_starttls_names_the_refused_stls_after_the_capa_warning(
    tmp_path: Path, how: str
) -> None:
    """The same server without STLS: the capa warning, then the tls step failing on the
    refused STLS (fetch's error: no fall-back to plain text); no login is tried."""
    with FakePop3Server(corpus(2), faults=Faults(broken_capa=how)) as server:
        vault = broken_vault(tmp_path, server, tls="starttls")
        result, data = run_check(vault, server)
        asked = [t for d, t in server.log if d == "C"]
    assert result.exit_code == 1 and data["ok"] is False, result.output
    assert marks(data) == ["ok tcp", "warn capa", "FAIL tls"]
    assert data["steps"][1]["detail"] == warning_for(how, STLS_BLIND)
    tls = data["steps"][2]
    assert tls["detail"].startswith("127.0.0.1 refused STLS (-ERR "), tls
    assert 'tls = "starttls" never falls back to plain text' in tls["hint"]
    assert "USER alice" not in asked


def test_check_with_starttls_on_a_server_answering_capa_is_unchanged(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """A server that answers CAPA: the capa step lists what it says inside TLS, after the
    greeting, as before."""
    ctx, cafile = _tls(ca, tmp_path)
    with FakePop3Server(corpus(2), tls_context=ctx) as server:
        vault = broken_vault(tmp_path, server, tls="starttls", ca_file=str(cafile))
        result, data = run_check(vault, server)
    assert result.exit_code == 0, result.output
    assert marks(data) == ["ok tcp", "ok tls", "ok greeting", "ok capa", "ok login", "ok stat"]
    capa = data["steps"][3]["detail"]
    assert "PIPELINING" in capa and "STLS" not in capa  # the listing from inside TLS


NO_STLS = "127.0.0.1 does not offer STLS (its CAPA does not list it)"


@pytest.mark.parametrize("server_tls", ["none", "unlisted"])
def test_check_and_fetch_name_the_same_cause_when_capa_lacks_stls(
    tmp_path: Path, ca: trustme.CA, server_tls: str
) -> None:
    """CAPA answers without STLS: fetch refuses without asking STLS (RFC 2595: the listing
    says the server lacks it), and check now tells the same story: the capa step with what
    the server lists, then the tls step failing with fetch's cause and fix, and nothing
    more.  check asked STLS anyway: a server without TLS got another cause ("refused
    STLS"), and one that takes STLS without listing it passed every step while fetch failed.
    """
    ctx, cafile = _tls(ca, tmp_path)
    context = ctx if server_tls == "unlisted" else None
    faults = Faults(unlisted_stls=server_tls == "unlisted")
    with FakePop3Server(corpus(2), tls_context=context, faults=faults) as server:
        vault = broken_vault(tmp_path, server, tls="starttls", ca_file=str(cafile))
        code, report = fetch_json(vault)
        server.wait_unlocked()
        result, data = run_check(vault, server)
        asked = [t for d, t in server.log if d == "C"]
    (error,) = report["accounts"][0]["errors"]
    assert code == 1 and result.exit_code == 1 and data["ok"] is False, result.output
    assert marks(data) == ["ok tcp", "ok capa", "FAIL tls"]
    capa, tls = data["steps"][1:]
    assert "USER" in capa["detail"] and "PIPELINING" in capa["detail"], capa
    assert "STLS" not in capa["detail"] and capa["warning"] is False
    assert tls["detail"] == NO_STLS
    assert error == f"{tls['detail']}; {tls['hint']}", (error, tls)  # fetch's words
    hint = tls["hint"]
    assert 'tls = "starttls" never falls back to plain text' in hint
    assert "STLS on the server" in hint and 'tls = "implicit" (port 995)' in hint
    assert f"[ok  ] capa     {capa['detail']}\n" in result.output
    assert f"[FAIL] tls      {NO_STLS}\n" in result.output and f"hint: {hint}\n" in result.output
    assert "STLS" not in asked and "USER alice" not in asked  # neither asked it, nor logged in


def test_one_capa_warning_over_a_capped_run_with_a_retry(tmp_path: Path) -> None:
    """A server that fails CAPA whenever asked, a run of several capped sessions, and a retry
    because the reconnect after CAPA found the server hanging up: CAPA is asked once (the
    failure is noted though the reconnect failed), its warning is in the report once and
    first (before the sessions' own: no UIDL), and the trace notes the reconnect once."""
    messages = corpus(5)
    faults = Faults(broken_capa="reset", hang_up_on=(2,), no_uidl=True)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(
            tmp_path,
            server,
            retries=1,
            timeout=1,
            delete="after-commit",
            max_messages_per_session=2,
        )
        trace = tmp_path / "trace.txt"
        code, report = fetch_json(vault, "--trace", str(trace))
        acct = report["accounts"][0]
        assert code == 0 and (acct["fetched"], acct["deleted"]) == (5, 5), report
        assert (acct["retries"], acct["sessions"], server.sessions) == (1, 4, 5), acct
        assert capa_asked(server) == 1 and server.mailbox == []
    warnings = acct["warnings"]
    assert warnings.count(warning_for("reset")) == 1 and warnings[0] == warning_for("reset")
    assert len(warnings) == 2 and "does not support UIDL" in warnings[1], warnings
    noted = [line for line in trace.read_text().splitlines() if "# CAPA failed" in line]
    assert len(noted) == 1, noted
    assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
