"""A damaged or replaced index is derived data: one-line errors, verify findings, rebuilds."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
import tantivy
from click.testing import Result

from mailvault import index as ix
from mailvault import indexer
from mailvault.indexer import catch_up
from mailvault.resources import json_schema
from mailvault.vault import Vault
from tests.test_index_support import build_vault, generated, import_messages
from tests.vaults import run_cli

# The files of a segment (tantivy 0.2x): every one ends in a footer with a CRC of the rest.
SEGMENT_FILES = ("store", "idx", "term", "pos", "fast", "fieldnorm")


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    vault, _, _ = build_vault(tmp_path / "vault", generated(40, seed=7))
    catch_up(vault)
    return vault


def segment_file(vault: Vault, ext: str) -> Path:
    (path,) = vault.index_path.glob(f"*.{ext}")  # one segment: one commit, no merge
    return path


def damage(path: Path, *, at: float = 0.5, length: int = 64) -> None:
    """Flip bits in a file (by default in its middle), leaving its footer (which tantivy
    checks on opening) intact: what a bad disk sector or a partial restore does."""
    data = bytearray(path.read_bytes())
    start = int((len(data) - 64) * at) - length // 2
    for offset in range(start, start + length):
        data[offset] ^= 0xA5
    # A new file renamed over the segment, not the segment rewritten in place: a mapping of
    # it that a Tantivy thread of this process still reads (an earlier command's) would see
    # the file cut to nothing mid-write and die of SIGBUS, taking the whole test run along.
    fresh = path.with_name(path.name + ".damaged")
    fresh.write_bytes(bytes(data))
    os.replace(fresh, path)


def verify_json(vault: Vault, *args: str) -> tuple[Result, list[dict[str, str]]]:
    result = run_cli(vault.root, "verify", "--json", *args)
    report = json.loads(result.stdout)
    jsonschema.validate(report, json_schema("verify.schema.json"))
    return result, report["findings"]


def assert_one_line_damage_error(result: Result) -> None:
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mailvault: error: the search index at ")
    assert " is damaged: " in lines[0] and lines[0].endswith("run `mailvault reindex`")


def test_a_damaged_document_store_is_one_line_for_search(vault: Vault) -> None:
    damage(segment_file(vault, "store"))
    for args in (["search", "subject:*"], ["search", "--json", "*"], ["search", "--ids", "*"]):
        assert_one_line_damage_error(run_cli(vault.root, *args))


def test_a_damaged_index_being_rebuilt_is_one_line_naming_the_rebuild(vault: Vault) -> None:
    """A search while `verify --repair-index` rebuilt a damaged index said to run `mailvault
    reindex`, which would only have found the vault locked: it names the rebuild under way."""
    from tests.vaults import holding_the_lock

    damage(segment_file(vault, "store"))
    with holding_the_lock(vault.root, "verify --repair-index") as pid:
        ix.create_or_open(ix.new_path(vault.index_path), marker=False)  # the rebuild's
        result = run_cli(vault.root, "search", "*")
    assert result.exit_code == 3, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"mailvault: error: the search index at {vault.index_path} cannot be read while pid "
        f"{pid} (verify --repair-index, since "
    ), line
    assert line.endswith(") is rebuilding it; search again when it ends"), line
    assert_one_line_damage_error(run_cli(vault.root, "search", "*"))  # no one rebuilds it now


def test_a_damaged_term_dictionary_is_a_finding_and_one_line_not_a_panic(vault: Vault) -> None:
    """Damage in the id terms makes tantivy panic (pyo3's PanicException, which is no
    Exception) when they are walked: verify --quick (no checksums) reports it as a finding,
    and `hold add` (which checks the index against the catalog first) as one line."""
    damage(segment_file(vault, "term"), at=0.02)
    result, items = verify_json(vault, "--quick")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [f for f in items if f["severity"] == "error"]
    assert [f["code"] for f in errors] == ["index-damaged"], items  # garbage read before it
    assert "mailvault reindex" in errors[0]["detail"]
    result = run_cli(vault.root, "hold", "add", "h1", "subject:*")
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "the search index at " in result.stderr and " is damaged: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_damaged_document_store_does_not_change_what_holds_and_exports_select(
    vault: Vault, tmp_path: Path
) -> None:
    """Holds and query exports read the hits' ids from the id terms, never a stored document
    (which held the ids they used to read): damage there changes nothing they select."""
    damage(segment_file(vault, "store"))
    result = run_cli(vault.root, "hold", "add", "h1", "subject:*")
    assert result.exit_code == 0 and "protects 40 messages" in result.stdout, result.output
    out = tmp_path / "out"
    result = run_cli(vault.root, "export", "subject:*", "--format", "eml", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.eml"))) == 40
    assert_one_line_damage_error(run_cli(vault.root, "search", "subject:*"))


@pytest.mark.parametrize("ext", SEGMENT_FILES)
def test_verify_finds_a_segment_damaged_in_the_middle(vault: Vault, ext: str) -> None:
    """Damage anywhere in a segment is an index-damaged error naming the file, every other
    check still runs (a blob flipped too is still found), and --repair-index rebuilds."""
    path = segment_file(vault, ext)
    damage(path)
    blob = next(iter(sorted(vault.read_store().iter_digests())))
    stored = vault.read_store().find(blob)
    assert stored is not None
    original = stored.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    result, items = verify_json(vault)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = {(f["code"], f["subject"]) for f in items if f["severity"] == "error"}
    assert ("index-damaged", str(path)) in errors, items
    assert any(code in {"blob-corrupt", "blob-unreadable"} for code, _ in errors), items
    finding = next(f for f in items if f["code"] == "index-damaged")
    assert "mailvault reindex" in finding["detail"]
    stored.write_bytes(original)
    # the repair is reported: an archived report and the exit code show the damage it repaired
    result, items = verify_json(vault, "--repair-index")
    report = json.loads(result.stdout)
    assert (result.exit_code, report["ok"], items) == (1, False, []), report
    assert ("index-damaged", str(path)) in {(f["code"], f["subject"]) for f in report["repaired"]}
    result, items = verify_json(vault)
    assert (result.exit_code, items) == (0, []), items
    assert run_cli(vault.root, "search", "--count", "*").stdout.strip() == "40"


def test_verify_quick_does_not_read_the_index_files(vault: Vault) -> None:
    damage(segment_file(vault, "pos"))
    result, items = verify_json(vault, "--quick")
    assert (result.exit_code, items) == (0, []), items


def plant(vault: Vault, *docs: tantivy.Document, delete: str | None = None) -> None:
    """Add documents to the vault's index with tantivy itself (as a damaged index, or another
    tool writing into the vault's index directory, would leave them), after deleting the
    document of ``delete``."""
    index, _ = ix.create_or_open(vault.index_path)
    writer = index.writer(15_000_000, 1)
    if delete is not None:
        writer.delete_documents_by_term("id", delete)
    for doc in docs:
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()


def no_id(subject: str) -> tantivy.Document:
    """A document with no id, dated after every generated message (first in a search)."""
    doc = tantivy.Document(subject=subject)
    doc.add_bytes("body_preview", subject.encode())
    doc.add_date("date", datetime(2030, 1, 1, tzinfo=UTC))
    return doc


def test_documents_without_an_id_are_found_and_repaired(vault: Vault) -> None:
    """A document with no id escaped verify's walk of the id terms: verify was clean while a
    search showed (and counted) a hit no catalog message stands behind."""
    plant(vault, no_id("planted one"), no_id("planted two"))
    for args in ((), ("--quick",)):
        result, items = verify_json(vault, *args)
        assert result.exit_code == 1, items
        assert [(f["code"], f["severity"], f["subject"]) for f in items] == [
            ("index-ids-mismatch", "warning", "index")
        ]
        assert items[0]["detail"].startswith("2 index documents hold no message id")
        assert "`mailvault reindex`" in items[0]["detail"]
    repair = run_cli(vault.root, "verify", "--repair-index")
    assert repair.exit_code == 1, repair.output  # what it repaired is still reported
    assert "repaired index-ids-mismatch" in repair.stdout
    assert verify_json(vault)[1] == []
    assert run_cli(vault.root, "search", "--count", "*").stdout.strip() == "40"


def test_index_deletes_documents_without_an_id(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`mailvault index` deleted documents by id only: one with no id stayed, so the index's
    count never matched the catalog's again, and every run (every fetch's indexing) walked
    every id of the index to find nothing to do."""
    plant(vault, no_id("planted one"), no_id("planted two"))
    result = run_cli(vault.root, "index")
    assert result.exit_code == 0, result.output
    assert "2 repaired" in result.stdout
    assert "the index holds 2 documents with no message id" in caplog.text
    assert verify_json(vault)[1] == []
    walks: list[object] = []
    walk = ix.live_ids
    monkeypatch.setattr(ix, "live_ids", lambda *args: walks.append(args) or walk(*args))
    assert run_cli(vault.root, "index").exit_code == 0
    assert walks == []  # the counts agree again: nothing to walk


def test_search_leaves_out_hits_of_no_archived_message(vault: Vault) -> None:
    """A document with no id was shown with an empty id (an empty line of --ids, a --json hit
    its schema refuses, nothing `show` could open) and counted; one whose id the catalog
    does not list was shown too.  They are left out, pages still filled, with a warning."""
    from mailvault.compliance import audit_entries

    foreign = tantivy.Document(id="Not-A-Sha256", subject="planted foreign")
    foreign.add_date("date", datetime(2030, 1, 2, tzinfo=UTC))
    plant(vault, no_id("planted one"), no_id("planted two"), foreign)
    live = run_cli(vault.root, "search", "--ids", "--limit=0", "*").stdout.split()
    assert len(live) == 40 and set(live) == set(vault_ids(vault))
    warning = "mailvault: warning: 3 hits are index documents of no archived message"
    for args, shown in (
        (["--ids", "*"], live[:40]),
        (["--ids", "--limit=2", "*"], live[:2]),
        (["--ids", "--limit=2", "--offset=3", "*"], live[3:5]),
    ):
        result = run_cli(vault.root, "search", *args)
        assert (result.exit_code, result.stdout.split()) == (0, shown), args
        assert result.stderr.startswith(warning), result.stderr
        assert "run `mailvault reindex`" in result.stderr
        assert audit_entries(vault)[-1]["results"] == len(shown)
    assert "showing 2 of 40 hits" in run_cli(vault.root, "search", "--limit=2", "*").stderr
    hits = run_cli(vault.root, "search", "--json", "--limit=5", "*").stdout.splitlines()
    assert [json.loads(hit)["id"] for hit in hits] == live[:5]
    for hit in hits:
        jsonschema.validate(json.loads(hit), json_schema("search-hit.schema.json"))
    counted = run_cli(vault.root, "search", "--count", "*")
    assert counted.stdout == "40\n" and counted.stderr.startswith(warning), counted.stderr
    planted = run_cli(vault.root, "search", "planted")
    assert (planted.exit_code, planted.stdout) == (1, "")
    assert planted.stderr.startswith(warning)
    assert run_cli(vault.root, "reindex").exit_code == 0
    assert run_cli(vault.root, "search", "--count", "*").stderr == ""


def test_a_document_with_two_ids_is_found(vault: Vault) -> None:
    """Two ids on one document: the walk names more documents than the index holds (the
    second message's own document gone, nothing else would tell)."""
    first, second = sorted(vault_ids(vault))[:2]
    doc = tantivy.Document(id=[first, second], subject="two ids")
    plant(vault, doc, delete=second)
    result, items = verify_json(vault)
    assert result.exit_code == 1, items
    assert [(f["code"], f["subject"]) for f in items] == [
        ("index-duplicate", first),
        ("index-ids-mismatch", "index"),
    ]
    assert "name 41 documents but it holds 40 (a document with several ids" in items[1]["detail"]
    # the repair deletes both documents of the first; the second went with them, and comes
    # back too (QA: one `index --exact` left it out of the index until a second run)
    result = run_cli(vault.root, "index", "--exact")
    assert result.exit_code == 0, result.output
    assert verify_json(vault)[1] == []
    for sha256 in (first, second):
        assert run_cli(vault.root, "search", "--ids", f"id:{sha256}").stdout == sha256 + "\n"


def test_an_index_directory_replaced_by_a_file(
    vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    """`index/` a regular file: verify says so, and index and reindex rebuild (the file is
    derived data in the index's place) instead of failing, now and on every later run."""
    shutil.rmtree(vault.index_path)
    vault.index_path.write_text("not an index\n")
    result, items = verify_json(vault)
    assert result.exit_code == 1
    assert [(f["code"], f["severity"]) for f in items] == [("index-damaged", "error")]
    assert "not a directory" in items[0]["detail"]
    result = run_cli(vault.root, "search", "x")
    assert result.exit_code == 3 and "mailvault reindex" in result.stderr
    result = run_cli(vault.root, "index")
    assert result.exit_code == 0, result.output
    assert "the index holds 40 messages" in result.stdout
    assert f"{vault.index_path} is not a directory; removing it" in caplog.text
    assert vault.index_path.is_dir()
    assert verify_json(vault)[1] == []


@pytest.mark.parametrize("name", ["index", "index.old", "index.new"])
def test_reindex_replaces_a_file_in_any_of_the_index_places(vault: Vault, name: str) -> None:
    place = vault.root / name
    if place.is_dir():
        shutil.rmtree(place)
    place.write_text("a file\n")
    for _ in range(2):  # the second run used to fail on the index.old the first one left
        result = run_cli(vault.root, "reindex")
        assert result.exit_code == 0, result.output
        assert "the index holds 40 messages" in result.stdout
        assert sorted(p.name for p in vault.root.glob("index*")) == ["index"]
    assert run_cli(vault.root, "search", "--count", "*").stdout.strip() == "40"


def test_an_index_run_committing_while_verify_reads_is_no_finding(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailvault index` commits documents, then marks them indexed in the catalog; verify
    opening the index just before and reading the catalog just after saw "indexed" messages
    its searcher lacks: a false index-missing."""
    fresh = import_messages(vault, [b"Subject: meanwhile\r\n\r\nindexed meanwhile\r\n"])
    opened = ix.open_for_search
    done: list[bool] = []

    def open_then_index(path: str) -> object:
        index = opened(path)
        if not done:
            done.append(True)
            with vault.write_lock("index"):
                catch_up(vault)
        return index

    monkeypatch.setattr(ix, "open_for_search", open_then_index)
    result, items = verify_json(vault)
    assert done and result.exit_code == 0, items
    assert [f["code"] for f in items if f["severity"] != "info"] == []
    assert [f["subject"] for f in items if f["code"] == "index-pending"] == ["index"]
    assert vault_ids(vault) and fresh[0] in vault_ids(vault)


def test_an_index_run_while_verify_holds_its_snapshot_is_no_extra(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch commits and indexes messages after verify took its catalog snapshot: the
    index then holds messages the snapshot lacks, which is no index-extra."""
    from mailvault import verify

    original = verify.guard_findings
    done: list[bool] = []

    def guards_then_a_fetch(db: sqlite3.Connection) -> object:
        yield from original(db)
        if not done:
            import_messages(vault, [b"Subject: later\r\n\r\ncommitted after the snapshot\r\n"])
            with vault.write_lock("fetch"):
                catch_up(vault)
            done.append(True)

    monkeypatch.setattr(verify, "guard_findings", guards_then_a_fetch)
    result, items = verify_json(vault)
    assert done and result.exit_code == 0, items
    assert [f["code"] for f in items if f["severity"] != "info"] == []


def test_index_findings_reads_every_segment_cheaply(vault: Vault) -> None:
    """The checksum pass reads each live segment file once (and nothing a writer left
    behind); on a clean index it finds nothing."""
    assert list(indexer.index_findings(vault, set(vault_ids(vault)))) == []
    names = {Path(p).name for p in ix.live_files(vault.index_path)}
    assert names == {segment_file(vault, ext).name for ext in SEGMENT_FILES}


def vault_ids(vault: Vault) -> list[str]:
    conn = sqlite3.connect(vault.catalog_path)
    try:
        return [r[0] for r in conn.execute("SELECT sha256 FROM messages")]
    finally:
        conn.close()


def test_a_fetch_or_import_that_meets_a_damaged_index_names_one_fix() -> None:
    """The mail is committed, only the index lags: a damaged index's own message already says
    `mailvault reindex`; the "run `mailvault index`" of other failures is not added to it."""
    from mailvault.errors import IndexDamaged, SearchError

    damaged = indexer.lag_note(
        IndexDamaged("the search index at /v/index is damaged: x; run `mailvault reindex`")
    )
    assert damaged.endswith("run `mailvault reindex`") and "mailvault index`" not in damaged
    other = indexer.lag_note(SearchError("cannot write the index: disk full"))
    assert other.endswith("run `mailvault index` to catch up")


KILLED_WRITER = (
    "An error occurred in a thread: 'An index writer was killed.. A worker thread encountered "
    "an error (io::Error most likely) or panicked.'"
)


@pytest.mark.parametrize("command", ["index", "reindex"])
def test_a_disk_filling_up_under_the_index_writer_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """tantivy reports an I/O error in its writer's threads (ENOSPC, on a full disk) as "An
    index writer was killed", without the error's text: that was a traceback, exit 1 (for
    verify: "found a problem"; for import: "an entry was rejected").  A rebuild's unfinished
    index.new stayed, holding the space the error asks to free."""
    import mailvault._fs

    vault, _, _ = build_vault(tmp_path / "vault", generated(8, seed=3))

    def killed(self: ix.IndexWriter, msg: object, accounts: object = ()) -> None:
        raise ValueError(KILLED_WRITER)

    monkeypatch.setattr(ix.IndexWriter, "put", killed)
    monkeypatch.setattr(mailvault._fs, "nearly_full", lambda directory: True)
    result = run_cli(vault.root, command)
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1 and "disk full while" in result.stderr, result.stderr
    assert not (vault.root / "index.new").exists()
    monkeypatch.setattr(mailvault._fs, "nearly_full", lambda directory: False)
    other = run_cli(vault.root, command)
    assert other.exit_code == 3 and "I/O error" in other.stderr, other.stderr


def test_a_lost_document_beside_an_idless_one_is_left_out_and_repaired_by_index_exact(
    vault: Vault,
) -> None:
    """Equal counts can hide a swap: one message's document lost, one with no id planted.
    Search showed the id-less hit with an empty id, and verify sent the user to `mailvault
    index`, which compared the counts and did nothing (QA)."""
    lost = sorted(vault.read_store().iter_digests())[0]
    plant(vault, no_id("planted"), delete=lost)
    result = run_cli(vault.root, "search", "--ids", "*")
    assert result.exit_code == 0, result.output
    ids = result.stdout.splitlines()
    assert len(ids) == 39 and "" not in ids and lost not in ids, ids
    assert "1 hit is an index document of no archived message" in result.stderr
    found = {(f["code"], f["subject"]): f["detail"] for f in verify_json(vault)[1]}
    assert "`mailvault index --exact` re-adds it" in found["index-missing", lost]
    assert "`mailvault index --exact` deletes it" in found["index-ids-mismatch", "index"]
    assert run_cli(vault.root, "index").exit_code == 0  # counts agree: nothing checked
    assert len(verify_json(vault)[1]) == 2
    result = run_cli(vault.root, "index", "--exact")
    assert result.exit_code == 0 and "2 repaired" in result.stdout, result.output
    assert verify_json(vault)[1] == []
    assert lost in run_cli(vault.root, "search", "--ids", "*").stdout.splitlines()


def test_index_keeps_one_document_of_a_message_held_twice(vault: Vault) -> None:
    """A second document of one message was never deleted: the counts stayed apart, every
    index run walked every id for nothing, and search showed the message twice."""
    twice = sorted(vault.read_store().iter_digests())[3]
    searcher = ix.open_for_search(vault.index_path).searcher()
    query = tantivy.Query.term_query(ix.open_for_search(vault.index_path).schema, "id", twice)
    (address,) = [a for _, a in searcher.search(query, 1).hits]
    copy = searcher.doc(address)
    del searcher
    plant(vault, copy)
    assert run_cli(vault.root, "search", "--count", "*").stdout.strip() == "41"
    result = run_cli(vault.root, "index")
    assert result.exit_code == 0 and "1 repaired" in result.stdout, result.output
    assert verify_json(vault)[1] == []
    ids = run_cli(vault.root, "search", "--ids", "--limit", "0", "*").stdout.splitlines()
    assert len(ids) == 40 and ids.count(twice) == 1
