"""Fault injection against the scripted in-process POP3 server.

After every fault: nothing lost, nothing duplicated, nothing deleted on the server that is not
committed in the vault, and the next run (fault switched off) completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trustme

from mailvault.resources import json_schema
from mailvault.testkit.fakepop import FakePop3Server, Faults, dot_stuff, served_bytes
from mailvault.testkit.proxy import DelayProxy
from tests.vaults import (
    PASSWORD_ENV,
    assert_vault_exact,
    committed_uidls,
    fetch_json,
    make_vault,
    no_tmp_leftovers,
    run_cli,
    sha256s,
    stored_digests,
)

PLAIN = {"host": "127.0.0.1", "tls": "none", "allow_plaintext_auth": True}


def corpus(n: int = 6) -> list[bytes]:
    """Small messages with the lines that stress dot-stuffing and mbox quoting."""
    out = []
    for i in range(n):
        body = b"".join(
            [
                b".leading dot\r\n",
                b"..two dots\r\n",
                b".\r\n",
                b"From the start\r\n",
                b"x" * (200 * i),
                b"\r\n",
            ]
        )
        out.append(
            b"From: s%d@example.com\r\nSubject: m%d\r\nMessage-ID: <m%d@t>\r\n\r\n%s"
            % (i, i, i, body)
        )
    return out


def alike(n: int) -> list[bytes]:
    """``corpus(n)`` padded to sizes within a few percent of each other: a server serving one
    for another then passes the size check (``pump._cut_short``) and meets the others."""
    return [m + b"y" * 4000 + b"\r\n" for m in corpus(n)]


def vault_for(tmp_path: Path, server: FakePop3Server, **keys: Any) -> Path:
    account = {**PLAIN, "port": server.port, "retries": 0, **keys}
    return make_vault(tmp_path / "vault", {"acct": account})


def check_invariants(vault: Path, server: FakePop3Server, messages: list[bytes]) -> None:
    """The deletion invariant holds at every instant: deleted on the server => committed."""
    assert set(server.deleted_uidls) <= committed_uidls(vault, "acct")
    stored = {h for h in sha256s(served_bytes(m) for m in messages)}
    on_server = sha256s(served_bytes(m.data) for m in server.mailbox)
    # Nothing lost: whatever left the server is in the vault.
    assert stored - on_server <= set(_stored(vault))


def _stored(vault: Path) -> list[str]:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        return [r[0] for r in db.execute("SELECT sha256 FROM messages")]


def complete_and_check(vault: Path, server: FakePop3Server, messages: list[bytes]) -> None:
    server.faults = Faults()
    server.wait_unlocked()
    code, report = fetch_json(vault)
    assert code == 0, report
    assert server.mailbox == []
    assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
    assert no_tmp_leftovers(vault)
    code, report = fetch_json(vault)
    assert report["accounts"][0]["fetched"] == 0


def fetches_all_exactly(
    tmp_path: Path, messages: list[bytes], faults: Faults | None = None
) -> None:
    """One after-commit fetch archives and deletes every message; then complete_and_check."""
    with FakePop3Server(messages, faults=faults or Faults()) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["fetched"]) == (0, len(messages)), report
        complete_and_check(vault, server, messages)


def fetch_after_edit(
    vault: Path, server: FakePop3Server, old: str, new: str
) -> tuple[int, dict[str, Any]]:
    """Edit the vault's mailvault.toml (``old`` replaced by ``new``), then fetch again once
    the server has let go of the last session."""
    toml = vault / "mailvault.toml"
    toml.write_text(toml.read_text().replace(old, new))
    server.wait_unlocked()
    return fetch_json(vault)


def test_fetch_and_delete_after_commit(tmp_path: Path) -> None:
    messages = corpus()
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0
        assert (acct["listed"], acct["new"], acct["fetched"], acct["deleted"]) == (6, 6, 6, 6)
        assert server.mailbox == []
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_keep_policy_never_deletes_and_rerun_fetches_nothing(tmp_path: Path) -> None:
    messages = corpus()
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server)
        assert fetch_json(vault)[1]["accounts"][0]["fetched"] == 6
        seen = len(server.log)
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["new"], report["accounts"][0]["fetched"]) == (0, 0, 0)
        assert len(server.mailbox) == 6
        assert not any(cmd.startswith(("RETR", "DELE")) for d, cmd in server.log[seen:] if d == "C")


@pytest.mark.parametrize(
    "offset",
    [0, 1, 5, 16, 17, 18, 40, 333, 600, 900, 1100, 1121, 1123, 1124, 1125, 1126, 1127, 1130],
)
def test_cut_during_retr(tmp_path: Path, offset: int) -> None:
    """Cut the RETR of message 6 at a byte offset: status line, body, terminator, or just after."""
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(cut_in_retr=(6, offset))) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        check_invariants(vault, server, messages)
        if code == 1:
            error = report["accounts"][0]["errors"][0]
            assert "closed" in error or "lost" in error
            assert len(server.mailbox) == 6  # the session died before QUIT: nothing deleted
        else:  # the cut fell after the whole response: the session completed
            assert server.mailbox == []
        complete_and_check(vault, server, messages)


def test_cut_offsets_cover_the_whole_retr_response() -> None:
    served = served_bytes(corpus()[5])
    response = f"+OK {len(served)} octets\r\n".encode() + dot_stuff(served) + b".\r\n"
    assert len(response) == 1127  # the offsets above straddle its status line and terminator


@pytest.mark.parametrize("msgno", [1, 3, 6])
def test_cut_during_dele_then_ghosts_are_deleted_without_download(
    tmp_path: Path, msgno: int
) -> None:
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(cut_in_dele=msgno)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, _ = fetch_json(vault)
        assert code == 1
        check_invariants(vault, server, messages)
        server.faults = Faults()
        server.wait_unlocked()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0
        assert (acct["fetched"], acct["deleted"]) == (0, 6)
        assert server.mailbox == []
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


@pytest.mark.parametrize("applied", [False, True])
def test_cut_before_quit_reply(tmp_path: Path, applied: bool) -> None:
    messages = corpus()
    faults = Faults(cut_before_quit_reply=True, quit_applies_before_cut=applied)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        fetch_json(vault)
        check_invariants(vault, server, messages)
        assert (server.mailbox == []) is applied
        complete_and_check(vault, server, messages)
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            open_rows = db.execute(
                "SELECT count(*) FROM uidls WHERE deleted_confirmed_at IS NULL"
            ).fetchone()[0]
        assert open_rows == 0


def test_in_use_then_success_is_retried(tmp_path: Path) -> None:
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(in_use_times=2)) as server:
        vault = vault_for(tmp_path, server, retries=3)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["retries"], acct["fetched"]) == (0, 2, 6)


HOSTILE = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2K\rmailvault: all good"  # clipboard, erase, overwrite


def _controls(text: str) -> list[str]:
    return [c for c in text if not c.isprintable() and c != "\n"]


def test_server_text_in_fetch_warnings_is_escaped(tmp_path: Path) -> None:
    """A UIDL is the server's text: quoted in a warning it reaches the terminal escaped (no OSC
    52 clipboard write, no erased line), and the --json report keeps it exactly."""
    uidl = "u1" + HOSTILE.replace("\r", "") + "\x1b[32m fake: listed 0 [ok]"
    messages = corpus(1)
    with FakePop3Server(messages, uidls=[uidl], faults=Faults(lie_about_sizes=True)) as server:
        vault = vault_for(tmp_path, server)
        result = run_cli(vault, "fetch", "--no-index")
        server.add_message(messages[0] + b"x", uidl=uidl + "2")
        code, report = fetch_json(vault, "--no-index")
    assert result.exit_code == 0 and not _controls(result.stderr), result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "acct: warning: stored what RETR delivered, whose size LIST did not give: "
        "message 1 (UIDL u1\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2K"
    )
    assert code == 0 and f"(UIDL {uidl}2)" in report["accounts"][0]["warnings"][0]


def _hostile_server() -> tuple[Any, int]:
    """A POP3 server whose greeting and every -ERR carry terminal controls."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)

    def session(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as lines:
            conn.sendall(f"+OK hi{HOSTILE}\r\n".encode())
            for line in lines:
                verb = line.split(b" ")[0].strip().upper()
                if verb == b"CAPA":
                    conn.sendall(b"+OK\r\nUSER\r\n.\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"+OK\r\n")
                    break
                else:
                    conn.sendall(f"-ERR {HOSTILE}\r\n".encode())

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=session, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_server_text_in_fetch_errors_and_check_steps_is_escaped(tmp_path: Path) -> None:
    """An -ERR text and a greeting are the server's: fetch's error line and check's steps show
    them escaped, one line each; the --json reports keep them exactly."""
    listener, port = _hostile_server()
    try:
        vault = make_vault(tmp_path / "vault", {"acct": {**PLAIN, "port": port, "retries": 0}})
        fetched = run_cli(vault, "fetch", "--no-index")
        checked = run_cli(vault, "check", "acct")
        code, report = fetch_json(vault, "--no-index")
        as_json = run_cli(vault, "check", "acct", "--json")
    finally:
        listener.close()
    assert fetched.exit_code == 1 and not _controls(fetched.stderr), fetched.stderr
    (line,) = fetched.stderr.splitlines()
    assert "USER with -ERR \\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2K\\rmailvault: all good" in line
    assert checked.exit_code == 1 and not _controls(checked.output), checked.output
    assert "[ok  ] greeting hi\\x1b]52;c;" in checked.output
    assert code == 1 and f"-ERR {HOSTILE}" in report["accounts"][0]["errors"][0]
    steps = {step["step"]: step for step in json.loads(as_json.stdout)["steps"]}
    assert HOSTILE in steps["greeting"]["detail"] and HOSTILE in steps["login"]["detail"]


def test_in_use_says_what_to_do(tmp_path: Path) -> None:
    """fetch named [IN-USE] but, unlike check, no fix."""
    with FakePop3Server(corpus(), faults=Faults(in_use_times=9)) as server:
        code, report = fetch_json(vault_for(tmp_path, server))
    (error,) = report["accounts"][0]["errors"]
    assert code == 1 and "[IN-USE]" in error and "another client" in error, error


def test_check_names_the_likely_cause_of_a_refused_login(tmp_path: Path) -> None:
    with FakePop3Server(corpus(), faults=Faults(in_use_times=1)) as server:
        result = run_cli(vault_for(tmp_path, server), "check", "acct")
    assert result.exit_code == 1 and "[FAIL] login" in result.output
    assert "another client" in result.output and "password source" not in result.output
    with FakePop3Server(corpus(), faults=Faults(auth_fail=True)) as server:
        result = run_cli(vault_for(tmp_path / "b", server), "check", "acct")
    assert result.exit_code == 1 and "[FAIL] login" in result.output
    assert "password source" in result.output and "another client" not in result.output


@pytest.mark.parametrize(
    ("faults", "step"),
    [(Faults(garbage_after="STAT"), "stat"), (Faults(cut_before_quit_reply=True), "quit")],
)
def test_check_reports_a_failure_after_login_as_a_step(
    tmp_path: Path, faults: Faults, step: str
) -> None:
    """A STAT the server cannot answer, or a QUIT it never confirms, is a failed step with
    its hint (exit 1, and --json still printed), not an error that hides the steps."""
    with FakePop3Server(corpus(), faults=faults) as server:
        result = run_cli(vault_for(tmp_path, server), "check", "acct")
        assert result.exit_code == 1 and f"[FAIL] {step}" in result.output, result.output
        assert "[ok  ] login" in result.output
        as_json = run_cli(vault_for(tmp_path / "j", server), "check", "acct", "--json")
    assert as_json.exit_code == 1
    assert [s["ok"] for s in json.loads(as_json.stdout)["steps"]][-1] is False


def test_sys_temp_is_retried_auth_is_not(tmp_path: Path) -> None:
    with FakePop3Server(corpus(), faults=Faults(sys_temp_times=1)) as server:
        vault = vault_for(tmp_path, server, retries=2)
        assert fetch_json(vault)[1]["accounts"][0]["retries"] == 1
    with FakePop3Server(corpus(), faults=Faults(auth_fail=True)) as server:
        vault = vault_for(tmp_path / "b", server, retries=5)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["retries"], acct["status"]) == (1, 0, "failed")
        assert "AUTH" in acct["errors"][0] and "alice-secret" not in acct["errors"][0]
        assert server.sessions == 1


def test_retries_resume_what_was_committed(tmp_path: Path) -> None:
    messages = corpus(40)
    with FakePop3Server(messages, faults=Faults(cut_in_retr=(30, 10))) as server:
        vault = vault_for(tmp_path, server, retries=1, delete="after-commit")
        make_vault_batch = vault / "mailvault.toml"
        make_vault_batch.write_text(
            make_vault_batch.read_text() + "[vault]\ncommit_batch_messages = 8\n"
        )
        code, report = fetch_json(vault)
        assert code == 1  # the cut repeats on the retry
        committed_first = report["accounts"][0]["fetched"]
        assert committed_first >= 24  # whole batches before message 30 stayed committed
        complete_and_check(vault, server, messages)


def test_server_lying_about_sizes(tmp_path: Path) -> None:
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(lie_about_sizes=True)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        assert code == 0
        # one warning for the run, not one per message (a first fetch from Exchange, which
        # estimates LIST sizes, warned of every message)
        (warning,) = [w for w in report["accounts"][0]["warnings"] if "LIST said" in w]
        assert f"{len(messages)} messages, the first message 1 (UIDL uid-1): LIST said" in warning
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_endless_line(tmp_path: Path) -> None:
    """An endless line in one message: that message is skipped for the run (named, with the
    cause), every other one is archived (and deleted), and the account reports failure."""
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(endless_line_in_retr=2)) as server:
        # retries: the session after the skipped message logs in at once, and on a loaded
        # machine the server may still be sending the endless line to the closed connection,
        # holding the maildrop: [IN-USE], which a retry waits out (as with a real server)
        vault = vault_for(tmp_path, server, delete="after-commit", retries=3)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 1 and acct["fetched"] == 5 and len(acct["errors"]) == 1
        assert "message 2 (UIDL uid-2" in acct["errors"][0]
        assert "longer than" in acct["errors"][0]
        check_invariants(vault, server, messages)
        assert [m.uidl for m in server.mailbox] == ["uid-2"]
        complete_and_check(vault, server, messages)


def test_a_retr_answer_without_end_is_refused_before_it_fills_the_disk(tmp_path: Path) -> None:
    """A server sending line after line for one RETR was written to tmp/ until the disk was
    full: an answer longer than twice LIST's size plus 16 MiB is not the message."""
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(endless_data_in_retr=2)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", retries=3)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 1 and acct["fetched"] == 5 and len(acct["errors"]) == 1, acct
        assert "message 2 (UIDL uid-2" in acct["errors"][0]
        assert "RETR sent more than 16,7" in acct["errors"][0]
        check_invariants(vault, server, messages)
        assert no_tmp_leftovers(vault)
        complete_and_check(vault, server, messages)


def test_a_message_of_one_line_longer_than_8_mib_is_archived(tmp_path: Path) -> None:
    """The protocol core's 8 MiB line bound refused such a message every run (the account
    failed for ever and the message stayed unarchived); the bound for a RETR follows LIST's
    size, and the data is streamed whatever its lines."""
    big = b"Subject: one line\r\n\r\n" + b"y" * (9 * 1024 * 1024) + b"\r\n"
    fetches_all_exactly(tmp_path, [*corpus(2), big])


def test_a_cut_keeps_the_messages_received_before_it(tmp_path: Path) -> None:
    """The connection drops in the middle of message 4: messages 1-3 arrived whole and are
    committed anyway (one commit batch holds them all), so the next run does not fetch them
    again."""
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(cut_in_retr=(4, 100))) as server:
        vault = vault_for(tmp_path, server)
        code, report = fetch_json(vault)
        assert code == 1 and report["accounts"][0]["fetched"] == 3
        server.faults = Faults()
        server.wait_unlocked()
        code, report = fetch_json(vault)
        assert code == 0 and report["accounts"][0]["fetched"] == 3
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


@pytest.mark.parametrize(
    "faults",
    [Faults(garbage_greeting=True), Faults(garbage_after="RETR"), Faults(garbage_after="UIDL")],
)
def test_garbage_instead_of_ok(tmp_path: Path, faults: Faults) -> None:
    messages = corpus()
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        assert code == 1
        error = report["accounts"][0]["errors"][0]
        assert "HTTP/1.1" in error and "\n" not in error
        check_invariants(vault, server, messages)
        complete_and_check(vault, server, messages)


def test_no_uidl_server_dedups_by_hash(tmp_path: Path) -> None:
    messages = corpus()
    with FakePop3Server(messages, faults=Faults(no_uidl=True)) as server:
        vault = vault_for(tmp_path, server)
        code, report = fetch_json(vault)
        assert code == 0 and any("UIDL" in w for w in report["accounts"][0]["warnings"])
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (acct["fetched"], acct["duplicates"]) == (6, 6)
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_deletions_a_server_without_uidl_confirmed_are_in_the_ledger(tmp_path: Path) -> None:
    """The ledger records every deletion a server confirmed: for a server without UIDL (no
    UIDL row to mark) there was none, and verify was clean all the same."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(no_uidl=True)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["deleted"]) == (0, 3), report
        assert not server.mailbox
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        deleted = db.execute(
            "SELECT account, uidl, sha256, size FROM ledger WHERE kind = 'server-delete'"
        ).fetchall()
    served = [served_bytes(m) for m in messages]
    assert sorted(deleted) == sorted(
        ("acct", None, sha, len(m)) for sha, m in zip(map(_sha, served), served, strict=True)
    )
    assert run_cli(vault, "verify").exit_code == 0


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_server_that_confirms_deletions_but_keeps_the_mail_is_named(tmp_path: Path) -> None:
    """DELE +OK and QUIT +OK, and the mail stays: every run downloaded it again (a duplicate)
    and "deleted" it again, with no word that the mailbox never shrinks."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(ignore_deletions=True)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["warnings"]) == (0, [])
        server.wait_unlocked()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["duplicates"]) == (0, 3)
        assert any("does not apply deletions" in w for w in acct["warnings"]), acct["warnings"]
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_a_renamed_account_says_its_mailbox_was_archived_under_the_old_name(
    tmp_path: Path,
) -> None:
    """Renaming an account downloaded its whole mailbox again, silently."""
    messages = corpus(2)
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server)
        assert fetch_json(vault)[0] == 0
        code, report = fetch_after_edit(vault, server, "[accounts.acct]", "[accounts.renamed]")
        (warning,) = report["accounts"][0]["warnings"]
        assert code == 0 and "archived as account acct" in warning, warning
        assert report["accounts"][0]["duplicates"] == 2
        server.wait_unlocked()
        assert fetch_json(vault)[1]["accounts"][0]["warnings"] == []  # said once
        toml = vault / "mailvault.toml"
        # one mailbox under two configured names is no rename: nothing to rename back
        toml.write_text(
            toml.read_text() + f'\n[accounts.second]\nhost = "127.0.0.1"\nport = {server.port}\n'
            'tls = "none"\nallow_plaintext_auth = true\nuser = "alice"\n'
            f'password_env = "{PASSWORD_ENV}"\n'
        )
        server.wait_unlocked()
        code, report = fetch_json(vault, "second")
        assert (code, report["accounts"][0]["warnings"]) == (0, []), report


def test_a_host_change_is_no_sign_of_deletions_not_applied(tmp_path: Path) -> None:
    """The same mailbox under another host name: its committed UIDLs are retired
    (mailbox-changed) and its mail downloaded again; that was warned about as "the server
    confirmed deleted ... does not apply deletions", with no DELE ever sent."""
    with FakePop3Server(corpus(3)) as server:
        vault = vault_for(tmp_path, server)
        assert fetch_json(vault)[0] == 0
        code, report = fetch_after_edit(vault, server, "127.0.0.1", "localhost")
        warnings = report["accounts"][0]["warnings"]
        assert code == 0 and not any("deletions" in w for w in warnings), warnings


def test_uidl_reused_after_confirmed_delete_is_downloaded(tmp_path: Path) -> None:
    first, second = corpus(2)
    with FakePop3Server([first], uidls=["same"]) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        assert fetch_json(vault)[1]["accounts"][0]["deleted"] == 1
        server.add_message(second, uidl="same")
        code, report = fetch_json(vault)
        assert report["accounts"][0]["fetched"] == 1
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in (first, second)))


def test_max_messages_per_session(tmp_path: Path) -> None:
    messages = corpus(25)
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", max_messages_per_session=10)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["sessions"], acct["fetched"], acct["deleted"]) == (0, 3, 25, 25)
        assert server.sessions == 3


def test_delete_after_days(tmp_path: Path) -> None:
    messages = corpus()
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", delete_after_days=3)
        assert fetch_json(vault)[1]["accounts"][0]["deleted"] == 0
        assert len(server.mailbox) == 6
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            db.execute(
                "UPDATE uidls SET first_seen = '2000-01-01T00:00:00+00:00' WHERE uidl IN ('uid-1', 'uid-2')"
            )
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (acct["fetched"], acct["deleted"]) == (0, 2)
        assert len(server.mailbox) == 4


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    with FakePop3Server(corpus()) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault, "--dry-run")
        acct = report["accounts"][0]
        assert (code, acct["status"], acct["new"], acct["would_delete"]) == (0, "dry-run", 6, 6)
        assert acct["would_bytes"] == sum(len(served_bytes(m.data)) for m in server.mailbox)
        assert len(server.mailbox) == 6
        assert not any(cmd.startswith(("RETR", "DELE")) for d, cmd in server.log if d == "C")
        assert_vault_exact(vault, set())


def test_pipelined_and_lockstep_give_identical_vaults(tmp_path: Path) -> None:
    messages = corpus(30)
    vaults = []
    for name, faults in (("piped", Faults()), ("lockstep", Faults(no_pipelining=True))):
        with FakePop3Server(messages, faults=faults) as server:
            vault = make_vault(tmp_path / name, {"acct": {**PLAIN, "port": server.port}})
            assert fetch_json(vault)[0] == 0
            vaults.append(vault)
    assert sorted(_stored(vaults[0])) == sorted(_stored(vaults[1]))
    assert committed_uidls(vaults[0], "acct") == committed_uidls(vaults[1], "acct")


def _fetch_into(vault: Path, stdout: Any) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, PASSWORD_ENV: "alice-secret", "MAILVAULT_RETRY_SCALE": "0.001"}
    argv = [sys.executable, "-m", "mailvault", "--vault", str(vault), "fetch", "--no-index"]
    return subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, timeout=120)


def test_a_failed_fetch_fails_when_its_reader_closes_the_pipe(tmp_path: Path) -> None:
    """`mailvault fetch | head -1`: a reader gone early does not turn a failure into exit 0."""
    with FakePop3Server(corpus(2), faults=Faults(auth_fail=True)) as server:
        vault = vault_for(tmp_path, server)
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = _fetch_into(vault, write_end)
        finally:
            os.close(write_end)
    assert result.returncode == 1, result.stderr


def test_a_full_stdout_is_named_not_the_vault(tmp_path: Path) -> None:
    with FakePop3Server(corpus(2)) as server:
        vault = vault_for(tmp_path, server)
        with open("/dev/full", "w") as full:
            result = _fetch_into(vault, full)
    assert result.returncode == 3, result.stderr
    assert b"standard output could not be written (No space left on device)" in result.stderr
    assert b"disk full" not in result.stderr
    assert len(committed_uidls(vault, "acct")) == 2


@pytest.mark.parametrize(
    ("fds", "code"), [(">&-", 3), (">&- 2>&-", 3), ("2>&-", 0), ("<&- >&- 2>&-", 3)]
)
def test_a_fetch_with_closed_descriptors_still_archives(
    tmp_path: Path, fds: str, code: int
) -> None:
    """Cron or a daemon wrapper that closes stdout (and stderr): fetch archived everything and
    then died on its report (exit 1), or with both closed died first, archiving nothing.  Now
    everything is archived; a report that could not be written is exit 3, named on stderr
    when there is one."""
    with FakePop3Server(corpus(3)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        env = {**os.environ, PASSWORD_ENV: "alice-secret", "MAILVAULT_RETRY_SCALE": "0.001"}
        argv = [sys.executable, "-m", "mailvault", "--vault", str(vault), "fetch"]
        command = ["sh", "-c", f'exec "$@" {fds}', "sh", *argv]
        result = subprocess.run(command, env=env, capture_output=True, timeout=120)
        assert result.returncode == code, result.stderr
        assert server.mailbox == []
    assert len(committed_uidls(vault, "acct")) == 3
    assert b"Traceback" not in result.stderr
    if fds == ">&-":
        assert result.stderr.startswith(b"mailvault: error: standard output is closed")


def test_trace_redacts_the_password(tmp_path: Path) -> None:
    with FakePop3Server(corpus()) as server:
        vault = vault_for(tmp_path, server)
        trace = tmp_path / "trace.txt"
        assert run_cli(vault, "fetch", "--trace", str(trace)).exit_code == 0
        text = trace.read_text()
        assert "PASS ****" in text and "RETR 1" in text
        assert "alice-secret" not in text
        assert trace.stat().st_mode & 0o777 == 0o600
        assert run_cli(vault, "fetch", "--trace", str(trace)).exit_code == 0  # appends
    lines = trace.read_text().splitlines()
    headers = [line for line in lines if line.startswith("# mailvault ")]
    assert len(headers) == 2 and all("accounts: acct" in line for line in headers)
    result = run_cli(vault, "fetch", "--trace", str(tmp_path / "missing" / "trace.txt"))
    assert result.exit_code == 2 and "cannot write the trace file" in result.stderr
    dialogue = [line for line in lines if not line.startswith("#")]
    assert dialogue and all(re.match(r"\d\d:\d\d:\d\d\.\d{3} acct: [CS]: ", x) for x in dialogue)


@pytest.mark.parametrize("mode", ["plain", "apop", "user"])
def test_auth_mechanisms(tmp_path: Path, mode: str) -> None:
    with FakePop3Server(corpus()) as server:
        vault = vault_for(tmp_path, server, auth=mode)
        assert fetch_json(vault)[0] == 0
    with FakePop3Server(corpus()) as server:
        vault = vault_for(tmp_path / "bad", server, auth=mode)
        code, report = fetch_json(vault, password="wrong")
        assert code == 1 and report["accounts"][0]["retries"] == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_tls(ca: trustme.CA, tmp_path: Path, host: str = "127.0.0.1") -> tuple[Any, Path]:
    """A server TLS context with a certificate for ``host``, and the CA's file for ca_file."""
    ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(ctx)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return ctx, cafile


def _tls_vault(tmp_path: Path, port: int, cafile: Path, tls: str, retries: int) -> Path:
    account = {"host": "127.0.0.1", "port": port, "tls": tls, "ca_file": str(cafile)}
    return make_vault(tmp_path / "v", {"acct": {**account, "retries": retries}})


def test_stls_injection_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    ctx, cafile = _server_tls(ca, tmp_path)
    with FakePop3Server(corpus(), tls_context=ctx, faults=Faults(stls_inject=True)) as server:
        vault = _tls_vault(tmp_path, server.port, cafile, "starttls", retries=0)
        code, report = fetch_json(vault)
        assert code == 1 and "STLS" in report["accounts"][0]["errors"][0].upper()
        server.faults = Faults()
        assert fetch_json(vault)[0] == 0


def test_certificate_for_wrong_host_is_refused_without_retry(
    tmp_path: Path, ca: trustme.CA
) -> None:
    ctx, cafile = _server_tls(ca, tmp_path, host="mail.example.org")
    with FakePop3Server(corpus(), tls_context=ctx, implicit_tls=True) as server:
        vault = _tls_vault(tmp_path, server.port, cafile, "implicit", retries=3)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["retries"]) == (1, 0)
        assert "certificate" in acct["errors"][0] and "another name" in acct["errors"][0]


class _CutFirstConnection(DelayProxy):
    """Closes the first connection before the server's first byte (mid TLS handshake); the
    ones after it pass."""

    @property
    def cut_after_server_bytes(self) -> int | None:
        return 0 if self.connections == 0 else None

    @cut_after_server_bytes.setter
    def cut_after_server_bytes(self, value: int | None) -> None:
        pass


def test_a_connection_closed_during_the_tls_handshake_is_retried(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """An EOF in the middle of the handshake is a dropped connection, not a TLS failure: it
    is retried like any other (a bad certificate is not, see the test above)."""
    ctx, cafile = _server_tls(ca, tmp_path)
    messages = corpus(3)
    with (
        FakePop3Server(messages, tls_context=ctx, implicit_tls=True) as server,
        _CutFirstConnection("127.0.0.1", server.port) as proxy,
    ):
        vault = _tls_vault(tmp_path, proxy.port, cafile, "implicit", retries=3)
        code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["retries"], acct["fetched"]) == (0, 1, 3), report
    assert proxy.connections == 2


def test_one_failing_account_does_not_stop_the_others(tmp_path: Path) -> None:
    with (
        FakePop3Server(corpus()) as good,
        FakePop3Server(corpus(3), faults=Faults(auth_fail=True)) as bad,
    ):
        vault = make_vault(
            tmp_path / "v",
            {
                "good": {**PLAIN, "port": good.port, "delete": "after-commit"},
                "bad": {**PLAIN, "port": bad.port, "retries": 0},
            },
        )
        code, report = fetch_json(vault, "--jobs", "2")
        by_name = {a["account"]: a for a in report["accounts"]}
        assert code == 1 and report["ok"] is False
        assert by_name["good"]["status"] == "ok" and by_name["good"]["fetched"] == 6
        assert by_name["bad"]["status"] == "failed"


def test_an_account_named_twice_is_fetched_once(tmp_path: Path) -> None:
    """`fetch --jobs 2 acct acct` ran two sessions of one account at once: one of them
    failed on the other's commits."""
    with FakePop3Server(corpus()) as server:
        vault = vault_for(tmp_path, server)
        code, report = fetch_json(vault, "--jobs", "2", "acct", "acct")
    assert code == 0 and [a["account"] for a in report["accounts"]] == ["acct"]
    assert report["accounts"][0]["fetched"] == 6 and server.sessions == 1


def test_vault_lock_names_the_holder(tmp_path: Path) -> None:
    from mailvault.vault import open_vault

    with FakePop3Server(corpus()) as server:
        vault_path = vault_for(tmp_path, server)
        vault = open_vault(vault_path)
        with vault.write_lock("fetch"):
            result = run_cli(vault_path, "fetch")
        assert result.exit_code == 3
        assert (
            "locked by pid" in result.stderr
            and "mailvault fetch" not in result.stderr.split("locked by")[0]
        )


def test_usage_and_config_errors_exit_2(tmp_path: Path) -> None:
    with FakePop3Server(corpus()) as server:
        vault = vault_for(tmp_path, server)
        result = run_cli(vault, "fetch", "nosuch")
        assert result.exit_code == 2 and "no account named 'nosuch'" in result.stderr
        (vault / "mailvault.toml").write_text("[accounts.x]\nhots = 1\n")
        result = run_cli(vault, "fetch")
        assert result.exit_code == 2 and "mailvault.toml" in result.stderr


def test_json_report_matches_its_schema(tmp_path: Path) -> None:
    import jsonschema

    from mailvault.resources import json_schema

    with FakePop3Server(corpus(), faults=Faults(lie_about_sizes=True)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        for args in ((), ("--dry-run",)):
            server.add_message(b"Subject: more\r\n\r\nx\r\n")
            code, report = fetch_json(vault, *args)
            jsonschema.validate(report, json_schema("fetch-report.schema.json"))


def test_no_secret_anywhere_in_the_vault_or_output(tmp_path: Path) -> None:
    """After a full run (with a failure, a retry and a trace), grep everything for the password."""
    secret = "alice-secret"
    with FakePop3Server(corpus(), faults=Faults(in_use_times=1, cut_in_dele=2)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", retries=2)
        trace = tmp_path / "trace.txt"
        outputs = [run_cli(vault, "-v", "fetch", "--trace", str(trace)) for _ in range(2)]
        server.faults = Faults()
        server.wait_unlocked()
        outputs.append(run_cli(vault, "fetch", "--json"))
    assert server.mailbox == []
    # the rest of a full run: every command that reads or writes the vault
    export_dir = tmp_path / "export"
    outputs += [
        run_cli(vault, "search", "--json", "*"),
        run_cli(vault, "show", "--json", "m1@t"),
        run_cli(vault, "export", "--format", "maildir", "--out", str(export_dir)),
        run_cli(vault, "verify", "--json"),
        run_cli(vault, "ledger", "export"),
        run_cli(vault, "audit", "--json"),
        run_cli(vault, "-v", "check", "acct"),
    ]
    assert all(r.exit_code == 0 for r in outputs[-7:-1]), [r.output for r in outputs[-7:]]
    for result in outputs:
        assert secret not in result.output and secret not in result.stderr
    for path in [trace, *vault.rglob("*"), *export_dir.rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"password found in {path}"


@pytest.mark.parametrize("secret", ["alice-secret", "pässwörd-Ω"])
@pytest.mark.parametrize("auth", ["user", "plain"])
def test_a_password_the_server_quotes_back_is_redacted_everywhere(
    tmp_path: Path, auth: str, secret: str
) -> None:
    """Some servers quote the credentials in their -ERR ("wrong password: <arg>", or the
    decoded SASL token): that text reaches errors, the JSON report, the trace, the log, the
    catalog's runs table and `check`.  Neither the password nor its base64 form may, nor the
    mojibake a server makes of a non-ASCII one (this one reads commands as Latin-1 and
    answers in UTF-8); the reply text is withheld, its response code kept."""
    import base64

    token = base64.b64encode(b"\0alice\0" + secret.encode()).decode()
    mojibake = secret.encode().decode("latin-1")
    leaks = [secret, token, mojibake, secret[3:9]]
    with FakePop3Server(corpus(), faults=Faults(echo_credentials=True)) as server:
        vault = vault_for(tmp_path, server, auth=auth)
        trace = tmp_path / "trace.txt"
        outputs = [
            run_cli(vault, "-vv", "fetch", "--trace", str(trace), password=secret),
            run_cli(vault, "fetch", "--json", password=secret),
            run_cli(vault, "-vv", "check", "acct", password=secret),
        ]
    assert [r.exit_code for r in outputs] == [1, 1, 1]
    assert "-ERR [AUTH] (reply text withheld: it may quote the password)" in outputs[0].stderr
    for result in outputs:
        for text in (result.output, result.stderr):
            assert not [leak for leak in leaks if leak in text], text
    for path in [trace, *vault.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not [leak for leak in leaks if leak.encode() in data], path


def fetch_in_own_group(vault: Path, *args: str) -> subprocess.Popen[bytes]:
    """`mailvault fetch ARGS` in a process group of its own (a signal sent to the group
    reaches its workers too, as a service manager's does), its output piped."""
    env = {**os.environ, PASSWORD_ENV: "alice-secret"}
    argv = [sys.executable, "-m", "mailvault", "--vault", str(vault), "fetch", *args]
    return subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize(
    ("signum", "code", "word", "as_json"),
    [(signal.SIGINT, 130, b"interrupted", False), (signal.SIGTERM, 143, b"terminated", True)],
)
def test_ctrl_c_mid_fetch_exits_130_and_loses_nothing(
    tmp_path: Path, signum: int, code: int, word: bytes, as_json: bool
) -> None:
    """Ctrl-C (SIGINT to the process group) while batches stream and commit: exit 130, every
    deleted message committed, no temp file left, and the next run completes.  SIGTERM
    stops it the same way (exit 143); either way the run is recorded as interrupted with the
    counts of what it did, and the report says them (a nightly `fetch --json` stopped by
    its service manager printed nothing)."""
    messages = corpus(400)
    with FakePop3Server(messages, faults=Faults(slow_bytes_per_sec=4_000_000)) as server:
        account = {**PLAIN, "port": server.port, "retries": 0, "delete": "after-commit"}
        vault = make_vault(tmp_path / "vault", {"acct": account}, commit_batch_messages=16)
        proc = fetch_in_own_group(vault, "--no-index", *(["--json"] if as_json else []))
        while proc.poll() is None and not committed_uidls(vault, "acct"):
            pass
        os.killpg(proc.pid, signum)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert err.splitlines()[-1] == b"mailvault: " + word
        assert 0 < len(committed_uidls(vault, "acct")) < len(messages)
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            status, fetched = db.execute("SELECT status, fetched FROM runs").fetchone()
        assert (status, fetched > 0) == ("interrupted", True), (status, fetched)
        if as_json:
            report = json.loads(out)
            jsonschema.validate(report, json_schema("fetch-report.schema.json"))
            (acct,) = report["accounts"]
            assert (report["ok"], report["interrupted"]) == (False, True), report
            assert (acct["status"], acct["fetched"]) == ("interrupted", fetched), report
        else:
            assert out.decode().startswith(f"acct: listed 400, new 400, fetched {fetched}, ")
            assert out.decode().endswith(" [interrupted]\n"), out
        check_invariants(vault, server, messages)
        assert no_tmp_leftovers(vault)
        complete_and_check(vault, server, messages)


def test_a_killed_run_is_closed_with_what_it_committed(tmp_path: Path) -> None:
    """SIGKILL (no handler runs) after capped sessions committed, DELEd and QUIT: the next run
    closed the killed one with every count 0 and the next run's start as its end, though its
    UIDL rows and deletions were committed.  Now its counts are what the catalog holds of it,
    and finished_at the last time it wrote anything."""
    messages = corpus(400)
    with FakePop3Server(messages, faults=Faults(slow_bytes_per_sec=4_000_000)) as server:
        account = {**PLAIN, "port": server.port, "retries": 0, "delete": "after-commit"}
        account["max_messages_per_session"] = 40
        vault = make_vault(tmp_path / "vault", {"acct": account}, commit_batch_messages=16)
        env = {**os.environ, PASSWORD_ENV: "alice-secret"}
        argv = [sys.executable, "-m", "mailvault", "--vault", str(vault), "fetch", "--no-index"]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        db = sqlite3.connect(vault / "catalog.sqlite")
        deletions = "SELECT count(*) FROM uidls WHERE deleted_confirmed_at IS NOT NULL"
        # a session QUIT (its deletions confirmed) and the next one committed some
        while proc.poll() is None and (
            not db.execute(deletions).fetchone()[0] or len(committed_uidls(vault, "acct")) <= 50
        ):
            time.sleep(0.01)
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        committed = db.execute(
            "SELECT count(*), sum(size), max(committed_at) FROM uidls WHERE run_id=1"
        ).fetchone()
        deleted = db.execute(deletions).fetchone()[0]
        last = max(
            t
            for (t,) in db.execute(
                "SELECT max(committed_at) FROM uidls UNION ALL SELECT max(dele_sent_at) FROM "
                "uidls UNION ALL SELECT max(deleted_confirmed_at) FROM uidls UNION ALL "
                "SELECT max(started_at) FROM sessions UNION ALL SELECT max(at) FROM ledger"
            )
            if t is not None
        )
        assert 0 < committed[0] < len(messages) and deleted > 0, (committed, deleted)
        assert db.execute("SELECT status FROM runs").fetchall() == [("running",)]
        server.wait_unlocked()
        code, report = fetch_json(vault, "--no-index")
        assert code == 0, report
        killed = db.execute(
            "SELECT status, fetched, duplicates, bytes, deleted, finished_at FROM runs WHERE id=1"
        ).fetchone()
        (second_start,) = db.execute("SELECT started_at FROM runs WHERE id=2").fetchone()
        db.close()
        assert killed == ("killed", committed[0], 0, committed[1], deleted, last), killed
        assert committed[2] <= last < second_start
        check_invariants(vault, server, messages)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_terminated_run_reports_every_account_as_far_as_it_got(tmp_path: Path, jobs: str) -> None:
    """SIGTERM while the first of two accounts streams: the report names both, each that did
    not finish as interrupted with what it had committed (the second, not started without
    --jobs, with nothing), and the ledger's runs agree."""
    slow = Faults(slow_bytes_per_sec=2_000_000)
    second_faults = slow if jobs == "2" else Faults()  # with --jobs, both stream at the stop
    with (
        FakePop3Server(corpus(300), faults=slow) as first,
        FakePop3Server(corpus(300), faults=second_faults) as second,
    ):
        accounts = {
            "a1": {**PLAIN, "port": first.port, "retries": 0},
            "a2": {**PLAIN, "port": second.port, "retries": 0},
        }
        vault = make_vault(tmp_path / "vault", accounts, commit_batch_messages=16)
        proc = fetch_in_own_group(vault, "--json", "--no-index", "--jobs", jobs)
        while proc.poll() is None and not committed_uidls(vault, "a1"):
            pass
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.splitlines()[-1]) == (143, b"mailvault: terminated"), err
    report = json.loads(out)
    jsonschema.validate(report, json_schema("fetch-report.schema.json"))
    got = {a["account"]: (a["status"], a["fetched"]) for a in report["accounts"]}
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        runs = dict(db.execute("SELECT account, fetched FROM runs WHERE status='interrupted'"))
    assert got["a1"] == ("interrupted", runs["a1"]) and runs["a1"] > 0, (got, runs)
    if jobs == "1":
        assert got["a2"] == ("interrupted", 0) and "a2" not in runs, (got, runs)
    else:
        assert got["a2"][0] == "interrupted" and got["a2"][1] == runs.get("a2", 0), (got, runs)


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_while_indexing_reports_the_fetch_and_the_lagging_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    """Stopped after the accounts finished, while what they fetched is indexed: the accounts
    are reported as they finished, and the report says indexing was interrupted and how it
    catches up."""
    from mailvault import indexer

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(indexer, "catch_up", interrupted)
    with FakePop3Server(corpus(3)) as server:
        vault = vault_for(tmp_path, server)
        result = run_cli(vault, "fetch", *(["--json"] if as_json else []))
    assert result.exit_code == 130, result.output
    assert result.stderr.splitlines()[-1] == "mailvault: interrupted"
    if as_json:
        report = json.loads(result.stdout)
        jsonschema.validate(report, json_schema("fetch-report.schema.json"))
        assert report["accounts"][0]["status"] == "ok" and report["interrupted"], report
        assert report["index"] is None and "`mailvault index`" in report["index_error"]
    else:
        assert "fetched 3," in result.stdout and result.stdout.endswith(" [ok]\n"), result.stdout
        assert "warning: indexing was interrupted; what was fetched is archived" in result.stderr


def test_mail_arriving_during_a_capped_run_counts_as_listed_and_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report reconciles: what a later session of the run finds that no earlier listing
    showed is counted in listed and new, so fetched never exceeds new."""
    from mailvault.fetch import AccountFetcher

    one_session = AccountFetcher._one_session
    with FakePop3Server(corpus(4)) as server:

        def session_then_new_mail(self: AccountFetcher) -> bool:
            more = one_session(self)
            if self.report.sessions == 1:
                server.add_message(b"Subject: arrived meanwhile\r\n\r\nhi\r\n")
            return more

        monkeypatch.setattr(AccountFetcher, "_one_session", session_then_new_mail)
        vault = vault_for(tmp_path, server, max_messages_per_session=2)
        code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert code == 0 and acct["sessions"] == 3, report
    assert (acct["listed"], acct["new"], acct["fetched"]) == (5, 5, 5), report


def _new_mail(messages: list[bytes], size: str) -> bytes:
    if size == "other size":
        return b"From: new@example.com\r\nSubject: new mail under an old UIDL\r\n\r\nhi\r\n"
    first = messages[0]  # the same size as the committed message: only its header tells
    twin = first.replace(b"Subject: m0", b"Subject: X0").replace(b"<m0@t>", b"<x0@t>")
    assert len(twin) == len(first) and twin != first
    return twin


@pytest.mark.parametrize("size", ["other size", "same size"])
def test_a_reused_uidl_is_never_deleted_as_a_ghost(tmp_path: Path, size: str) -> None:
    """The server applies a QUIT whose reply is lost, then gives a deleted message's UIDL to
    new mail: that is not the committed message (its size differs, or at the same size its
    header, TOP n 0, does), so it is downloaded and archived before any DELE, not deleted
    unread as a "ghost"."""
    messages = corpus(3)
    faults = Faults(reuse_uidls=True, cut_before_quit_reply=True, quit_applies_before_cut=True)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", retries=0)
        fetch_json(vault)
        assert server.mailbox == []
        server.faults = Faults(reuse_uidls=True)
        server.wait_unlocked()
        fresh = _new_mail(messages, size)
        server.add_message(fresh)
        assert server.mailbox[0].uidl == "uid-1"
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0, report
        assert (acct["fetched"], acct["deleted"]) == (1, 1)
        assert any("UIDL uid-1" in w and "downloaded again" in w for w in acct["warnings"])
        assert server.mailbox == []
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in [*messages, fresh]))
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            kinds = [r[0] for r in db.execute("SELECT kind FROM ledger ORDER BY seq")]
        assert kinds.count("server-gone") == 3 and kinds.count("server-delete") == 1


def test_a_ghost_listed_at_another_size_is_checked_then_kept(tmp_path: Path) -> None:
    """A server that misreports sizes: the ghost is downloaded once to check, found to be the
    committed message (no new row, no duplicate), and left on the server with a warning: only
    a message of LIST's size is deleted (TOP compares the header only; a RETR cut short
    keeps it)."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(cut_in_dele=1)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", retries=0)
        fetch_json(vault)
        server.faults = Faults(lie_about_sizes=True)
        server.wait_unlocked()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0, report
        assert acct["deleted"] == 0 and len(server.mailbox) == 3
        assert sum("left on the server" in w for w in acct["warnings"]) == 3, acct
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            assert db.execute("SELECT count(*) FROM uidls").fetchone()[0] == 3


@pytest.mark.parametrize("cap", [0, 1])
def test_a_refused_retr_fails_the_account_and_never_loops(tmp_path: Path, cap: int) -> None:
    """A message the server will not hand out: every other one is archived, the account is
    reported failed (exit 1: a message is not being archived), and a per-session cap does not
    make fetch ask again and again in a loop."""
    messages = corpus(4)
    with FakePop3Server(messages, faults=Faults(refuse_retr=1)) as server:
        vault = vault_for(tmp_path, server, max_messages_per_session=cap, retries=0)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 1 and report["ok"] is False and acct["status"] == "failed"
        assert (
            acct["fetched"] == 3 and "RETR of message 1 (UIDL uid-1) refused" in acct["errors"][0]
        )
        assert acct["sessions"] <= 4
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages[1:]))


def test_a_cap_without_uidl_fetches_everything_once(tmp_path: Path) -> None:
    """Without UIDLs and without deleting, the next session would list the same messages
    first: the cap is set aside (with a warning) instead of reconnecting for ever."""
    messages = corpus(5)
    with FakePop3Server(messages, faults=Faults(no_uidl=True)) as server:
        vault = vault_for(tmp_path, server, max_messages_per_session=2, retries=0)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and (acct["fetched"], acct["sessions"]) == (5, 1)
        assert any("max_messages_per_session has no effect" in w for w in acct["warnings"])
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_a_password_that_cannot_be_sent_is_one_line_and_the_others_run(tmp_path: Path) -> None:
    """A password with a line break (from a variable set by mistake) cannot form a PASS
    command: a configuration error in one line (exit 2), recorded as a failed run, and the
    next account is still fetched; `check` says the same without a traceback."""
    messages = corpus(2)
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server)
        toml = (vault / "mailvault.toml").read_text()
        other = toml.replace("[accounts.acct]", "[accounts.broken]").replace(
            f'password_env = "{PASSWORD_ENV}"', 'password_env = "MV_TEST_BROKEN"'
        )
        (vault / "mailvault.toml").write_text(other + toml)  # the broken one first
        env = {"MV_TEST_BROKEN": "alice-secret\nsecond line"}
        result = run_cli(vault, "fetch", "--no-index", env=env)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert "accounts.broken: the user name or the password cannot be sent" in result.stderr
        assert "alice-secret" not in result.output
        assert "acct: listed 2, new 2, fetched 2" in result.stdout
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            status = dict(db.execute("SELECT account, status FROM runs").fetchall())
        assert status == {"acct": "ok", "broken": "failed"}
        result = run_cli(vault, "check", "broken", env=env)
        assert result.exit_code == 2 and "Traceback" not in result.output  # as fetch
        assert "[FAIL] login" in result.output


@pytest.mark.parametrize("password", ["alice-secret", "nothing"])
def test_a_server_that_drops_pipelined_commands_is_retried_lock_step(
    tmp_path: Path, password: str
) -> None:
    """It advertises PIPELINING, then ignores all but the first command of each read: the
    stall is noticed, the retry goes lock-step, every message arrives, and a warning says what
    to set.  (The stall is told by its type, not its text: a password "nothing" masked the
    "sent nothing" the check once looked for.)"""
    messages = corpus()
    faults = Faults(drop_pipelined=True)
    with FakePop3Server(messages, faults=faults, password=password) as server:
        vault = vault_for(tmp_path, server, retries=0, timeout=2)
        code, report = fetch_json(vault, password=password)
        acct = report["accounts"][0]
        assert code == 0, report
        assert acct["fetched"] == 6 and acct["sessions"] == 2  # even with retries = 0
        assert any('pipelining = "off"' in w for w in acct["warnings"])
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


@pytest.mark.parametrize("tls", ["none", "implicit"])
def test_ctrl_c_with_jobs_stops_at_once(tmp_path: Path, tls: str) -> None:
    """Ctrl-C while another account's worker waits on a server that never answers: the run
    stops at once (exit 130), not after that account's timeouts and back-offs; the catalog
    says the runs were interrupted, and what was committed stays."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts (the kernel does), never greets
    try:
        with FakePop3Server(corpus(3)) as server:
            vault = make_vault(
                tmp_path / "vault",
                {
                    "good": {**PLAIN, "port": server.port, "retries": 0},
                    "mute": {**PLAIN, "port": silent.getsockname()[1], "timeout": 30, "tls": tls},
                },
            )
            env = dict(os.environ, MAILVAULT_VAULT=str(vault), **{PASSWORD_ENV: "alice-secret"})
            argv = [sys.executable, "-m", "mailvault", "fetch", "--jobs", "2", "--no-index"]
            proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 30
            while not committed_uidls(vault, "good") and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the mute account is now waiting for its greeting
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130, err
            assert time.monotonic() - started < 10  # not the 30 s timeout, let alone retries
            assert len(committed_uidls(vault, "good")) == 3
            with sqlite3.connect(vault / "catalog.sqlite") as db:
                status = dict(db.execute("SELECT account, status FROM runs").fetchall())
            assert status["mute"] == "interrupted"
    finally:
        silent.close()


def test_new_mail_under_a_reused_uidl_is_archived_when_keeping(tmp_path: Path) -> None:
    """delete = "never": another client deletes a message and the server gives its UIDL to
    new mail.  LIST's size for that UIDL changed since the commit, so it is downloaded and
    archived (the old row closed as gone), not ignored for ever; unchanged UIDLs are not
    downloaded again, and a later run downloads nothing.  A dry run counts it in
    ``would_check``."""
    import jsonschema

    from mailvault.resources import json_schema

    messages = corpus(3)
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server)
        assert fetch_json(vault)[0] == 0
        with server._lock:  # another client deleted uid-2
            server.mailbox = [m for m in server.mailbox if m.uidl != "uid-2"]
        fresh = b"From: x@example.com\r\nSubject: new under uid-2\r\n\r\nnew\r\n"
        server.add_message(fresh, uidl="uid-2")
        retrs = sum(cmd.startswith("RETR") for d, cmd in server.log if d == "C")
        code, report = fetch_json(vault, "--dry-run")  # says so, and downloads nothing
        acct = report["accounts"][0]
        assert (code, acct["new"], acct["would_check"], acct["fetched"]) == (0, 0, 1, 0)
        jsonschema.validate(report, json_schema("fetch-report.schema.json"))
        assert sum(cmd.startswith("RETR") for d, cmd in server.log if d == "C") == retrs
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and acct["fetched"] == 1, report
        assert any("UIDL uid-2" in w for w in acct["warnings"])
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in [*messages, fresh]))
        code, report = fetch_json(vault)
        assert code == 0 and report["accounts"][0]["fetched"] == 0


def test_rows_from_before_listed_sizes_are_trusted_then_recorded(tmp_path: Path) -> None:
    """UIDL rows committed before LIST sizes were recorded (listed_size NULL) on a server that
    misreports sizes: kept without a download, as before, and their LIST size is recorded so
    that later runs can compare."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(lie_about_sizes=True)) as server:
        vault = vault_for(tmp_path, server)
        assert fetch_json(vault)[0] == 0
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            db.execute("UPDATE uidls SET listed_size = NULL")
        code, report = fetch_json(vault)
        assert code == 0 and report["accounts"][0]["fetched"] == 0
        assert report["accounts"][0]["warnings"] == []
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            rows = db.execute("SELECT size, listed_size FROM uidls").fetchall()
        assert all(listed is not None and listed != size for size, listed in rows)


def test_a_ghost_whose_dele_was_sent_is_checked_by_its_header_not_downloaded(
    tmp_path: Path,
) -> None:
    """The usual case after a lost QUIT reply (the server did not apply it): TOP shows the
    committed header, so the ghost is deleted without a download."""
    messages = corpus(3)
    faults = Faults(cut_before_quit_reply=True, quit_applies_before_cut=False)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", retries=0)
        fetch_json(vault)
        assert len(server.mailbox) == 3
        server.faults = Faults()
        server.wait_unlocked()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and (acct["fetched"], acct["deleted"]) == (0, 3), report
        assert server.mailbox == []
        retrs = [c for d, c in server.log if d == "C" and c.startswith("RETR")]
        tops = [c for d, c in server.log if d == "C" and c.startswith("TOP")]
        # RETRs of the first run only; TOPs in both: before the first run's DELEs (each
        # deleted message's header) and for the ghosts
        assert len(retrs) == 3 and len(tops) == 6


@pytest.mark.parametrize(("no_pipelining", "cap"), [(False, 0), (True, 0), (False, 1), (True, 2)])
def test_delete_after_days_checks_the_header_of_what_it_deletes(
    tmp_path: Path, no_pipelining: bool, cap: int
) -> None:
    """While committed mail waits its delete_after_days on the server, another client deletes
    one message and the server gives its UIDL to new mail of the same size.  When the wait is
    over, the new mail is not deleted unread on UIDL and size alone: TOP shows another header,
    so it is downloaded and archived, and stays (its own wait starts now).  Pipelined or
    lock-step, in one session or capped ones, the result is the same."""
    messages = corpus(3)
    faults = Faults(reuse_uidls=True, no_pipelining=no_pipelining)
    with FakePop3Server(messages, faults=faults) as server:
        keys = {"max_messages_per_session": cap} if cap else {}
        vault = vault_for(tmp_path, server, delete="after-commit", delete_after_days=1, **keys)
        assert fetch_json(vault)[1]["accounts"][0]["deleted"] == 0
        with server._lock:  # another client deleted uid-1
            server.mailbox = [m for m in server.mailbox if m.uidl != "uid-1"]
        fresh = _new_mail(messages, "same size")
        server.add_message(fresh)
        assert server.mailbox[-1].uidl == "uid-1"
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            db.execute("UPDATE uidls SET first_seen = '2000-01-01T00:00:00+00:00'")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and (acct["fetched"], acct["deleted"]) == (1, 2), report
        assert any("UIDL uid-1" in w and "downloaded again" in w for w in acct["warnings"])
        assert [m.data for m in server.mailbox] == [fresh]
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in [*messages, fresh]))


def _committed_and_due(tmp_path: Path, server: FakePop3Server, **keys: Any) -> Path:
    """A vault whose every message of ``server`` is committed and past delete_after_days."""
    vault = vault_for(tmp_path, server, delete="after-commit", delete_after_days=1, **keys)
    assert fetch_json(vault)[1]["accounts"][0]["deleted"] == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE uidls SET first_seen = '2000-01-01T00:00:00+00:00'")
    return vault


def test_the_header_checks_before_deletion_are_pipelined(tmp_path: Path) -> None:
    """The TOP of every committed message due for deletion goes out in a window like RETR's,
    not one round trip each; the DELEs follow as the answers arrive."""
    with FakePop3Server(corpus(8)) as server:
        vault = _committed_and_due(tmp_path, server)
        trace = tmp_path / "trace.txt"
        code, report = fetch_json(vault, "--trace", str(trace))
        assert code == 0 and report["accounts"][0]["deleted"] == 8, report
        assert server.mailbox == []
    lines = trace.read_text().splitlines()
    dialogue = [line.split(" ", 2)[-1] for line in lines if not line.startswith("#")]
    first_answer = next(i for i, x in enumerate(dialogue) if x.startswith("C: TOP")) + 1
    while dialogue[first_answer].startswith("C: TOP"):
        first_answer += 1
    sent_before = [x for x in dialogue[:first_answer] if x.startswith("C: TOP")]
    assert len(sent_before) == 8, dialogue


def test_a_capped_session_deletes_in_steps(tmp_path: Path) -> None:
    """max_messages_per_session counts the committed messages checked for deletion: each
    session QUITs after that many, so deletions take effect as the run goes (a run killed
    later keeps them), then reconnects for the rest."""
    with FakePop3Server(corpus(5)) as server:
        vault = _committed_and_due(tmp_path, server, max_messages_per_session=2)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and (acct["deleted"], acct["sessions"]) == (5, 3), report
        assert server.mailbox == []
        commands = [c.split()[0] for d, c in server.log if d == "C"]
    tail = commands[len(commands) - 1 - commands[::-1].index("PASS") - 20 :]
    assert [c for c in commands if c in ("DELE", "QUIT")][-8:] == [
        "DELE",
        "DELE",
        "QUIT",
        "DELE",
        "DELE",
        "QUIT",
        "DELE",
        "QUIT",
    ], tail


def test_a_dry_run_does_not_pay_for_header_checks(tmp_path: Path) -> None:
    with FakePop3Server(corpus(4)) as server:
        vault = _committed_and_due(tmp_path, server)
        server.log.clear()
        code, report = fetch_json(vault, "--dry-run")
        acct = report["accounts"][0]
        assert (code, acct["would_delete"], acct["would_check"]) == (0, 4, 0), report
        assert not any(c.startswith("TOP") for d, c in server.log if d == "C")
        assert len(server.mailbox) == 4


def test_an_account_pointed_at_another_mailbox_trusts_none_of_the_old_uidls(
    tmp_path: Path,
) -> None:
    """The admin points an account at another user's mailbox, whose UIDLs and sizes equal the
    old one's (Dovecot gives equal UIDLs to mailboxes created in the same second).  The old
    mailbox's UIDLs are retired (ledger "mailbox-changed"), so the new mailbox's mail is
    downloaded and archived, never skipped or deleted unread as if already committed; a dry
    run says so and changes nothing."""
    messages = corpus(3)
    others = [m.replace(b"From: s", b"From: t").replace(b"<m", b"<n") for m in messages]
    assert [len(m) for m in others] == [len(m) for m in messages]
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", delete_after_days=7)
        assert fetch_json(vault)[0] == 0
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            db.execute("UPDATE uidls SET first_seen = '2000-01-01T00:00:00+00:00'")
        config = vault / "mailvault.toml"
        config.write_text(config.read_text().replace('user = "alice"', 'user = "bob"'))
        with server._lock:  # bob's mailbox: the same UIDLs and sizes, other mail
            server.user = "bob"
            server.mailbox = []
        for number, data in enumerate(others, 1):
            server.add_message(data, uidl=f"uid-{number}")
        code, report = fetch_json(vault, "--dry-run")
        acct = report["accounts"][0]
        assert (code, acct["new"], acct["would_delete"]) == (0, 3, 0), report
        assert any("now names bob@127.0.0.1" in w for w in acct["warnings"])
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and (acct["fetched"], acct["deleted"]) == (3, 0), report
        assert len(server.mailbox) == 3
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in [*messages, *others]))
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            kinds = [r[0] for r in db.execute("SELECT kind FROM ledger")]
        assert kinds.count("mailbox-changed") == 3
        checked = run_cli(vault, "verify", "--json")
        assert checked.exit_code == 0, checked.stdout
        code, report = fetch_json(vault)  # and from now on, bob's UIDLs are the ones trusted
        assert code == 0 and report["accounts"][0]["fetched"] == 0
        assert report["accounts"][0]["warnings"] == []


def test_a_run_that_never_reached_a_mistyped_host_retires_no_uidls(tmp_path: Path) -> None:
    """A typo in the host (or a wrong user refused at login) retired every committed UIDL
    before connecting: with the typo fixed, the whole mailbox was downloaded again and the
    delete_after_days clock restarted."""
    messages = corpus(3)
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server, retries=0)
        assert fetch_json(vault)[0] == 0
        config = vault / "mailvault.toml"
        good = config.read_text()
        for typo in ('host = "127.0.0.l"', 'user = "alicee"'):
            config.write_text(_typo(good, typo))
            code, report = fetch_json(vault)
            assert code == 1 and report["accounts"][0]["warnings"] == [], report
        config.write_text(good)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["fetched"], acct["warnings"]) == (0, 0, []), report
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            kinds = [r[0] for r in db.execute("SELECT kind FROM ledger")]
        assert "mailbox-changed" not in kinds


def _typo(config: str, typo: str) -> str:
    key = typo.split(" =")[0]
    return "\n".join(typo if line.startswith(f"{key} =") else line for line in config.split("\n"))


def test_a_refused_login_names_the_fix(tmp_path: Path) -> None:
    """A wrong password answered with [AUTH] gave the cause and no fix (a bare -ERR did)."""
    with FakePop3Server(corpus(1), faults=Faults(auth_fail=True)) as server:
        vault = vault_for(tmp_path, server)
        code, report = fetch_json(vault)
        (error,) = report["accounts"][0]["errors"]
        assert code == 1 and "; check user and the password source of accounts.acct" in error


@pytest.mark.parametrize("reply", ["-ERR Command not permitted", "-ERR [SYS/PERM] no TLS here"])
def test_a_refused_stls_names_the_fix(tmp_path: Path, reply: str) -> None:
    """STLS answered with -ERR gave no fix, or with [SYS/PERM] "a lasting fault with the
    mailbox: ask its operator"; check already said what to do."""
    with FakePop3Server(corpus(1), faults=Faults(refuse_stls=reply)) as server:
        vault = vault_for(tmp_path, server, tls="starttls")
        code, report = fetch_json(vault)
        (error,) = report["accounts"][0]["errors"]
        assert code == 1 and "refused STLS" in error and 'use tls = "implicit"' in error, error
        assert "lasting fault" not in error


def test_a_server_keeping_deleted_mail_under_a_cap_ends_the_run(tmp_path: Path) -> None:
    """A server that confirms deletions (QUIT +OK) but keeps the mail (Gmail's recent mode
    archiving its copy), with a per-session cap: every next session found the same messages
    new, archived and "deleted" them again, and the run never ended (135 sessions in 30 s,
    the ledger growing, the others never fetched)."""
    messages = corpus(5)
    with FakePop3Server(messages, faults=Faults(ignore_deletions=True)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", max_messages_per_session=2)
        started = time.monotonic()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert time.monotonic() - started < 60
        assert code == 0 and acct["fetched"] == 5 and acct["duplicates"] == 0, acct
        assert any("confirmed in this run" in w for w in acct["warnings"]), acct["warnings"]
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            assert db.execute("SELECT count(*) FROM uidls").fetchone()[0] == 5


def test_list_sizes_far_above_what_retr_gives_are_estimates_not_cuts(tmp_path: Path) -> None:
    """Exchange counts its stored form in LIST, KBs more than small mail: every message was
    refused as "cut short" (an answer under half of LIST's size), session after session, and
    nothing was ever archived.  Now archived; not deleted, since only a message of LIST's
    size is (a RETR cut short passes TOP's header check), with the fix named."""
    messages = corpus(4)
    with FakePop3Server(messages, faults=Faults(list_extra=4096)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["fetched"], acct["deleted"], acct["errors"]) == (0, 4, 0, []), acct
        assert sum("EnableExactRFC822Size" in w for w in acct["warnings"]) == 4, acct
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
        assert len(server.mailbox) == 4


def test_a_quit_left_unanswered_with_nothing_to_delete_is_a_warning(tmp_path: Path) -> None:
    """A server closing the connection at QUIT instead of answering failed the account every
    run, an empty mailbox included, though no deletion depended on the answer."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(cut_before_quit_reply=True)) as server:
        vault = vault_for(tmp_path, server)
        for fetched in (3, 0):
            code, report = fetch_json(vault)
            acct = report["accounts"][0]
            assert (code, acct["fetched"], acct["errors"]) == (0, fetched, []), acct
            assert any("without answering QUIT" in w for w in acct["warnings"])
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_a_cap_takes_new_mail_before_deletions_a_server_never_applies(tmp_path: Path) -> None:
    """A server that never completes QUIT keeps what was DELEd: with a cap, the committed
    messages due for deletion took the whole cap every session, and new mail was never
    archived."""
    messages = corpus(5)
    faults = Faults(cut_before_quit_reply=True, quit_applies_before_cut=False)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(
            tmp_path, server, delete="after-commit", max_messages_per_session=2, retries=4
        )
        fetch_json(vault)
        assert len(server.mailbox) == 5 and len(stored_digests(vault)) >= 2
        server.wait_unlocked()
        fetch_json(vault)
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
        assert set(server.deleted_uidls) <= committed_uidls(vault, "acct")
        complete_and_check(vault, server, messages)


@pytest.mark.parametrize("pipelining", ["auto", "off"])
def test_a_server_ending_lines_with_bare_lf_is_named_not_waited_out(
    tmp_path: Path, pipelining: str
) -> None:
    """A server sending message data with bare LF line ends (LF "." LF at the end) never ends
    its answer for a client: each session waited the whole timeout, then lock-step and every
    retry did, and the error blamed a stalled network.  Lock-step, the stall is named;
    pipelined, the next answer taken for its data is, and the message is skipped (not
    stored: it would hold the next answer) while the others are archived."""
    messages = corpus(2)
    with FakePop3Server(messages, faults=Faults(bare_lf_retr=1)) as server:
        vault = vault_for(
            tmp_path, server, delete="after-commit", timeout=1, retries=2, pipelining=pipelining
        )
        started = time.monotonic()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert time.monotonic() - started < 10, acct
        (error,) = acct["errors"]
        if pipelining == "off":
            assert acct["sessions"] == 1 and "ends message lines with a bare LF" in error
            assert "operator must fix it" in error and len(server.mailbox) == 2
        else:
            assert "message 1 (UIDL uid-1" in error and "ending lines with a bare LF" in error
            assert [m.uidl for m in server.mailbox] == ["uid-1"]
        assert code == 1 and not sha256s([served_bytes(messages[0])]) & set(stored_digests(vault))


def test_an_apop_only_server_without_capa_names_auth_apop(tmp_path: Path) -> None:
    """auth = "auto" tries USER when no CAPA names the methods; an APOP-only server refused
    it and the hint said to check the password, though the greeting offered APOP."""
    messages = corpus(2)
    with FakePop3Server(messages, faults=Faults(apop_only=True)) as server:
        vault = vault_for(tmp_path, server)
        code, report = fetch_json(vault)
        (error,) = report["accounts"][0]["errors"]
        assert code == 1 and 'its greeting offers APOP, which auth = "apop" uses' in error
        config = vault / "mailvault.toml"
        config.write_text(config.read_text() + 'auth = "apop"\n')
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["fetched"]) == (0, 2), report


def test_an_empty_top_answer_is_taken_as_no_top_not_another_header(tmp_path: Path) -> None:
    """A server whose TOP n 0 answers +OK and nothing: messages due under delete_after_days
    were downloaded again every run and never deleted (each time "another header"), and new
    mail was never deleted.  An empty answer shows no header, as a refused TOP does: a new
    message is deleted on its RETR's word, a due one after one download to check it."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(empty_top=True)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", delete_after_days=1)
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["fetched"]) == (0, 3)
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            db.execute("UPDATE uidls SET first_seen = '2000-01-01T00:00:00+00:00'")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["deleted"]) == (0, 3), acct
        assert server.mailbox == []
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_uidl_gaps_under_a_cap_end_the_run(tmp_path: Path) -> None:
    """UIDL leaving out some messages, with a per-session cap and mail kept: each session
    downloaded the same UIDL-less messages again and took that for progress (6,195 sessions
    in 30 s, the others never fetched).  As for a server without UIDL, one session takes all."""
    messages = corpus(5)

    def gaps(name: str, lines: list[str]) -> list[str]:
        return lines[3:] if name == "UIDL" else lines

    with FakePop3Server(messages, faults=Faults(edit_listing=gaps)) as server:
        vault = vault_for(tmp_path, server, max_messages_per_session=2)
        started = time.monotonic()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert time.monotonic() - started < 60
        assert (code, acct["sessions"], acct["fetched"]) == (0, 1, 5), acct
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_a_message_holding_lf_dot_lf_then_ok_is_stored_as_it_is(tmp_path: Path) -> None:
    """A message with bare-LF lines holding LF "." LF "+OK" (a pasted POP3 transcript, say),
    properly ended, was taken for a server ending lines with bare LF, and the account failed
    every run."""
    text = b"From: a@example.com\nSubject: transcript\n\nRETR 1\n.\n+OK bye\nthe end\r\n"
    fetches_all_exactly(tmp_path, [*corpus(2), text, *corpus(1)])


def test_a_stuffing_server_one_octet_off_in_list_gains_no_dot(tmp_path: Path) -> None:
    """The dot put back for Dovecot's unstuffed first line ("..x", one octet under LIST) must
    not be put on a server that stuffs and counts one octet more in LIST: its message would
    be stored with a dot it does not have, and deleted."""
    messages = [b".first line one dot\r\nSubject: s\r\n\r\nbody\r\n", *corpus(2)]
    fetches_all_exactly(tmp_path, messages, Faults(list_extra=1))


@pytest.mark.parametrize("top", ["no_top", "empty_top"])
def test_a_wrong_retr_that_top_cannot_check_is_not_deleted(tmp_path: Path, top: str) -> None:
    """RETR 1 answered with message 2's bytes by a server whose TOP shows nothing (absent,
    or empty): once sizes alone no longer refused such an answer, message 1 was deleted
    unread.  Without a header to go by, only a RETR of LIST's size is deleted."""
    messages = corpus(3)
    faults = Faults(retr_serves=(1, 2), **{top: True})
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        warnings = " ".join(report["accounts"][0]["warnings"])
        assert "message 1 (UIDL uid-1): RETR gave" in warnings, warnings
        assert [m.uidl for m in server.mailbox] == ["uid-1"]


def test_a_wrong_retr_seen_again_without_top_is_not_taken_for_proof(tmp_path: Path) -> None:
    """Without a TOP header, a committed message due for deletion is downloaded again and
    deleted if RETR gives the committed bytes: a server serving message 2's bytes for RETR 1
    every time had message 1 deleted unread on its second run.  The same bytes again prove
    nothing when LIST says another size."""
    messages = corpus(3)
    faults = Faults(retr_serves=(1, 2), no_top=True)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", delete_after_days=1)
        assert fetch_json(vault)[0] == 0 and len(server.mailbox) == 3
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            db.execute("UPDATE uidls SET first_seen = '2000-01-01T00:00:00+00:00'")
        code, report = fetch_json(vault)
        assert [m.uidl for m in server.mailbox] == ["uid-1"], report
        warnings = " ".join(report["accounts"][0]["warnings"])
        assert "message 1 (UIDL uid-1): RETR gave 304 octets where LIST says" in warnings


def test_lf_dot_lf_text_with_approximate_sizes_costs_only_that_message(tmp_path: Path) -> None:
    """Text holding LF "." LF "+OK" in a message, on a server whose LIST sizes are off: the
    whole account failed every run as a bare-LF server, later mail never archived."""
    text = b"From: a@example.com\nSubject: transcript\n\nRETR 1\n.\n+OK bye\nthe end\r\n"
    messages = [*corpus(2), text, corpus(4)[3]]
    with FakePop3Server(messages, faults=Faults(list_extra=7)) as server:
        # retries: the session after the skipped message may find the maildrop still held
        # by the one that ended ([IN-USE]), which a retry waits out
        vault = vault_for(tmp_path, server, delete="after-commit", retries=3)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["fetched"]) == (1, 3), acct
        (error,) = acct["errors"]
        assert "message 3 (UIDL uid-3" in error and 'LF "." LF' in error, error
        assert len(server.mailbox) == 4  # (the others kept: not of LIST's size)


def test_mail_without_uidl_that_deletion_cannot_remove_ends_a_capped_run(tmp_path: Path) -> None:
    """No UIDL, delete after commit, a cap, and a server keeping what it is told to delete:
    each session downloaded the same messages again (duplicates) and took that for progress
    (6,948 sessions in 40 s)."""
    messages = corpus(5)
    faults = Faults(no_uidl=True, ignore_deletions=True)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", max_messages_per_session=2)
        started = time.monotonic()
        code, report = fetch_json(vault)
        assert time.monotonic() - started < 60
        assert report["accounts"][0]["sessions"] < 10, report
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_a_retr_cut_short_is_not_deleted_when_top_shows_its_header(tmp_path: Path) -> None:
    """RETR 1 gave the header and little more (82 of 3,846 octets), properly ended: TOP
    showed the same header, and the message was deleted with most of it never archived.
    Only a message of LIST's size is deleted."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(short_retr=(1, 40))) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        for _ in range(2):  # a second run's check of the committed copy keeps it too
            code, report = fetch_json(vault)
            warnings = " ".join(report["accounts"][0]["warnings"])
            assert "message 1 (UIDL uid-1)" in warnings, report
            assert [m.uidl for m in server.mailbox] == ["uid-1"]


@pytest.mark.parametrize("top", ["no_top", "empty_top"])
def test_a_capped_run_without_top_header_and_estimated_sizes_ends(tmp_path: Path, top: str) -> None:
    """No TOP header and LIST sizes one octet off, with a cap: each session downloaded the
    committed messages again to check them and took that for progress (11,000 sessions in
    60 s); a message kept on the server is not asked again in the run."""
    messages = corpus(6)
    faults = Faults(list_extra=1, **{top: True})
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", max_messages_per_session=2)
        assert fetch_json(vault)[0] == 0
        started = time.monotonic()
        code, report = fetch_json(vault)
        assert time.monotonic() - started < 60 and report["accounts"][0]["sessions"] < 10
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))
        assert len(server.mailbox) == 6


# -- a tls or auth setting that does not fit the server: check and fetch name the fix ----------


@pytest.mark.parametrize(
    ("tls", "step", "other"),
    [("starttls", "tls", "starttls"), ("none", "pop3", "plain text")],
)
def test_a_plain_tls_setting_on_an_implicit_tls_port_names_the_fix(
    tmp_path: Path, ca: trustme.CA, tls: str, step: str, other: str
) -> None:
    """Against a POP3S port the client waits for a greeting while the server waits for a
    ClientHello: after the timeout both check and fetch say the port speaks implicit TLS
    (they found out by trying a handshake), and fetch does not retry a setting that is wrong."""
    ctx, cafile = _server_tls(ca, tmp_path)
    with FakePop3Server(corpus(), tls_context=ctx, implicit_tls=True) as server:
        keys: dict[str, Any] = {"tls": tls, "timeout": 0.5, "retries": 3}
        keys.update({"ca_file": str(cafile)} if tls != "none" else {})
        vault = vault_for(tmp_path, server, **keys)
        fix = (
            f'port {server.port} speaks implicit TLS; set tls = "implicit" '
            f"(or use port 110 for {other})"
        )
        result = run_cli(vault, "check", "acct")
        assert result.exit_code == 1 and f"[FAIL] {step}" in result.output, result.output
        assert f"hint: {fix}" in result.output
        code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["retries"]) == (1, 0), report
    assert acct["errors"][0].endswith(fix), acct["errors"]


@pytest.mark.parametrize("command", ["check", "fetch"])
def test_a_plain_tls_setting_on_an_implicit_tls_port_fails_before_the_timeout(
    tmp_path: Path, ca: trustme.CA, command: str
) -> None:
    """With a long timeout the mismatch is not waited out: once no greeting came within a
    short grace period, a second connection finds the port answering a TLS handshake and the
    error names the fix at once (the bound below is a hang guard, not a benchmark)."""
    ctx, cafile = _server_tls(ca, tmp_path)
    with FakePop3Server(corpus(), tls_context=ctx, implicit_tls=True) as server:
        vault = vault_for(tmp_path, server, tls="starttls", timeout=30, ca_file=str(cafile))
        fix = (
            f'port {server.port} speaks implicit TLS; set tls = "implicit" '
            "(or use port 110 for starttls)"
        )
        started = time.monotonic()
        if command == "check":
            result = run_cli(vault, "check", "acct")
            assert result.exit_code == 1 and "[FAIL] tls" in result.output, result.output
            assert f"hint: {fix}" in result.output
        else:
            code, report = fetch_json(vault)
            assert code == 1 and report["accounts"][0]["errors"][0].endswith(fix), report
        elapsed = time.monotonic() - started
    assert elapsed < 15, f"{command} took {elapsed:.1f} s to name the fix"


def test_a_server_that_greets_after_the_grace_period_still_works(tmp_path: Path) -> None:
    """A slow plain-text greeting is no TLS mismatch: the probe's handshake fails, the client
    keeps waiting up to the timeout, and check and fetch succeed."""
    messages = corpus(2)
    with FakePop3Server(messages, faults=Faults(greeting_delay=6.0)) as server:
        vault = vault_for(tmp_path, server, timeout=30)
        result = run_cli(vault, "check", "acct")
        assert result.exit_code == 0 and "[ok  ] greeting" in result.output, result.output
        code, report = fetch_json(vault)
        assert code == 0, report
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in messages))


def test_implicit_tls_on_a_plain_text_port_names_the_fix(tmp_path: Path) -> None:
    """The handshake reads the "+OK" greeting as a TLS record and fails; check and fetch say
    the server greeted in plain text instead of passing on OpenSSL's wrong version number."""
    fix = 'the server greeted in plain text; set tls = "starttls" or "none" or use port 995'
    with FakePop3Server(corpus()) as server:
        vault = vault_for(tmp_path, server, tls="implicit", retries=3)
        result = run_cli(vault, "check", "acct")
        assert result.exit_code == 1 and "[FAIL] tls" in result.output, result.output
        assert f"hint: {fix}" in result.output
        code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["retries"]) == (1, 0), report
    assert acct["errors"][0].endswith(fix), acct["errors"]


@pytest.mark.parametrize(
    ("auth", "faults", "offers", "use"),
    [
        ("apop", Faults(no_apop=True), "USER, SASL PLAIN", '"user" or "plain"'),
        ("xoauth2", Faults(), "USER, SASL PLAIN, APOP", '"user", "plain" or "apop"'),
        ("plain", Faults(sasl=(), no_apop=True), "USER", '"user"'),
        (
            "plain",
            Faults(sasl=("XOAUTH2",), no_apop=True),
            "USER, SASL XOAUTH2",
            '"user" or "xoauth2"',
        ),
    ],
)
def test_an_auth_method_the_server_does_not_offer_names_what_it_offers(
    tmp_path: Path, auth: str, faults: Faults, offers: str, use: str
) -> None:
    """APOP without a timestamp in the greeting, or a SASL mechanism CAPA does not list: the
    hint names what the server offers and the auth values that fit, not the password."""
    with FakePop3Server(corpus(), faults=faults) as server:
        vault = vault_for(tmp_path, server, auth=auth)
        result = run_cli(vault, "check", "acct")
        assert result.exit_code == 1 and "[FAIL] login" in result.output, result.output
        assert f"hint: the server offers {offers}; set auth = {use}" in result.output
        assert "password source" not in result.output
        code, report = fetch_json(vault)
    error = report["accounts"][0]["errors"][0]
    assert code == 1 and f"the server offers {offers}; set auth = {use}" in error, error


def test_progress_counts_an_account_across_its_capped_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_messages_per_session the progress goes 1..25 of 25 over three sessions (the
    total known from the first session's listing), not 1..10 of 10 again at each reconnect."""
    from mailvault.fetch import fetch_accounts
    from mailvault.vault import open_vault

    monkeypatch.setenv(PASSWORD_ENV, "alice-secret")
    calls: list[tuple[str, int, int, int]] = []
    with FakePop3Server(corpus(25)) as server:
        path = vault_for(tmp_path, server, delete="after-commit", max_messages_per_session=10)
        vault = open_vault(path)
        (report,) = fetch_accounts(
            vault, [vault.config.account("acct")], progress=lambda *a: calls.append(a)
        )
    assert (report.sessions, report.fetched) == (3, 25)
    assert [c[1:3] for c in calls] == [(n, 25) for n in range(1, 26)]
    sizes = [len(served_bytes(m)) for m in corpus(25)]
    assert [c[3] for c in calls] == [sum(sizes[:n]) for n in range(1, 26)]


def _command_vault(tmp_path: Path, server: FakePop3Server, command: str, **keys: Any) -> Path:
    """A vault whose account takes its secret from ``command`` (not from the environment)."""
    vault = vault_for(tmp_path, server, **keys)
    config = vault / "mailvault.toml"
    source = f"password_env = {json.dumps(PASSWORD_ENV)}"
    assert source in config.read_text()
    config.write_text(
        config.read_text().replace(source, f"password_command = {json.dumps(command)}")
    )
    return vault


def _counting(counter: Path, good_from: int = 1) -> str:
    """A password_command that counts its runs in ``counter`` and prints a stale token until
    its ``good_from``-th run."""
    return (
        f"printf x >> {counter}; if [ $(wc -c < {counter}) -ge {good_from} ]; "
        "then echo alice-secret; else echo stale-token; fi"
    )


def test_password_command_runs_once_per_account_and_run(tmp_path: Path) -> None:
    """Three capped sessions and a retry after [IN-USE]: one run of the command (a gpg or
    pass prompt once, not at each reconnect); the next fetch runs it again."""
    counter = tmp_path / "runs"
    with FakePop3Server(corpus(25), faults=Faults(in_use_times=1)) as server:
        vault = _command_vault(
            tmp_path, server, _counting(counter), max_messages_per_session=10, retries=2
        )
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["sessions"], acct["retries"], acct["fetched"]) == (0, 4, 1, 25)
        assert counter.read_text() == "x"
        assert fetch_json(vault)[0] == 0
    assert counter.read_text() == "xx"


@pytest.mark.parametrize(
    ("auth", "good_from", "runs", "code"),
    [
        ("xoauth2", 2, "xx", 0),  # an expired token: the command gives a fresh one
        ("xoauth2", 9, "xx", 1),  # still refused: asked again once, not in a loop
        ("user", 2, "x", 1),  # a wrong password is not asked for again
    ],
)
def test_an_xoauth2_token_refused_with_auth_is_fetched_again_once(
    tmp_path: Path, auth: str, good_from: int, runs: str, code: int
) -> None:
    counter = tmp_path / "runs"
    faults = Faults(sasl=("PLAIN", "XOAUTH2"))
    with FakePop3Server(corpus(3), faults=faults) as server:
        vault = _command_vault(tmp_path, server, _counting(counter, good_from), auth=auth)
        result = run_cli(vault, "fetch", "--json")
    report = json.loads(result.stdout)["accounts"][0]
    assert (result.exit_code, report["fetched"]) == (code, 3 if code == 0 else 0), report
    assert counter.read_text() == runs
    assert "stale-token" not in result.output and "stale-token" not in result.stderr


def test_check_names_a_refused_stls_and_a_bad_password_source_as_fetch_does(
    tmp_path: Path,
) -> None:
    """STLS refused by a server that lists it is one clean line (no bytes repr) with the fix
    (one whose CAPA leaves it out is not asked: test_fetch_faults_capa); an unusable password
    source is a configuration error: exit 2, as fetch says."""
    with FakePop3Server(corpus(), faults=Faults(refuse_stls="-ERR STLS not available")) as server:
        starttls = vault_for(tmp_path / "s", server, tls="starttls")
        result = run_cli(starttls, "check", "acct")
        assert result.exit_code == 1 and "[FAIL] tls" in result.output, result.output
        assert "refused STLS (-ERR STLS not available)" in result.output
        assert "refused STLS (" in fetch_json(starttls)[1]["accounts"][0]["errors"][0]
        assert "b'" not in result.output and 'tls = "implicit"' in result.output
        unset = vault_for(tmp_path / "p", server)
        result = run_cli(unset, "check", "acct", env={PASSWORD_ENV: ""})
        assert result.exit_code == 2 and "[FAIL] login" in result.output, result.output
        assert fetch_json(unset, env={PASSWORD_ENV: ""})[0] == 2


def test_an_unreadable_ca_file_names_the_config_file_and_the_fix(
    tmp_path: Path, ca: trustme.CA
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    with FakePop3Server(corpus(), tls_context=ctx, implicit_tls=True) as server:
        account = {"host": "127.0.0.1", "port": server.port, "tls": "implicit", "retries": 0}
        vault = make_vault(tmp_path / "v", {"acct": {**account, "ca_file": "no-such-ca.pem"}})
        result = run_cli(vault, "check", "acct")
        assert result.exit_code == 2, result.output
        assert f"{vault / 'mailvault.toml'}: accounts.acct.ca_file: " in result.output
        assert "point ca_file at the PEM file" in result.output
        code, report = fetch_json(vault)
    assert code == 2 and "accounts.acct.ca_file" in json.dumps(report)


@pytest.mark.parametrize("command", ["LIST", "UIDL"])
def test_a_listing_that_never_ends_is_one_line_not_a_hang(tmp_path: Path, command: str) -> None:
    """A server streaming LIST or UIDL lines for ever: fetch kept every line in memory (2.6 GB
    and growing after two minutes) and never finished.  The maildrop is fixed for a session
    (RFC 1939), so a listing is bounded by STAT's count."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(endless_listing=command)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        started = time.monotonic()
        code, report = fetch_json(vault)
        assert time.monotonic() - started < 60
        (error,) = report["accounts"][0]["errors"]
        assert code == 1 and f"in answer to {command}" in error and "STAT" in error, error
        assert not server.deleted_uidls
        server.faults = Faults()
        server.wait_unlocked()
        complete_and_check(vault, server, messages)


@pytest.mark.parametrize("command", ["LIST", "UIDL"])
def test_a_message_listed_twice_ends_the_session(tmp_path: Path, command: str) -> None:
    """A LIST or UIDL answer naming one message number twice was taken silently, the later
    line winning: which UIDL or size belongs to the message cannot be known."""
    messages = corpus(3)

    def twice(name: str, lines: list[str]) -> list[str]:
        extra = "1 500" if name == "LIST" else "1 other-1"
        return [*lines, extra] if name == command else lines

    with FakePop3Server(messages, faults=Faults(edit_listing=twice)) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        (error,) = report["accounts"][0]["errors"]
        assert code == 1 and f"listed message 1 twice in one {command} answer" in error, error
        assert not server.deleted_uidls and report["accounts"][0]["fetched"] == 0
        server.faults = Faults()
        server.wait_unlocked()
        complete_and_check(vault, server, messages)


def test_uidl_and_list_disagreeing_is_named(tmp_path: Path) -> None:
    """UIDL leaving out a message LIST lists (or naming one LIST does not) was accepted
    silently: the message was downloaded again every run with no word why."""
    messages = corpus(3)

    def disagree(name: str, lines: list[str]) -> list[str]:
        return [*lines[1:], "9 phantom"] if name == "UIDL" else lines

    with FakePop3Server(messages, faults=Faults(edit_listing=disagree)) as server:
        vault = vault_for(tmp_path, server)
        for fetched, duplicates in ((3, 0), (1, 1)):  # message 1, without a UIDL, comes again
            code, report = fetch_json(vault)
            acct = report["accounts"][0]
            assert (code, acct["fetched"], acct["duplicates"]) == (0, fetched, duplicates)
            (warning,) = acct["warnings"]
            assert "UIDL left out message 1 of LIST's 3" in warning, warning
            assert "UIDL named message 9, which LIST does not list" in warning, warning
        assert len(stored_digests(vault)) == 3


def test_uidls_differing_only_in_non_ascii_bytes_stay_apart(tmp_path: Path) -> None:
    """UIDLs were decoded as ASCII with replacement: two that differ in a non-ASCII byte
    became one.  In one session that was a false "listed UIDL twice" failure every run;
    across sessions new mail listed under such a UIDL passed for committed mail and was never
    archived."""
    first, second, third = corpus(3)
    with FakePop3Server([first, second]) as server:
        server.mailbox[0].uidl, server.mailbox[1].uidl = "\xe9x", "\xe8x"
        vault = vault_for(tmp_path, server)
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["fetched"]) == (0, 2), report
        server.mailbox[1].uidl = "\xffx"  # new mail under another non-ASCII UIDL
        server.mailbox[1].data = third
        server.wait_unlocked()
        code, report = fetch_json(vault)
        assert (code, report["accounts"][0]["fetched"]) == (0, 1), report
        assert_vault_exact(vault, sha256s(served_bytes(m) for m in (first, second, third)))


def test_answers_out_of_step_are_named_as_such(tmp_path: Path) -> None:
    """A server answering USER twice: the error quoted "malformed LIST line '+OK 3
    messages'", which hid the fault (its answers no longer match the commands)."""
    messages = corpus(3)
    with FakePop3Server(messages, faults=Faults(answer_twice="USER")) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        (error,) = report["accounts"][0]["errors"]
        assert code == 1 and "out of step" in error and "RFC 1939" in error, error
        assert not server.deleted_uidls
        server.faults = Faults()
        server.wait_unlocked()
        complete_and_check(vault, server, messages)


def test_a_server_serving_one_message_for_another_does_not_get_the_other_deleted(
    tmp_path: Path,
) -> None:
    """RETR 2 answered with message 1's bytes: the content was a duplicate, committed under
    message 2's UIDL, and message 2 was deleted on the server unread.  Identical content for
    two messages of one session now waits for TOP to show the header before its DELE."""
    messages = alike(3)
    with FakePop3Server(messages, faults=Faults(retr_serves=(2, 1))) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert any("served the wrong message" in w for w in acct["warnings"]), acct
        assert [m.uidl for m in server.mailbox] == ["uid-2"]  # not deleted unread
        server.faults = Faults()
        server.wait_unlocked()
        complete_and_check(vault, server, messages)


@pytest.mark.parametrize("settings", [{}, {"pipelining": "off"}])
def test_a_server_serving_a_later_message_for_an_earlier_one_keeps_the_earlier(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    """RETR 1 answered with message 2's bytes: that content was new, so message 1 was deleted
    at once, and only the second copy (message 2's own RETR) was checked with TOP: message 1
    was deleted unread.  Every DELE of a downloaded message waits for TOP to show the header
    of what its RETR gave."""
    messages = alike(3)
    with FakePop3Server(messages, faults=Faults(retr_serves=(1, 2))) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", **settings)
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert any("served the wrong message" in w for w in acct["warnings"]), acct
        assert "uid-1" in [m.uidl for m in server.mailbox]  # not deleted unread
        complete_and_check(vault, server, messages)


def test_identical_messages_in_one_mailbox_are_still_deleted(tmp_path: Path) -> None:
    """The same bytes twice in a mailbox (a message delivered twice): TOP shows the header,
    so both are deleted after the one copy is stored."""
    message = corpus(1)[0]
    with FakePop3Server([message, message]) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["deleted"], acct["warnings"]) == (0, 2, []), acct
        assert not server.mailbox


def test_a_full_disk_under_the_catalog_is_named_not_called_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's "database or disk is full" while a session is recorded was reported as an
    "unexpected OperationalError (a bug in mailvault ...)"."""
    from mailvault.catalog import Catalog

    def full(self: Catalog, run_id: int, facts: dict[str, Any]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Catalog, "record_session", full)
    with FakePop3Server(corpus(2)) as server:
        code, report = fetch_json(vault_for(tmp_path, server))
    (error,) = report["accounts"][0]["errors"]
    assert code == 1 and "free space" in error and "a bug" not in error, error


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_full_disk_when_a_run_ends_fails_that_account_and_the_report_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: str
) -> None:
    """The disk filled up by the time an account's run was to be recorded as ended: the COMMIT
    of finish_run raised out of the account's worker, every account's report was dropped and
    the run exited 3 with no report at all (--json printed nothing).  Now that account failed,
    its error naming the full disk and the fix; the other account's report stands (exit 1)."""
    from mailvault.catalog import Catalog

    finish_run = Catalog.finish_run

    def full_for_a1(
        self: Catalog, run_id: int, status: str, counts: dict[str, int], errors: list[str]
    ) -> None:
        (account,) = self.conn.execute("SELECT account FROM runs WHERE id=?", (run_id,)).fetchone()
        if account == "a1":
            raise sqlite3.OperationalError("database or disk is full")
        finish_run(self, run_id, status, counts, errors)

    monkeypatch.setattr(Catalog, "finish_run", full_for_a1)
    with FakePop3Server(corpus(2)) as first, FakePop3Server(corpus(3)) as second:
        accounts = {
            "a1": {**PLAIN, "port": first.port, "retries": 0},
            "a2": {**PLAIN, "port": second.port, "retries": 0},
        }
        vault = make_vault(tmp_path / "vault", accounts)
        code, report = fetch_json(vault, "--jobs", jobs)
        jsonschema.validate(report, json_schema("fetch-report.schema.json"))
        got = {a["account"]: a for a in report["accounts"]}
        assert (code, report["ok"]) == (1, False), report
        assert (got["a1"]["status"], got["a1"]["fetched"]) == ("failed", 2), report
        (error,) = got["a1"]["errors"]
        assert "disk is full" in error and "free space" in error and "a bug" not in error, error
        assert (got["a2"]["status"], got["a2"]["fetched"], got["a2"]["errors"]) == ("ok", 3, [])
        monkeypatch.undo()  # space freed: the next run closes the one left 'running'
        first.wait_unlocked()
        assert fetch_json(vault, "--jobs", jobs)[0] == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        runs = db.execute("SELECT account, status, fetched, bytes FROM runs ORDER BY id").fetchall()
    a1 = [run for run in runs if run[0] == "a1"]
    assert a1[0][:3] == ("a1", "killed", 2) and a1[0][3] > 0 and a1[1][1] == "ok", runs


def test_a_top_that_contradicts_the_download_stops_the_dele(tmp_path: Path) -> None:
    """RETR 2 answered with message 1's bytes, archived under message 2's UIDL while mail was
    kept; then with after-commit TOP 2 showed message 2's header, the download gave the
    committed bytes again, and message 2 was deleted, never archived."""
    messages = alike(2)
    with FakePop3Server(messages, faults=Faults(retr_serves=(2, 1))) as server:
        vault = vault_for(tmp_path, server)
        assert fetch_json(vault)[0] == 0
        toml = vault / "mailvault.toml"
        toml.write_text(toml.read_text() + 'delete = "after-commit"\n')
        server.wait_unlocked()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert any("contradicts itself" in w for w in acct["warnings"]), acct
        assert "uid-2" in [m.uidl for m in server.mailbox]  # not deleted unread
        complete_and_check(vault, server, messages)


def test_a_server_without_uidl_serving_one_message_for_another_keeps_the_other(
    tmp_path: Path,
) -> None:
    """Without UIDL there was no check at all: RETR 2 gave message 1's bytes and both were
    deleted, the ledger recording message 1's sha256 twice."""
    messages = alike(2)
    faults = Faults(no_uidl=True, retr_serves=(2, 1))
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        assert any("served the wrong message" in w for w in report["accounts"][0]["warnings"])
        assert len(server.mailbox) == 1 and server.mailbox[0].data == messages[1]


def test_mail_archived_before_and_delivered_again_is_deleted_after_top(tmp_path: Path) -> None:
    """Content the vault had from an earlier run, under a new UIDL: TOP shows its header, so
    it is deleted (a copy of mail already archived), without a second download."""
    first = corpus(1)[0]
    with FakePop3Server([first]) as server:
        vault = vault_for(tmp_path, server, delete="after-commit")
        assert fetch_json(vault)[1]["accounts"][0]["deleted"] == 1
        server.add_message(first, uidl="again")
        server.wait_unlocked()
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["duplicates"], acct["deleted"], acct["warnings"]) == (0, 1, 1, [])
        assert not server.mailbox


def test_a_server_serving_a_much_smaller_message_for_another_is_caught_by_top(
    tmp_path: Path,
) -> None:
    """RETR 6 answered with message 1's bytes, a fraction of what LIST announced.  The size
    alone no longer refuses it (servers such as Exchange estimate LIST sizes, KBs above small
    mail, and every message was refused); the size is named, TOP shows message 6's header,
    so it is not deleted, and the next run checks it again and archives it."""
    messages = corpus(6)
    with FakePop3Server(messages, faults=Faults(retr_serves=(6, 1))) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", retries=1)
        code, report = fetch_json(vault)
        warnings = " ".join(report["accounts"][0]["warnings"])
        assert "message 6 (UIDL uid-6): LIST said" in warnings, warnings
        assert "TOP of message 6 (UIDL uid-6) shows another header" in warnings, warnings
        assert [m.uidl for m in server.mailbox] == ["uid-6"]
        # now message 1 of the mailbox, which the fault does not touch: served right
        code, report = fetch_json(vault)
        assert code == 0 and server.mailbox == [], report
        assert sha256s([served_bytes(messages[5])]) <= set(stored_digests(vault))


@pytest.mark.parametrize("keys", [{"max_messages_per_session": 1}, {}])
def test_a_message_served_for_another_in_an_earlier_session_is_not_deleted_unread(
    tmp_path: Path, keys: dict[str, Any]
) -> None:
    """RETR 1 answered with message 2's bytes, new to the vault: its DELE was held to the end
    of the session only, so with one message per session (or message 2's RETR refused) it
    went out unchecked, and message 1 was lost.  Every DELE of a downloaded message now waits
    for TOP to show the header of what RETR gave."""
    messages = alike(2)
    faults = Faults(retr_serves=(1, 2), refuse_retr=None if keys else 2)
    with FakePop3Server(messages, faults=faults) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", **keys)
        fetch_json(vault)
        assert "uid-1" in [m.uidl for m in server.mailbox]  # not deleted unread
        complete_and_check(vault, server, messages)


def test_deletions_the_server_applied_but_the_catalog_could_not_record_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk filled between QUIT's +OK and the catalog's record of it: the report said
    "deleted": 0 though the server had deleted every (archived) message, and nothing said
    so (QA).  Now the count is the server's, with a warning naming what was not recorded."""
    from mailvault.catalog import Catalog

    mark_deleted = Catalog.mark_deleted

    def full(self: Catalog, ids: Any, *, confirmed_by_quit: bool) -> None:
        if confirmed_by_quit:
            raise sqlite3.OperationalError("database or disk is full")
        mark_deleted(self, ids, confirmed_by_quit=confirmed_by_quit)

    monkeypatch.setattr(Catalog, "mark_deleted", full)
    messages = corpus(4)
    with FakePop3Server(messages) as server:
        vault = vault_for(tmp_path, server, delete="after-commit", retries=0)
        code, report = fetch_json(vault)
        (acct,) = report["accounts"]
        assert (code, acct["status"], acct["fetched"], acct["deleted"]) == (1, "failed", 4, 4)
        assert server.mailbox == []
        assert any("the server applied 4 deletions" in w for w in acct["warnings"]), acct
        assert "disk is full" in acct["errors"][0], acct
