"""Retention with legal holds, the audit trail, and their ledger entries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def test_a_purge_deletes_from_the_index_only_what_it_still_holds(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every purge the ledger records is finished again by each run (a crash may have left its
    files), but the index is asked to delete only the documents it still holds: not one
    queued delete per message the vault ever purged (tantivy keeps each until its commit)."""
    from mailvault import compliance
    from mailvault import index as ix
    from mailvault.store import BlobStore
    from mailvault.vault import open_vault

    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 3
    assert run_cli(vault, "hold", "release", "acme").exit_code == 0
    candidates = compliance.plan(open_vault(vault))
    deleted: list[str] = []
    delete, delete_many = ix.IndexWriter.delete, ix.IndexWriter.delete_many

    def one(self: ix.IndexWriter, sha256: str) -> None:
        deleted.append(sha256)
        delete(self, sha256)

    def many(self: ix.IndexWriter, sha256s: Iterable[str]) -> None:
        ids = list(sha256s)
        deleted.extend(ids)
        delete_many(self, ids)

    monkeypatch.setattr(ix.IndexWriter, "delete", one)
    monkeypatch.setattr(ix.IndexWriter, "delete_many", many)
    purged = [c.sha256 for c in candidates if not c.held_by and not c.kept]
    assert compliance.apply(open_vault(vault), candidates) == len(purged) == 2
    assert sorted(deleted) == sorted(purged)
    assert run_cli(vault, "search", "--count", "*").stdout.strip() == "5"
    assert not any(BlobStore(vault).find(sha) for sha in purged)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"sha256": "a", "held_by": [], "kept": None}],
        [  # more than one write's worth, text of every kind, held_by lists
            {"sha256": f"{i:064x}", "held_by": ["acme", "é"][: i % 3], "kept": "x\u2028\x85"}
            for i in range(600)
        ],
        [{"kept": "blob /srv/\udcfe/x cannot be read"}, {"kept": "ü"}],  # a path not UTF-8
    ],
)
def test_retention_json_is_written_as_print_json_writes_it(
    messages: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """retention --json writes its messages a few hundred at a time, without building its
    document: the same bytes as the whole document through print_json."""
    from mailvault.cli._common import print_json, print_json_list

    report = {"schema": "mailvault/retention/v1", "dry_run": False, "expired": len(messages)}
    print_json({**report, "messages": messages})
    whole = capsys.readouterr().out
    print_json_list(report, "messages", messages, lambda m: m)
    assert capsys.readouterr().out == whole


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


def test_purged_mail_coming_back_under_a_new_uidl_is_not_kept_again(vault: Path) -> None:
    """Purged content on the server under a UIDL never seen (delivered again, or copied back
    by someone): recorded as received, so not downloaded again, but its blob does not come
    back, and verify stays clean."""
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 5
    blobs = sorted(p.name for p in (vault / "objects").rglob("*.zst"))
    with FakePop3Server([message(2, "carol@other.org", 2001)], uidls=["again-2"]) as server:
        toml = vault / "mailvault.toml"
        text = toml.read_text()
        toml.write_text(text.replace(text.split("port = ")[1].split("\n")[0], str(server.port), 1))
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0 and acct["fetched"] == 1 and acct["duplicates"] == 1, report
        assert any("retention purged" in w for w in acct["warnings"])
        assert fetch_json(vault)[1]["accounts"][0]["fetched"] == 0
    assert sorted(p.name for p in (vault / "objects").rglob("*.zst")) == blobs
    checked = run_cli(vault, "verify", "--json")
    assert checked.exit_code == 0, checked.stdout


def test_holds_are_matched_against_an_index_that_holds_exactly_the_catalog(
    vault: Path, tmp_path: Path
) -> None:
    """An index put back from an old backup that happens to hold as many documents as the
    catalog lists, but not the same ones: retention checks every message before it applies
    holds through the index, so new mail under a hold is not purged."""
    import shutil

    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    shutil.copytree(vault / "index", tmp_path / "old-index")
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 3
    mail = tmp_path / "more"
    mail.mkdir()
    for i in (20, 21, 22):  # old mail from acme: past retention, and held
        (mail / f"{i}.eml").write_bytes(message(i, "bob@acme.com", 2001))
    assert run_cli(vault, "import", str(mail)).exit_code == 0
    shutil.rmtree(vault / "index")
    shutil.copytree(tmp_path / "old-index", vault / "index")  # 10 documents, as the catalog
    done = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    assert (done["held"], done["purged"]) == (5, 0), done
    assert run_cli(vault, "search", "--count", "*").stdout.strip() == "10"


def test_an_index_left_holding_purged_mail_is_mended_by_index(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retention run killed between its catalog commit and the index update leaves purged
    messages in the index (search leaves them out of what it shows and counts, and says so);
    `mailvault index` deletes them from the index."""
    from mailvault import compliance

    real = compliance._remove_files
    monkeypatch.setattr(compliance, "_remove_files", lambda vault, purged: None)
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 5
    counted = run_cli(vault, "search", "--count", "*")
    assert counted.stdout.strip() == "5"
    assert "the index still holds 5 purged message(s)" in counted.stderr
    monkeypatch.setattr(compliance, "_remove_files", real)
    assert run_cli(vault, "index").exit_code == 0
    counted = run_cli(vault, "search", "--count", "*")
    assert counted.stdout.strip() == "5" and counted.stderr == ""


def test_purged_mail_left_in_the_index_stays_hidden_beside_as_much_unindexed_mail(
    vault: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retention run stopped between its catalog commit and its index update, then as many
    new messages imported with --no-index: search told both from live messages minus index
    documents, where the two cancelled out, so it showed the purged messages (subject, sender,
    snippet) with no warning, and said nothing was unindexed; `export QUERY` too."""
    from mailvault import compliance

    monkeypatch.setattr(compliance, "_remove_files", lambda vault, purged: None)  # stopped
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 5
    monkeypatch.undo()
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        gone = [r[0] for r in db.execute("SELECT sha256 FROM messages WHERE purged_at NOT NULL")]
    db.close()
    mail = tmp_path / "later"
    mail.mkdir()
    for i in range(20, 25):
        (mail / f"{i}.eml").write_bytes(message(i, "dave@other.org", 2025))
    assert run_cli(vault, "import", str(mail), "--no-index").exit_code == 0
    for mode in ([], ["--json"], ["--ids"], ["--count"]):
        result = run_cli(vault, "search", *mode, "report")
        assert result.exit_code == 0, (mode, result.output)
        assert not [sha for sha in gone if sha[:12] in result.stdout], (mode, result.stdout)
        assert "the index still holds 5 purged message(s)" in result.stderr, result.stderr
        assert "5 archived messages are not indexed yet" in result.stderr, result.stderr
    assert len(run_cli(vault, "search", "--ids", "report").stdout.split()) == 5
    export = run_cli(
        vault, "export", "report", "--format", "mbox", "--out", str(tmp_path / "out.mbox")
    )
    assert export.exit_code == 1, export.output  # exported, but the query may have missed some
    assert "5 archived messages are not indexed yet" in export.stderr, export.stderr
    assert run_cli(vault, "index").exit_code == 0
    assert run_cli(vault, "search", "--count", "report").stderr == ""
    assert run_cli(vault, "search", "--count", "report").stdout.strip() == "10"


def test_purged_text_does_not_linger_in_the_index_files(vault: Path) -> None:
    """Tantivy only marks a deleted document; its text stays in the segment files until a
    merge.  After a purge the index is rebuilt, so its files (and their backups) hold
    exactly the messages kept."""
    done = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    assert done["purged"] == 5 and done["index_rebuilt"] is True
    meta = json.loads((vault / "index" / "meta.json").read_text())
    assert sum(segment["max_doc"] for segment in meta["segments"]) == 5
    assert not any(segment.get("deletes") for segment in meta["segments"])
    assert run_cli(vault, "search", "--count", "*").stdout.strip() == "5"
    again = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    assert (again["purged"], again["index_rebuilt"]) == (0, False)


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


def test_a_retention_run_is_in_the_audit_trail_and_its_purges_name_who_ran_it(
    vault: Path,
) -> None:
    """Purge entries did not say who ran retention, and `retention apply` was not in the
    audit trail at all: a purge is recorded as started (before anything is purged: a killed
    run shows) and finished, with its counts, by the real uid's account; a dry run once."""
    import os
    import pwd

    real = pwd.getpwuid(os.getuid()).pw_name
    env = {"LOGNAME": "alice.auditor", "USER": real, "SUDO_USER": None}
    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    assert run_cli(vault, "retention", "apply", "--dry-run", env=env).exit_code == 0
    assert run_cli(vault, "retention", "apply", env=env).exit_code == 0
    entries = [json.loads(line) for line in run_cli(vault, "audit", "--json").stdout.splitlines()]
    assert [(e["command"], e["query"], e["results"], e["os_user"]) for e in entries] == [
        ("retention", None, 3, real)
    ] * 3
    details = [json.loads(e["detail"]) for e in entries]
    claim = {"claimed_user": {"LOGNAME": "alice.auditor"}}
    assert details == [
        {"stage": "dry-run", "expired": 5, "held": 2, "kept": 0, **claim},
        {"stage": "started", "expired": 5, "held": 2, "kept": 0, **claim},
        {"stage": "finished", "expired": 5, "held": 2, "kept": 0, "purged": 3, **claim},
    ]
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        purges = [
            json.loads(row[0])
            for row in db.execute("SELECT detail FROM ledger WHERE kind = 'purge' ORDER BY seq")
        ]
    assert len(purges) == 3
    assert all((p["by"], p["claimed_by"]) == (real, {"LOGNAME": "alice.auditor"}) for p in purges)
    assert run_cli(vault, "verify").exit_code == 0


def test_audit_text_shows_the_stage_and_target_of_an_export_and_a_retention_run(
    vault: Path, tmp_path: Path
) -> None:
    """An export's `started` and `finished` entries printed as two identical lines, so an
    export killed part-way (a `started` alone) could not be told from a finished one without
    --json: each line now says its stage, the messages selected or written, and the target."""
    out = tmp_path / "out\nx.mbox"  # a target with a line break is escaped
    assert run_cli(vault, "export", "--format", "mbox", "--out", str(out), "report").exit_code == 0
    assert run_cli(vault, "retention", "apply").exit_code == 0
    assert run_cli(vault, "search", "--count", "*").exit_code == 0
    shown = str(out).replace("\n", "\\n")
    lines = run_cli(vault, "audit").stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].endswith(f"'report' -> 10  [started, 10 selected, to {shown}]")
    assert lines[1].endswith(f"'report' -> 10  [finished, 10 written, to {shown}]")
    assert lines[2].endswith(" -> 5  [started, 5 expired, 0 held]")
    assert lines[3].endswith(" -> 5  [finished, 5 expired, 0 held, 5 purged]")
    assert lines[4].split()[2:] == ["search", "'*'", "->", "5"]  # no stage: nothing added


def test_retention_needs_a_policy(tmp_path: Path) -> None:
    with FakePop3Server([message(1, "a@b.c", 2001)]) as server:
        path = make_vault(tmp_path / "v", {"acct": {**PLAIN, "port": server.port}})
        fetch_json(path)
    result = run_cli(path, "retention", "apply")
    assert result.exit_code == 2 and "keep_days" in result.stderr


def test_a_hold_needs_a_name(vault: Path) -> None:
    result = run_cli(vault, "hold", "add", " ", "*")
    assert result.exit_code == 2 and "a hold needs a name" in result.stderr
    result = run_cli(vault, "hold", "add", "a\nb", "*")  # would split `hold list` lines
    assert result.exit_code == 2 and "line break" in result.stderr


def test_a_message_not_yet_indexed_cannot_escape_a_hold(vault: Path, tmp_path: Path) -> None:
    """Holds are matched through the index: mail imported with --no-index (or an index run
    killed half-way) is indexed before anything is purged, so its hold protects it."""
    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    late = tmp_path / "late.eml"
    late.write_bytes(message(99, "bob@acme.com", 2001))
    assert run_cli(vault, "import", "--no-index", str(late)).exit_code == 0
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert (dry["expired"], dry["held"]) == (6, 3)
    done = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    assert (done["held"], done["purged"]) == (3, 3)
    assert run_cli(vault, "search", "--count", "from:bob@acme.com").stdout.strip() == "3"


def test_per_account_retention_covers_imported_mail(vault: Path, tmp_path: Path) -> None:
    """keep_days of an account applies to mail imported with --account as well as fetched; a
    label that is only an import label gets its own in [imports.NAME]."""
    old = tmp_path / "old.eml"
    old.write_bytes(message(77, "dave@legacy.example", 2001))
    older = tmp_path / "older.eml"
    older.write_bytes(message(78, "erin@acct.example", 2001))
    assert run_cli(vault, "import", "--account", "legacy", str(old)).exit_code == 0
    assert run_cli(vault, "import", "--account", "acct", str(older)).exit_code == 0
    toml = vault / "mailvault.toml"
    text = toml.read_text()
    toml.write_text(text + "\n[imports.legacy]\nkeep_days = 36500\n")
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert dry["expired"] == 6  # the five fetched 2001 messages and erin's, not dave's
    toml.write_text(text.replace("[accounts.acct]", "[accounts.acct]\nkeep_days = 36500"))
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert dry["expired"] == 1  # dave's: the account's keep_days covers its imports too
    toml.write_text(
        text.replace("[accounts.acct]", "[accounts.acct]\nkeep_days = 1")
        + "\n[imports.acct]\nkeep_days = 5\n"
    )
    result = run_cli(vault, "retention", "apply", "--dry-run")
    assert result.exit_code == 2 and "imports.acct names an account" in result.stderr


def test_an_account_edited_in_the_catalog_neither_shortens_retention_nor_moves_a_hold(
    vault: Path, tmp_path: Path
) -> None:
    """A message's accounts came from the uidls and imports rows: editing imports.account from
    a label kept 100 years to one kept a year purged a 2001 message, and (after a rebuild) a
    hold on `account:legal` no longer protected it; verify was clean throughout.  Accounts
    are read from the ledger's ingest entries, and verify pairs the imports rows with them."""
    kept = tmp_path / "kept.eml"
    kept.write_bytes(message(91, "lawyer@firm.example", 2001))
    held = tmp_path / "held.eml"
    held.write_bytes(message(92, "counsel@firm.example", 2001))
    assert run_cli(vault, "import", "--account", "legal", str(kept)).exit_code == 0
    assert run_cli(vault, "import", "--account", "matter", str(held)).exit_code == 0
    assert run_cli(vault, "hold", "add", "m7", "account:matter").exit_code == 0
    toml = vault / "mailvault.toml"
    toml.write_text(toml.read_text() + "\n[imports.legal]\nkeep_days = 36500\n")
    before = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    _edit(
        vault,
        "UPDATE imports SET account = 'legacy' WHERE account = 'legal'",
        "UPDATE imports SET account = 'other' WHERE account = 'matter'",
    )
    assert run_cli(vault, "reindex").exit_code == 0
    after = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert (after["expired"], after["held"]) == (before["expired"], before["held"])
    edited = [f for f in _verify_findings(vault) if f["code"] == "ledger-disagrees"]
    assert len(edited) == 4 and all("imports rows" in f["detail"] for f in edited), edited
    assert run_cli(vault, "retention", "apply").exit_code == 0
    for word in ("lawyer", "counsel"):
        assert run_cli(vault, "search", "--count", f"from:{word}").stdout.strip() == "1"


def test_a_hold_entry_rewritten_with_its_own_hash_recomputed_stops_retention(
    vault: Path, tmp_path: Path
) -> None:
    """The ledger's triggers dropped, a hold-add entry's query narrowed and its entry_hash
    recomputed, the holds row changed to match, the triggers put back: retention checked each
    hold entry's own hash and purged the held mail; verify reported the broken chain after."""
    from mailvault import ledger

    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    later = tmp_path / "later.eml"
    later.write_bytes(message(93, "zed@later.example", 2001))
    assert run_cli(vault, "import", str(later)).exit_code == 0  # a ledger entry after it
    fields = (*ledger.LEDGER_FIELDS, "entry_hash")
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        triggers = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'ledger_%'"
        ).fetchall()
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        row = db.execute(f"SELECT {', '.join(fields)} FROM ledger WHERE kind = 'hold-add'")
        entry = dict(zip(fields, row.fetchone(), strict=True))
        detail = {**json.loads(entry["detail"]), "query": "from:nobody.invalid"}
        entry["detail"] = json.dumps(detail, sort_keys=True)
        db.execute(
            "UPDATE ledger SET detail = ?, entry_hash = ? WHERE seq = ?",
            (entry["detail"], ledger.entry_hash(entry), entry["seq"]),
        )
        db.execute("UPDATE holds SET query = 'from:nobody.invalid' WHERE name = 'acme'")
        for _, sql in triggers:
            db.execute(sql)
    result = run_cli(vault, "retention", "apply")
    assert result.exit_code == 3 and "not chained" in result.stderr, result.output
    assert run_cli(vault, "search", "--count", "from:bob@acme.com").stdout.strip() == "2"


def test_a_purge_the_ledger_does_not_record_is_reported_and_its_blob_kept(vault: Path) -> None:
    """purged_at set by editing the catalog: verify reports it, retention does not delete the
    blob on its strength."""
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        sha = db.execute("SELECT sha256 FROM messages ORDER BY sha256 LIMIT 1").fetchone()[0]
        db.execute(
            "UPDATE messages SET purged_at = '2026-01-01T00:00:00+00:00' WHERE sha256=?", (sha,)
        )
    result = run_cli(vault, "verify")
    assert result.exit_code == 1 and f"message {sha} is marked purged but no purge" in result.output
    assert "blob-purge-unfinished" in result.output and "blob-orphan" not in result.output
    toml = vault / "mailvault.toml"
    toml.write_text(toml.read_text().replace("keep_days = 3650", "keep_days = 36500"))
    assert run_cli(vault, "retention", "apply").exit_code == 0
    assert list((vault / "objects").rglob(f"{sha}*"))


def test_a_stray_file_in_the_store_is_a_finding_not_a_stop(vault: Path) -> None:
    fanout = next(p for p in (vault / "objects").iterdir() if p.is_dir())
    (fanout / "notes.txt").write_text("hi")
    (vault / "objects" / "README").write_text("hi")
    result = run_cli(vault, "verify", "--json")
    report = json.loads(result.stdout)
    strays = [f for f in report["findings"] if f["code"] == "blob-stray"]
    assert result.exit_code == 1 and len(strays) == 2, report  # found, and every check still ran
    assert not [f for f in report["findings"] if f["severity"] == "error"]


def test_a_subdirectory_others_can_write_is_a_finding(vault: Path) -> None:
    fanout = next(p for p in (vault / "objects").iterdir() if p.is_dir())
    fanout.chmod(0o777)
    result = run_cli(vault, "verify", "--json")
    report = json.loads(result.stdout)
    found = [f for f in report["findings"] if f["code"] == "vault-permissions"]
    assert result.exit_code == 1 and [f["subject"] for f in found] == [str(fanout)]
    fanout.chmod(0o700)
    assert run_cli(vault, "verify").exit_code == 0


def test_a_trail_cut_back_before_a_notarised_head_is_found(vault: Path) -> None:
    """A clean cut at the end of a hash chain leaves a valid chain: only a head kept outside
    the vault shows it.  Audit trail and ledger alike."""
    for query in ("report", "numbers"):
        assert run_cli(vault, "search", "--count", query).exit_code == 0
    audit_head = run_cli(vault, "audit", "--head").stdout.strip()
    ledger_head = run_cli(vault, "ledger", "head").stdout.strip()
    args = ["verify", "--audit-head", audit_head, "--ledger-head", ledger_head]
    assert run_cli(vault, *args).exit_code == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:  # as someone with the file would
        triggers = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'"
        ).fetchall()
        for (name,) in triggers:
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    result = run_cli(vault, "verify")  # the chain alone still looks intact; the guard is gone
    assert result.exit_code == 1 and "catalog-guard-missing" in result.output
    assert "audit-broken" not in result.output and "audit-truncated" not in result.output
    result = run_cli(vault, *args)
    assert result.exit_code == 1 and "audit-truncated" in result.output
    assert "ledger-truncated" not in result.output
    genesis = "0 " + "0" * 64  # what a head printed on an empty chain looks like
    assert run_cli(vault, "verify", "--ledger-head", genesis).exit_code == 1  # (the guard)
    result = run_cli(vault, "verify", "--ledger-head", genesis, "--json")
    assert not [f for f in json.loads(result.stdout)["findings"] if "truncated" in f["code"]]
    result = run_cli(vault, "verify", "--audit-head", "12 nothex")
    assert result.exit_code == 2 and "is not a head" in result.stderr


def test_a_blob_others_can_write_is_a_finding(vault: Path) -> None:
    blob = next(p for p in (vault / "objects").rglob("*") if p.is_file())
    blob.chmod(0o666)
    result = run_cli(vault, "verify", "--quick", "--json")
    found = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "vault-permissions"]
    assert result.exit_code == 1 and [f["subject"] for f in found] == [str(blob)]


def test_a_hold_can_be_placed_on_a_vault_not_indexed_yet(tmp_path: Path) -> None:
    """Mail imported with --no-index: `hold add` indexes it first, so the hold's query is
    checked and its count is right (it asked for `mailvault index`)."""
    root = tmp_path / "v"
    assert run_cli(root, "init").exit_code == 0
    old = tmp_path / "old.eml"
    old.write_bytes(message(5, "bob@acme.com", 2001))
    assert run_cli(root, "import", "--no-index", str(old)).exit_code == 0
    result = run_cli(root, "hold", "add", "acme", "from:bob@acme.com")
    assert result.exit_code == 0, result.output
    assert "it protects 1 message now" in result.output


def test_text_output_is_one_line_per_hold_and_per_audit_entry(vault: Path) -> None:
    """A reason or a recorded user with a line break (or a terminal escape) is escaped, so it
    cannot print a line that reads as another hold or another audit entry."""
    from mailvault import ledger

    forged = "case 42)\nfake                 active                       'x'  (\x1b[2Jcleared"
    assert (
        run_cli(vault, "hold", "add", "acme", "from:bob@acme.com", "--reason", forged).exit_code
        == 0
    )
    listed = run_cli(vault, "hold", "list")
    assert listed.exit_code == 0
    assert len(listed.stdout.splitlines()) == 1 and "\x1b" not in listed.stdout
    assert "case 42)\\nfake" in listed.stdout and "\\x1b[2J" in listed.stdout
    with sqlite3.connect(vault / "catalog.sqlite") as db:  # as recorded before LOGNAME was ignored
        ledger.append_audit(
            db,
            os_user="alice\n2026-01-01T00:00:00 bob        search   'x' -> 0",
            command="search",
            query="q\u2028r",
            results=1,
        )
    text = run_cli(vault, "audit").stdout
    assert len(text.splitlines()) == 1 and "alice\\n2026-01-01" in text
    assert "\u2028" not in text


def test_the_recorded_user_is_the_real_uid_and_the_environment_only_a_claim(
    vault: Path,
) -> None:
    """$LOGNAME and $USER are whatever the caller set: the audit trail and the holds record
    the real uid's account, and what the environment said beside it, labelled as a claim."""
    import os
    import pwd

    real = pwd.getpwuid(os.getuid()).pw_name
    env = {"LOGNAME": "alice.auditor\nforged", "USER": real, "SUDO_USER": None}
    assert run_cli(vault, "search", "--count", "quarterly", env=env).exit_code == 0
    reason = ("--reason", "case 42")
    assert (
        run_cli(vault, "hold", "add", "acme", "from:bob@acme.com", *reason, env=env).exit_code == 0
    )
    assert run_cli(vault, "hold", "release", "acme", env=env).exit_code == 0
    plain = {"LOGNAME": real, "USER": None, "SUDO_USER": None}
    assert run_cli(vault, "search", "--count", "quarterly", env=plain).exit_code == 0

    entries = [json.loads(line) for line in run_cli(vault, "audit", "--json").stdout.splitlines()]
    assert [e["os_user"] for e in entries] == [real, real]
    assert json.loads(entries[0]["detail"])["claimed_user"] == {"LOGNAME": "alice.auditor\nforged"}
    assert "claimed_user" not in json.loads(entries[1]["detail"])
    text = run_cli(vault, "audit").stdout.splitlines()
    assert len(text) == 2 and text[0].endswith("[claimed LOGNAME=alice.auditor\\nforged]")
    holds = json.loads(run_cli(vault, "hold", "list", "--all", "--json").stdout)["holds"]
    assert [h["created_by"] for h in holds] == [real]
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        details = [
            json.loads(row[0])
            for row in db.execute("SELECT detail FROM ledger WHERE kind LIKE 'hold-%' ORDER BY seq")
        ]
    assert [(d["by"], d["claimed_by"]) for d in details] == [
        (real, {"LOGNAME": "alice.auditor\nforged"})
    ] * 2


@pytest.mark.parametrize(
    ("args", "position", "shown"),
    [
        (("hold", "add", "r1", "q", "--reason", "\udcff"), 8, "\\xff"),
        (("hold", "add", "r1", "q", "--reason=case\udcff42"), 7, "case\\xff42"),
        (("search", "craft\udcff"), 4, "craft\\xff"),
        (("search", "--count", "--", "\udcfe"), 6, "\\xfe"),
        (("show", "abc\udcff"), 4, "abc\\xff"),
        (("hold", "release", "r\udcc3"), 5, "r\\xc3"),
    ],
)
def test_text_arguments_that_are_not_utf8_are_a_usage_error(
    vault: Path, args: tuple[str, ...], position: int, shown: str
) -> None:
    """Bytes the locale could not decode reach Python as surrogate escapes; as a query, a
    name or a reason they were a UnicodeEncodeError traceback.  Counted after `mailvault`:
    run_cli puts `--vault PATH` first."""
    result = run_cli(vault, *args)
    assert result.exit_code == 2
    assert result.stderr == (
        f"mailvault: error: argument {position} is not valid UTF-8 text: {shown}; give it in "
        "UTF-8 (is the terminal or the script in another encoding?)\n"
    )
    assert run_cli(vault, "hold", "list", "--all", "--json").stdout.count('"name"') == 0


def test_the_search_fast_path_leaves_undecodable_bytes_to_the_cli(vault: Path) -> None:
    import subprocess
    import sys

    from mailvault.search import fast_main

    assert fast_main(["--vault", str(vault), "search", "craft\udcff"]) is None
    argv = [sys.executable, "-m", "mailvault", "--vault", str(vault), "search", b"craft\xff"]
    done = subprocess.run(argv, capture_output=True)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.startswith(b"mailvault: error: argument 4 is not valid UTF-8 text: craft")
    entries = run_cli(vault, "audit", "--json").stdout.splitlines()
    assert entries == []  # refused before anything ran


def test_paths_may_be_any_bytes(vault: Path, tmp_path: Path) -> None:
    """File names are not text: a directory or file whose name is not UTF-8 still works."""
    out = tmp_path / "export-\udcfe"
    result = run_cli(vault, "export", "--format", "eml", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len([p for p in out.iterdir() if p.suffix == ".eml"]) == 10
    assert "to " + str(tmp_path) + "/export-\\xfe [eml" in result.stdout
    result = run_cli(vault, "export", "--format", "eml", "--out", str(out) + "2", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["target"] == str(out) + "2"
    exported = tmp_path / "ledger-\udcfd.jsonl"
    assert run_cli(vault, "ledger", "export", "--out", str(exported)).exit_code == 0
    assert run_cli(vault, "ledger", "check", str(exported)).exit_code == 0


def test_an_mbox_whose_name_is_not_utf8_is_exported_and_imported_back(
    vault: Path, tmp_path: Path
) -> None:
    """The manifest names the mbox's entries file: its name's undecodable bytes were a
    UnicodeEncodeError traceback (an EML export to such a directory already worked)."""
    box = tmp_path / "caf\udce9.mbox"
    result = run_cli(vault, "export", "--format", "mbox", "--out", str(box))
    assert result.exit_code == 0, result.output
    assert "caf\\xe9.mbox [mbox" in result.stdout
    summary = json.loads(Path(f"{box}.manifest.json").read_bytes())
    assert summary["entries"] == "caf\udce9.mbox.manifest.jsonl" and summary["count"] == 10
    fresh = tmp_path / "fresh"
    assert run_cli(fresh, "init").exit_code == 0
    imported = run_cli(fresh, "import", "--no-index", "--json", str(box))
    report = json.loads(imported.stdout)
    assert imported.exit_code == 0 and report["imported"] == 10 and report["warnings"] == []


def test_an_error_line_cannot_carry_terminal_controls(tmp_path: Path) -> None:
    """An error quotes what it is about (a path, a server's reply), which may hold a line break
    and terminal escapes: `mailvault: error:` stays one line of plain text, on the full CLI
    and on the search fast path alike."""
    import contextlib
    import io

    from mailvault.search import fast_main

    odd = tmp_path / "no\n\x1b[31mvault\x1b]52;c;eA==\x07\u202e\x9b"
    shown = str(tmp_path) + "/no\\n\\x1b[31mvault\\x1b]52;c;eA==\\x07\\u202e\\x9b"
    result = run_cli(odd, "verify")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"mailvault: error: no vault at {shown}; create one")
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert fast_main(["--vault", str(odd), "search", "word"]) == 2
    assert stderr.getvalue() == result.stderr


def test_a_log_line_cannot_carry_terminal_controls() -> None:
    """fetch logs a retried error with the server's text in it (-v shows more of them)."""
    import logging

    from mailvault.cli import _RedactingFormatter

    args = ("acct", "-ERR \x1b]52;c;eA==\x07\r\nmailvault: forged")
    record = logging.LogRecord("mailvault", logging.WARNING, __file__, 1, "%s: %s", args, None)
    assert _RedactingFormatter("mailvault: %(message)s").format(record) == (
        "mailvault: acct: -ERR \\x1b]52;c;eA==\\x07\\r\\nmailvault: forged"
    )


# -- verify cross-checks holds and purges against the ledger ---------------------------------


def _verify_findings(vault: Path) -> list[dict[str, str]]:
    result = run_cli(vault, "verify", "--json")
    assert result.exit_code == 1, result.stdout
    findings: list[dict[str, str]] = json.loads(result.stdout)["findings"]
    return findings


def _edit(vault: Path, *statements: str) -> None:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("PRAGMA foreign_keys=OFF")
        for statement in statements:
            db.execute(statement)


@pytest.mark.parametrize(
    ("edit", "code", "words"),
    [
        (  # a hold lifted by hand, so that retention may purge what it protects
            "UPDATE holds SET released_at = '2026-01-01T00:00:00+00:00' WHERE name = 'acme'",
            "ledger-missing",
            "hold 'acme' is released in the catalog but the ledger records no release",
        ),
        (  # a hold narrowed by hand
            "UPDATE holds SET query = 'from:nobody@acme.com' WHERE name = 'acme'",
            "ledger-disagrees",
            "hold 'acme' has the query 'from:nobody@acme.com' in the catalog",
        ),
        (
            "DELETE FROM holds WHERE name = 'acme'",
            "catalog-row-missing",
            "the ledger records hold 'acme' (query 'from:bob@acme.com') but the catalog has no row",
        ),
        (
            "INSERT INTO holds(name, query, created_at, created_by) "
            "VALUES ('fake', '*', '2026-01-01T00:00:00+00:00', 'x')",
            "ledger-missing",
            "hold 'fake' is in the catalog but the ledger records no hold-add for it",
        ),
    ],
)
def test_verify_finds_a_hold_edited_by_hand(vault: Path, edit: str, code: str, words: str) -> None:
    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    assert run_cli(vault, "verify").exit_code == 0
    _edit(vault, edit)
    findings = _verify_findings(vault)
    name = "fake" if "'fake'" in words else "acme"
    assert [(f["code"], f["subject"]) for f in findings] == [(code, f"hold {name}")]
    assert words in findings[0]["detail"], findings


def test_verify_names_the_released_hold_row_deleted_not_the_active_one(vault: Path) -> None:
    """A hold added, released and added again under the same name: deleting the released
    row by hand is reported as that row missing, not as the active hold gone or released."""
    for args in (
        ("add", "h", "from:acme.com"),
        ("release", "h"),
        ("add", "h", "from:other.org"),
    ):
        assert run_cli(vault, "hold", *args).exit_code == 0
    assert run_cli(vault, "verify").exit_code == 0
    _edit(vault, "DELETE FROM holds WHERE name = 'h' AND released_at IS NOT NULL")
    findings = _verify_findings(vault)
    assert [(f["code"], f["subject"]) for f in findings] == [("catalog-row-missing", "hold h")]
    detail = findings[0]["detail"]
    assert "(query 'from:acme.com')" in detail and "retention no longer sees it" not in detail


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            "reason = 'nothing'",
            "hold 'acme' has the reason 'nothing' in the catalog but 'the case'",
        ),
        ("created_by = 'mallory'", "hold 'acme' has the created_by 'mallory' in the catalog"),
    ],
)
def test_verify_finds_a_hold_reason_or_author_edited_by_hand(
    vault: Path, edit: str, words: str
) -> None:
    result = run_cli(vault, "hold", "add", "acme", "from:bob@acme.com", "--reason", "the case")
    assert result.exit_code == 0, result.output
    assert run_cli(vault, "verify").exit_code == 0
    _edit(vault, f"UPDATE holds SET {edit} WHERE name = 'acme'")
    findings = _verify_findings(vault)
    assert [(f["code"], f["subject"]) for f in findings] == [("ledger-disagrees", "hold acme")]
    assert words in findings[0]["detail"], findings


def test_verify_finds_a_hold_release_the_catalog_does_not_have(vault: Path) -> None:
    """The other way round: the ledger says released (an entry appended by hand keeps the
    chain valid), the catalog still has the hold active."""
    from mailvault import ledger

    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        ledger.append(db, "hold-release", detail={"name": "acme", "query": "from:bob@acme.com"})
    findings = _verify_findings(vault)
    assert [f["code"] for f in findings] == ["ledger-disagrees"], findings
    assert "the ledger records the release of hold 'acme'" in findings[0]["detail"]


@pytest.mark.parametrize(
    ("edit", "code", "words"),
    [
        (  # brought back to life by hand: it counts as live mail whose blob is gone
            "UPDATE messages SET purged_at = NULL WHERE sha256 = '{sha}'",
            "ledger-disagrees",
            "the ledger records the purge of message {sha} but the catalog does not mark it",
        ),
        (  # its tombstone removed: its UIDL would be fetched again
            "DELETE FROM messages WHERE sha256 = '{sha}'",
            "catalog-row-missing",
            "the ledger records the purge of message {sha} but the catalog has no row",
        ),
    ],
)
def test_verify_finds_a_purge_the_catalog_no_longer_shows(
    vault: Path, edit: str, code: str, words: str
) -> None:
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 5
    assert run_cli(vault, "verify").exit_code == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        sha = db.execute("SELECT sha256 FROM messages WHERE purged_at IS NOT NULL").fetchone()[0]
    _edit(vault, edit.format(sha=sha))
    findings = [f for f in _verify_findings(vault) if f["code"] == code]
    assert any(words.format(sha=sha) in f["detail"] for f in findings), findings


def test_a_hold_on_dates_before_1678_protects_them(tmp_path: Path) -> None:
    """Such a Date is indexed as 1678 (Tantivy's range); the hold's query is clamped alike,
    so `date:<1600` protects the message dated 1500 instead of matching nothing."""
    with FakePop3Server([message(0, "old@example.com", 1500), message(1, "b@x.org", 2001)]) as s:
        path = make_vault(tmp_path / "v", {"acct": {**PLAIN, "port": s.port}})
        assert fetch_json(path)[0] == 0
    toml = path / "mailvault.toml"
    toml.write_text(toml.read_text() + "[retention]\nkeep_days = 3650\n")
    added = run_cli(path, "hold", "add", "ancient", "date:<1600")
    assert added.exit_code == 0 and "1 message" in added.output, added.output
    done = json.loads(run_cli(path, "retention", "apply", "--json").stdout)
    assert (done["expired"], done["held"], done["purged"]) == (2, 1, 1)
    assert run_cli(path, "search", "--count", "from:old@example.com").stdout.strip() == "1"


def _subject_message(i: int, subject: str) -> bytes:
    return (
        f"From: dan@example.com\r\nTo: archive@example.com\r\nSubject: {subject}\r\n"
        f"Date: Mon, 3 Jun 2001 10:00:00 +0000\r\nMessage-ID: <s{i}@example.com>\r\n\r\nbody\r\n"
    ).encode()


def test_a_hold_keeps_the_meaning_of_the_query_language_it_was_placed_under(
    tmp_path: Path,
) -> None:
    """`report not final` was the three words while only AND/OR/NOT in capitals were
    operators; now that and/or/not are operators in any case it is report AND NOT final.  A
    hold is read again at every retention run, so one placed before that change silently
    stopped protecting what it was placed on.  Holds record their query language version."""
    from mailvault import ledger
    from mailvault.search.query import SYNTAX

    mails = [
        _subject_message(i, s)
        for i, s in enumerate(("report not final", "report final", "report draft"))
    ]
    with FakePop3Server(mails) as server:
        path = make_vault(tmp_path / "v", {"acct": {**PLAIN, "port": server.port}})
        assert fetch_json(path)[0] == 0
    toml = path / "mailvault.toml"
    toml.write_text(toml.read_text() + "[retention]\nkeep_days = 3650\n")
    assert run_cli(path, "index").exit_code == 0
    # a catalog from before migration 7, with a hold placed (and recorded) as it was then
    _edit(
        path,
        "ALTER TABLE holds DROP COLUMN syntax",
        *(f"DROP TRIGGER message_meta_indexed_{t}" for t in ("insert", "update", "delete")),
        "ALTER TABLE message_counts DROP COLUMN indexed",  # nor 8
        "PRAGMA user_version = 6",
    )
    with sqlite3.connect(path / "catalog.sqlite") as db:
        db.execute(
            "INSERT INTO holds(name, query, reason, created_at, created_by) "
            "VALUES ('old', 'report not final', NULL, '2025-01-01T00:00:00+00:00', 'x')"
        )
        detail = {"name": "old", "query": "report not final", "reason": None, "by": "x"}
        ledger.append(db, "hold-add", detail=detail)
    assert run_cli(path, "verify").exit_code == 0  # verify reads it before any migration
    added = run_cli(path, "hold", "add", "new", "report not final")  # migrates the catalog
    assert added.exit_code == 0 and "1 message now" in added.output, added.output
    listed = json.loads(run_cli(path, "hold", "list", "--json").stdout)["holds"]
    assert [(h["name"], h["syntax"]) for h in listed] == [("old", 1), ("new", SYNTAX)]
    assert (
        "[query language 1; and, or, not in lower case are words]"
        in (run_cli(path, "hold", "list").stdout.splitlines()[0])
    )
    dry = json.loads(run_cli(path, "retention", "apply", "--dry-run", "--json").stdout)
    held = {m["sha256"]: m["held_by"] for m in dry["messages"]}
    search = run_cli(path, "search", "--ids", "subject:report subject:final")
    protected_by_old = {s for s, names in held.items() if "old" in names}
    assert len(protected_by_old) == 1 and protected_by_old < set(search.stdout.split())
    assert sum(1 for names in held.values() if names == ["new"]) == 1
    assert run_cli(path, "verify").exit_code == 0
    with sqlite3.connect(path / "catalog.sqlite") as db:
        entries = [
            json.loads(r[0])
            for r in db.execute("SELECT detail FROM ledger WHERE kind = 'hold-add'")
        ]
    assert [e.get("syntax") for e in entries] == [None, SYNTAX]
    # the version edited by hand changes what the hold protects: verify says so
    _edit(path, "UPDATE holds SET syntax = 3 WHERE name = 'old'")
    findings = _verify_findings(path)
    assert [(f["code"], f["subject"]) for f in findings] == [("ledger-disagrees", "hold old")]
    assert "query language version 3 in the catalog but 1 in the ledger" in findings[0]["detail"]
    listing = run_cli(path, "hold", "list").stdout.splitlines()[0]
    assert "[query language 3; read as it was placed: docs/search.md, Query language]" in listing
    assert run_cli(path, "hold", "release", "new").exit_code == 0


def test_a_label_with_a_comma_keeps_its_own_keep_days(vault: Path, tmp_path: Path) -> None:
    """Import labels are user-given text: one with a comma in it is still one label, and its
    [imports."..."] keep_days applies (the accounts were joined with ',' and split again)."""
    old = tmp_path / "old.eml"
    old.write_bytes(message(77, "dave@legacy.example", 2001))
    assert run_cli(vault, "import", "--account", "matter 7, acme", str(old)).exit_code == 0
    toml = vault / "mailvault.toml"
    toml.write_text(toml.read_text() + '\n[imports."matter 7, acme"]\nkeep_days = 36500\n')
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert dry["expired"] == 5, dry  # the five fetched 2001 messages, not the import
    assert all(m["keep_days"] == 3650 for m in dry["messages"])


@pytest.mark.parametrize(
    "edit",
    [
        "DELETE FROM holds WHERE name = 'acme'",
        "UPDATE holds SET released_at = '2026-01-01T00:00:00+00:00' WHERE name = 'acme'",
        "UPDATE holds SET query = 'from:nobody@acme.com' WHERE name = 'acme'",
        "UPDATE holds SET syntax = 1 WHERE name = 'acme'",
        "DROP TRIGGER ledger_no_update",
    ],
)
def test_retention_refuses_while_the_holds_table_disagrees_with_the_ledger(
    vault: Path, edit: str
) -> None:
    """Retention reads the holds table; one edited by hand (the hold deleted, released,
    narrowed) would let it purge held mail, which verify reported only afterwards.  It now
    compares the table with the ledger's hold entries first and purges nothing on a
    disagreement, dry run included."""
    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    blobs = sorted((vault / "objects").rglob("*.zst"))
    _edit(vault, edit)
    for args in (("--dry-run",), ()):
        result = run_cli(vault, "retention", "apply", *args)
        assert result.exit_code == 3, result.output
        assert "retention refused, nothing was purged" in result.stderr
        assert "`mailvault verify`" in result.stderr and len(result.stderr.splitlines()) == 1
        if "TRIGGER" not in edit:
            assert "hold 'acme'" in result.stderr
    assert sorted((vault / "objects").rglob("*.zst")) == blobs


def _blob(vault: Path, sha: str) -> Path:
    return next((vault / "objects" / sha[:2]).glob(f"{sha}*"))


def _tamper(vault: Path, sha: str, old: bytes, new: bytes) -> None:
    """Edit a stored message in place, keeping its name (as an insider with disk access)."""
    import zstandard

    path = _blob(vault, sha)
    data = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
    assert old in data
    path.write_bytes(zstandard.ZstdCompressor().compress(data.replace(old, new)))


def _sha_of(vault: Path, query: str) -> str:
    return run_cli(vault, "search", "--ids", "--limit", "1", query).stdout.split()[0]


def test_indexing_does_not_read_an_edited_blob(vault: Path) -> None:
    """reindex (and index) hash each blob as they stream it: one whose content changed is
    not indexed (its forged text is not searchable, the hold's words are not lost from it
    silently) and is named; the catalog leaves it unindexed."""
    sha = _sha_of(vault, "from:bob@acme.com")
    _tamper(vault, sha, b"bob@acme.com", b"bob@evil.com")
    result = run_cli(vault, "reindex")
    assert (
        result.exit_code == 1 and f"blob {sha} is missing, unreadable or corrupt" in result.output
    )
    assert run_cli(vault, "search", "--count", "from:bob@evil.com").stdout.strip() == "0"
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        indexed = db.execute("SELECT indexed_at FROM message_meta WHERE sha256=?", (sha,))
        assert indexed.fetchone()[0] is None


def _purge_entries(vault: Path) -> set[str]:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        return {r[0] for r in db.execute("SELECT sha256 FROM ledger WHERE kind = 'purge'")}


@pytest.mark.parametrize("damage", ["missing", "edited"])
def test_a_held_message_whose_blob_is_damaged_is_not_purged(vault: Path, damage: str) -> None:
    """A held message whose blob is lost or edited drops out of the index at the next
    rebuild, so its hold no longer matches it; retention purged it (and the purge hid the
    loss: verify was clean after).  A message retention cannot read, hash and find in the
    index is now kept and named, and the damage stays for verify to report."""
    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    sha = _sha_of(vault, "from:bob@acme.com")
    if damage == "missing":
        _blob(vault, sha).unlink()
    else:
        _tamper(vault, sha, b"bob@acme.com", b"bob@evil.com")
    assert run_cli(vault, "reindex").exit_code == 1
    for args in (("--dry-run",), ()):
        result = run_cli(vault, "retention", "apply", "--json", *args)
        assert result.exit_code == 1, result.output
        done = json.loads(result.stdout)
        assert (done["expired"], done["held"], done["kept"]) == (5, 1, 1), done
        (kept,) = [m for m in done["messages"] if m["kept"]]
        assert kept["sha256"] == sha and kept["held_by"] == []
        assert ("missing" if damage == "missing" else "corrupt") in kept["kept"]
        assert "`mailvault verify`" in kept["kept"]
    assert done["purged"] == 3 and sha not in _purge_entries(vault)
    codes = [f["code"] for f in _verify_findings(vault)]
    assert ("blob-missing" if damage == "missing" else "blob-corrupt") in codes
    text = run_cli(vault, "retention", "apply")
    assert f"{sha[:12]} 2001-06-03 keep 3650d: not purged: " in text.stdout


def test_a_date_edited_in_the_catalog_does_not_purge_recent_mail(vault: Path) -> None:
    """The age comes from message_meta.date, which can be edited by hand: moved back to
    1999, it made retention purge mail from 2025.  Each candidate's date is now read again
    from its blob; a disagreement keeps the message and names both dates."""
    sha = _sha_of(vault, "subject:report AND 9")
    _edit(
        vault, f"UPDATE message_meta SET date = '1999-01-01T00:00:00+00:00' WHERE sha256 = '{sha}'"
    )
    result = run_cli(vault, "retention", "apply", "--json")
    assert result.exit_code == 1, result.output
    done = json.loads(result.stdout)
    assert (done["expired"], done["kept"], done["purged"]) == (6, 1, 5), done
    (kept,) = [m for m in done["messages"] if m["kept"]]
    assert kept["sha256"] == sha
    assert "the catalog dates it 1999-01-01" in kept["kept"]
    assert "Date header says 2025-06-03" in kept["kept"]
    assert sha not in _purge_entries(vault) and _blob(vault, sha).exists()


def test_an_ingest_time_edited_in_the_catalog_does_not_purge_recent_mail(
    vault: Path, tmp_path: Path
) -> None:
    """A message without a Date header is aged from its first ingest: messages.first_ingest_at
    moved back by hand is caught against the ledger's ingest entry."""
    undated = tmp_path / "undated.eml"
    undated.write_bytes(b"From: x@y.example\r\nSubject: undated\r\n\r\nno date here\r\n")
    assert run_cli(vault, "import", str(undated)).exit_code == 0
    sha = _sha_of(vault, "subject:undated")
    _edit(
        vault,
        f"UPDATE messages SET first_ingest_at = '1999-01-01T00:00:00+00:00' WHERE sha256 = '{sha}'",
    )
    done = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    (kept,) = [m for m in done["messages"] if m["kept"]]
    assert kept["sha256"] == sha and "first stored at 1999-01-01" in kept["kept"], kept
    assert done["purged"] == 5 and sha not in _purge_entries(vault)


def test_verify_finds_a_date_edited_in_the_catalog_and_reindex_reads_it_again(
    vault: Path, tmp_path: Path
) -> None:
    """message_meta.date and messages.first_ingest_at are what retention ages a message by:
    verify compares the one with the blob's Date header and the other with the ledger's
    ingest entry, and `reindex` puts the date right."""
    undated = tmp_path / "undated.eml"
    undated.write_bytes(b"From: x@y.example\r\nSubject: undated\r\n\r\nno date here\r\n")
    assert run_cli(vault, "import", str(undated)).exit_code == 0
    assert run_cli(vault, "verify").exit_code == 0
    sha = _sha_of(vault, "subject:report AND 9")
    plain = _sha_of(vault, "subject:undated")
    _edit(
        vault,
        f"UPDATE message_meta SET date = '1999-01-01T00:00:00+00:00' WHERE sha256 = '{sha}'",
        f"UPDATE messages SET first_ingest_at = '1999-01-01T00:00:00+00:00' "
        f"WHERE sha256 = '{plain}'",
    )
    findings = {(f["code"], f["subject"]): f["detail"] for f in _verify_findings(vault)}
    assert set(findings) == {("catalog-date-disagrees", sha), ("ledger-disagrees", plain)}
    assert "its Date header says 2025-06-03" in findings[("catalog-date-disagrees", sha)]
    assert "first stored at 1999-01-01" in findings[("ledger-disagrees", plain)]
    assert run_cli(vault, "verify", "--quick", "--json").stdout.count("catalog-date") == 0
    run_cli(vault, "reindex")
    codes = [f["code"] for f in _verify_findings(vault)]
    assert codes == ["ledger-disagrees"]


def test_verify_reports_purged_text_a_killed_rebuild_left_and_index_finishes_it(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retention run killed after its purge but before its index rebuild leaves the purged
    text in the index files (deleted documents) and maybe an index.new/: verify said nothing.
    It now warns (and notes the leftover), and `mailvault index` finishes the rebuild."""
    from mailvault.cli import compliance_cmd

    monkeypatch.setattr(compliance_cmd, "_compact_index", lambda vault: False)
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 5
    monkeypatch.undo()
    (vault / "index.new").mkdir()
    (vault / "index.new" / "meta.json").write_text("{}")
    findings = {f["code"]: f for f in _verify_findings(vault)}
    assert set(findings) == {"index-purged-text", "index-rebuild-leftover"}, findings
    assert findings["index-purged-text"]["severity"] == "warning"
    assert "`mailvault index`" in findings["index-purged-text"]["detail"]
    assert findings["index-rebuild-leftover"]["severity"] == "info"
    result = run_cli(vault, "index")
    assert result.exit_code == 0 and result.stdout.startswith("rebuilt the index"), result.output
    assert not (vault / "index.new").exists()
    meta = json.loads((vault / "index" / "meta.json").read_text())
    assert not any(segment.get("deletes") for segment in meta["segments"])
    assert run_cli(vault, "verify").exit_code == 0
    assert run_cli(vault, "index").stdout.startswith("indexed 0")  # no rebuild again


def test_documents_of_purged_messages_are_one_finding(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the blobs were removed but before the index documents were deleted:
    verify printed one identical index-extra line per message, naming none; now one finding
    with the count and the first message."""
    from mailvault import compliance

    monkeypatch.setattr(compliance, "_remove_documents", lambda vault, purged: None)
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 5
    monkeypatch.undo()
    findings = _verify_findings(vault)
    extra = [f for f in findings if f["code"] == "index-extra"]
    assert len(extra) == 1, findings
    assert "the index still holds 5 purged messages" in extra[0]["detail"]
    assert run_cli(vault, "index").exit_code == 0
    assert run_cli(vault, "verify").exit_code == 0


def test_a_ledger_export_into_a_missing_directory_is_a_usage_error(
    vault: Path, tmp_path: Path
) -> None:
    result = run_cli(vault, "ledger", "export", "--out", str(tmp_path / "no-such-dir" / "l.jsonl"))
    assert result.exit_code == 2, result.output
    assert "cannot write the ledger export to " in result.stderr
    assert "give --out a file in a directory that exists" in result.stderr


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE message_meta SET date = 'yesterday' WHERE sha256 = '{sha}'",
        "UPDATE message_meta SET date = '2001-01-01 00:00:00' WHERE sha256 = '{sha}'",
        "UPDATE message_meta SET date_fallback = 1 WHERE sha256 = '{sha}'; "
        "UPDATE messages SET first_ingest_at = 'x' WHERE sha256 = '{sha}'",
    ],
)
def test_a_malformed_catalog_date_is_reported_not_a_crash(vault: Path, edit: str) -> None:
    """One hand-edited date crashed retention (ValueError or TypeError in its age check, exit
    1) and verify (before any other finding)."""
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        (sha,) = db.execute(
            "SELECT sha256 FROM message_meta WHERE date < '2002' ORDER BY sha256 LIMIT 1"
        ).fetchone()
    _edit(vault, *edit.format(sha=sha).split("; "))
    codes = {f["code"] for f in _verify_findings(vault) if f["subject"] == sha}
    assert codes & {"catalog-date-disagrees", "ledger-disagrees"}, codes
    result = run_cli(vault, "retention", "apply", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1, result.output
    (kept,) = [c for c in report["messages"] if c["sha256"] == sha]
    assert kept["kept"] and "edited" in kept["kept"], kept
    assert report["purged"] == 4  # the other 2001 messages


class _NoStoredDocuments:
    """A tantivy searcher that refuses to read a stored document (the body is one of them)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def doc(self, address: object) -> None:
        raise AssertionError(f"a stored document was read ({address})")


def test_selecting_by_query_reads_ids_in_batches_never_stored_documents(
    vault: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query export, `hold add` and retention loaded every hit's stored document, body and
    all, into a list: 1 GB for 100k hits.  They now read only ids, a batch at a time (ID_PAGE
    made tiny here so that the walk takes several)."""
    from mailvault.search import Searcher, engine

    real_init = Searcher.__init__

    def guarded(self: Searcher, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.searcher = _NoStoredDocuments(self.searcher)  # type: ignore[assignment]

    monkeypatch.setattr(Searcher, "__init__", guarded)
    monkeypatch.setattr(engine, "ID_PAGE", 2, raising=False)
    added = run_cli(vault, "hold", "add", "old", "date:<2010 OR from:bob@acme.com")
    assert "protects 5 messages" in added.stdout, added.stdout
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert (dry["expired"], dry["held"]) == (5, 5)
    result = run_cli(vault, "export", "carol", "--format", "eml", "--out", str(tmp_path / "e"))
    assert result.exit_code == 0, result.stdout
    assert len(list((tmp_path / "e").glob("*.eml"))) == 8


def test_retention_reads_the_catalog_a_row_at_a_time(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention read a row for every message of the vault into a list before it looked at
    the first one's age: memory grew with the vault.  Each row is now looked at as it is
    read, and only those past retention are kept; the plan is the same."""
    import sqlite_utils

    from mailvault import compliance

    before = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    ahead = most = 0
    query = sqlite_utils.Database.query
    basis = compliance._basis

    def counted_query(self: sqlite_utils.Database, sql: str, *args: object) -> object:
        nonlocal ahead, most
        for row in query(self, sql, *args):  # type: ignore[arg-type]
            ahead += 1
            most = max(most, ahead)
            yield row

    def counted_basis(row: dict[str, object], archived: bool = False) -> str:
        nonlocal ahead
        ahead -= 1
        return basis(row, archived)

    monkeypatch.setattr(sqlite_utils.Database, "query", counted_query)
    monkeypatch.setattr(compliance, "_basis", counted_basis)
    after = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert most == 1  # never a second message row read before the first one's age is known
    assert after == before and before["expired"] == 5
    assert [m["sha256"] for m in after["messages"]] == [m["sha256"] for m in before["messages"]]


def test_age_from_archived_counts_from_the_first_ingest_not_the_date_header(vault: Path) -> None:
    """Age counted from the Date header, which the sender writes: mail dated 2001 fetched today
    was past a ten-year retention at once.  ``age_from = "archived"`` counts from when the
    vault first stored it; the Date header is then no way to make mail expire early."""
    from datetime import UTC, datetime, timedelta

    from mailvault.compliance import plan
    from mailvault.vault import open_vault

    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert dry["expired"] == 5  # by the Date header, the default
    toml = vault / "mailvault.toml"
    toml.write_text(
        toml.read_text().replace("keep_days = 3650\n", 'keep_days = 3650\nage_from = "archived"\n')
    )
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    assert (dry["expired"], dry["purged"]) == (0, 0)
    assert run_cli(vault, "retention", "apply").exit_code == 0
    assert run_cli(vault, "search", "--count", "*").stdout.strip() == "10"
    later = datetime.now(UTC) + timedelta(days=3651)
    candidates = plan(open_vault(vault), now=later)
    assert len(candidates) == 10 and not [c for c in candidates if c.kept]
    assert all(c.age_basis[:10] == datetime.now(UTC).date().isoformat() for c in candidates)
    toml.write_text(toml.read_text().replace('age_from = "archived"', 'age_from = "sent"'))
    bad = run_cli(vault, "retention", "apply", "--dry-run")
    assert bad.exit_code == 2 and "age_from" in bad.output


def _place_hold_in_version(vault: Path, name: str, query: str, syntax: int) -> None:
    """A hold as a mailvault reading query language ``syntax`` placed (and recorded) it."""
    from mailvault import ledger

    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute(
            "INSERT INTO holds(name, query, syntax, reason, created_at, created_by) "
            "VALUES (?, ?, ?, NULL, '2025-01-01T00:00:00+00:00', 'x')",
            (name, query, syntax),
        )
        detail = {"name": name, "query": query, "syntax": syntax, "reason": None, "by": "x"}
        ledger.append(db, "hold-add", detail=detail)


@pytest.mark.parametrize(
    ("query", "held"),
    [
        # language 3 read any ISO form: 20010603 was 2001-06-03T00:00:00 on; language 4 refuses it
        ("after:20010603", 5),
        # language 3 read report~3 as the phrase "report 3"; language 4 refuses ~N on a word
        ("subject:report~3", 1),
    ],
)
def test_a_hold_in_a_form_the_language_no_longer_takes_keeps_protecting(
    vault: Path, query: str, held: int
) -> None:
    """A query that version 4 of the language refuses (or reads otherwise) is still read as it
    was placed: retention neither fails on such a hold nor lets its messages go."""
    _place_hold_in_version(vault, "old", query, 3)
    result = run_cli(vault, "retention", "apply", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    dry = json.loads(result.stdout)
    assert (dry["expired"], dry["held"]) == (5, held)
    assert run_cli(vault, "verify").exit_code == 0
    refused = run_cli(vault, "hold", "add", "new", query)
    assert refused.exit_code == 2 and "invalid query" in refused.stderr, refused.output


def test_a_hold_on_an_address_in_angle_brackets_protects_its_mail(vault: Path) -> None:
    """`hold add case7 'from:<bob@acme.com>'` (the address as show prints it) protected no
    message, and retention purged the very mail the hold was placed on; so did a hold on the
    address with a sentence's dot after it.  Both are the address now, and a hold placed so
    before (query language 3) protects it too: it finds more, never less, than it did."""
    _place_hold_in_version(vault, "old", "from:<bob@acme.com>", 3)
    placed = run_cli(vault, "hold", "add", "case7", "from:<bob@acme.com>")
    assert placed.exit_code == 0 and "protects 2 messages now" in placed.output, placed.output
    dotted = run_cli(vault, "hold", "add", "case8", "from:bob@acme.com.")
    assert dotted.exit_code == 0 and "protects 2 messages now" in dotted.output, dotted.output
    dry = json.loads(run_cli(vault, "retention", "apply", "--dry-run", "--json").stdout)
    held = [sorted(m["held_by"]) for m in dry["messages"] if m["held_by"]]
    assert held == [["case7", "case8", "old"]] * 2
    assert run_cli(vault, "verify").exit_code == 0


def test_purged_mail_left_in_the_index_does_not_use_up_a_page(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a retention run's purged documents still in the index, they were dropped from a
    page after Tantivy had cut it: `--sort date --limit 3` (the purged, older mail first)
    showed nothing and exited 1, "found nothing", though live mail matched; --offset counted
    the hidden hits and --count counted them too (QA)."""
    from mailvault import compliance

    monkeypatch.setattr(compliance, "_remove_files", lambda vault, purged: None)  # stopped
    assert json.loads(run_cli(vault, "retention", "apply", "--json").stdout)["purged"] == 5
    monkeypatch.undo()
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        gone = {r[0] for r in db.execute("SELECT sha256 FROM messages WHERE purged_at NOT NULL")}
        live = {r[0] for r in db.execute("SELECT sha256 FROM messages WHERE purged_at IS NULL")}
    db.close()
    everything = run_cli(vault, "search", "--ids", "--sort", "date", "--limit", "0", "report")
    assert set(everything.stdout.split()) == live
    pages = []
    for offset in (0, 2, 4, 6):
        got = run_cli(
            vault,
            "search",
            "--ids",
            "--sort",
            "date",
            "--limit",
            "2",
            "--offset",
            str(offset),
            "report",
        )
        assert got.exit_code == (0 if offset < 5 else 1), (offset, got.output)
        pages += got.stdout.split()
    assert pages == everything.stdout.split() and not gone & set(pages)
    first = run_cli(vault, "search", "--json", "--sort", "date", "--limit", "3", "report")
    assert first.exit_code == 0 and len(first.stdout.splitlines()) == 3
    assert "showing 3 of 5 hits" in first.stderr, first.stderr
    assert "left out of what is shown and counted" in first.stderr
    past = run_cli(vault, "search", "--sort", "date", "--offset", "7", "report")
    assert past.exit_code == 1 and "the query has 5\n" in past.stderr, past.stderr
    assert run_cli(vault, "search", "--count", "report").stdout.strip() == "5"
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        (results,) = db.execute(
            "SELECT results FROM audit WHERE command = 'search' ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
    db.close()
    assert results == 5


def _dry_run_with_peak(vault: Path) -> tuple[dict[str, Any], int]:
    """`retention apply --dry-run --json` in a fresh process: its report and peak RSS (KiB)."""
    import subprocess
    import sys

    from tests.test_roundtrip import PEAK

    args = ["--vault", str(vault), "retention", "apply", "--dry-run", "--json"]
    proc = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), int(proc.stderr.rsplit(b"peak-kib", 1)[1].split()[0])


def test_retention_memory_does_not_grow_with_the_messages_past_retention(tmp_path: Path) -> None:
    """The first retention run on a ten-year archive expires a million messages at once, and
    retention held them in lists, sets and dicts several times over: about 1 KiB each, a
    gigabyte.  The plan is now a temporary SQLite table.  One vault, 3,000 and then 12,000 of
    its messages past retention (the 9,000 more held): the peak RSS of the dry run grew by
    11 MiB, and now by about 2 (SQLite's page cache of the plan, which stops there)."""
    from datetime import UTC, datetime

    mbox = tmp_path / "mail.mbox"
    with mbox.open("wb") as out:
        for i in range(12_000):
            year = 2001 if i < 3_000 else 2015
            out.write(
                f"From x@example.com Mon Jun  3 10:00:00 {year}\nSubject: m{i}\n"
                f"Date: Mon, 3 Jun {year} 10:00:00 +0000\n\nbody {i}\n\n".encode()
            )
    vault = make_vault(tmp_path / "v", {})
    assert run_cli(vault, "import", str(mbox)).exit_code == 0
    assert run_cli(vault, "hold", "add", "later", "date:>2010").exit_code == 0
    toml = vault / "mailvault.toml"
    config = toml.read_text()
    since_2008 = (datetime.now(UTC) - datetime(2008, 1, 1, tzinfo=UTC)).days
    peaks = []
    for keep_days, expired in ((since_2008, 3_000), (1, 12_000)):
        toml.write_text(config + f"[retention]\nkeep_days = {keep_days}\n")
        report, peak = _dry_run_with_peak(vault)
        assert (report["expired"], report["held"], report["kept"]) == (expired, expired - 3_000, 0)
        assert len(report["messages"]) == expired
        peaks.append(peak)
    assert peaks[1] - peaks[0] < 5 * 1024, peaks


def test_a_run_stopped_during_its_purge_purges_nothing_and_the_next_purges_all(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidates are read from the plan's table as they are purged, all in the one
    catalog transaction: a run stopped part-way (Ctrl-C at its third purge) leaves none of
    them purged and its `started` audit entry without a `finished`; the next run purges
    them all."""
    from mailvault import compliance

    purge, purges = compliance._purge, 0

    def stopped_at_the_third(conn: sqlite3.Connection, c: Any, actor: dict[str, Any]) -> None:
        nonlocal purges
        purges += 1
        if purges == 3:
            raise KeyboardInterrupt
        purge(conn, c, actor)

    monkeypatch.setattr(compliance, "_purge", stopped_at_the_third)
    assert run_cli(vault, "retention", "apply").exit_code == 130  # Ctrl-C
    monkeypatch.undo()
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        purged = db.execute("SELECT count(*) FROM messages WHERE purged_at NOT NULL").fetchone()
        recorded = db.execute("SELECT count(*) FROM ledger WHERE kind = 'purge'").fetchone()
        stages = [
            json.loads(r[0])["stage"]
            for r in db.execute("SELECT detail FROM audit WHERE command = 'retention'")
        ]
    db.close()
    assert purged == recorded == (0,) and stages == ["started"]
    assert len(list((vault / "objects").rglob("*.zst"))) == 10
    assert run_cli(vault, "verify").exit_code == 0
    done = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    assert (done["expired"], done["purged"]) == (5, 5)
    assert len(list((vault / "objects").rglob("*.zst"))) == 5
    assert run_cli(vault, "verify").exit_code == 0


def test_a_run_stopped_while_it_removes_files_has_recorded_its_purge_as_finished(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after the purge committed, while it removed the blobs (seconds for thousands):
    the audit trail held only `started`, as a run stopped before its commit does, and no
    entry ever said those messages were purged (QA).  `finished` follows the commit now; the
    next run removes the files."""
    from mailvault import compliance

    def stopped(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compliance, "_remove_files", stopped)
    assert run_cli(vault, "retention", "apply").exit_code == 130
    monkeypatch.undo()
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        purged = db.execute("SELECT count(*) FROM messages WHERE purged_at NOT NULL").fetchone()
        audit = [
            (json.loads(detail)["stage"], results)
            for detail, results in db.execute(
                "SELECT detail, results FROM audit WHERE command = 'retention'"
            )
        ]
    db.close()
    assert purged == (5,) and audit == [("started", 5), ("finished", 5)], audit
    assert len(list((vault / "objects").rglob("*.zst"))) == 10  # the files are still there
    done = json.loads(run_cli(vault, "retention", "apply", "--json").stdout)
    assert (done["expired"], done["purged"]) == (0, 0)
    assert len(list((vault / "objects").rglob("*.zst"))) == 5
    assert run_cli(vault, "verify").exit_code == 0


def test_a_plan_gives_back_what_was_put_in_it_as_it_was() -> None:
    """The plan's table keeps a catalog value edited by hand as the catalog holds it (a date
    stored as a number reaches _vet as one, and is named as it is), and a reason that names
    a path with bytes that are not UTF-8."""
    from mailvault.compliance import Candidate, Plan

    with Plan() as plan:
        plan.add(
            [("a" * 64, "20010101", 10, 20010101, 0, "2001-01-01"), ("b" * 64, "x", 9, *[None] * 3)]
        )
        plan.hold("acme", ["b" * 64, "c" * 64])
        plan.hold("é", ["b" * 64])
        ((page),) = list(plan.free())
        assert page == [(1, "a" * 64, "20010101", 10, 20010101, 0, "2001-01-01")]
        plan.vetted([(1, "blob /srv/\udcfe/x cannot be read", "f" * 64)])
        assert list(plan) == [
            Candidate("a" * 64, "20010101", 10, (), "blob /srv/\udcfe/x cannot be read", "f" * 64),
            Candidate("b" * 64, "x", 9, ("acme", "é")),
        ]
        assert (len(plan), plan.counts()) == (2, {"expired": 2, "held": 1, "kept": 1})


def test_a_full_temporary_directory_stops_retention_before_it_purges(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan is a file in SQLite's temporary directory, not the vault: when that is full,
    the one-line error names it and how to give the plan room (the catch-all would have
    blamed the catalog and the vault's filesystem), and nothing is purged or recorded."""
    from mailvault import compliance

    assert run_cli(vault, "hold", "add", "acme", "from:bob@acme.com").exit_code == 0
    init = compliance.Plan.__init__

    def full(self: compliance.Plan) -> None:  # no room for a page more than the table has
        init(self)
        (pages,) = self._db.execute("PRAGMA temp.page_count").fetchone()
        self._db.execute(f"PRAGMA temp.max_page_count = {pages}")

    monkeypatch.setattr(compliance.Plan, "__init__", full)
    here = vault.parent / "tmp-for-sqlite"
    here.mkdir()
    result = run_cli(vault, "retention", "apply", env={"SQLITE_TMPDIR": str(here)})
    assert result.exit_code == 3, result.output
    (line,) = result.stderr.splitlines()
    assert (
        f"retention's plan, a temporary SQLite file in {here}, failed (database or disk is full)"
        in line
    )
    assert "point SQLITE_TMPDIR at a directory with room" in line and "catalog" not in line
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        purged = db.execute("SELECT count(*) FROM messages WHERE purged_at NOT NULL").fetchone()
        audited = db.execute("SELECT count(*) FROM audit WHERE command = 'retention'").fetchone()
    db.close()
    assert purged == audited == (0,)
