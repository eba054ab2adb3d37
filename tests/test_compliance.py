"""Retention with legal holds, the audit trail, and their ledger entries."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mailvault.testkit.fakepop import FakePop3Server
from tests.vaults import fetch_json, make_vault, run_cli

PLAIN = {"host": "127.0.0.1", "tls": "none", "allow_plaintext_auth": True}


def message(i: int, sender: str, year: int) -> bytes:
    return (
        f"From: {sender}\r\nTo: archive@example.com\r\nSubject: report {i}\r\n"
        f"Date: Mon, 3 Jun {year} 10:00:00 +0000\r\nMessage-ID: <r{i}@example.com>\r\n\r\n"
        f"quarterly numbers {i}\r\n"
    ).encode()


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    """Ten messages: five from 2001 (two of them from acme.com), five from this decade."""
    mails = [
        message(i, "bob@acme.com" if i < 2 else "carol@other.org", 2001 if i < 5 else 2025)
        for i in range(10)
    ]
    with FakePop3Server(mails) as server:
        path = make_vault(tmp_path / "v", {"acct": {**PLAIN, "port": server.port}})
        assert fetch_json(path)[0] == 0
    toml = path / "mailvault.toml"
    toml.write_text(toml.read_text() + "[retention]\nkeep_days = 3650\n")
    return path


def test_purge_respects_holds_and_leaves_tombstones(vault: Path) -> None:
    assert (
        run_cli(vault, "hold", "add", "acme", "from:bob@acme.com", "--reason", "case 42").exit_code
        == 0
    )
    listed = json.loads(run_cli(vault, "hold", "list", "--json").stdout)["holds"]
    assert [(h["name"], h["reason"]) for h in listed] == [("acme", "case 42")]
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert (dry["expired"], dry["held"], dry["purged"]) == (5, 2, 0)
    assert run_cli(vault, "search", "--count", "*").stdout.strip() == "10"
    done = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    assert (done["expired"], done["held"], done["purged"]) == (5, 2, 3)
    assert run_cli(vault, "search", "--count", "*").stdout.strip() == "7"
    assert run_cli(vault, "search", "--count", "from:bob@acme.com").stdout.strip() == "2"
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        purged = db.execute("SELECT count(*) FROM messages WHERE purged_at IS NOT NULL").fetchone()[
            0
        ]
        kinds = [
            r[0] for r in db.execute("SELECT kind FROM ledger WHERE kind != 'ingest' ORDER BY seq")
        ]
    assert purged == 3 and kinds == ["hold-add", "purge", "purge", "purge"]
    assert len(list((vault / "objects").rglob("*.zst"))) == 7
    assert run_cli(vault, "verify").exit_code == 0
    # releasing the hold lets the next purge take the rest
    assert run_cli(vault, "hold", "release", "acme").exit_code == 0
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 2
    assert run_cli(vault, "verify").exit_code == 0


def test_purged_messages_are_not_fetched_again(vault: Path, tmp_path: Path) -> None:
    assert run_cli(vault, "retention", "apply").exit_code == 0
    mails = [
        message(i, "bob@acme.com" if i < 2 else "carol@other.org", 2001 if i < 5 else 2025)
        for i in range(10)
    ]
    with FakePop3Server(mails) as server:
        toml = vault / "mailvault.toml"
        text = toml.read_text()
        toml.write_text(text.replace(text.split("port = ")[1].split("\n")[0], str(server.port), 1))
        code, report = fetch_json(vault)
    assert report["accounts"][0]["fetched"] == 0


def test_every_audited_command_is_recorded(vault: Path, tmp_path: Path) -> None:
    assert run_cli(vault, "search", "quarterly").exit_code == 0
    assert run_cli(vault, "search", "--count", "nothing-matches-this").exit_code == 1
    sha = run_cli(vault, "search", "--ids", "--limit", "1", "*").stdout.split()[0]
    assert run_cli(vault, "show", sha[:12]).exit_code == 0
    entries = [json.loads(line) for line in run_cli(vault, "audit", "--json").stdout.splitlines()]
    assert [(e["command"], e["query"], e["results"]) for e in entries] == [
        ("search", "quarterly", 10),
        ("search", "nothing-matches-this", 0),
        ("search", "*", 1),
        ("show", sha[:12], 1),
    ]
    assert all(e["os_user"] for e in entries)
    assert run_cli(vault, "audit", "--since", "2999-01-01").stdout == ""
    with sqlite3.connect(vault / "catalog.sqlite") as db, pytest.raises(sqlite3.DatabaseError):
        db.execute("DELETE FROM audit")


def test_retention_needs_a_policy(tmp_path: Path) -> None:
    with FakePop3Server([message(1, "a@b.c", 2001)]) as server:
        path = make_vault(tmp_path / "v", {"acct": {**PLAIN, "port": server.port}})
        fetch_json(path)
    result = run_cli(path, "retention", "apply")
    assert result.exit_code == 2 and "keep_days" in result.stderr
