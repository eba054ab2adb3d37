"""`mailvault fetch` against a real private Dovecot (POP3 + STLS, and POP3S), CA via ca_file."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailvault.testkit.dovecot import Dovecot, retr_payload
from tests.vaults import (
    PASSWORD_ENV,
    account_toml,
    assert_vault_exact,
    fetch_json,
    make_vault,
    no_tmp_leftovers,
    run_cli,
    sha256s,
)


def mail(n: int, seed: int = 1, big_every: int = 0) -> list[bytes]:
    """Messages with dot lines, From_ lines, bare LF endings and a few large ones."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = 200_000 if big_every and i % big_every == 0 else rng.randint(200, 6000)
        words = " ".join(
            rng.choice(["alpha", "beta", ".dot", "From", "gamma", "delta"])
            for _ in range(size // 6)
        )
        lines = [words[j : j + 70] for j in range(0, len(words), 70)]
        eol = b"\n" if i % 7 == 3 else b"\r\n"
        body = eol.join(line.encode() for line in lines)
        out.append(
            b"From: sender%d@example.com\r\nTo: alice@example.com\r\nSubject: test %d\r\n"
            b"Message-ID: <%d.%d@example.com>\r\n\r\n.first line dotted\r\n%s\r\n"
            % (i, i, seed, i, body)
        )
    return out


def account(server: Dovecot, mode: str, **keys: object) -> dict[str, object]:
    port = server.tls_port if mode == "implicit" else server.port
    return {"host": "localhost", "port": port, "tls": mode, "ca_file": str(server.ca_file), **keys}


def server_hashes(server: Dovecot, user: str = "alice") -> set[str]:
    """Hashes of what the server holds; read again while files move or vanish under us.

    Right after a client is killed, Dovecot may still be finishing its session: moving files
    from new/ to cur/, or applying the DELEs of a QUIT that reached it.  On a loaded machine
    that can take more than a second, so this waits up to ten.
    """
    maildir = server.maildir(user)
    deadline = time.monotonic() + 10
    while True:
        try:
            files = [p for sub in ("new", "cur") for p in (maildir / sub).iterdir()]
            return {hashlib.sha256(retr_payload(p.read_bytes())).hexdigest() for p in files}
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{maildir} kept changing while it was read") from None
            time.sleep(0.02)


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_keep_then_delete_policy(tmp_path: Path, dovecot: Dovecot, mode: str) -> None:
    messages = mail(40, big_every=13)
    dovecot.add_messages("alice", messages)
    expected = sha256s(retr_payload(m) for m in messages)
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, mode)})
    code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["listed"], acct["fetched"], acct["deleted"]) == (0, 40, 40, 0)
    assert_vault_exact(vault, expected)  # stored bytes hash to what the server serves
    assert dovecot.mailbox_count("alice") == 40
    code, report = fetch_json(vault)
    assert (code, report["accounts"][0]["fetched"]) == (0, 0)
    # switch the policy: committed messages still on the server are deleted without download
    toml = vault / "mailvault.toml"
    toml.write_text(toml.read_text() + 'delete = "after-commit"\n')
    code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["fetched"], acct["deleted"]) == (0, 0, 40)
    assert dovecot.mailbox_count("alice") == 0
    assert no_tmp_leftovers(vault)


def test_no_size_warning_for_the_line_break_dovecot_adds(tmp_path: Path, dovecot: Dovecot) -> None:
    """A message stored without a final line break is served with one CRLF more than LIST
    counts (Dovecot's documented behaviour): every such message got a "LIST said n octets,
    RETR delivered n+2" warning, dozens a run for a mailbox of imported mail."""
    messages = [b"Subject: no final break %d\r\n\r\nbody %d" % (i, i) for i in range(3)]
    dovecot.add_messages("alice", messages)
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, "starttls")})
    code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["fetched"], acct["warnings"]) == (0, 3, []), acct
    assert_vault_exact(vault, sha256s(retr_payload(m) for m in messages))


def test_old_rows_of_mail_without_a_final_break_are_deleted_unread_when_due(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """Rows committed before LIST's sizes were recorded hold only the stored size, which is
    LIST's + 2 for such mail: once due for deletion each was downloaded again, with a
    warning that its UIDL might have been reused (seen after upgrading a vault)."""
    messages = [b"Subject: no final break %d\r\n\r\nbody %d" % (i, i) for i in range(3)]
    dovecot.add_messages("alice", messages)
    box = account(dovecot, "starttls", delete="after-commit", delete_after_days=30)
    vault = make_vault(tmp_path / "v", {"box": box})
    assert fetch_json(vault)[0] == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE uidls SET listed_size = NULL, first_seen = '2000-01-01T00:00:00+00:00'")
    code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["fetched"], acct["deleted"], acct["warnings"]) == (0, 0, 3, []), acct
    assert dovecot.mailbox_count("alice") == 0


def test_a_message_the_server_cuts_short_is_not_taken_for_archived(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """Dovecot 2.3 does not dot-stuff a first line that starts with ".": a file beginning with
    ".\r\n" is served as an empty message.  Its UIDL was committed with an empty blob (a size
    warning only), and every later run trusted it: the message was never archived."""
    cut = b".\r\nFrom: x@example.com\r\nSubject: leading dot\r\n\r\nbody\r\n"
    others = mail(3, seed=7)
    dovecot.add_messages("alice", [cut, *others, b"."])  # "." alone: LIST 1, served empty
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, "starttls", retries=1)})
    for run in range(2):  # not committed: the next run tries it again, and says so again
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 1 and any("RETR ended after 0 of" in e for e in acct["errors"]), acct
        assert acct["fetched"] == (3 if run == 0 else 0), acct
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        sizes = [row[0] for row in db.execute("SELECT size FROM uidls")]
    assert len(sizes) == 3 and 0 not in sizes
    assert dovecot.mailbox_count("alice") == 5


def test_a_first_line_dovecot_does_not_stuff_keeps_its_dot(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """Dovecot 2.3 sends a first line that starts with "." unstuffed: the client stripped that
    dot as RFC 1939 says, stored the message one byte short and deleted the original."""
    messages = [
        b".From: x@example.com\r\nSubject: leading dot\r\n\r\nbody\r\n.later line\r\n",
        b".\tfirst line a dot and a tab\r\nSubject: two\r\n\r\n..two dots later\r\n",
    ]
    dovecot.add_messages("alice", messages)
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, "starttls", delete="after-commit")})
    code, report = fetch_json(vault)
    acct = report["accounts"][0]
    assert (code, acct["fetched"], acct["deleted"], acct["warnings"]) == (0, 2, 2, []), acct
    assert_vault_exact(vault, sha256s(retr_payload(m) for m in messages))
    assert dovecot.mailbox_count("alice") == 0


def test_a_first_line_of_two_dots_dovecot_sends_unstuffed_is_never_deleted(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """A first line "..x", sent as it is, loses a dot like a stuffed ".x"; only its size (one
    octet under LIST's) tells, and a LIST one octet off looks the same on a server that
    stuffs.  Such a message was stored one octet short and deleted; it is stored as
    delivered and never deleted (named each run), the others are."""
    doubtful = [
        b"..two dots first\r\nSubject: three\r\n\r\nbody\r\n",
        b"...\r\nSubject: five\r\n\r\nno final break",
    ]
    dovecot.add_messages("alice", [*doubtful, *mail(2, seed=3)])
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, "starttls", delete="after-commit")})
    for run in range(2):
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["fetched"], acct["deleted"]) == (0, 4 if run == 0 else 0, 2 - 2 * run)
        assert sum("may have cost it a dot" in w for w in acct["warnings"]) == 2, acct
        assert dovecot.mailbox_count("alice") == 2


def test_session_provenance_is_recorded(tmp_path: Path, dovecot: Dovecot) -> None:
    import sqlite3

    dovecot.add_messages("alice", mail(2))
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, "implicit")})
    assert fetch_json(vault)[0] == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        greeting, caps, version, cert = db.execute(
            "SELECT greeting, capabilities, tls_version, tls_cert_sha256 FROM sessions"
        ).fetchone()
    assert "Dovecot" in greeting or "ready" in greeting.lower()
    assert "PIPELINING" in caps and version.startswith("TLS")
    assert len(cert) == 64


def test_pipelined_and_lockstep_give_the_same_vault(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot]
) -> None:
    messages = mail(60, seed=5)
    results = []
    for pipelining in (True, False):
        server = dovecot_factory({"alice": "alice-secret"}, pipelining=pipelining)
        server.add_messages("alice", messages)
        vault = make_vault(
            tmp_path / f"v{pipelining}", {"box": account(server, "implicit", delete="after-commit")}
        )
        trace = tmp_path / f"trace{pipelining}.txt"
        assert run_cli(vault, "fetch", "--trace", str(trace)).exit_code == 0
        assert server.mailbox_count("alice") == 0
        results.append(sorted(p.name for p in (vault / "objects").rglob("*") if p.is_file()))
        assert ("PIPELINING" in trace.read_text()) is pipelining
    assert results[0] == results[1]
    assert len(results[0]) == 60


def test_delete_after_days_checks_headers_pipelined_or_lockstep_alike(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot]
) -> None:
    """Committed mail past delete_after_days: Dovecot answers the pipelined TOPs as lock-step
    ones, and both runs (the capped one in steps) delete all of it and nothing else."""
    messages = mail(40, seed=6)
    for pipelining in (True, False):
        server = dovecot_factory({"alice": "alice-secret"}, pipelining=pipelining)
        server.add_messages("alice", messages)
        keys = {"delete": "after-commit", "delete_after_days": 1}
        keys.update({} if pipelining else {"max_messages_per_session": 15})
        vault = make_vault(
            tmp_path / f"v{pipelining}", {"box": account(server, "implicit", **keys)}
        )
        assert fetch_json(vault, "--no-index")[0] == 0
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            db.execute("UPDATE uidls SET first_seen = '2000-01-01T00:00:00+00:00'")
        code, report = fetch_json(vault, "--no-index")
        acct = report["accounts"][0]
        assert code == 0 and (acct["fetched"], acct["deleted"]) == (0, 40), report
        assert acct["sessions"] == (1 if pipelining else 3) and acct["warnings"] == []
        assert server.mailbox_count("alice") == 0
        assert_vault_exact(vault, sha256s(retr_payload(m) for m in messages))


def test_wrong_password_is_not_retried(tmp_path: Path, dovecot: Dovecot) -> None:
    dovecot.add_messages("alice", mail(1))
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, "implicit", retries=4)})
    code, report = fetch_json(vault, password="not-the-password")
    acct = report["accounts"][0]
    assert (code, acct["status"], acct["retries"]) == (1, "failed", 0)
    assert "not-the-password" not in str(report)


def test_check_command_walks_every_step(tmp_path: Path, dovecot: Dovecot) -> None:
    dovecot.add_messages("alice", mail(3))
    vault = make_vault(tmp_path / "v", {"box": account(dovecot, "starttls")})
    result = run_cli(vault, "check", "box")
    assert result.exit_code == 0, result.output
    for step in ("tcp", "tls", "greeting", "capa", "login", "stat"):
        assert f"] {step}" in result.output
    assert "3 messages" in result.output and "trusted" in result.output
    result = run_cli(vault, "check", "box", password="wrong")
    assert result.exit_code == 1 and "[FAIL] login" in result.output
    assert "hint: check user and the password source" in result.output


def test_check_and_fetch_name_a_tls_mode_that_does_not_fit_the_port(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """STLS against Dovecot's POP3S port (each side waits for the other), and implicit TLS
    against its plain port (the handshake reads "+OK"): the hint says which setting fits."""
    starttls = account(dovecot, "starttls", port=dovecot.tls_port, timeout=1, retries=2)
    implicit = account(dovecot, "implicit", port=dovecot.port, retries=2)
    vault = make_vault(tmp_path / "v", {"starttls": starttls, "implicit": implicit})
    fixes = {
        "starttls": f'port {dovecot.tls_port} speaks implicit TLS; set tls = "implicit" '
        "(or use port 110 for starttls)",
        "implicit": 'the server greeted in plain text; set tls = "starttls" or "none" or use '
        "port 995",
    }
    for name, fix in fixes.items():
        result = run_cli(vault, "check", name)
        assert result.exit_code == 1 and "[FAIL] tls" in result.output, result.output
        assert f"hint: {fix}" in result.output
        code, report = fetch_json(vault, name)
        acct = report["accounts"][0]
        assert (code, acct["retries"]) == (1, 0) and acct["errors"][0].endswith(fix), report


def served_fingerprint(server: Dovecot) -> str:
    import socket
    import ssl

    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as raw,
        probe.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return "sha256:" + ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_a_pinned_certificate_replaces_ca_trust(tmp_path: Path, dovecot: Dovecot) -> None:
    """tls_fingerprint without ca_file: the right pin fetches (and check says it was the pin,
    not a CA, that made it trusted); a wrong pin refuses to log in at all."""
    dovecot.add_messages("alice", mail(3, seed=77))
    pin = served_fingerprint(dovecot)
    pinned = account(dovecot, "implicit", tls_fingerprint=pin.replace("sha256:", "SHA256:"))
    del pinned["ca_file"]
    wrong = dict(pinned, tls_fingerprint="sha256:" + "00" * 32)
    vault = make_vault(tmp_path / "v", {"pinned": pinned, "wrong": wrong})
    result = run_cli(vault, "check", "pinned")
    assert result.exit_code == 0, result.output
    assert "trusted (pinned: its fingerprint matches tls_fingerprint)" in result.output
    assert "chain and host name verified" not in result.output
    code, report = fetch_json(vault, "pinned")
    assert code == 0 and report["accounts"][0]["fetched"] == 3
    result = run_cli(vault, "check", "wrong")
    assert result.exit_code == 1 and "[FAIL] tls" in result.output
    assert "NOT trusted" in result.output and "differs from tls_fingerprint" in result.output
    served = pin.lower().replace(":", "").removeprefix("sha256")
    assert f"its fingerprint sha256:{served} differs" in result.output  # what to pin, if right
    code, report = fetch_json(vault, "wrong")
    assert code == 1 and report["accounts"][0]["fetched"] == 0
    assert "fingerprint" in " ".join(report["accounts"][0]["errors"])


def test_a_wrong_password_source_is_a_config_error_and_the_others_still_run(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """A password_file others can read is refused (exit 2, naming mailvault.toml, the key and
    the fix), but a nightly job with several accounts still archives the other ones."""
    dovecot.add_messages("alice", mail(2, seed=91))
    secret = tmp_path / "pw"
    secret.write_text("alice-secret\n")
    secret.chmod(0o644)
    vault = make_vault(tmp_path / "v", {"good": account(dovecot, "starttls")})
    leaky = account_toml(
        "leaky", user="alice", password_file=str(secret), **account(dovecot, "starttls")
    )
    with (vault / "mailvault.toml").open("a") as toml:
        toml.write(leaky)
    result = run_cli(vault, "fetch", "--no-index")
    assert result.exit_code == 2, result.output
    assert "good: listed 2, new 2, fetched 2" in result.stdout
    assert f"{vault / 'mailvault.toml'}: accounts.leaky: password_file {secret}" in result.stderr
    assert f"chmod 600 {secret}" in result.stderr


def test_crash_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """kill -9 `mailvault fetch` at random moments (delete = after-commit): at least 20 kills.

    New mail arrives before every trial so that each run has work in flight when it dies.
    """
    vault = make_vault(
        tmp_path / "v",
        {"box": account(dovecot, "implicit", delete="after-commit", retries=0)},
        commit_batch_messages=16,
    )
    env = dict(os.environ, MAILVAULT_VAULT=str(vault), **{PASSWORD_ENV: "alice-secret"})
    rng = random.Random(2024)
    expected: set[str] = set()
    kills = trials = 0
    run_time = 0.6  # how long an unkilled run takes; kill moments are drawn from [0, run_time)
    while kills < 20 and trials < 80:
        trials += 1
        batch = mail(120, seed=1000 + trials, big_every=50)
        dovecot.add_messages("alice", batch)
        expected |= sha256s(retr_payload(m) for m in batch)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailvault", "-q", "fetch", "--no-index"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        deadline = started + rng.uniform(0.0, run_time)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        else:  # finished before its kill moment: learn how long a whole run takes
            run_time = max(0.05, time.monotonic() - started)
        proc.wait()
        # the invariant at every instant: whatever left the server is in the vault
        in_vault = {
            b.name.removesuffix(".zst") for b in (vault / "objects").rglob("*") if b.is_file()
        }
        assert expected - server_hashes(dovecot) <= in_vault
    assert kills >= 20
    code, report = fetch_json(vault)
    assert code == 0, report
    assert dovecot.mailbox_count("alice") == 0
    assert_vault_exact(vault, expected)
    with sqlite3.connect(vault / "catalog.sqlite") as db:  # the catalog's record of the runs
        statuses = [row[0] for row in db.execute("SELECT status FROM runs")]
    assert "running" not in statuses and statuses.count("killed") >= 1
