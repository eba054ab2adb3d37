"""`mailvault verify` and the ledger: tampering on purpose is reported with what and where."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from mailvault.store import BlobStore
from mailvault.testkit.fakepop import FakePop3Server
from mailvault.vault import open_vault
from tests.test_fetch_faults import PLAIN, corpus
from tests.vaults import fetch_json, make_vault, run_cli


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    with FakePop3Server(corpus(8)) as server:
        path = make_vault(
            tmp_path / "v", {"acct": {**PLAIN, "port": server.port, "delete": "after-commit"}}
        )
        assert fetch_json(path)[0] == 0
    return path


def findings(vault: Path, *args: str) -> tuple[int, list[dict[str, str]]]:
    result = run_cli(vault, "verify", "--json", *args)
    report = json.loads(result.stdout)
    return result.exit_code, report["findings"]


def codes(items: list[dict[str, str]]) -> set[str]:
    return {f["code"] for f in items if f["severity"] != "info"}


def some_digest(vault: Path) -> str:
    return sorted(BlobStore(vault).iter_digests())[0]


def test_clean_vault_verifies(vault: Path) -> None:
    code, items = findings(vault)
    assert (code, codes(items)) == (0, set())
    assert run_cli(vault, "verify").exit_code == 0


def flip_a_byte(vault: Path) -> tuple[str, Path]:
    """Damage one blob in the middle; its digest and path."""
    digest = some_digest(vault)
    path = BlobStore(vault).find(digest)
    assert path is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return digest, path


def test_flipped_byte_in_blob(vault: Path) -> None:
    digest, path = flip_a_byte(vault)
    code, items = findings(vault)
    assert code == 1
    bad = [f for f in items if f["subject"] == digest]
    assert bad and bad[0]["code"] in {"blob-corrupt", "blob-unreadable"}
    assert str(path) in bad[0]["detail"]
    # --quick does not rehash, so it cannot see it
    assert findings(vault, "--quick")[0] == 0


def test_a_broken_config_does_not_stop_verify_or_show(vault: Path) -> None:
    """verify is what an admin runs when something is wrong: it checks the vault without the
    accounts file, and says the file is broken (tonight's fetch would fail)."""
    digest, _ = flip_a_byte(vault)
    with (vault / "mailvault.toml").open("a") as config:
        config.write("this is [not toml\n")
    code, items = findings(vault)
    assert code == 1
    by_code = {f["code"]: f for f in items}
    assert by_code["config-invalid"]["severity"] == "warning"
    assert "not valid TOML" in by_code["config-invalid"]["detail"]
    assert {"blob-corrupt", "blob-unreadable"} & set(by_code)  # the blobs were still checked
    schema = json.loads((Path(__file__).parents[1] / "schemas" / "verify.schema.json").read_text())
    jsonschema.validate(json.loads(run_cli(vault, "verify", "--json").stdout), schema)
    other = next(d for d in BlobStore(vault).iter_digests() if d != digest)
    shown = run_cli(vault, "show", other, "--raw")
    assert shown.exit_code == 0 and shown.stdout_bytes


def test_uncompressed_blob_edit_is_a_hash_mismatch(tmp_path: Path) -> None:
    with FakePop3Server(corpus(3)) as server:
        path = make_vault(
            tmp_path / "v", {"acct": {**PLAIN, "port": server.port}}, compression="none"
        )
        assert fetch_json(path)[0] == 0
    digest = some_digest(path)
    blob = BlobStore(path, compress=False).find(digest)
    assert blob is not None
    blob.write_bytes(blob.read_bytes().replace(b"Subject", b"Subjekt"))
    code, items = findings(path)
    assert code == 1 and [f["code"] for f in items if f["subject"] == digest] == ["blob-corrupt"]


def test_a_damaged_second_copy_of_a_blob_is_found(vault: Path) -> None:
    """A plain copy beside a message's compressed blob (a restore from a backup made with
    compression off, say) was never read: verify hashed by digest, and the store picks the
    compressed file, so a damaged copy went unreported and would be served if the other were
    lost (QA).  Every file walked is hashed now."""
    import zstandard

    digest = some_digest(vault)
    packed = BlobStore(vault).find(digest)
    assert packed is not None and packed.suffix == ".zst"
    original = zstandard.ZstdDecompressor().stream_reader(packed.open("rb")).read()
    plain = packed.with_suffix("")
    plain.write_bytes(original[:-3] + b"XYZ")
    plain.chmod(0o600)
    code, items = findings(vault)
    bad = [f for f in items if f["subject"] == digest]
    assert code == 1 and [f["code"] for f in bad] == ["blob-corrupt"], items
    assert str(plain) in bad[0]["detail"]
    plain.write_bytes(original)
    code, items = findings(vault)
    assert code == 0 and not [f for f in items if f["subject"] == digest], items


def test_deleted_blob(vault: Path) -> None:
    digest = some_digest(vault)
    path = BlobStore(vault).find(digest)
    assert path is not None
    path.unlink()
    code, items = findings(vault)
    assert code == 1 and {"blob-missing"} == codes(items)
    assert items[0]["subject"] == digest


def test_blob_findings_are_named_in_order(vault: Path) -> None:
    """Blobs without a catalog row, then blobs of purged messages, then the live messages
    whose blob is gone, in byte order; a purged message's blob gone and a blob kept twice
    (compressed and not) are no finding."""
    store = BlobStore(vault)
    digests = sorted(store.iter_digests())
    kept = store.find(digests[0])
    assert kept is not None
    shutil.copy(kept, kept.with_suffix(""))  # the same digest under both names
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("DELETE FROM messages WHERE sha256 = ?", (digests[4],))
        db.executemany(
            "UPDATE messages SET purged_at = '2026-01-01T00:00:00+00:00' WHERE sha256 = ?",
            [(digests[1],), (digests[6],)],
        )
    for gone in (digests[6], digests[5], digests[2]):
        path = store.find(gone)
        assert path is not None
        path.unlink()
    code, items = findings(vault, "--quick")
    assert code == 1
    assert [(f["code"], f["subject"]) for f in items if f["code"].startswith("blob-")] == [
        ("blob-orphan", digests[4]),
        ("blob-purge-unfinished", digests[1]),
        ("blob-missing", digests[2]),
        ("blob-missing", digests[5]),
    ]


def test_the_catalog_is_read_as_the_store_is_walked(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify walks the catalog's messages beside the store's blobs, both in byte order: the
    first blob's damage is reported once its own row is read, not once the id of every
    message is held (that grew with the vault)."""
    from mailvault import verify

    digest, _ = flip_a_byte(vault)  # the first blob in byte order
    rows = verify._message_rows
    read: list[str] = []

    def counted(db: sqlite3.Connection) -> Iterator[tuple[str, bool]]:
        for row in rows(db):
            read.append(row[0])
            yield row

    monkeypatch.setattr(verify, "_message_rows", counted)
    first = next(f for f in verify.verify(open_vault(vault)) if f.code.startswith("blob-"))
    assert first.code in {"blob-corrupt", "blob-unreadable"}
    assert (first.subject, read) == (digest, [digest])


def test_deleted_catalog_row(vault: Path) -> None:
    digest = some_digest(vault)
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("DELETE FROM messages WHERE sha256=?", (digest,))
    code, items = findings(vault)
    assert code == 1
    assert {"blob-orphan", "catalog-dangling", "catalog-row-missing"} <= codes(items)


def test_edited_catalog_row(vault: Path) -> None:
    digest = some_digest(vault)
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE messages SET size = size + 1 WHERE sha256=?", (digest,))
    code, items = findings(vault)
    assert code == 1 and codes(items) == {"ledger-disagrees"}


def test_edited_ledger_entry(vault: Path) -> None:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE ledger SET size = 1 WHERE seq = 3")
        db.execute("DROP TRIGGER ledger_no_update")  # a determined tamperer
        db.execute("UPDATE ledger SET size = 1 WHERE seq = 3")
    code, items = findings(vault)
    assert code == 1
    broken = [f for f in items if f["code"] == "ledger-broken"]
    assert broken and broken[0]["subject"] == "entry 3"


def test_the_ledger_chain_is_checked_as_it_is_read(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify walks the ledger an entry at a time: the break at entry 3 is reported when
    entry 3 is read, not once every entry of the ledger is held (that grew with the vault)."""
    from mailvault import ledger, verify

    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("DROP TRIGGER ledger_no_update")
        db.execute("UPDATE ledger SET size = 1 WHERE seq = 3")
    entries = ledger.iter_entries
    read: list[object] = []

    def counted(db: sqlite3.Connection, *args: str) -> Iterator[dict[str, object]]:
        for entry in entries(db, *args):
            read.append(entry["seq"])
            yield entry

    monkeypatch.setattr(ledger, "iter_entries", counted)
    first = next(f for f in verify.verify(open_vault(vault), quick=True) if f.code != "blob-orphan")
    assert (first.code, first.subject, read) == ("ledger-broken", "entry 3", [1, 2, 3])


def test_each_disagreement_of_catalog_and_ledger_is_named_in_order(vault: Path) -> None:
    """Damage of every kind the ledger check cross-checks, at once: each is named once, in the
    order verify reports them (the chain; message rows in the catalog's order; purges;
    contents the catalog lost; UIDL rows, then UIDL ingests, then deletions)."""
    from mailvault import ledger

    with sqlite3.connect(vault / "catalog.sqlite") as db:
        sha = dict(db.execute("SELECT uidl, sha256 FROM uidls"))
        rowid = dict(db.execute("SELECT sha256, rowid FROM messages"))
        size = dict(db.execute("SELECT sha256, size FROM messages"))
        (lost_seq,) = db.execute(
            "SELECT seq FROM ledger WHERE kind = 'ingest' AND uidl = 'uid-3'"
        ).fetchone()
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("DROP TRIGGER ledger_no_delete")
        db.execute("DELETE FROM ledger WHERE seq = ?", (lost_seq,))  # uid-3's ingest
        ledger.append(  # uid-8 ingested twice, its second row never committed
            db, "ingest", account="acct", uidl="uid-8", sha256=sha["uid-8"], size=size[sha["uid-8"]]
        )
        resized = [sha["uid-1"], sha["uid-2"], sha["uid-6"]]
        db.executemany(
            "UPDATE messages SET size = size + 1 WHERE sha256 = ?", [(s,) for s in resized]
        )
        db.execute("UPDATE messages SET purged_at = '2026-01-01' WHERE sha256 = ?", (sha["uid-4"],))
        db.execute("DELETE FROM messages WHERE sha256 = ?", (sha["uid-7"],))
        db.execute("DELETE FROM uidls WHERE uidl = 'uid-5'")
        db.execute("UPDATE uidls SET deleted_confirmed_at = NULL WHERE uidl = 'uid-6'")
    messages = sorted(
        [(rowid[s], "ledger-disagrees", s) for s in resized]
        + [(rowid[sha["uid-3"]], "ledger-missing", sha["uid-3"])]
    )
    expected = [
        ("ledger-broken", f"entry {lost_seq + 1}"),  # a gap: expected sequence
        ("ledger-broken", f"entry {lost_seq + 1}"),  # and prev_hash
        *[(code, subject) for _, code, subject in messages],
        ("ledger-missing", sha["uid-4"]),  # marked purged, no purge recorded
        ("catalog-row-missing", sha["uid-7"]),
        ("ledger-missing", "acct/uid-3"),  # a UIDL row without its ingest
        ("catalog-row-missing", "acct/uid-5"),  # ingests without their rows
        ("catalog-row-missing", "acct/uid-8"),
        ("ledger-disagrees", "acct/uid-6"),  # a deletion the catalog no longer marks
    ]
    ledger_codes = {"ledger-broken", "ledger-missing", "ledger-disagrees", "catalog-row-missing"}
    code, items = findings(vault, "--quick")
    assert code == 1
    assert [(f["code"], f["subject"]) for f in items if f["code"] in ledger_codes] == expected


def test_ledger_export_checks_without_the_database(vault: Path, tmp_path: Path) -> None:
    head = run_cli(vault, "ledger", "head").stdout.split()
    assert head[0] == "16"  # 8 ingests + 8 confirmed deletions
    out = tmp_path / "ledger.jsonl"
    assert run_cli(vault, "ledger", "export", "--out", str(out)).exit_code == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 16 and json.loads(lines[-1])["entry_hash"] == head[1]
    assert {json.loads(line)["kind"] for line in lines} == {"ingest", "server-delete"}
    assert run_cli(vault, "ledger", "check", str(out), "--head", head[1]).exit_code == 0
    # what `ledger head` prints is a head too; an earlier one holds in a longer export
    printed = run_cli(vault, "ledger", "head").stdout.strip()
    assert run_cli(vault, "ledger", "check", str(out), "--head", printed).exit_code == 0
    earlier = json.loads(lines[9])
    earlier_head = f"{earlier['seq']} {earlier['entry_hash']}"
    assert run_cli(vault, "ledger", "check", str(out), "--head", earlier_head).exit_code == 0
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(line + "\n" for line in lines[:8]))  # cut back before that head
    result = run_cli(vault, "ledger", "check", str(cut), "--head", earlier_head)
    assert result.exit_code == 1 and "cut back or rewritten" in result.output
    # the documented stand-alone check (docs/ledger.md) agrees
    tampered = [json.loads(line) for line in lines]
    del tampered[5]
    out.write_text("".join(json.dumps(e) + "\n" for e in tampered))
    result = run_cli(vault, "ledger", "check", str(out))
    assert result.exit_code == 1 and "entry 7" in result.output


def test_verify_json_matches_schema(vault: Path) -> None:
    schema = json.loads((Path(__file__).parents[1] / "schemas" / "verify.schema.json").read_text())
    jsonschema.validate(json.loads(run_cli(vault, "verify", "--json").stdout), schema)


def test_group_writable_vault_is_refused(vault: Path) -> None:
    import os

    os.chmod(vault, 0o770)
    result = run_cli(vault, "verify")
    assert result.exit_code == 3
    assert "writable by other users (mode 770)" in result.stderr and "chmod 700" in result.stderr
    os.chmod(vault, 0o700)
    os.chmod(vault / "catalog.sqlite", 0o666)
    assert "chmod 600" in run_cli(vault, "fetch").stderr


def test_vault_files_are_private(vault: Path) -> None:
    for path in [vault, *vault.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"


def test_edited_audit_entry(vault: Path) -> None:
    assert run_cli(vault, "search", "--count", "*").exit_code == 0
    assert run_cli(vault, "search", "--count", "m1").exit_code == 0
    assert findings(vault)[0] == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET results = 0 WHERE seq = 1")
    code, items = findings(vault)
    assert code == 1 and [f["code"] for f in items] == ["audit-broken", "catalog-guard-missing"]
    assert items[0]["subject"] == "audit entry 1" and items[1]["subject"] == "audit_no_update"


def test_dropped_index_document_is_found_and_repaired(vault: Path) -> None:
    from mailvault import index as ix

    digest = some_digest(vault)
    index, _ = ix.create_or_open(vault / "index")
    writer = ix.IndexWriter(index)
    writer.delete(digest)
    writer.close()
    code, items = findings(vault)
    assert code == 1
    assert [(f["code"], f["subject"]) for f in items] == [("index-missing", digest)]
    repair = run_cli(vault, "verify", "--repair-index")
    assert repair.exit_code == 1, repair.output  # what it repaired is still reported
    assert "repaired index-missing" in repair.output
    assert "the index was rebuilt to repair 1" in repair.output
    assert findings(vault) == (0, [])
    assert run_cli(vault, "search", "--count", "*").stdout.strip() == "8"


def test_a_deleted_uidl_row_and_a_corrupt_catalog_are_findings(tmp_path: Path) -> None:
    """A UIDL row removed by hand (a fetch would download that message again) is caught
    through the ledger; a damaged catalog file is a finding with exit 1, not a crash."""
    import os

    with FakePop3Server(corpus(3)) as server:
        root = make_vault(tmp_path / "v", {"acct": {**PLAIN, "port": server.port}})
        assert fetch_json(root, "--no-index")[0] == 0
    with sqlite3.connect(root / "catalog.sqlite") as db:
        db.execute("DELETE FROM uidls WHERE uidl = 'uid-2'")
    result = run_cli(root, "verify", "--json")
    findings = json.loads(result.stdout)["findings"]
    assert result.exit_code == 1
    assert [f["code"] for f in findings if f["subject"] == "acct/uid-2"] == ["catalog-row-missing"]
    data = bytearray((root / "catalog.sqlite").read_bytes())
    data[4096:8192] = os.urandom(4096)
    (root / "catalog.sqlite").write_bytes(bytes(data))
    result = run_cli(root, "verify")
    assert result.exit_code == 1 and "catalog-corrupt" in result.output
    assert "Traceback" not in result.output


def test_a_deletion_unmarked_by_hand_is_a_finding(vault: Path) -> None:
    """The ledger records a UIDL's deletion; clearing deleted_confirmed_at in the catalog (so
    fetch takes it for mail still on the server) is caught, not only the other way round."""
    assert findings(vault) == (0, [])
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute(
            "UPDATE uidls SET deleted_confirmed_at = NULL, dele_sent_at = NULL WHERE uidl = 'uid-2'"
        )
    code, items = findings(vault)
    assert code == 1
    assert [(f["code"], f["subject"]) for f in items] == [("ledger-disagrees", "acct/uid-2")]
    assert "the ledger records the deletion of UIDL uid-2" in items[0]["detail"]


def test_an_import_committing_while_verify_reads_is_no_finding(
    vault: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify takes no lock; an import commits (messages, their ledger entries) between its
    reading the ledger and reading the messages.  One snapshot: no ledger-missing, no orphan."""
    from mailvault import ledger
    from tests.test_export_kit import add_messages

    entries = ledger.iter_entries
    done: list[str] = []

    def entries_then_a_commit(db: sqlite3.Connection, *args: str) -> object:
        yield from entries(db, *args)
        if not args and not done:
            done.extend(add_messages(vault, [b"Subject: meanwhile\r\n\r\ncommitted meanwhile\r\n"]))

    monkeypatch.setattr(ledger, "iter_entries", entries_then_a_commit)
    code, items = findings(vault)
    assert done and (code, codes(items)) == (0, set()), items


def hold_with_a_published_blob(vault: Path, ready: Path, command: str) -> subprocess.Popen[bytes]:
    """A process that takes the vault lock as ``command``, publishes one blob and, before
    committing its catalog row, writes the blob's path to ``ready`` and sleeps."""
    holder = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from mailvault.vault import open_vault
        vault = open_vault(Path({str(vault)!r}))
        with vault.write_lock({command!r}):
            store = vault.store()
            writer = store.writer()
            writer.write(b"Subject: in flight\\r\\n\\r\\npublished, not committed\\r\\n")
            staged = writer.finish()
            store.publish([staged])
            Path({str(ready)!r} + ".tmp").write_text(str(store.find(staged.digest)))
            Path({str(ready)!r} + ".tmp").rename({str(ready)!r})
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder])
    while not ready.exists():
        assert proc.poll() is None, "the lock holder died"
        time.sleep(0.01)
    return proc


def test_blobs_a_running_writer_has_not_committed_yet_are_not_orphans(
    vault: Path, tmp_path: Path
) -> None:
    """A fetch publishes a batch's blobs, then commits their rows: verify running in between
    reports them as in flight (info), not as orphans, while that writer holds the vault."""
    proc = hold_with_a_published_blob(vault, tmp_path / "ready", "fetch")
    try:
        code, items = findings(vault)
        assert (code, codes(items)) == (0, set()), items
        assert [f["code"] for f in items if f["code"] == "blob-in-flight"] == ["blob-in-flight"]
    finally:
        proc.kill()
        proc.wait()
    code, items = findings(vault)  # the writer is gone: now it is an orphan
    assert "blob-orphan" in codes(items)
    orphan = next(f for f in items if f["code"] == "blob-orphan")
    assert "interrupted fetch or import" in orphan["detail"]


def test_a_lock_file_naming_a_live_process_that_holds_no_lock_hides_nothing(
    vault: Path, tmp_path: Path
) -> None:
    """The lock file keeps the pid of a writer killed with -9, and pids are reused (in a
    container the last fetch was often pid 1): verify took any live process of that pid for a
    writer and turned an orphan blob into an in-flight note, exit 0.  What counts is whether
    the lock is held."""
    proc = hold_with_a_published_blob(vault, tmp_path / "ready", "fetch")
    proc.kill()  # -9: its record stays in the lock file
    proc.wait()
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": unrelated.pid, "command": "fetch", "since": "2026-01-01T00:00:00Z"}
        (vault / "lock").write_text(json.dumps(record))
        code, items = findings(vault)
    finally:
        unrelated.kill()
        unrelated.wait()
    assert code == 1 and "blob-orphan" in codes(items), items
    assert "blob-in-flight" not in {f["code"] for f in items}


def test_a_writer_that_ends_clears_its_name_from_the_lock_file(vault: Path) -> None:
    with open_vault(vault).write_lock("index"):
        assert b'"index"' in (vault / "lock").read_bytes()
    assert (vault / "lock").read_bytes() == b""


def test_tmp_leftovers_name_fetch_and_import_alike(vault: Path) -> None:
    """Both fetch and import write through tmp/ and clean it when they start: the note says
    so rather than blaming fetch alone."""
    (vault / "tmp" / "in-1-leftover").write_bytes(b"half a message")
    code, items = findings(vault)
    (note,) = [f for f in items if f["code"] == "tmp-leftover"]
    assert code == 0 and note["severity"] == "info"
    assert "interrupted fetch or import" in note["detail"]


def test_an_import_starting_while_verify_walks_the_store_makes_no_orphan(
    vault: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify looked for a writer before its walk of objects/; an import that took the lock
    during the walk and published a blob (its catalog row not committed yet) made a false
    blob-orphan.  Whether a writer explains a blob without a row is asked when one is seen."""
    entries = BlobStore.entries
    started: list[subprocess.Popen[bytes]] = []

    def entries_then_an_import(store: BlobStore) -> Iterator[tuple[Path, str | None]]:
        yield from entries(store)
        ready = tmp_path / "ready"
        started.append(hold_with_a_published_blob(vault, ready, "import"))
        path = Path(ready.read_text())
        yield path, path.name.removesuffix(".zst")

    monkeypatch.setattr(BlobStore, "entries", entries_then_an_import)
    try:
        code, items = findings(vault)
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
    assert started and (code, codes(items)) == (0, set()), items
    assert "blob-in-flight" in {f["code"] for f in items}


def test_a_new_vault_verifies_clean_and_searches_to_no_hits(tmp_path: Path) -> None:
    """`init && verify` in a provisioning script: exit 0, and search says "no hits" (exit 1),
    not "no index" (exit 2)."""
    root = tmp_path / "new"
    assert run_cli(root, "init").exit_code == 0
    code, items = findings(root)
    assert (code, [f for f in items if f["severity"] != "info"]) == (0, [])
    result = run_cli(root, "search", "anything")
    assert result.exit_code == 1, result.stderr


def test_a_lost_catalog_is_never_recreated_empty(vault: Path, tmp_path: Path) -> None:
    """catalog.sqlite gone (a bad restore, a slip of rm): no command makes a new, empty one in
    its place, which would drop every hold, purge and ledger entry without a word and turn
    every stored message into an "orphan"; they all stop with exit 3 and say to restore it,
    and verify keeps saying catalog-missing."""
    for path in vault.glob("catalog.sqlite*"):
        path.unlink()
    eml = tmp_path / "one.eml"
    eml.write_bytes(b"From: a@example.com\r\nSubject: one\r\n\r\nbody\r\n")
    for args in (
        ["hold", "list"],
        ["hold", "add", "h", "subject:one"],
        ["retention", "apply", "--dry-run"],
        ["import", str(eml)],
        ["fetch", "--json"],
        ["search", "body"],
        ["export", "--format", "eml", "--out", str(tmp_path / "out")],
    ):
        result = run_cli(vault, *args)
        assert result.exit_code == 3, (args, result.output)
        assert "restore" in result.output, (args, result.output)
        assert not (vault / "catalog.sqlite").exists(), args
    code, items = findings(vault)
    assert code == 1 and "catalog-missing" in codes(items)


def test_a_purge_while_verify_runs_is_not_a_finding(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """retention purges (catalog commit, then the blob goes) after verify took its snapshot
    of the catalog: the blob verify expected is missing, but it was purged since: no
    blob-missing or blob-unreadable error."""
    from mailvault import compliance, verify
    from mailvault.cli import compliance_cmd
    from mailvault.vault import open_vault

    digest = some_digest(vault)
    original = verify._catalog
    done: list[bool] = []

    def catalog_then_a_purge(db: sqlite3.Connection) -> Iterator[verify.Finding]:
        yield from original(db)
        if not done:
            candidate = compliance.Candidate(digest, "2000-01-01T00:00:00+00:00", 1, ())
            compliance.apply(open_vault(vault), [candidate])
            # and its index rebuild, as `retention apply` does (without it the purged text
            # stays in the index files: index-purged-text)
            compliance_cmd._compact_index(open_vault(vault))
            done.append(True)

    monkeypatch.setattr(verify, "_catalog", catalog_then_a_purge)
    code, items = findings(vault)
    assert done and (code, codes(items)) == (0, set()), items


def chained(*changes: dict[str, object]) -> list[dict[str, object]]:
    """Ledger entries as `ledger export` writes them, chained, one per change given."""
    from mailvault import ledger

    entries: list[dict[str, object]] = []
    prev = ledger.GENESIS
    for seq, change in enumerate(changes, 1):
        entry: dict[str, object] = {
            **dict.fromkeys(ledger.LEDGER_FIELDS),
            "kind": "ingest",
            "at": "2026-01-01T00:00:00+00:00",
            **change,
            "seq": seq,
            "prev_hash": prev,
        }
        prev = entry["entry_hash"] = ledger.entry_hash(entry)
        entries.append(entry)
    return entries


def write_jsonl(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text(
        "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in entries),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
def test_an_interrupted_ledger_export_leaves_the_earlier_one_whole(
    vault: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]
) -> None:
    """Ctrl-C (or a full disk) during `ledger export --out FILE` cut an earlier full export
    down to its first lines, which `ledger check` then called intact.  Now FILE is replaced
    only once the new export is whole; the temporary file beside it is removed."""
    from mailvault import ledger

    out = tmp_path / "exports" / "ledger.jsonl"
    out.parent.mkdir()
    assert run_cli(vault, "ledger", "export", "--out", str(out)).exit_code == 0
    full = out.read_bytes()
    entries = ledger.iter_entries

    def stopped_after_five(db: sqlite3.Connection) -> Iterator[dict[str, object]]:
        for n, entry in enumerate(entries(db)):
            if n == 5:
                raise stop(28, "No space left on device")
            yield entry

    monkeypatch.setattr(ledger, "iter_entries", stopped_after_five)
    result = run_cli(vault, "ledger", "export", "--out", str(out))
    assert result.exit_code == (130 if stop is KeyboardInterrupt else 3), result.output
    assert out.read_bytes() == full
    assert [p.name for p in out.parent.iterdir()] == ["ledger.jsonl"]


def test_a_ledger_export_through_a_symlink_replaces_its_target(vault: Path, tmp_path: Path) -> None:
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert run_cli(vault, "ledger", "export", "--out", str(link)).exit_code == 0
    assert link.is_symlink() and len(target.read_text().splitlines()) == 16
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "v") == [
        "link.jsonl",
        "real.jsonl",
    ]


@pytest.mark.parametrize(
    ("content", "line", "says"),
    [
        (b"[1,2]\n", 2, "a JSON array, not a ledger entry"),
        (b'"hello"\n', 2, "a JSON string, not a ledger entry"),
        (b"null\n", 2, "a JSON null, not a ledger entry"),
        (b"[" * 100_000 + b"\n", 2, "not a JSON line"),
        (b"{}\n\xff\xfe\n", 3, "not UTF-8 text"),
        (b"{}\n{}\n{\n", 4, "not a JSON line"),
    ],
)
def test_a_file_that_is_no_ledger_export_is_one_line_naming_it(
    tmp_path: Path, content: bytes, line: int, says: str
) -> None:
    """Not a traceback: one line naming the file and line, exit 2 (a bad argument)."""
    first = json.dumps(chained({"account": "a"})[0]).encode() + b"\n"
    path = tmp_path / "not-a-ledger.jsonl"
    path.write_bytes(first + content)
    result = run_cli(tmp_path, "ledger", "check", str(path))
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"mailvault: error: {path}:{line}: {says}")
    assert "ledger export" in result.stderr


def test_an_entry_without_its_hash_is_broken_not_a_traceback(tmp_path: Path) -> None:
    entries = chained({"account": "a"}, {"account": "b"}, {"account": "c"})
    del entries[-1]["entry_hash"]
    path = write_jsonl(tmp_path / "ledger.jsonl", entries)
    result = run_cli(tmp_path, "ledger", "check", str(path))
    assert result.exit_code == 1
    assert f"{path}:3: the entry has no entry_hash" in result.stdout
    assert result.stderr.rstrip("\n").endswith(": BROKEN")
    entries[0]["seq"] = "1\n2026-01-01 forged line"
    path = write_jsonl(tmp_path / "ledger.jsonl", entries)
    result = run_cli(tmp_path, "ledger", "check", str(path))
    assert result.exit_code == 1 and "forged line" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("2026")]


def test_a_line_separator_inside_a_value_is_not_a_line_break(tmp_path: Path) -> None:
    """JSON leaves U+2028, U+2029, U+0085 and U+001C-U+001E unescaped in strings only partly;
    an export ends lines with "\\n" alone, and so does the check (as docs/ledger.md's)."""
    entries = chained({"account": "legal\u2028team"}, {"account": "x\u2029y\x85z\x1ew"})
    path = write_jsonl(tmp_path / "ledger.jsonl", entries)
    assert "\u2028" in path.read_text(encoding="utf-8")
    result = run_cli(
        tmp_path, "ledger", "check", str(path), "--head", str(entries[-1]["entry_hash"])
    )
    assert result.exit_code == 0, result.output
    assert "2 entries" in result.stderr and "intact" in result.stderr


def test_an_empty_file_is_no_verified_ledger_unless_a_head_says_it_is_empty(
    tmp_path: Path,
) -> None:
    """`ledger check` of an empty file said "0 entries ... intact" and exited 0, so a ledger
    export cut to nothing passed.  The export of a vault that never recorded anything is
    empty too: it checks against its notarised head (entry 0), and only so."""
    from mailvault import ledger

    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"")
    result = run_cli(tmp_path, "ledger", "check", str(path))
    assert result.exit_code == 1
    assert "holds no ledger entries, so nothing was verified" in result.stdout
    assert result.stderr.rstrip("\n").endswith(": EMPTY")
    for head in (f"0 {ledger.GENESIS}", ledger.GENESIS):
        assert run_cli(tmp_path, "ledger", "check", str(path), "--head", head).exit_code == 0
    result = run_cli(tmp_path, "ledger", "check", str(path), "--head", f"3 {'a' * 64}")
    assert result.exit_code == 1 and "cut back or rewritten" in result.stdout


def test_a_field_no_hash_covers_breaks_an_exported_entry(tmp_path: Path) -> None:
    """An entry's hash covers the fields the export writes; one more (a note "approved by the
    DPO" added to the file) was accepted silently.  It is a problem naming the line."""
    entries = chained({"account": "a"}, {"account": "b"})
    entries[1]["note"] = "approved"
    path = write_jsonl(tmp_path / "ledger.jsonl", entries)
    result = run_cli(tmp_path, "ledger", "check", str(path))
    assert result.exit_code == 1
    assert f"{path}:2: unknown field 'note', which no hash covers" in result.stdout
    assert result.stderr.rstrip("\n").endswith(": BROKEN")


def test_ledger_check_and_verify_read_a_head_alike(vault: Path, tmp_path: Path) -> None:
    seq, digest = run_cli(vault, "ledger", "head").stdout.split()
    out = tmp_path / "ledger.jsonl"
    assert run_cli(vault, "ledger", "export", "--out", str(out)).exit_code == 0
    for form in (f"{seq} {digest}", f"{seq}:{digest}", digest):
        check = run_cli(vault, "ledger", "check", str(out), "--head", form)
        assert check.exit_code == 0, (form, check.output)
        assert run_cli(vault, "verify", "--quick", "--ledger-head", form).exit_code == 0, form
    wrong = "0" * 63 + "1"
    for form in (f"{seq} {wrong}", f"{seq}:{wrong}", wrong):
        assert run_cli(vault, "ledger", "check", str(out), "--head", form).exit_code == 1, form
        result = run_cli(vault, "verify", "--quick", "--ledger-head", form)
        assert result.exit_code == 1 and "ledger-truncated" in result.output, form
    for bad in ("twelve " + digest, f"{seq} {digest[:12]}", f"-1:{digest}"):
        check = run_cli(vault, "ledger", "check", str(out), "--head", bad)
        assert check.exit_code == 2 and "is not a head" in check.stderr, bad
        result = run_cli(vault, "verify", "--quick", "--ledger-head", bad)
        assert result.exit_code == 2 and "is not a head" in result.stderr, bad


def test_the_pending_note_does_not_promise_index_can_read_a_missing_blob(tmp_path: Path) -> None:
    """Messages not indexed yet are a note whose fix is `mailvault index`; one whose blob is
    missing cannot be indexed by it, and the note says so instead of promising a catch-up."""
    with FakePop3Server(corpus(4)) as server:
        path = make_vault(tmp_path / "v", {"acct": {**PLAIN, "port": server.port}})
        assert fetch_json(path, "--no-index")[0] == 0
    code, items = findings(path)
    (pending,) = [f for f in items if f["code"] == "index-pending"]
    assert "mailvault index` catches up" in pending["detail"] and "missing" not in pending["detail"]
    blob = BlobStore(path).find(some_digest(path))
    assert blob is not None
    blob.unlink()
    code, items = findings(path)
    (pending,) = [f for f in items if f["code"] == "index-pending"]
    assert "but not the 1 whose blob is missing or damaged" in pending["detail"], pending


def test_a_lock_on_another_filesystems_file_with_the_same_inode_is_not_a_writer(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock table was matched by inode alone: a fetch on another vault (a snapshot of
    this one, whose lock file has the same inode number) made verify take this vault's orphan
    blobs for a writer's, exit 0.  A line with another device counts only if that process has
    this lock file open (overlayfs and btrfs show another device than stat does)."""
    import os

    from mailvault import vault as vault_module

    lock = vault / "lock"
    lock.touch()
    inode = os.stat(lock).st_ino
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        table = f"1: FLOCK  ADVISORY  WRITE {stranger.pid} ff:99:{inode} 0 EOF\n"
        monkeypatch.setattr(vault_module, "_lock_table", lambda: table)
        assert vault_module.flock_holders(lock) == set()
        with open(lock) as held:  # this process has the file open: overlayfs, say
            table = f"1: FLOCK  ADVISORY  WRITE {os.getpid()} ff:99:{inode} 0 EOF\n"
            monkeypatch.setattr(vault_module, "_lock_table", lambda: table)
            assert vault_module.flock_holders(lock) == {os.getpid()}
            assert not held.closed
    finally:
        stranger.kill()
        stranger.wait()


def test_ledger_check_of_an_audit_trail_says_what_the_file_is(vault: Path, tmp_path: Path) -> None:
    """`mailvault audit --json > a.jsonl; ledger check a.jsonl` reported every entry as
    edited and the chain BROKEN (exit 1): the file is an audit trail, not a ledger export."""
    assert run_cli(vault, "search", "*").exit_code in (0, 1)  # an audit entry at least
    trail = tmp_path / "audit.jsonl"
    trail.write_text(run_cli(vault, "audit", "--json").stdout)
    result = run_cli(vault, "ledger", "check", str(trail))
    assert result.exit_code == 2 and "an audit trail" in result.stderr, result.output
    assert result.stderr.count("\n") == 1


def test_a_catalog_migrated_by_a_newer_mailvault_is_refused(vault: Path) -> None:
    """Nothing compared the catalog's schema version with the migrations this version knows:
    after a rollback an older mailvault ran retention on a newer catalog, read holds placed
    in a newer query language as its own, and purged held mail."""
    from mailvault.catalog import migrations

    newer = migrations()[-1][0] + 1
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute(f"PRAGMA user_version = {newer}")
    result = run_cli(vault, "hold", "add", "case", "subject:x")
    assert result.exit_code == 3, result.output
    assert f"has schema version {newer}, written by a newer mailvault" in result.stderr
    assert result.stderr.count("\n") == 1
    code, found = findings(vault)
    assert code == 1 and "catalog-newer" in codes(found)
    for args in (["search", "x"], ["show", some_digest(vault)]):  # they write the audit trail
        result = run_cli(vault, *args)
        assert result.exit_code == 3 and "written by a newer mailvault" in result.stderr
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == newer
        assert db.execute("SELECT count(*) FROM holds").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM audit").fetchone()[0] == 0


def test_catalog_version_is_the_last_migration() -> None:
    from mailvault.catalog import migrations
    from mailvault.vault import CATALOG_VERSION

    assert migrations()[-1][0] == CATALOG_VERSION
